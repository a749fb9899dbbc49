"""One self-contained HTML page per run (and per fleet), read from the run directory alone.

Light to import: it reads JSON, numpy and PNG files and draws with matplotlib; it never needs
torch, so a report can be written on any machine the run directory is copied to.
"""

from edge_tl.report.api import ReportResult, refresh_report, write_report

__all__ = ["ReportResult", "refresh_report", "write_report"]
