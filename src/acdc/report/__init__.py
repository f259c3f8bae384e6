"""Reports of AC/DC runs: figures (accuracy with phases, mask dynamics, FLOPs, per-layer density, memorization),
summary / agreement tables, Markdown and self-contained HTML output (``acdc report``)."""

from acdc.report.report import FIGURES, RunData, agreement_rows, build_report, load_run, summary_rows

__all__ = ["FIGURES", "RunData", "agreement_rows", "build_report", "load_run", "summary_rows"]
