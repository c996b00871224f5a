"""Every cheat in EXPLOITS.md, as a fixture file, must not be called `correct` (CPU, Triton
interpreter).

Each file in tests/fixtures/cheats/ (except gpu_*.py, see test_gpu_adversarial.py) starts with a
docstring:

    EXPLOIT <row or 'containment'>: <what it does>. [problem: <name>] [timeout: <s>]
    expect: <status> /<regex of the first reason>/
    [gap: <why the evaluator lets it through today>]
    [runtime: <status> /<regex>/]  [runtime-gap: <...>]

`expect` is the verdict with the default configuration (static checks on). `runtime` is the
verdict with `EvalConfig(static_checks=False)`, which proves that the runtime defences contain the
cheat on their own (it is given for cheats that the static check rejects). A `gap` / `runtime-gap`
marks a hole the evaluator has today: that case is an xfail(strict) on AssertionError, so it
turns into a failure (remove the line then) as soon as the evaluator is fixed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import Listener

from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import Problem, load_problem, resolve_problem
from forge.evaluator.result import EvalResult, Status
from forge.sandbox.local import LocalSandbox
from forge.sandbox.policy import SandboxConfig

CHEATS = Path(__file__).resolve().parent / "fixtures" / "cheats"
LEGIT = Path(__file__).resolve().parent / "fixtures" / "legit"
MARKER_VAR = "FORGE_TEST_MARKER"
# A fork bomb in the suite must not take the CI machine down with it: the pids cgroup / rlimit of
# the test sandboxes is lowered from the default 4096.
TEST_MAX_PROCESSES = 256

# Problems that exist only for a test (row 5 needs one whose outputs a zero tensor matches).
TEST_PROBLEMS = {
    "tiny_outputs": '''"""Softmax scaled by 1e-6: every output is far below the fp32 tolerance (1e-4)."""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1) * 1e-6


batch_size = 4096
dim = 8192


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []


forge_input_sets = [{"name": "tiny", "cpu": True, "batch_size": 7, "dim": 127}]
''',
}

_KEYWORDS = r"(?:expect|runtime|runtime-gap|gap|problem|timeout)"
_END = rf"(?=\s+{_KEYWORDS}:|\s*$)"


@dataclass(frozen=True)
class Expectation:
    status: Status
    reason: str  # regex searched in the first reason
    gap: str = ""


@dataclass(frozen=True)
class CheatSpec:
    path: Path
    row: str
    description: str
    problem: str
    timeout_s: float | None
    default: Expectation
    runtime: Expectation | None

    @property
    def name(self) -> str:
        return self.path.stem


def _verdict(text: str, key: str, gap_key: str, path: Path) -> Expectation | None:
    m = re.search(rf"(?<![\w-]){key}: (\w+) /(.*?)/{_END}", text, re.S)
    if m is None:
        return None
    gap = re.search(rf"(?<![\w-]){gap_key}: (.*?){_END}", text, re.S)
    try:
        status = Status(m.group(1))
    except ValueError:
        raise AssertionError(f"{path.name}: unknown status {m.group(1)!r} after '{key}:'") from None
    re.compile(m.group(2))
    return Expectation(status, m.group(2), " ".join(gap.group(1).split()) if gap else "")


def parse_spec(path: Path) -> CheatSpec:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split())
    head = re.match(rf"EXPLOIT ([\w-]+): (.*?)(?=\s+{_KEYWORDS}:)", text)
    assert head, (
        f"{path.name}: docstring must start with 'EXPLOIT <row>: <description>. expect: ...'"
    )
    default = _verdict(text, "expect", "gap", path)
    assert default, f"{path.name}: docstring has no 'expect: <status> /<regex>/'"
    problem = re.search(r"(?<![\w-])problem: (\w+)", text)
    timeout = re.search(r"(?<![\w-])timeout: (\d+(?:\.\d+)?)", text)
    return CheatSpec(
        path=path,
        row=head.group(1),
        description=head.group(2),
        problem=problem.group(1) if problem else "softmax",
        timeout_s=float(timeout.group(1)) if timeout else None,
        default=default,
        runtime=_verdict(text, "runtime", "runtime-gap", path),
    )


SPECS = [parse_spec(p) for p in sorted(CHEATS.glob("*.py")) if not p.name.startswith("gpu_")]


def _cases() -> list:
    cases = []
    for spec in SPECS:
        for mode, expectation in (("default", spec.default), ("runtime", spec.runtime)):
            if expectation is None:
                continue
            marks = (
                [
                    pytest.mark.xfail(
                        strict=True, raises=AssertionError, reason=f"GAP: {expectation.gap}"
                    )
                ]
                if expectation.gap
                else []
            )
            cases.append(
                pytest.param(spec, mode, expectation, id=f"{spec.name}-{mode}", marks=marks)
            )
    return cases


def load_test_problem(name: str) -> Problem:
    if name in TEST_PROBLEMS:
        return load_problem(TEST_PROBLEMS[name], name)
    return resolve_problem(name)


def evaluate(problem: Problem, source: str, config: EvalConfig, sandbox=None) -> EvalResult:
    from forge.evaluator import evaluate as run

    return run(problem, source, config, sandbox=sandbox)


def marked_sandbox(cache_dir: Path, marker: str) -> LocalSandbox:
    """The default local sandbox, plus a marker variable that every process of the job inherits
    (so leftovers can be found in /proc/*/environ) and a lower process limit."""
    config = SandboxConfig(extra_env={MARKER_VAR: marker}, max_processes=TEST_MAX_PROCESSES)
    return LocalSandbox(config, cache_dir=cache_dir)


def processes_with_marker(marker: str) -> list[int]:
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_marked(marker: str) -> None:
    """Stop, then kill, every process carrying the marker (a fork bomb refills freed slots, so
    freeze them all first)."""
    for _ in range(100):
        pids = processes_with_marker(marker)
        if not pids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(0.05)


NO_CGROUP_GAP = (
    "GAP: without a pids cgroup (host not root, or root with privileges dropped: `cgroup = None if self.drop` in "
    "LocalSandbox.run) only kill_session() cleans up, and processes that called setsid() survive the job"
)


def assert_no_leftover_processes(
    marker: str, result: EvalResult | None = None, grace_s: float = 5.0
) -> None:
    deadline = time.monotonic() + grace_s
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        kill_marked(marker)  # never leave a fork bomb running, whatever the verdict
        if (
            result is not None
            and result.sandbox is not None
            and result.sandbox.process_limit != "cgroup"
        ):
            pytest.xfail(f"{NO_CGROUP_GAP} ({len(left)} left)")
    assert not left, f"{len(left)} processes of the job survived the evaluation: {left[:10]}"


def _set_constant(source: str, name: str, value: object) -> str:
    new, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
    assert count == 1, f"fixture has no module-level constant {name}"
    return new


def _config(spec: CheatSpec, mode: str, cache_dir: Path) -> EvalConfig:
    extra = {"timeout_s": spec.timeout_s} if spec.timeout_s else {"timeout_s": 120.0}
    return EvalConfig(device="cpu", static_checks=mode == "default", cache_dir=cache_dir, **extra)


def check_verdict(result: EvalResult, expectation: Expectation, label: str) -> None:
    summary = f"{label}: got {result.status.value} {result.reasons[:2]}"
    assert result.status is not Status.correct, f"CHEAT PASSED. {summary}"
    assert result.status is expectation.status, f"expected {expectation.status.value}. {summary}"
    assert result.reasons, f"no reason given. {summary}"
    assert re.search(expectation.reason, result.reasons[0]), (
        f"first reason does not match /{expectation.reason}/. {summary}"
    )


@pytest.mark.parametrize(("spec", "mode", "expectation"), _cases())
def test_cheat_is_not_correct(
    spec: CheatSpec,
    mode: str,
    expectation: Expectation,
    forge_cache_dir: Path,
    monkeypatch,
    tmp_path,
):
    source = spec.path.read_text()
    problem = load_test_problem(spec.problem)
    marker = secrets.token_hex(8)
    sandbox = marked_sandbox(forge_cache_dir, marker)
    secrets_set: dict[str, str] = {}
    listener = None
    escape = None

    if spec.name == "containment_reads_api_key":
        for var in (
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "HF_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "FORGE_DB_PASSWORD",
            "AWS_ACCESS_KEY_ID",
        ):
            secrets_set[var] = f"sk-forge-test-{secrets.token_hex(12)}"
            monkeypatch.setenv(var, secrets_set[var])
    if spec.name == "containment_network":
        listener = Listener()
        source = _set_constant(source, "CONFIG_PORT", listener.port)
    if spec.name == "containment_write_outside":
        escape = Path(f"/work/forge-escape-{secrets.token_hex(8)}.txt")
        if not escape.parent.is_dir():
            escape = Path(f"/tmp/forge-escape-{secrets.token_hex(8)}.txt")
        source = _set_constant(source, "ESCAPE_PATH", str(escape))

    try:
        result = evaluate(problem, source, _config(spec, mode, forge_cache_dir), sandbox=sandbox)
    finally:
        if listener is not None:
            listener.close()

    check_verdict(result, expectation, f"{spec.name} [{mode}]")
    dumped = result.model_dump_json()
    json.loads(dumped)  # the verdict always serializes
    for var, value in secrets_set.items():
        assert value not in dumped, f"{var} leaked into the EvalResult"
    if listener is not None:
        assert listener.connections == 0, "the candidate reached a host socket"
    if escape is not None:
        escaped = escape.exists()
        escape.unlink(missing_ok=True)
        assert not escaped, f"the candidate wrote {escape} outside its private directory"
    if mode == "runtime":
        assert result.sandbox is not None and result.sandbox.backend == "local"
    assert_no_leftover_processes(marker, result)


def test_fixture_docstrings_cover_the_catalogue_of_exploits():
    rows = {s.row for s in SPECS}
    for row in (
        "1",
        "2",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "11",
        "12",
        "14",
        "15",
        "16",
        "17",
        "18",
        "20",
        "22",
        "containment",
    ):
        assert row in rows, f"no CPU fixture for EXPLOITS row {row}"
    assert len(SPECS) >= 22
    names = {s.name for s in SPECS}
    for needed in (
        "containment_infinite_loop",
        "containment_segfault",
        "containment_os_exit",
        "containment_fork_bomb",
        "containment_reads_api_key",
        "containment_network",
        "containment_write_outside",
    ):
        assert needed in names
    for spec in SPECS:
        assert spec.default.status is not Status.correct and (
            spec.runtime is None or spec.runtime.status is not Status.correct
        )
        if spec.default.status is Status.rejected and spec.default.reason.startswith(
            "static check"
        ):
            assert spec.runtime is not None, (
                f"{spec.name}: rejected statically, so it needs a 'runtime:' verdict too"
            )


def test_evaluator_survives_crashing_candidates(forge_cache_dir: Path):
    """A segfault and a fork bomb in the worker leave the host process able to evaluate the next
    candidate, and a legit candidate is still `correct` under the same settings as the cheats."""
    problem = resolve_problem("softmax")
    for name, expected in (
        ("containment_segfault", Status.runtime_error),
        ("containment_fork_bomb", Status.timeout),
    ):
        marker = secrets.token_hex(8)
        config = EvalConfig(
            device="cpu", static_checks=False, timeout_s=8.0, cache_dir=forge_cache_dir
        )
        result = evaluate(
            problem,
            (CHEATS / f"{name}.py").read_text(),
            config,
            sandbox=marked_sandbox(forge_cache_dir, marker),
        )
        assert result.status is expected, (name, result.status, result.reasons)
        assert_no_leftover_processes(marker, result)
    legit = (LEGIT / "triton_softmax.py").read_text()
    result = evaluate(problem, legit, EvalConfig(device="cpu", cache_dir=forge_cache_dir))
    assert result.status is Status.correct, result.reasons
    assert result.kernels_seen == ["_softmax_kernel"]


def test_secret_files_of_the_host_user_stay_unreadable(forge_cache_dir: Path):
    """Credentials in files (~/.aws/credentials, .env) are as secret as environment variables."""
    home = Path(tempfile.mkdtemp(prefix="forge-test-home-"))
    key = f"sk-forge-test-{secrets.token_hex(12)}"
    try:
        (home / ".aws").mkdir(mode=0o700)
        secret_file = home / ".aws" / "credentials"
        secret_file.write_text(f"[default]\naws_secret_access_key = {key}\n")
        secret_file.chmod(0o600)
        os.chmod(home, 0o700)
        config = EvalConfig(device="cpu", static_checks=False, cache_dir=forge_cache_dir)
        source = (CHEATS / "containment_reads_api_key.py").read_text()
        result = evaluate(resolve_problem("softmax"), source, config)
        assert result.status is Status.runtime_error, result.reasons
        assert key not in result.model_dump_json(), (
            f"a 0600 credentials file of the host user leaked: {result.reasons[0][:200]}"
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


_HOST_SCRIPT = """
import json, sys
from forge.evaluator.config import EvalConfig
from forge.evaluator import evaluate
from forge.evaluator.problem import resolve_problem
source = open(sys.argv[1]).read()
result = evaluate(resolve_problem("softmax"), source, EvalConfig(device="cpu", static_checks=False, cache_dir=sys.argv[2]))
print(result.model_dump_json())
"""


@pytest.mark.xfail(
    condition=os.geteuid() != 0,
    strict=True,
    raises=AssertionError,
    reason="GAP: run by a normal user, the worker has the host's uid and no PID namespace, so candidate code reads "
    "the host's secrets from /proc/<ppid>/environ (Landlock does not stop that read; PR_SET_DUMPABLE=0 on the host "
    "or a user+PID namespace would)",
)
def test_api_key_in_the_hosts_initial_environment_does_not_leak(
    forge_cache_dir: Path, tmp_path: Path
):
    """A user exports OPENAI_API_KEY before running forge: the key sits in the host process's
    initial environment (/proc/<host>/environ), not only in os.environ."""
    key = f"sk-forge-test-{secrets.token_hex(12)}"
    env = {**os.environ, "OPENAI_API_KEY": key}
    script = tmp_path / "host.py"
    script.write_text(_HOST_SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(CHEATS / "containment_reads_api_key.py"),
            str(forge_cache_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = EvalResult.model_validate_json(proc.stdout.strip().splitlines()[-1])
    assert result.status is Status.runtime_error, result.reasons
    assert key not in proc.stdout, (
        f"the host's OPENAI_API_KEY leaked into the EvalResult: {result.reasons[0][:200]}"
    )


_WRONG_THEN_HANGS = """
import time

import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _exp_kernel(x_ptr, y_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=mask, other=0.0)
    tl.store(y_ptr + row * n_cols + offs, tl.exp(x), mask=mask)  # never normalized


class ModelNew(nn.Module):
    def forward(self, x):
        if x.shape[1] > 500:
            time.sleep(600)
        y = torch.empty_like(x)
        _exp_kernel[(x.shape[0],)](x, y, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
        return y
"""


def test_a_hang_on_a_later_set_keeps_the_mismatch_seen_before(
    forge_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Wrong on 'tiny', then hung on 'odd': the verdict stays `incorrect` with the mismatch
    first, and the timeout follows as a reason (on the H200 a hang on 'wide' had replaced it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from forge.evaluator import evaluate

    config = EvalConfig(device="cpu", cache_dir=forge_cache_dir, timeout_s=20, static_checks=False)
    result = evaluate(resolve_problem("softmax"), _WRONG_THEN_HANGS, config)
    assert result.status is Status.incorrect, result.reasons
    assert result.reasons[0].startswith("mismatch on input set 'tiny'"), result.reasons
    assert any("wall-clock limit" in r and "'odd'" in r for r in result.reasons), result.reasons
