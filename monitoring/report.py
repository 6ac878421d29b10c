"""Where rendering used to live; kept so ``from monitoring import report`` keeps working.

The renderer is ``monitoring.drift.report`` (it imports only the drift result types).
"""

from monitoring.drift.report import METHOD_NOTE, render_html, render_terminal, report_json

__all__ = ["METHOD_NOTE", "render_html", "render_terminal", "report_json"]
