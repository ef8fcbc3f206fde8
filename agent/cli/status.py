"""``driftgate status``: the running agent's status page on one terminal screen, read from its
local API (``/api/status``); a clear message when no agent answers."""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.cli.common import EXIT_ERROR, EXIT_OK, Subparsers

TIMEOUT_S = 5.0
LEVELS = {"warn": "WARNING", "alarm": "ALARM"}
COLOURS = {"ok": "32", "warn": "33", "alarm": "31", "nodata": "90"}


def add_parser(sub: Subparsers) -> None:
    """The ``status`` command."""
    p = sub.add_parser(
        "status",
        help="the running agent's floor, incidents and health on one screen",
        description="Reads the running agent's status page (/api/status at status.listen of "
        "the config, default 127.0.0.1:8765) and prints the open incidents, each channel's "
        "value and state, and the gateway's health. Exit 1 when no agent answers.",
    )
    p.add_argument("-c", "--config", type=Path, help="agent config (for its status.listen)")
    p.add_argument("--url", help="the status page's address, e.g. http://gw-floor2:8765/")
    p.add_argument("--all", action="store_true", help="every channel, even past one screen")
    p.add_argument("--json", action="store_true", help="the whole status as JSON")
    p.set_defaults(handler=run)


def base_url(args: argparse.Namespace) -> str:
    """Where the agent's status page is: --url, else the config's status.listen."""
    if args.url:
        return str(args.url).rstrip("/") + "/"
    from agent.config.status import StatusConfig

    status = StatusConfig()
    if args.config is not None:
        from agent.config import load_config

        status = load_config(args.config).status
    host, port = status.address
    if host in ("0.0.0.0", ""):  # every interface: this machine's loopback answers too
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"{status.scheme}://{shown}:{port}/"


def fetch(url: str) -> dict[str, Any]:
    """The agent's /api/status (OSError, ValueError when it does not answer with it)."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        host = urlsplit(url).hostname or ""
        if host in ("127.0.0.1", "::1", "localhost"):
            # The certificate names the gateway, not the loopback address it is asked on here.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url + "api/status", timeout=TIMEOUT_S, context=context) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def run(args: argparse.Namespace) -> int:
    """Print the status, or say that no agent answers and what to check."""
    url = base_url(args)
    try:
        status = fetch(url)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        print(
            f"driftgate status: no agent answers at {url} ({reason}).\n"
            "Is it running? `systemctl status driftgate` and `journalctl -u driftgate` say "
            "why not. With -c CONFIG the address is that config's status.listen; an agent "
            "with status.enabled: false serves no page.",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return EXIT_OK
    tty = sys.stdout.isatty()
    rows = shutil.get_terminal_size((100, 40)).lines
    print(screen(status, url, colour=tty, rows=None if args.all else rows))
    return EXIT_OK


def _paint(text: str, state: str, colour: bool) -> str:
    code = COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def _age(seconds: float | None) -> str:
    from agent.words import duration_words

    if seconds is None:
        return "never"
    return f"{seconds:.0f} s ago" if seconds < 60 else duration_words(seconds) + " ago"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


def screen(status: dict[str, Any], url: str, *, colour: bool, rows: int | None) -> str:
    """The status as one screen of text (every channel when ``rows`` is None)."""
    from agent.words import duration_words

    health = status["health"]
    zone = status.get("timezone") or "UTC"
    try:
        from zoneinfo import ZoneInfo

        now = datetime.fromtimestamp(status["now_ns"] / 1e9, ZoneInfo(zone))
        when = f"{now:%Y-%m-%d %H:%M %Z}"
    except (KeyError, ValueError):
        when = ""
    verdict = (
        _paint("gateway OK", "ok", colour)
        if health["ok"]
        else _paint("GATEWAY PROBLEM: " + "; ".join(health["problems"]), "alarm", colour)
    )
    out = [f"driftgate {status['site']} / {status['gateway']}  {when}  {verdict}", ""]
    incidents = status["incidents"]
    out.append(f"Open incidents ({len(incidents)})" if incidents else "No open incidents.")
    for inc in incidents:
        level = LEVELS.get(inc["level"], inc["level"].upper())
        who = f"acknowledged by {inc['acked_by']}" if inc["acknowledged"] else "not acknowledged"
        out.append(f"  {_paint(level, inc['level'], colour):<7} {inc['what']}")
        out.append(f"          {inc['since']}; {who} [{inc['id']}]")
    out.append("")
    channels = status["channels"]
    head = ("zone", "channel", "value", "baseline", "state", "updated")
    table: list[tuple[str, ...]] = [head]
    shown = channels
    fixed = len(out) + 12 + len(health["sources"])
    if rows is not None and len(channels) + fixed > rows:
        shown = [c for c in channels if c["state"] != "ok"]
    for c in shown:
        base = c["baseline"]
        baseline = (
            _fmt(base["mean"], c["unit"]) if base and base["mean"] is not None else "learning"
        )
        table.append((c["zone"] or "-", c["label"], c["value_text"], baseline, c["word"],
                      c["age"] or "-"))  # fmt: skip
    out.append("Floor")
    if len(table) > 1:
        lines = _table(table)
        out.append(lines[0])
        for c, line in zip(shown, lines[1:], strict=True):
            out.append(line.replace(c["word"], _paint(c["word"], c["state"], colour), 1))
    hidden = len(channels) - len(shown)
    if hidden:
        out.append(f"  … and {hidden} channels more, all normal (--all lists them)")
    out.append("")
    out.append("Gateway")
    for s in health["sources"]:
        if s["connected"] is None:
            text = f"{s['word']}, {s['frames']:,} samples"
        else:
            text = (f"{s['word']}, last frame {_age(s['last_frame_age_s'])}, "
                    f"{s['decode_errors']:,} decode errors")  # fmt: skip
        out.append(f"  source {s['name']} ({s['kind']}): {text}")
    sp = health["spool"]
    drain = sp["drain_s"]
    if health["influx"] is None:
        drains = "kept: no InfluxDB configured"
    elif sp["backlog_lines"] == 0:
        drains = "nothing waiting"
    elif drain is None:
        drains = "not draining now"
    else:
        drains = f"drains in {duration_words(drain) if drain >= 60 else f'{drain:.0f} s'}"
    state = "" if sp["healthy"] else ("DISK FULL, " if sp["disk_full"] else "CANNOT WRITE, ")
    waiting = f"{sp['backlog_lines']:,} lines waiting, " if sp["backlog_lines"] else ""
    out.append(f"  spool: {state}{waiting}{drains}")
    influx = health["influx"]
    if influx is None:
        out.append("  InfluxDB: not configured (readings stay in the spool)")
    else:
        answering = "answering" if influx["reachable"] else "NOT answering"
        out.append(f"  InfluxDB: {influx['url']} {answering}, last write "
                   f"{_age(influx['last_write_age_s'])}")  # fmt: skip
    if health["mqtt"] is not None:
        mqtt = health["mqtt"]
        out.append(f"  MQTT broker: {mqtt['broker']} "
                   f"{'connected' if mqtt['connected'] else 'NOT connected'}")  # fmt: skip
    lag = health["loop_lag"]
    out.append(
        f"  event loop lag: max {lag['max_ms']:.1f} ms; memory {health['rss_bytes'] / 2**20:.0f}"
        f" MiB; up {duration_words(health['uptime_s'])}; {health['task_restarts']} task restarts"
    )
    out.append("")
    out.append(f"The page: {status.get('url') or url}")
    return "\n".join(out)


def _fmt(x: float, unit: str) -> str:
    from agent.words import fmt

    return fmt(x, unit)
