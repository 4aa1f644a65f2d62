"""HTML reports of a bundle's outputs: a self-contained page per case and a cohort index (issue 9)."""

from medxai.reports.collect import CaseOutputs, CaseView, CohortOutputs, Figure, collect_outputs, png_size
from medxai.reports.html import render_case_page, render_index_page, write_report

__all__ = [
    "CaseOutputs", "CaseView", "CohortOutputs", "Figure", "collect_outputs", "png_size",
    "render_case_page", "render_index_page", "write_report",
]  # fmt: skip
