"""`forge profile-model` and `forge optimize-model` on the CPU: real torch.profiler and torch.fx
on small models (tests/fixtures/models), problem files that the batch reads, a real batch with a
scripted LLM (its answer is a PyTorch fallback, rejected by the static check), and the four
end-to-end configurations with a library of entries verified on `cpu` (Triton under
TRITON_INTERPRET=1) in $FORGE_HOME/library. CPU timings mean nothing for a GPU: the tests check
the structure and what was served, never a speedup."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_batch_cli import FALLBACK, coder, script
from test_library_helpers import cpu_library, interpreted_runtime
from typer.testing import CliRunner

from forge.cli.main import app
from forge.evaluator.problem import load_problem, resolve_problem
from forge.kernels_library import adapters
from forge.model_level.endtoend import ConfigResult, EndToEnd
from forge.model_level.problems import catalogue_problem

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="CPU-dispatch tests run on a host without a GPU (TRITON_INTERPRET)",
)

MODELS = Path(__file__).parent / "fixtures" / "models"
TINY = MODELS / "tiny_block.py"
SERVED = MODELS / "served_block.py"


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    with interpreted_runtime(None):
        yield


class Forge:
    def __init__(self, home: Path):
        self.home = home
        self.runner = CliRunner(
            env={"FORGE_HOME": str(home), "FORGE_DB_URL": None, "FORGE_MODEL": None}
        )

    def __call__(self, *args):
        return self.runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    return Forge(tmp_path / "home")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_model_ranks_operators_and_graph_items(forge):
    result = forge("profile-model", TINY, "--device", "cpu", "--json", "--iters", 2)
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout[result.stdout.index("{") :])
    assert profile["traced"] and profile["device"] == "cpu" and profile["dtype"] == "float32"
    softmax = [r for r in profile["operators"] if r["op"] == "aten::_softmax"]
    assert softmax[0]["shapes"][0] == [2, 2, 8, 8] and softmax[0]["calls_per_forward"] == 1
    times = [r["ms_per_forward"] for r in profile["operators"]]
    assert times == sorted(times, reverse=True) and all(t >= 0 for t in times)
    items = {(i["name"], tuple(i["nodes"])): i for i in profile["items"]}
    # chains: a contraction and its elementwise tail, the residual add included
    assert items[("fc2+add", ("fc2", "add_1"))]["kind"] == "chain"
    assert items[("proj+add", ("proj", "add"))]["kind"] == "chain"
    assert items[("matmul+mul", ("matmul", "mul"))]["kind"] == "chain"
    # library operators stand alone; gelu right after fc1 is noted as fusible into it
    assert items[("gelu", ("act",))]["fusible_into"] == "fc1"
    assert items[("layer_norm", ("ln1",))]["library_op"] == "layer_norm"
    assert items[("softmax", ("softmax",))]["shape"] == [2, 2, 8, 8]
    assert {i["compile_note"] for i in profile["items"]} == {"not checked"}


def test_profile_model_table(forge):
    result = forge("profile-model", TINY, "--device", "cpu", "--iters", 1)
    assert result.exit_code == 0, result.output
    assert "ATen operators by self CPU time" in result.stdout
    assert "fusible into fc1" in result.stdout and "not GPU figures" in result.stdout


def test_bad_model_files_are_one_line_errors(forge, tmp_path):
    missing = forge("profile-model", tmp_path / "nope.py", "--device", "cpu")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "half.py").write_text("import torch\nclass Model(torch.nn.Module):\n    pass\n")
    half = forge("profile-model", tmp_path / "half.py", "--device", "cpu")
    assert half.exit_code == 2 and "get_inputs, get_init_inputs" in half.output
    gpu = forge("profile-model", TINY)
    assert gpu.exit_code == 2 and "--device cpu" in gpu.output
    dtype = forge("profile-model", TINY, "--device", "cpu", "--dtype", "int8")
    assert dtype.exit_code == 2 and "'int8' is not one of" in dtype.output


def test_problem_files_keep_the_catalogue_model_and_replay_chains(forge, tmp_path):
    out = tmp_path / "out"
    result = forge(
        "optimize-model", TINY, "--device", "cpu", "--top", 30, "--skip-batch", "--out", out,
        "--compiler", "aot_eager", "--iters", 1, "--repeats", 1, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    files = sorted((out / "problems").glob("*.py"))
    assert [Path(p["file"]).name for p in report["problems"]] == [f.name for f in files]
    # every item of the ranking (CPU timings order them differently from run to run)
    assert len(files) == 14 and report["batch"] is None
    served = {p["problem"] for p in report["problems"] if p["served_from_aten"]}
    assert served == {"softmax", "layer_norm", "gelu"}
    for entry in report["problems"]:
        problem = resolve_problem(entry["file"])
        assert problem.target_sets == ["model"] and problem.sets_for("cpu")
        if entry["served_from_aten"]:
            # the catalogue's Model: a promoted winner is dispatched from ATen
            assert adapters.aten_ineligibility(problem.name, problem.source) is None
            model_set = next(s for s in problem.input_sets if s.name == "model")
            shapes = {
                "softmax": {"batch_size": 32, "dim": 8},
                "layer_norm": {"batch_size": 16, "hidden": 32},
                "gelu": {"batch_size": 16, "dim": 128},
            }
            assert model_set.constants == {**problem.constants, **shapes[problem.name]}
    # one layer_norm problem for both LayerNorms (same shape)
    assert [p["problem"] for p in report["problems"]].count("layer_norm") == 1
    chain = next(p for p in report["problems"] if p["item"] == "fc2+add")
    generated = _module(Path(chain["file"]), "generated_chain")
    source = _module(TINY, "tiny_source")
    torch.manual_seed(0)
    model = source.Model(*source.get_init_inputs()).eval()
    replay = generated.Model()
    replay.m0.load_state_dict(model.fc2.state_dict())
    x0, x1 = generated.get_inputs()
    torch.testing.assert_close(replay(x0, x1), x1 + model.fc2(x0))
    assert resolve_problem(chain["file"]).name == "fc2_add"


def test_a_catalogue_problem_counts_the_bytes_of_its_dtype():
    shape = {"batch_size": 64, "dim": 1000}
    counted = {}
    for dtype in ("float32", "bfloat16"):
        source = catalogue_problem("softmax", shape, dtype, "a test model")
        assert load_problem(source, "softmax").dtype == dtype
        namespace: dict = {}
        exec(compile(source, f"softmax_{dtype}.py", "exec"), namespace)  # noqa: S102 (ours)
        counted[dtype] = namespace["forge_bytes"](**shape)
    assert counted == {"float32": 2 * 4 * 64 * 1000, "bfloat16": 2 * 2 * 64 * 1000}


def cnn_end_to_end(meaningful: bool = True, failed: str = "") -> EndToEnd:
    """The small CNN's figures on the H200 (docs/benchmarks.md, 2026-12-02)."""
    medians = {"eager": 2.849, "eager+library": 2.518, "compile": 1.521, "compile+library": 2.034}
    configs = [
        ConfigResult(config, median_ms=ms, error="boom" if config == failed else "")
        for config, ms in medians.items()
    ]
    return EndToEnd(
        "cuda", "float32", "CUDA events", meaningful, 10, 5, "inductor", {}, configs, []
    )


