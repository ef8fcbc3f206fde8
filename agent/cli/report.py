"""``driftgate report``: the second-batch report (HTML, and PDF with WeasyPrint)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_OK, Subparsers, add_state_args, state_dir

if TYPE_CHECKING:
    from agent.report.data import ReportData


def add_parser(sub: Subparsers) -> None:
    """The ``report`` command."""
    rep = sub.add_parser(
        "report",
        help="does lot B behave like lot A? a self-contained HTML (and PDF) report",
        description="Compares a lot's readings with another lot's, the approved lots' "
        "(driftgate lot approve), or else each channel's previous lot, from the gateway's own "
        "files (history.sqlite, lots.json, approved_lots.json, incidents.sqlite): no InfluxDB "
        "needed. Prints the answer and writes one HTML page (inline CSS and plots).",
    )
    rep.add_argument("--lot", required=True, help="the lot to report on, e.g. LOT-2411-B")
    other = rep.add_mutually_exclusive_group()
    other.add_argument("--against", metavar="LOT", help="compare with this lot")
    other.add_argument(
        "--against-reference",
        action="store_true",
        help="compare with each channel's approved lot (driftgate lot approve)",
    )
    rep.add_argument("--sku", help="with --against-reference: the approvals of this SKU")
    rep.add_argument(
        "-o", "--out", type=Path, help="HTML file to write (default report-<lot>.html)"
    )
    rep.add_argument("--pdf", type=Path, metavar="FILE", help="also write a PDF (WeasyPrint)")
    add_state_args(rep)
    rep.set_defaults(handler=run)


def text_summary(data: ReportData) -> str:
    """The answer as plain lines for the terminal: one per channel compared."""
    from agent.drift.compare import Verdict

    results = data.channels + data.colour
    differing = data.differing
    lines = [
        f"lot {data.lot} against {data.against}: {len(results)} channel"
        f"{'s' if len(results) != 1 else ''} compared, "
        + (f"differs in {len(differing)}" if differing else "no practical difference")
    ]
    for c in results:
        r = c.result
        mark = "DIFFERS" if c.verdict is Verdict.DIFFERS else c.verdict.words
        lines.append(
            f"  {c.label}: {r.mean_new:.4g} against {r.mean_prev:.4g} {c.unit} ({c.other_name}),"
            f" difference {r.diff:+.3g} {c.unit} ({r.confidence:.0%} CI {r.low:+.3g} to "
            f"{r.high:+.3g}), matters from ±{c.effect:g}: {mark}".replace(" ,", ",")
        )
    for label in data.only_lot:
        lines.append(f"  {label}: not compared (no readings of the other lot)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Gather, print the answer, write the HTML (and the PDF)."""
    from agent.report.data import COLOR_TOLERANCE, gather
    from agent.report.html import render

    tolerance = COLOR_TOLERANCE
    timezone: str | None = None
    site = gateway = ""
    if getattr(args, "config", None) is not None:
        from agent.config import load_config

        cfg = load_config(args.config)
        tolerance = (cfg.color.tolerance.warn, cfg.color.tolerance.alarm)
        timezone, site, gateway = cfg.timezone, cfg.site, cfg.gateway
    data = gather(
        state_dir(args),
        args.lot,
        against=args.against,
        reference=args.against_reference,
        sku=args.sku,
        tolerance=tolerance,
    )
    data.timezone = timezone or data.timezone
    data.site, data.gateway = site or data.site, gateway or data.gateway
    html = render(data)
    out = args.out or Path(f"report-{_safe(args.lot)}.html")
    out.write_text(html, encoding="utf-8")
    print(text_summary(data))
    print(f"report: {out}")
    if args.pdf is not None:
        from agent.report.pdf import write_pdf

        write_pdf(html, args.pdf)
        print(f"pdf: {args.pdf}")
    return EXIT_OK


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
