"""Reports on a set of runs: `build_report` computes the numbers (`ReportData`), `write_report`
writes them as a self-contained HTML page, Markdown, JSON and SVG plots (`forge report`; a batch
reports on the runs its items produced)."""

from forge.report.data import ReportData, ReportError, build_report
from forge.report.render import ReportPaths, write_report

__all__ = ["ReportData", "ReportError", "ReportPaths", "build_report", "write_report"]