def test_the_end_to_end_figures_say_where_the_library_helps_and_where_it_costs():
    assert cnn_end_to_end().verdicts() == [
        "with eager: serve the library (2.518 ms per forward with it, 2.849 ms without: 1.131x)",
        "with compile: leave the library off (2.034 ms per forward with it, 1.521 ms without: 0.748x)",
    ]
    assert cnn_end_to_end().as_dict()["verdicts"] == cnn_end_to_end().verdicts()
    assert cnn_end_to_end(meaningful=False).verdicts() == []
    assert [v.split(":")[0] for v in cnn_end_to_end(failed="compile+library").verdicts()] == [
        "with eager"
    ]


def test_optimize_model_runs_the_batch_and_measures_with_the_library(forge, tmp_path):
    cpu_library(forge.home / "library")
    out = tmp_path / "served"
    model = script(tmp_path, "fallback", [coder(FALLBACK, "C0")])
    result = forge(
        "optimize-model", SERVED, "--device", "cpu", "--top", 3, "--only-servable", "--out", out,
        "--model", model, "--rounds", 1, "--compiler", "aot_eager", "--iters", 2, "--repeats", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(p["problem"] for p in report["problems"]) == ["gelu", "layer_norm", "softmax"]
    assert {n["item"] for n in report["not_written"]} >= {"fc"}  # --only-servable
    batch = report["batch"]
    assert batch["status"] == "finished" and len(batch["items"]) == 3
    # the scripted answer is a PyTorch fallback: nothing verified, nothing promoted
    assert all(
        i["library_entry_id"] is None and "no correct, non-suspicious candidate" in i["promotion"]
        for i in batch["items"]
    ), batch
    configs = {c["config"]: c for c in report["end_to_end"]["configs"]}
    assert list(configs) == ["eager", "eager+library", "compile", "compile+library"]
    assert report["end_to_end"]["meaningful"] is False
    assert configs["eager+library"]["library_calls"] == {"layer_norm": 1, "gelu": 1, "softmax": 1}
    assert configs["compile+library"]["library_calls"] == {"layer_norm": 1, "gelu": 1, "softmax": 1}
    assert sorted(d["op"] for d in configs["compile+library"]["compiled_custom_ops"]) == [
        "gelu",
        "layer_norm",
        "softmax",
    ]
    assert configs["eager"]["library_calls"] == {} and configs["compile"]["library_calls"] == {}
    for name in ("eager+library", "compile", "compile+library"):
        assert configs[name]["max_abs_diff"] < 1e-4, configs[name]
        assert configs[name]["median_ms"] > 0
    assert {c["op"] for c in report["end_to_end"]["contributions"]} == {
        "layer_norm",
        "gelu",
        "softmax",
    }
    assert "not GPU figures" in result.stdout and "forge batch" in result.stdout


def test_optimize_model_refuses_a_used_folder(forge, tmp_path):
    problems = tmp_path / "used" / "problems"
    problems.mkdir(parents=True)
    (problems / "01_x.py").write_text("# earlier\n")
    result = forge("optimize-model", TINY, "--device", "cpu", "--out", tmp_path / "used")
    assert result.exit_code == 2 and "already holds problem files" in result.output
