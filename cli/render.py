"""Readable summaries of an EvalResult (used by `forge eval` and `forge show`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from forge.evaluator.precision import STRICT
from forge.evaluator.result import EvalResult, Status

COLOURS = {
    Status.correct: "green",
    Status.compiled: "cyan",
    Status.incorrect: "red",
    Status.rejected: "magenta",
}


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def _precision(console: Console, r: EvalResult) -> str:
    """Print what the precision policy allowed, what was detected and the tolerances it gave;
    return the label that goes next to the speedups."""
    p = r.precision
    if p is None:
        return ""
    where = f" by {', '.join(p.inspected)}" if p.inspected else ""
    line = f"precision: {p.label()}{where}; allowed {', '.join(p.allowed)}"
    if p.not_inspected:
        line += f"; code not found for {', '.join(p.not_inspected)}"
    if p.note:
        line += f"; {p.note}"
    console.print(line, highlight=False, markup=False)
    error = (
        "rounding error against its float64 run"
        if p.policy == STRICT
        else f"error under {p.policy}"
    )
    for t in p.tolerances:
        span = f"{t.atol_min:.3g}-{t.atol:.3g}" if t.atol_min != t.atol else f"{t.atol:.3g}"
        console.print(
            f"  tolerance on '{t.input_set}': atol {span} over {t.comparisons} comparisons "
            f"(x{p.safety:g} the reference's own {error} on the same inputs, at most "
            f"{t.reference_error:.3g}), rtol {t.rtol:.3g}",
            highlight=False,
            markup=False,
        )
    for k in p.kernels:
        console.print(
            f"  {k.kernel[:60]}: {', '.join(k.formats)} ({k.source}: {'; '.join(k.evidence[:2])})",
            highlight=False,
            markup=False,
        )
    return f" (precision {p.label()})"


def render_result(console: Console, r: EvalResult) -> None:
    colour = COLOURS.get(r.status, "yellow")
    env = r.environment
    where = env.gpu_name or env.device
    console.print(
        f"[bold {colour}]{r.status.value}[/]  {r.problem} ({r.backend}) on {where}", highlight=False
    )
    for reason in r.reasons:
        console.print(f"  - {reason}", highlight=False)
    for note in r.notes:
        console.print(f"  note: {note}", highlight=False, markup=False)
    if r.checks:
        by_set: dict[str, list] = {}
        for c in r.checks:
            by_set.setdefault(c.input_set, []).append(c)
        table = Table(
            "input set", "checks", "passed", "max abs err", "max rel err", title="correctness"
        )
        for name, checks in by_set.items():
            passed = sum(c.passed for c in checks)
            table.add_row(
                name,
                str(len(checks)),
                f"{passed}/{len(checks)}",
                f"{max(c.max_abs_error for c in checks):.2e}",
                f"{max(c.max_rel_error for c in checks):.2e}",
            )
        console.print(table)
    precision = _precision(console, r)
    if r.timings:
        table = Table(
            "input set",
            "candidate ms (p20-p80)",
            "eager ms",
            "compile ms",
            "vs eager",
            "vs compile",
            "roofline",
            "CV",
            "host launch",
            title="device time per call (median of interleaved calls; host launch overhead apart)"
            + (f", baselines under precision {r.precision.policy}" if r.precision else ""),
        )
        for t in r.timings:
            table.add_row(
                t.input_set,
                f"{t.candidate.median_ms:.4f} ({t.candidate.p20_ms:.4f}-{t.candidate.p80_ms:.4f})",
                f"{t.eager.median_ms:.4f}" if t.eager else "-",
                f"{t.compiled.median_ms:.4f}" if t.compiled else "-",
                _x(t.speedup_vs_eager),
                _x(t.speedup_vs_compile),
                f"{t.roofline_fraction:.0%}" if t.roofline_fraction else "-",
                f"{t.candidate.cv:.1%}",
                f"{t.candidate.host_median_ms:.4f}",
            )
        console.print(table)
        console.print(
            f"speedup at {', '.join(r.target_sets) or 'the target set'}: {_x(r.speedup_vs_eager)} vs eager, "
            f"{_x(r.speedup_vs_compile)} vs torch.compile{precision}",
            highlight=False,
        )
    elif r.status is Status.correct:
        console.print("timings: not meaningful on this device (correctness only)")
    if r.suspicious:
        console.print(
            "[bold yellow]suspicious:[/] " + "; ".join(r.suspicious_reasons), highlight=False
        )
    elif r.reverified:
        console.print("[bold]re-verified:[/] " + "; ".join(r.suspicious_reasons), highlight=False)
    if r.profile and r.profile.kernels:
        table = Table(
            "kernel",
            "us",
            "regs",
            "spills",
            "smem B",
            "DRAM %",
            "SM %",
            title=f"profile ({r.profile.tool}, set '{r.profile.input_set}')",
        )
        for k in r.profile.kernels[:8]:
            table.add_row(
                k.name[:60],
                f"{k.duration_us:.1f}" if k.duration_us is not None else "-",
                str(k.registers_per_thread or "-"),
                str(k.spills if k.spills is not None else "-"),
                str(k.shared_mem_bytes if k.shared_mem_bytes is not None else "-"),
                f"{k.metrics['dram__throughput.avg.pct_of_peak_sustained_elapsed']:.0f}"
                if "dram__throughput.avg.pct_of_peak_sustained_elapsed" in k.metrics
                else "-",
                f"{k.metrics['sm__throughput.avg.pct_of_peak_sustained_elapsed']:.0f}"
                if "sm__throughput.avg.pct_of_peak_sustained_elapsed" in k.metrics
                else "-",
            )
        console.print(table)
        if r.profile.note:
            console.print(f"profile note: {r.profile.note}", highlight=False)
    p = r.phase_seconds
    console.print(
        f"seconds: static {p.static:.2f}, startup {p.startup:.2f}, compile {p.compile:.2f}, correctness {p.correctness:.2f}, "
        f"timing {p.timing:.2f}, profiling {p.profiling:.2f}, total {p.total:.2f}",
        highlight=False,
    )
    if r.compile_log and r.status is Status.compile_error:
        console.print("[bold]compile log (tail):[/]")
        console.print(r.compile_log[-2000:], highlight=False, markup=False)
