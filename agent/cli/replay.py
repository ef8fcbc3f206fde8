"""``driftgate replay``: recorded readings through the live detectors; events and a summary."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_CONFIG, EXIT_OK, Subparsers
from agent.words import duration_words, fmt, iso

if TYPE_CHECKING:
    from agent.replay.run import ReplayResult

EVENT_KINDS = ("raised", "escalated", "eased", "cleared", "repeat", "changed")


def summary_table(result: ReplayResult) -> str:
    """Per channel: readings, time span, events by kind, largest |delta| an event quoted."""
    head = ["channel", "readings", "from", "to", "span", *EVENT_KINDS, "max |delta|"]
    rows = [head]
    for name, s in result.summaries.items():
        unit = result.channels[name].unit
        first = iso(s.first_ns) if s.first_ns is not None else "-"
        last = iso(s.last_ns) if s.last_ns is not None else "-"
        span = (
            duration_words((s.last_ns - s.first_ns) / 1e9)
            if s.first_ns is not None and s.last_ns is not None
            else "-"
        )
        delta = fmt(s.max_abs_delta, unit) if math.isfinite(s.max_abs_delta) else "-"
        counts = [str(s.events.get(kind, 0)) for kind in EVENT_KINDS]
        rows.append([name, str(s.readings), first, last, span, *counts, delta])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    left = {0, 2, 3, 4}
    out = io.StringIO()
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    return out.getvalue()


# ------------------------------------------------------------------------------------- CLI


def add_parser(sub: Subparsers) -> None:
    """The ``replay`` command."""
    rep = sub.add_parser(
        "replay",
        help="run the detectors over recorded readings (CSV or line protocol); print the events",
        description="Replay a CSV (time column + value columns), a CSV from the influx CLI "
        "(influx -format csv -execute 'SELECT * FROM climate GROUP BY *') or an InfluxDB "
        "line-protocol export through the same detectors as a live agent: alert events as JSON "
        "lines, then a summary table. Baselines stay in memory unless --state-dir is given.",
    )
    rep.add_argument("file", type=Path, help="CSV, influx CLI CSV or line-protocol file")
    rep.add_argument("-c", "--config", type=Path, help="agent config (channels and detectors)")
    rep.add_argument("--plot", type=Path, metavar="PNG", help="draw signals and alerts to PNG")
    rep.add_argument("--channel", action="extend", nargs="+", metavar="NAME", help="only these")
    rep.add_argument("--time-column", metavar="NAME", help="CSV time column (default: time, ...)")
    rep.add_argument("--state-dir", type=Path, help="read and keep baselines in this state dir")
    rep.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``driftgate replay``: events as JSON lines, then the summary table; exit 2 on bad input."""
    from agent.config import load_config
    from agent.drift.baselines import BaselineStore
    from agent.logs import configure_logging
    from agent.replay.inputs import ReplayError, open_input
    from agent.replay.plot import NEEDS_MATPLOTLIB, matplotlib_missing, plot_replay
    from agent.replay.run import replay

    if args.plot is not None and matplotlib_missing():
        # Before the replay: a month of readings must not run only to fail at the plot.
        print(NEEDS_MATPLOTLIB, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("warning")
    cfg = load_config(args.config) if args.config is not None else None
    configured = [c.name for c in cfg.channels] if cfg is not None else []
    store = BaselineStore(args.state_dir / "baselines.json" if args.state_dir else None)
    try:
        source = open_input(args.file, time_column=args.time_column, configured=configured)
        result = replay(
            source, cfg, baselines=store, only=args.channel or (), trace=args.plot is not None
        )
        out = sys.stdout
        for event in result.events:
            out.write(json.dumps(event.as_dict(), ensure_ascii=False) + "\n")
        out.write("\n" + summary_table(result))
        if result.late:
            print(
                f"driftgate replay: {result.late} readings older than their channel's previous "
                "one were skipped by the detectors (as live); sort the file by time",
                file=sys.stderr,
            )
        for what, count in source.skipped.items():
            print(f"driftgate replay: {args.file}: skipped {count} {what}", file=sys.stderr)
        for idle in result.not_ready:
            what = "its detectors" if idle.detector == "*" else idle.detector
            print(
                f"driftgate replay: {idle.channel}: {what} never judged a reading: {idle.why}",
                file=sys.stderr,
            )
        if args.plot is not None:
            plot_replay(result, args.plot, title=f"driftgate replay: {args.file.name}")
            print(f"plot written to {args.plot}", file=sys.stderr)
    except ReplayError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK
