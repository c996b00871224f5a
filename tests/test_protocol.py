"""The channel between the trusted process and the runner: typed frames, descriptors, limits,
and CPU shared memory (the GPU's CUDA IPC path is covered by the GPU tests)."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from forge.evaluator import protocol
from forge.evaluator.config import EvalConfig
from forge.evaluator.host import job_deadline, limits_for
from forge.evaluator.protocol import EvalJob, InputSetSpec, Reply, Request, TensorSpec, Value
from forge.evaluator.shared import MappedBuffer, SharedBuffer


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_request_and_its_descriptors_arrive_intact(pair):
    a, b = pair
    buffer = SharedBuffer(7, 64, "cpu")
    request = Request(
        op="call",
        what="forward on 'tiny'",
        args=[
            Value(tensor=TensorSpec(buffer=7, dtype="float32", shape=[4, 4])),
            Value(json_value=3),
        ],
    )
    protocol.send(a, request, [buffer.fd])
    got, fds = protocol.receive(b, Request)
    assert got == request
    assert len(fds) == 1 and os.fstat(fds[0]).st_size == 64
    os.close(fds[0])
    buffer.release()


def test_infinite_and_nan_errors_survive_the_frame(pair):
    a, b = pair
    protocol.send(a, Reply(device_ms=[float("inf"), 1.5]))
    got, _ = protocol.receive(b, Reply)
    assert got.device_ms[0] == float("inf") and got.device_ms[1] == 1.5


def test_garbage_from_the_runner_is_a_protocol_error(pair):
    a, b = pair
    body = b'{"ok": "not a bool at all", "device_ms": "x"}'
    a.sendall(struct.pack("<Q", len(body)) + body)
    with pytest.raises(protocol.ProtocolError, match="malformed message"):
        protocol.receive(b, Reply)


def test_an_oversized_frame_is_refused_before_it_is_read(pair):
    a, b = pair
    a.sendall(struct.pack("<Q", protocol.MAX_FRAME + 1))
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.receive(b, Reply)


def test_a_closed_channel_is_reported(pair):
    a, b = pair
    a.sendall(struct.pack("<Q", 100) + b"{")
    a.close()
    with pytest.raises(protocol.ProtocolError, match="closed the channel"):
        protocol.receive(b, Reply)


def test_cpu_shared_memory_is_seen_by_another_process():
    """The trusted side writes a memfd-backed tensor; a child maps the descriptor it inherited
    (as the runner does after receiving it), doubles the values in place, and the trusted
    side sees the change."""
    buffer = SharedBuffer(0, 16, "cpu")
    view = buffer.view(torch.float32, [4])
    view.copy_(torch.arange(4, dtype=torch.float32))
    child = textwrap.dedent(
        f"""
        import torch
        from forge.evaluator.shared import MappedBuffer
        mapped = MappedBuffer(16, "cpu", fd={buffer.fd})
        mapped.view(torch.float32, [4]).mul_(2)
        """
    )
    os.set_inheritable(buffer.fd, True)
    subprocess.run([sys.executable, "-c", child], check=True, pass_fds=(buffer.fd,), timeout=120)
    assert view.tolist() == [0.0, 2.0, 4.0, 6.0]
    buffer.release()


def test_a_mapped_view_never_reaches_past_its_buffer():
    buffer = SharedBuffer(1, 8, "cpu")
    mapped = MappedBuffer(8, "cpu", fd=os.dup(buffer.fd))
    with pytest.raises(RuntimeError):
        mapped.view(torch.float32, [4])  # 16 bytes asked of an 8-byte buffer
    buffer.release()


def test_deadlines_follow_the_backend_and_the_cap():
    gpu = limits_for(EvalConfig(device="cuda"), "import triton", "triton")
    inline = limits_for(EvalConfig(device="cuda"), "load_inline(...)", "cuda")
    capped = limits_for(EvalConfig(device="cuda", timeout_s=5), "load_inline(...)", "cuda")
    assert gpu.first_call_s <= 20 and gpu.call_s <= 10, "a hung kernel must cost under 30 s"
    assert inline.load_s > gpu.load_s
    assert inline.first_call_s == inline.load_s, "a load_inline build may be deferred to forward"
    assert max(capped.load_s, capped.first_call_s, capped.call_s) == 5
    job = EvalJob(
        device="cuda",
        backend="triton",
        problem_source="",
        candidate_source="",
        dtype="float32",
        atol=1e-4,
        rtol=1e-4,
        distributions=["normal"],
        input_sets=[InputSetSpec(name="a", constants={})],
        seeds=[1, 2, 3],
        timing_seed=4,
        kernel_names=["k"],
        trials=50,
        warmup=5,
        batch=10,
        verify_per_batch=2,
        baselines=["eager"],
        limits=gpu,
    )
    assert job_deadline(job) > gpu.load_s + gpu.first_call_s


def test_phases_reach_the_host_as_they_happen_and_stay_out_of_the_logs(forge_cache_dir):
    from forge.evaluator import evaluate, resolve_problem

    legit = Path(__file__).parent / "fixtures" / "legit" / "triton_softmax.py"
    seen: list[str] = []
    config = EvalConfig(device="cpu", cache_dir=forge_cache_dir)
    result = evaluate(resolve_problem("softmax"), legit.read_text(), config, on_phase=seen.append)
    assert result.status.value == "correct", result.reasons
    assert seen == ["compile/load", "correctness on 'tiny'", "correctness on 'odd'"]
    assert "FORGE-PHASE" not in result.stderr


def shared_mappings(pid: int | str) -> set[str]:
    """The memfd buffers of an evaluation (`forge-<id>`) that process `pid` maps."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split("/memfd:")[1].split()[0] for line in lines if "/memfd:forge-" in line}


