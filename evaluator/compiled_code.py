"""The candidate's compiled GPU code, read by the trusted process, and the formats it uses.

The trusted process never runs candidate code, so it cannot recompile a Triton kernel (that
needs the executed module, its constexprs and the autotuner's choice); and it does not take the
code the runner could send (`CompiledKernel.asm` in a reply is whatever the runner says).
It reads the files the compilers wrote into the runner's cache directory, which it created:

- Triton: `<cache>/triton/<hash>/<kernel>.ptx` (or the `.cubin` through `cuobjdump -sass`).
  An entry counts when its kernel name is one of the candidate's and either it was written
  during this evaluation and its PTX names this evaluation's candidate file (`.file`), or the
  runner named its hash (a cache hit of an earlier evaluation of the same kernel).
- CUDA (`load_inline` modules, cupy cubins): `.so`/`.cubin`/`.ptx` files under the runner's
  cache written during this evaluation, or extension modules the runner says it loaded,
  disassembled with `cuobjdump -ptx` / `-sass`; functions are matched to the candidate's
  kernel names (plain or C++-mangled).

A runner that lies can only hide a kernel compiled before this evaluation; the Nsight Compute
tensor-path counters (`ncu_uses`) see every kernel the profiled call ran, from outside.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from forge.evaluator import isa
from forge.evaluator.profiling import NCU_PRECISION_METRICS
from forge.evaluator.result import KernelPrecision

CUOBJDUMP_SECONDS = 60.0
_PTX_FILE = re.compile(r'^\s*\.file\s+\d+\s+"([^"]+)"', re.MULTILINE)


@dataclass
class Inspection:
    kernels: list[KernelPrecision] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    """Candidate kernel names whose compiled code was read."""
    sources: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def cuobjdump_path() -> str | None:
    """cuobjdump from the PATH, else the one Triton ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else None


def candidate_kernel(symbol: str, names: list[str]) -> str:
    """The candidate kernel `symbol` is (plain, or C++-mangled `_Z..12softmax_rows...`), or ''."""
    for name in names:
        if symbol == name or re.search(rf"(?<!\d){len(name)}{re.escape(name)}", symbol):
            return name
    return ""


def _merge(inspection: Inspection, uses: list[isa.Use], kernel: str, source: str) -> None:
    inspection.found.add(kernel)
    inspection.sources.add(source)
    if not uses:
        return
    entry = next((k for k in inspection.kernels if k.kernel == kernel and k.source == source), None)
    if entry is None:
        entry = KernelPrecision(kernel=kernel, formats=[], source=source)
        inspection.kernels.append(entry)
    for use in uses:
        if use.format not in entry.formats:
            entry.formats.append(use.format)
        if (line := use.describe()) not in entry.evidence:
            entry.evidence.append(line)


def kernels_from(uses: list[isa.Use], source: str) -> list[KernelPrecision]:
    """One `KernelPrecision` per kernel of scanner output read from `source` (PTX, SASS)."""
    inspection = Inspection()
    for kernel in dict.fromkeys(u.kernel for u in uses):
        _merge(inspection, [u for u in uses if u.kernel == kernel], kernel, source)
    return inspection.kernels


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def triton_cache_dirs(kernel_hash: str) -> list[str]:
    """The cache directory names a compiled Triton kernel's `hash` (hex SHA-256) may have:
    Triton 3.2 and later name the directory by the hash's base32 form, earlier ones by the hex
    itself. A kernel found only by its name's hash is inspected even when a cache hit left its
    files older than the evaluation."""
    if not re.fullmatch(r"[0-9a-f]{64}", kernel_hash):
        return [kernel_hash] if re.fullmatch(r"[\w-]+", kernel_hash) else []
    base32 = base64.b32encode(bytes.fromhex(kernel_hash)).decode().rstrip("=")
    return [base32, kernel_hash]


