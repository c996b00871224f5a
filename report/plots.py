"""The report's plots as SVG text (pygal), for inlining in HTML and for files beside the Markdown.

pygal writes SVG with its stylesheet inside. Its tooltip script (linked from the web unless
`js=[]`) is switched off, and what it writes for that script (an inline config) and its
comments (naming its home page) are dropped: what is left is static SVG that fetches nothing.
Each plot returns None when there is nothing to draw, so a page says so instead of showing an
empty frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pygal
from pygal.style import Style

from forge.report.data import ReportData

COLOURS = ("#2f5fb3", "#d9822b", "#1a7f37", "#b42318", "#6f42c1", "#0b7285", "#9a6700")
BASELINE_GREY = "#8a94a3"


def _style(colours: tuple[str, ...] = COLOURS) -> Style:
    """Forge's page colours and fonts; series take `colours` in order."""
    return Style(
        background="transparent",
        plot_background="transparent",
        foreground="#1d2430",
        foreground_strong="#1d2430",
        foreground_subtle="#5b6675",
        colors=colours,
        font_family='system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif',
        title_font_size=15,
        label_font_size=11,
        major_label_font_size=11,
        legend_font_size=12,
        value_font_size=11,
        guide_stroke_color="#e3e6ea",
        major_guide_stroke_color="#c9ced6",
        guide_stroke_dasharray="0",
        major_guide_stroke_dasharray="0",
    )


COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)
"""pygal always writes an inline script that holds its config for the tooltip script."""


def _chart(kind: Callable[..., pygal.graph.graph.Graph], name: str, title: str, **options: object):  # noqa: ANN202
    options.setdefault("style", _style())
    chart = kind(
        title=title,
        js=[],
        disable_xml_declaration=True,
        width=900,
        height=360,
        print_values_position="top",
        min_scale=3,
        max_scale=8,
        legend_at_bottom=True,
        x_label_rotation=20,
        truncate_label=40,
        **options,
    )
    chart.uuid = f"forge-{name}"  # the SVG's id (pygal draws a random one): same data, same bytes
    return chart


def _svg(chart) -> str:  # noqa: ANN001 (pygal chart)
    return SCRIPT.sub("", COMMENT.sub("", chart.render(is_unicode=True)))


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else ""


def _usd(value: float | None) -> str:
    return f"${value:.4f}" if value is not None else ""


def _usd_label(value: float | None) -> str:
    """A bar's label; the empty segment a stacked bar draws for the other series has none."""
    return _usd(value) if value else ""


def speedup_per_item(data: ReportData) -> str | None:
    """Bars of the best kernel's speedup vs eager and vs torch.compile, per timed item."""
    items = data.items
    timed = [i for i in items if i.speedup_vs_eager is not None or i.speedup_vs_compile is not None]
    if not timed:
        return None
    chart = _chart(
        pygal.Bar,
        "speedup_per_item",
        "Best speedup per item (1.0 = as fast as the baseline)",
        print_values=True,
        value_formatter=_x,
        y_title="speedup (x)",
    )
    chart.x_labels = [i.label for i in timed]
    chart.add("vs eager", [i.speedup_vs_eager for i in timed])
    chart.add("vs torch.compile", [i.speedup_vs_compile for i in timed])
    return _svg(chart)


def speedup_over_rounds(data: ReportData) -> str | None:
    """One line per item: the best measured speedup vs eager after each round."""
    items = data.items
    plotted = [i for i in items if any(p.speedup_vs_eager is not None for p in i.progress)]
    if not plotted:
        return None
    rounds = max(len(i.progress) for i in plotted)
    chart = _chart(
        pygal.Line,
        "speedup_over_rounds",
        "Best speedup vs eager so far, per round",
        style=_style((BASELINE_GREY, *COLOURS)),
        value_formatter=_x,
        x_title="round",
        y_title="speedup vs eager (x)",
        show_x_guides=False,
    )
    chart.x_labels = [str(r) for r in range(rounds)]
    chart.add(
        "1.0: as fast as eager", [1.0] * rounds, show_dots=False, stroke_style={"dasharray": "6,4"}
    )
    for item in plotted:
        chart.add(item.label, [p.speedup_vs_eager for p in item.progress])
    return _svg(chart)


def cost_per_item(data: ReportData) -> str | None:
    """Dollars per item, coloured by whether it produced a correct kernel; the title carries the
    cost per correct and per fast_1 kernel."""
    items, summary = data.items, data.summary
    if not any(i.cost_usd > 0 for i in items):
        return None
    per_correct = _usd(summary.cost_per_correct) or "n/a"
    per_fast = _usd(summary.cost_per_fast) or "n/a"
    chart = _chart(
        pygal.StackedBar,  # one of the two series is empty at each item: one centred bar
        "cost_per_item",
        f"Dollars per item: {per_correct} per correct kernel, {per_fast} per fast_1 kernel",
        print_values=True,
        value_formatter=_usd,
        formatter=_usd_label,
        y_title="dollars",
    )
    chart.x_labels = [i.label for i in items]
    chart.add("correct kernel", [i.cost_usd if i.correct else None for i in items])
    chart.add("no correct kernel", [None if i.correct else i.cost_usd for i in items])
    return _svg(chart)


@dataclass(frozen=True)
class Plot:
    """A plot of the report: its file stem, what its caption says, how to draw it."""

    name: str
    caption: str
    draw: Callable[[ReportData], str | None]
    empty: str
    """Why it is not drawn when `draw` returns None."""


PLOTS = (
    Plot(
        "speedup_per_item",
        "Best kernel per item, speedup vs eager PyTorch and vs torch.compile at the target "
        "shapes (items without a timed correct kernel are left out).",
        speedup_per_item,
        "no correct kernel was timed",
    ),
    Plot(
        "speedup_over_rounds",
        "Best measured speedup vs eager after each round, one line per item (a gap: no timed "
        "correct kernel yet).",
        speedup_over_rounds,
        "no correct kernel was timed",
    ),
    Plot(
        "cost_per_item",
        "LLM dollars per item; the title divides the total by the correct and fast_1 kernels.",
        cost_per_item,
        "no LLM cost was recorded",
    ),
)
