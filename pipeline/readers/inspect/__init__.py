"""Read-only audit of an output folder: ``pipeline inspect OUT`` writes OUT/report/index.html.

Never imports the runner and never writes outside OUT/report/.
"""
from __future__ import annotations

from pipeline.readers.inspect.report import Report, build_report, print_summary

__all__ = ["Report", "build_report", "print_summary"]