def _triton(
    cache: Path,
    names: list[str],
    named_hashes: list[str],
    since: float,
    candidate_file: str,
    into: Inspection,
) -> None:
    if not cache.is_dir():
        return
    named = {d for h in named_hashes for d in triton_cache_dirs(h)}
    entries = {cache / d for d in named if (cache / d).is_dir()}
    entries |= {d for d in cache.iterdir() if d.is_dir() and _written_since(d, since)}
    for entry in sorted(entries):
        for meta in entry.glob("*.json"):
            kernel = meta.stem
            if kernel.startswith("__grp__") or kernel not in names:
                continue
            ptx = entry / f"{kernel}.ptx"
            cubin = entry / f"{kernel}.cubin"
            if ptx.is_file():
                text = ptx.read_text(errors="replace")
                if entry.name not in named and candidate_file not in _PTX_FILE.findall(text):
                    continue  # written meanwhile by another evaluation's kernel of that name
                uses = [u for u in isa.scan_ptx(text) if u.kernel == kernel]
                _merge(into, uses, kernel, "PTX")
            elif cubin.is_file() and entry.name in named:
                sass = _cuobjdump(cubin, "-sass", into)
                if sass is not None:
                    _merge(
                        into, [u for u in isa.scan_sass(sass) if u.kernel == kernel], kernel, "SASS"
                    )


def _cuobjdump(path: Path, flag: str, into: Inspection) -> str | None:
    tool = cuobjdump_path()
    if tool is None:
        if "cuobjdump not found" not in into.notes:
            into.notes.append("cuobjdump not found")
        return None
    try:
        done = subprocess.run(
            [tool, flag, str(path)], capture_output=True, text=True, timeout=CUOBJDUMP_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        into.notes.append(f"cuobjdump {flag} {path.name}: {exc}")
        return None
    # no embedded PTX (or no SASS) is an exit code 255 with a message: nothing to read
    return done.stdout if done.returncode == 0 else ""


def _modules(
    cache_root: Path, names: list[str], named_modules: list[str], since: float, into: Inspection
) -> None:
    roots = [cache_root / "torch_extensions", cache_root / "cupy"]
    files = {
        f
        for root in roots
        if root.is_dir()
        for pattern in ("*.so", "*.cubin", "*.ptx")
        for f in root.rglob(pattern)
        if _written_since(f, since)
    }
    resolved_root = cache_root.resolve()
    for named in named_modules:
        path = Path(named).resolve()
        if path.is_file() and path.is_relative_to(resolved_root):
            files.add(path)
    for path in sorted(files):
        if path.suffix == ".ptx":
            texts = [("PTX", path.read_text(errors="replace"), isa.scan_ptx)]
        else:
            texts = [
                ("PTX", _cuobjdump(path, "-ptx", into), isa.scan_ptx),
                ("SASS", _cuobjdump(path, "-sass", into), isa.scan_sass),
            ]
        for source, text, scan in texts:
            if not text:
                continue
            symbols = _symbols(text, source)
            uses = scan(text)
            for symbol in symbols:
                kernel = candidate_kernel(symbol, names)
                if kernel:
                    _merge(into, [u for u in uses if u.kernel == symbol], kernel, source)


def _symbols(text: str, source: str) -> list[str]:
    pattern = isa.PTX_ENTRY if source == "PTX" else isa.SASS_FUNCTION
    return [m.group(1) for m in pattern.finditer(text)]


def inspect(
    cache_root: Path,
    kernel_names: list[str],
    named_hashes: list[str],
    named_modules: list[str],
    since: float,
    candidate_file: str,
) -> Inspection:
    """What the candidate's kernels compiled to, from the runner's compiler cache `cache_root`."""
    inspection = Inspection()
    _triton(cache_root / "triton", kernel_names, named_hashes, since, candidate_file, inspection)
    _modules(cache_root, kernel_names, named_modules, since, inspection)
    return inspection


def ncu_uses(rows: list[dict]) -> list[KernelPrecision]:
    """Kernels of the profiled call whose tensor-path counters show non-fp32 math (every kernel
    in the profiled range: the candidate's and the library calls it made)."""
    found: dict[str, KernelPrecision] = {}
    for row in rows:
        for metric, fmt in NCU_PRECISION_METRICS.items():
            ops = row["metrics"].get(metric)
            if not ops:
                continue
            entry = found.setdefault(
                row["name"],
                KernelPrecision(kernel=row["name"], formats=[], source="Nsight Compute"),
            )
            if fmt not in entry.formats:
                entry.formats.append(fmt)
            entry.evidence.append(f"{metric} = {ops:.4g}")
    return list(found.values())
