"""Fixtures of the report tests (defined in ``report_outputs.py``)."""

from report_outputs import ensemble_run, lung_run  # noqa: F401