class PhaseProbe(io.RawIOBase):
    """Stands for the trusted process's stderr, where it announces each phase to the host; calls
    `sample(phase)` as each announcement is written."""

    def __init__(self, sample):
        self.sample = sample

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        line = bytes(data)
        if line.startswith(protocol.PHASE_MARK):
            self.sample(line[len(protocol.PHASE_MARK) :].decode().strip())
        return len(line)


def test_an_input_sets_buffers_are_freed_in_both_processes_before_the_next(monkeypatch):
    """An evaluation run in this process with its real runner: as it announces the next input
    set, the buffers of the sets before are freed here and no longer mapped by the runner."""
    from forge.evaluator import resolve_problem
    from forge.evaluator.host import build_job
    from forge.evaluator.static import check_source
    from forge.evaluator.trusted import Evaluation

    control = SharedBuffer(99, 8, "cpu")
    assert "forge-99" in shared_mappings("self"), "the probe sees a mapped buffer"
    control.release()
    assert "forge-99" not in shared_mappings("self")

    problem = resolve_problem("softmax")
    source = (Path(__file__).parent / "fixtures" / "legit" / "triton_softmax.py").read_text()
    kernels = check_source(source, None, None, device="cpu").kernel_names
    job = build_job(
        problem, source, EvalConfig(device="cpu"), "triton", kernels, secrets.randbits(62)
    )
    evaluation = Evaluation(job)
    before = shared_mappings("self")
    seen: dict[str, tuple] = {}

    def sample(phase: str) -> None:
        seen[phase] = (
            evaluation.next_id,
            [b.id for b in evaluation.buffers],
            shared_mappings("self") - before,
            shared_mappings(evaluation.runner.proc.pid),
        )

    work = Path(tempfile.mkdtemp(prefix="forge-test-release-"))
    os.chmod(work, 0o755)  # reachable by the runner's uid 65534 when the tests run as root
    monkeypatch.chdir(work)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(work / "cache" / "triton"))
    with monkeypatch.context() as stderr:
        stderr.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(PhaseProbe(sample))))
        try:
            report = evaluation.run()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    assert report.status == "correct", report.reasons
    assert list(seen) == ["compile/load", "correctness on 'tiny'", "correctness on 'odd'"]
    shared_for_tiny, live, trusted_maps, runner_maps = seen["correctness on 'odd'"]
    assert shared_for_tiny > 0
    assert live == [] and trusted_maps == set() and runner_maps == set()
    assert evaluation.buffers == []
