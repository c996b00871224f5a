"""The evaluation protocol, run inside the sandbox worker (see EXPLOITS.md for each step's why).

Order per input set and seed: candidate first, then the reference on clones, then the candidate
again after the reference's freed memory was poisoned, then the reference again. Expected
outputs exist only while no candidate code runs, and are NaN-filled before they are freed.
The worker returns raw observations; the host turns them into an `EvalResult` (statistics are
computed there, out of the candidate's reach).
"""

from __future__ import annotations

import importlib.util
import os
import random
import secrets
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from forge.evaluator import compare as cmp
from forge.evaluator import profiling, timing
from forge.evaluator.integrity import IdentitySnapshot
from forge.evaluator.monitor import AtenMonitor, KernelCodeWatch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class CandidateFailure(Exception):
    """Candidate code raised or misbehaved; carries the verdict it earns."""

    def __init__(self, status: str, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


def _load_module(name: str, source: str, workdir: Path):
    path = workdir / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _clone(inputs: list) -> list:
    return [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]


def _poison(out: object) -> None:
    for t in cmp.flatten(out):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(-1)


class Harness:
    def __init__(self, job: dict):
        self.job = job
        self.device: str = job["device"]
        self.dtype = DTYPES[job["dtype"]]
        self.atol, self.rtol = job["atol"], job["rtol"]
        self.workdir = Path(os.getcwd())
        self.out: dict = {
            "checks": [],
            "reasons": [],
            "phase_seconds": {},
            "timings": [],
            "kernels_seen": [],
            "triton_kernels": [],
            "foreign_ops": [],
            "degenerate": [],
            "notes": [],
        }
        self.identity = IdentitySnapshot(self)
        self.threads_before = threading.active_count()
        self.rng = random.Random(secrets.randbits(64))

    # ---- steps -----------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = self.job.get("worker_received", time.perf_counter())
        self.setup()
        self.out["phase_seconds"]["prepare"] = self.job.get("worker_prepare_s", 0.0)
        self.out["phase_seconds"]["startup"] = time.perf_counter() - t0
        try:
            self.load()
            self.verify()
            if self.device == "cuda" and self.job.get("time", True):
                self.time_all()
            if self.device == "cuda" and self.job.get("profile", True):
                self.collect_triton_metadata()
            self.out["status"] = "incorrect" if self._any_failed() else "correct"
        except CandidateFailure as failure:
            self.out["status"] = failure.status
            self.out["reasons"].insert(0, failure.reason)
            self.out["stderr_detail"] = failure.detail
        self.out["phase_seconds"]["worker_total"] = time.perf_counter() - t0
        return self.out

    def setup(self) -> None:
        if self.device == "cuda":
            if not torch.cuda.is_available():
                torch.cuda.init()  # raises with the driver's reason
                raise RuntimeError("--device cuda: no CUDA GPU is visible to the worker")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
            props = torch.cuda.get_device_properties(0)
            self.out["environment"] = {
                "gpu_name": props.name,
                "arch": f"sm_{props.major}{props.minor}",
                "sm_count": props.multi_processor_count,
                "l2_bytes": props.L2_cache_size,
                "cuda_version": torch.version.cuda or "",
            }
            self.flush_buffer = torch.empty(2 * props.L2_cache_size, dtype=torch.int8, device="cuda")
            timing.reset_persisting_l2()  # loads cudart now, before the identity snapshot
        else:
            self.out["environment"] = {"gpu_name": "", "arch": "cpu", "cuda_version": ""}
        self.out["environment"]["torch_version"] = torch.__version__
        self.out["environment"]["triton_version"] = _triton_version()

    def load(self) -> None:
        t0 = time.perf_counter()
        self.problem = _load_module("forge_problem", self.job["problem_source"], self.workdir)
        with AtenMonitor():  # its first use rebinds torch.manual_seed: settle that before the snapshot
            torch.empty(1).fill_(0)
        self.identity.take()
        try:
            self.candidate = _load_module("forge_candidate", self.job["candidate_source"], self.workdir)
        except Exception as exc:  # noqa: BLE001 - any failure to import candidate code is its verdict
            raise CandidateFailure(_failure_status(exc), f"candidate failed to load: {_short(exc)}", traceback.format_exc()) from exc
        self._after_candidate_code("import")
        if not hasattr(self.candidate, "ModelNew"):
            raise CandidateFailure("rejected", "candidate defines no ModelNew")
        self.out["work"] = self.work_per_set()
        self.out["phase_seconds"]["compile"] = time.perf_counter() - t0

    def verify(self) -> None:
        t0 = time.perf_counter()
        compile_s = 0.0
        for index, input_set in enumerate(self.job["input_sets"]):
            ref, cand = self.build_models(input_set)
            for seed_index, seed in enumerate(self.job["seeds"]):
                inputs = self.make_inputs(input_set, seed, seed_index)
                first_call = index == 0 and seed_index == 0
                c0 = time.perf_counter()
                self.check_once(input_set["name"], seed_index, ref, cand, inputs, watch=seed_index == 0)
                if first_call:
                    compile_s = time.perf_counter() - c0
        self.out["phase_seconds"]["compile"] += compile_s
        self.out["phase_seconds"]["correctness"] = time.perf_counter() - t0 - compile_s

    def work_per_set(self) -> dict:
        flops, moved = getattr(self.problem, "forge_flops", None), getattr(self.problem, "forge_bytes", None)
        if flops is None or moved is None:
            return {}
        return {s["name"]: {"flops": float(flops(**s["constants"])), "bytes": float(moved(**s["constants"]))} for s in self.job["input_sets"]}

    # ---- building blocks ---------------------------------------------------------------------
    def set_constants(self, input_set: dict) -> None:
        for key, value in input_set["constants"].items():
            setattr(self.problem, key, value)

    def build_models(self, input_set: dict):
        self.set_constants(input_set)
        init = self.problem.get_init_inputs()
        init_seed = secrets.randbits(62)
        torch.manual_seed(init_seed)
        ref = self.problem.Model(*init)
        torch.manual_seed(init_seed)
        try:
            cand = self.candidate.ModelNew(*init)
        except Exception as exc:  # noqa: BLE001 - a constructor error is the candidate's verdict
            raise CandidateFailure(_failure_status(exc), f"ModelNew(*get_init_inputs()) failed: {_short(exc)}", traceback.format_exc()) from exc
        self._after_candidate_code("ModelNew()")
        _forget_seed()
        ref_state, cand_state = ref.state_dict(), cand.state_dict()
        if ref_state and {k: v.shape for k, v in ref_state.items()} == {k: v.shape for k, v in cand_state.items()}:
            cand.load_state_dict(ref_state)
        elif ref_state:
            self.out["notes"].append("ModelNew's parameters differ in names/shapes from Model's: not copied")
        ref = ref.to(self.device).eval()
        cand = cand.to(self.device).eval()
        if self.dtype != torch.float32:
            ref, cand = ref.to(self.dtype), cand.to(self.dtype)
        return ref, cand

    def make_inputs(self, input_set: dict, seed: int, seed_index: int) -> list:
        self.set_constants(input_set)
        distributions = self.job["distributions"]
        style = distributions[seed_index % len(distributions)]
        gen_device = "cuda" if self.device == "cuda" else "cpu"
        torch.manual_seed(seed)
        with torch.device(gen_device):
            raw = list(self.problem.get_inputs())
        _forget_seed()
        inputs = []
        for x in raw:
            if isinstance(x, torch.Tensor):
                x = x.to(gen_device)
                if x.is_floating_point():
                    x = _distribute(x.to(self.dtype), style, seed)
                x = x.contiguous()
            inputs.append(x)
        return inputs

    def call_candidate(self, cand, inputs: list, what: str):
        with torch.no_grad():
            out = self.guarded(cand, what, sync=True)(*inputs)
        self._after_candidate_code(what)
        return out

    def guarded(self, cand, what: str, sync: bool = False):
        """`cand` as a plain callable whose errors (those a device sync surfaces too, with
        `sync`) become the candidate's verdict."""

        def call(*args):
            try:
                out = cand(*args)
                if sync:
                    _sync(self.device)
                return out
            except Exception as exc:  # noqa: BLE001 - a kernel error is an observation for the Judge
                raise CandidateFailure(_failure_status(exc), f"{what}: {_short(exc)}", traceback.format_exc()) from exc

        return call

    def reference(self, ref, inputs: list):
        with torch.no_grad():
            out = ref(*_clone(inputs))
        _sync(self.device)
        return out

    def check_once(self, set_name: str, seed_index: int, ref, cand, inputs: list, watch: bool) -> None:
        pristine = _clone(inputs)
        self.poison_free_memory()
        if watch:
            out1 = self.watched_call(cand, inputs, set_name)
        else:
            out1 = self.monitored_call(cand, inputs, f"forward on '{set_name}'")
        self.assert_inputs_unchanged(inputs, pristine, set_name)
        expected = self.reference(ref, inputs)
        self.record(set_name, seed_index, "before_reference", out1, expected)
        if seed_index == 0:
            for t in cmp.flatten(expected):
                if reason := cmp.degenerate(t, self.atol, self.rtol):
                    self.out["degenerate"].append(f"input set '{set_name}': {reason}")
        _poison(expected)
        del expected
        self.poison_free_memory()
        out2 = self.monitored_call(cand, inputs, f"forward on '{set_name}' after the reference")
        self.assert_inputs_unchanged(inputs, pristine, set_name)
        expected = self.reference(ref, inputs)
        self.record(set_name, seed_index, "after_reference", out2, expected)
        _poison(expected)
        del expected
        self.record_agreement(set_name, seed_index, out1, out2)

    def record(self, set_name: str, seed_index: int, phase: str, out, expected) -> None:
        if err := cmp.structure_error(out, expected):
            raise CandidateFailure("incorrect", f"input set '{set_name}': {err}")
        for i, (o, e) in enumerate(zip(cmp.flatten(out), cmp.flatten(expected), strict=True)):
            result = cmp.compare(o, e, self.atol, self.rtol)
            self.out["checks"].append({"input_set": set_name, "seed_index": seed_index, "phase": phase, "output_index": i, **result})

    def record_agreement(self, set_name: str, seed_index: int, out1, out2) -> None:
        for i, (a, b) in enumerate(zip(cmp.flatten(out1), cmp.flatten(out2), strict=True)):
            result = cmp.compare(b, a, self.atol, self.rtol)
            bitwise = bool(torch.equal(a, b)) if result["passed"] else False
            self.out["checks"].append(
                {
                    "input_set": set_name,
                    "seed_index": seed_index,
                    "phase": "two_runs_agree",
                    "output_index": i,
                    **result,
                    "note": "bitwise identical" if bitwise else "runs differ",
                }
            )

    def assert_inputs_unchanged(self, inputs: list, pristine: list, set_name: str) -> None:
        for i, (x, y) in enumerate(zip(inputs, pristine, strict=True)):
            if isinstance(x, torch.Tensor) and not torch.equal(x, y):
                raise CandidateFailure("incorrect", f"input set '{set_name}': the candidate modified input {i}")

    def monitored_call(self, cand, inputs: list, what: str):
        """Every verified call runs under the ATen monitor, so a fallback to PyTorch on any call
        (not only the first) is caught."""
        monitor = AtenMonitor()
        with monitor:
            out = self.call_candidate(cand, inputs, what)
        self._reject_foreign_ops(monitor)
        return out

    def _reject_foreign_ops(self, monitor: AtenMonitor) -> None:
        if monitor.forbidden:
            self.out["foreign_ops"] = sorted(set(monitor.forbidden))
            raise CandidateFailure(
                "rejected", f"PyTorch computed part of the result: {', '.join(sorted(set(monitor.forbidden))[:6])} ran during forward"
            )

    def watched_call(self, cand, inputs: list, set_name: str):
        """The first call per input set: which ATen ops ran (PyTorch fallback) and proof that the
        candidate's own kernel ran (Triton interpreter frames on CPU, a profiler trace on GPU)."""
        names = self.job["kernel_names"]
        monitor = AtenMonitor()
        if self.device == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof, monitor:
                out = self.call_candidate(cand, inputs, f"forward on '{set_name}'")
            device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            seen = sorted({e.name for e in device_events})
            durations: dict[str, float] = {}
            for e in device_events:
                durations[e.name] = durations.get(e.name, 0.0) + e.device_time
            self.out["kernel_durations_us"], self.out["profiled_set"] = durations, set_name
            self.out["kernels_seen"] = sorted(set(self.out["kernels_seen"]) | set(seen))
            ran = [k for k in seen if profiling.kernel_base_name(k) in names]
        else:
            watch = KernelCodeWatch(self.candidate, names)
            with watch, monitor:
                out = self.call_candidate(cand, inputs, f"forward on '{set_name}'")
            ran = watch.ran
            self.out["kernels_seen"] = sorted(set(self.out["kernels_seen"]) | set(ran))
        self._reject_foreign_ops(monitor)
        if not ran:
            raise CandidateFailure(
                "rejected",
                f"the candidate's own kernel never ran on '{set_name}' (defined: {', '.join(names) or 'none'}; "
                f"traced: {', '.join(self.out['kernels_seen'][:6]) or 'nothing'})",
            )
        return out

    def poison_free_memory(self) -> None:
        """Fill every free block of the CUDA caching allocator with NaN bytes, so an output that
        reuses freed memory reads NaN instead of a previous answer."""
        if self.device != "cuda":
            return
        for segment in torch.cuda.memory_snapshot():
            address = segment["address"]
            for block in segment["blocks"]:
                if block["state"] == "inactive" and block["size"] > 0:
                    _byte_view(address, block["size"]).fill_(0xFF)
                address += block["size"]
        torch.cuda.synchronize()

    def _after_candidate_code(self, what: str) -> None:
        if changed := self.identity.changed():
            raise CandidateFailure("rejected", f"{what} tampered with {', '.join(changed[:5])}")
        if threading.active_count() > self.threads_before:
            raise CandidateFailure("rejected", f"{what} started a background thread")

    def _any_failed(self) -> bool:
        if self.out["degenerate"]:
            for d in self.out["degenerate"]:
                if f"problem cannot verify: {d}" not in self.out["reasons"]:
                    self.out["reasons"].append(f"problem cannot verify: {d}")
            return True
        failed = [c for c in self.out["checks"] if not c["passed"]]
        if failed:
            c = failed[0]
            where = f" at index {c['first_bad_index']}" if c["first_bad_index"] else ""
            reason = (
                f"mismatch on input set '{c['input_set']}' seed {c['seed_index']} ({c['phase']}): "
                f"{c['mismatches']}/{c['numel']} elements, max abs error {c['max_abs_error']:.3g}{where}"
            )
            if reason not in self.out["reasons"]:
                self.out["reasons"].insert(0, reason)
        return bool(failed)

    # ---- timing (GPU) -----------------------------------------------------------------------
    def time_all(self) -> None:
        if self._any_failed():
            return
        t0 = time.perf_counter()
        wanted = self.job.get("timing_sets") or [s["name"] for s in self.job["input_sets"]]
        for input_set in self.job["input_sets"]:
            if input_set["name"] in wanted:
                self.out["timings"].append(timing.time_input_set(self, input_set))
        self.out["phase_seconds"]["timing"] = time.perf_counter() - t0

    def collect_triton_metadata(self) -> None:
        self.out["triton_kernels"] = profiling.triton_kernel_metadata(self.candidate, self.job["kernel_names"])


def _forget_seed() -> None:
    """Reseed the global RNG from fresh entropy: `torch.initial_seed()` must not reveal the seed
    that produced the inputs or parameters (row 7)."""
    torch.manual_seed(secrets.randbits(62))


def _byte_view(address: int, size: int) -> torch.Tensor:
    class _Raw:
        __cuda_array_interface__ = {"shape": (size,), "typestr": "|u1", "data": (address, False), "version": 3}

    return torch.as_tensor(_Raw(), device="cuda")


def _distribute(x: torch.Tensor, style: str, seed: int) -> torch.Tensor:
    """Per-seed input styles: uniform-looking data lets cheats that use the mean pass (row 6)."""
    if style in ("normal", "as_given"):
        return x
    g = torch.Generator(device=x.device).manual_seed(seed ^ 0x5EED)
    if style == "heavy_tailed":
        scale = torch.exp(torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32))
        return (x.float() * scale).to(x.dtype)
    if style == "outliers":
        hit = torch.rand(x.shape, generator=g, device=x.device) < 1e-3
        sign = torch.where(torch.rand(x.shape, generator=g, device=x.device) < 0.5, -1.0, 1.0)
        return torch.where(hit, (sign * 50.0 * x.float().abs().clamp_min(1.0)).to(x.dtype), x)
    if style == "positive":
        return x.abs() + 1e-3
    raise ValueError(f"unknown input distribution {style!r}")


def _short(exc: BaseException) -> str:
    text = f"{exc.__class__.__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else exc.__class__.__name__


def _failure_status(exc: BaseException) -> str:
    name = exc.__class__.__name__
    text = str(exc)
    if isinstance(exc, SyntaxError) or "CompilationError" in name or "compil" in text.lower() or "nvcc" in text or "ninja" in text.lower():
        return "compile_error"
    return "runtime_error"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def run_evaluation(job: dict) -> dict:
    if job["device"] == "cpu" and job["backend"] == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
    return Harness(job).run()
