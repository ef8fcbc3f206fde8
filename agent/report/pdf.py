"""The report as PDF: the same HTML through WeasyPrint, so both look alike.

WeasyPrint is optional (the ``report`` extra, which needs Debian's ``libpango-1.0-0``): a
gateway without it still writes the HTML, which any browser prints.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.errors import DriftgateError

NEEDS_WEASYPRINT = (
    "--pdf needs WeasyPrint: pip install 'driftgate[report]' (it uses Debian's libpango-1.0-0 "
    "and libpangoft2-1.0-0); the HTML report was written and prints from any browser"
)


class PdfError(DriftgateError):
    """The PDF could not be made."""


def write_pdf(html: str, path: Path) -> None:
    """Render the report's HTML to a PDF file."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError):  # OSError: the library is there but Pango is not
        raise PdfError(NEEDS_WEASYPRINT) from None
    # WeasyPrint and fontTools log every font subset at INFO: keep our console readable.
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    HTML(string=html).write_pdf(path)
