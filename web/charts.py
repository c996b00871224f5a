"""Charts as inline SVG, laid out here and drawn by `templates/_chart.html.j2`: no JavaScript.

A `Chart` holds pixel geometry only (ticks, lines, marks, horizontal reference rules); the
templates turn it into SVG elements, styled by CSS classes in `static/forge.css`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 720, 280
SMALL_WIDTH, SMALL_HEIGHT, SMALL_MARGIN_RIGHT = 560, 230, 24
"""The running-total charts, two side by side."""
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 68, 130, 14, 40
RULE_LABEL_GAP = 13
"""Reference-rule labels closer than this (pixels) are pushed apart."""
SPEEDUP_TICKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
TRAJECTORY_COLOURS = 6
"""Trajectories cycle through this many colour classes (`traj-0` ...)."""


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Line:
    css: str
    points: str
    """SVG polyline points, `x,y x,y ...`."""


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    css: str
    title: str
    href: str | None = None


@dataclass(frozen=True)
class Rule:
    css: str
    y: float
    label_y: float
    label: str


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    lines: list[Line] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    """(css class, name) of each series and rule."""
    width: int = WIDTH
    height: int = HEIGHT
    margin_right: int = MARGIN_RIGHT
    """Room right of the plot, for the labels of reference rules."""

    @property
    def left(self) -> int:
        return MARGIN_LEFT

    @property
    def top(self) -> int:
        return MARGIN_TOP

    @property
    def right(self) -> int:
        return self.width - self.margin_right

    @property
    def bottom(self) -> int:
        return self.height - MARGIN_BOTTOM


class Scale:
    """Data to pixels, linear or log2, on [lo, hi] -> [start, end]."""

    def __init__(self, lo: float, hi: float, start: float, end: float, log: bool = False):
        self.log = log
        self.lo, self.hi = (math.log2(lo), math.log2(hi)) if log else (lo, hi)
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        v = math.log2(value) if self.log else value
        return round(self.start + (v - self.lo) / (self.hi - self.lo) * (self.end - self.start), 1)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values spanning [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _speedup_label(value: float) -> str:
    return f"{value:.3g}×"


def _speedup_ticks(lo: float, hi: float) -> list[float]:
    ticks = [t for t in SPEEDUP_TICKS if lo <= t <= hi]
    if len(ticks) > 8:
        ticks = [t for t in ticks if math.log2(t).is_integer()]
    return ticks or [lo, hi]


def _spread(ys: list[float]) -> list[float]:
    """Label positions for rules at `ys` (sorted top to bottom), at least RULE_LABEL_GAP apart."""
    placed: list[float] = []
    for y in ys:
        placed.append(max(y, placed[-1] + RULE_LABEL_GAP) if placed else y)
    return placed


@dataclass(frozen=True)
class RoundPoint:
    """One evaluated candidate on the speedup chart."""

    round: int
    trajectory: int
    candidate_id: int
    speedup: float
    counts: bool
    """Correct and not suspicious: it may be the run's best."""


@dataclass(frozen=True)
class Reference:
    """A horizontal rule on the speedup chart (eager, torch.compile, the speed of light)."""

    css: str
    name: str
    speedup: float


def speedup_chart(points: list[RoundPoint], references: list[Reference]) -> Chart | None:
    """Speedup vs eager per round (each candidate a mark linking to it, the best so far a
    line), against reference rules such as eager (1x), torch.compile and the speed of light.
    None when nothing was timed."""
    if not points:
        return None
    values = [p.speedup for p in points] + [r.speedup for r in references] + [1.0]
    lo, hi = min(values) / 1.2, max(values) * 1.2
    last_round = max(p.round for p in points)
    chart = Chart(
        "Speedup per round",
        "round",
        "speedup vs eager (log scale)",
        x_ticks=[],
        y_ticks=[],
    )
    x = Scale(-0.5, last_round + 0.5, chart.left, chart.right)
    y = Scale(lo, hi, chart.bottom, chart.top, log=True)
    every = max(1, math.ceil((last_round + 1) / 16))
    chart.x_ticks = [Tick(x(r), str(r)) for r in range(0, last_round + 1, every)]
    chart.y_ticks = [Tick(y(v), _speedup_label(v)) for v in _speedup_ticks(lo, hi)]
    best: float | None = None
    steps: list[str] = []
    for r in range(last_round + 1):
        counted = [p.speedup for p in points if p.round == r and p.counts]
        if counted and (best is None or max(counted) > best):
            best = max(counted)
            steps.append(f"{x(r - 0.5)},{y(best)}")
        if best is not None:
            steps.append(f"{x(r + 0.5)},{y(best)}")
    if steps:
        chart.lines.append(Line("best", " ".join(steps)))
        chart.legend.append(("best", "best so far"))
    trajectories = sorted({p.trajectory for p in points})
    for p in points:
        css = f"traj-{p.trajectory % TRAJECTORY_COLOURS}" + ("" if p.counts else " uncounted")
        title = f"candidate {p.candidate_id}, round {p.round}: {_speedup_label(p.speedup)} vs eager"
        chart.marks.append(
            Mark(x(p.round), y(p.speedup), css, title, f"/candidates/{p.candidate_id}")
        )
    for t in trajectories:
        chart.legend.append((f"traj-{t % TRAJECTORY_COLOURS}", f"trajectory {t}"))
    rules = sorted([Reference("eager", "eager", 1.0), *references], key=lambda r: y(r.speedup))
    for rule, label_y in zip(rules, _spread([y(r.speedup) for r in rules]), strict=True):
        chart.rules.append(
            Rule(rule.css, y(rule.speedup), label_y, f"{rule.name} {_speedup_label(rule.speedup)}")
        )
        chart.legend.append((rule.css, rule.name))
    return chart


TIME_UNITS = ((7200.0, 3600.0, "h"), (120.0, 60.0, "min"), (0.0, 1.0, "s"))
"""(from this many seconds on, one unit is this many seconds, its name)."""


def _time_unit(seconds: float) -> tuple[float, str]:
    return next((size, name) for start, size, name in TIME_UNITS if seconds >= start)


def cumulative_chart(
    title: str, y_label: str, points: list[tuple[float, float]], y_format: str
) -> Chart | None:
    """A running total (tokens, dollars) against seconds since the run started, as steps."""
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_hi = max(max(xs), 1.0)
    y_hi = max(max(ys), 1e-9)
    chart = Chart(
        title,
        "time since the run started",
        y_label,
        x_ticks=[],
        y_ticks=[],
        width=SMALL_WIDTH,
        height=SMALL_HEIGHT,
        margin_right=SMALL_MARGIN_RIGHT,
    )
    x = Scale(0.0, x_hi, chart.left, chart.right)
    y = Scale(0.0, y_hi * 1.1, chart.bottom, chart.top)
    unit, unit_name = _time_unit(x_hi)
    chart.x_ticks = [Tick(x(v * unit), f"{v:g} {unit_name}") for v in nice_ticks(0.0, x_hi / unit)]
    chart.y_ticks = [Tick(y(v), format(v, y_format)) for v in nice_ticks(0.0, y_hi * 1.1, 4)]
    steps = [f"{x(0.0)},{y(0.0)}"]
    previous = 0.0
    for at, total in points:
        steps.append(f"{x(at)},{y(previous)}")
        steps.append(f"{x(at)},{y(total)}")
        previous = total
    chart.lines.append(Line("total", " ".join(steps)))
    for at, total in points:
        title = f"{at / unit:.1f} {unit_name}: {format(total, y_format)}"
        chart.marks.append(Mark(x(at), y(total), "total", title))
    return chart
