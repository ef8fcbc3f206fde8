"""``driftgate alerts list|show|ack|test``: the incidents people were told about."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from agent.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_state_args, state_dir

if TYPE_CHECKING:
    from agent.incidents.model import Incident


def add_parser(sub: Subparsers) -> None:
    """The ``alerts`` command and its verbs."""
    alerts = sub.add_parser(
        "alerts",
        help="incidents: list, show, acknowledge; send a test notice through a route",
        description="An incident is one cause (all detectors of a channel that fired for it), "
        "told to people once, with reminders until someone acknowledges it.",
    )
    verbs = alerts.add_subparsers(dest="alerts_command", required=True)
    lst = verbs.add_parser("list", help="open and acknowledged incidents, and recently cleared")
    lst.add_argument("--all", action="store_true", help="every stored incident")
    show = verbs.add_parser("show", help="one incident: its detectors, context, deliveries")
    show.add_argument("id", help="incident id, e.g. 20261117-0002")
    show.add_argument("--json", action="store_true", help="the whole stored record, as JSON")
    ack = verbs.add_parser(
        "ack",
        help="acknowledge an incident (reminders stop until it gets worse or clears)",
        description="Asks the running agent to acknowledge it; the agent applies it within a "
        "second and tells the incident's routes who took it on.",
    )
    ack.add_argument("id", help="incident id")
    ack.add_argument("--by", required=True, help="who takes it on, e.g. 'Marie (day shift)'")
    ack.add_argument("--note", default="", help="e.g. 'dehumidifier restarted'")
    test = verbs.add_parser(
        "test",
        help="send a sample notice through one route, now, and report each delivery",
        description="Builds the route's targets from the config and sends a clearly marked "
        "test notice to every recipient the route has now (its shift, if it has shifts).",
    )
    test.add_argument("--route", required=True, help="route name from notify.routes")
    for p in (lst, show, ack, test):
        add_state_args(p)
    alerts.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``driftgate alerts ...``."""
    from agent.incidents.store import (
        read_deliveries,
        read_incidents,
        read_timezone,
        request_ack,
        store_path,
    )
    from agent.incidents.words import local_zone

    path = store_path(state_dir(args))
    verb = args.alerts_command
    if verb == "test":
        return asyncio.run(_test(args))
    if verb == "ack":
        known = {i.id: i for i in read_incidents(path)}
        incident = known.get(args.id)
        if incident is None:
            print(f"driftgate: no incident {args.id!r} in {path}", file=sys.stderr)
            return EXIT_ERROR
        if incident.state == "cleared":
            print(f"{args.id} is already cleared: nothing to acknowledge")
            return EXIT_OK
        request_ack(path, args.id, args.by, args.note)
        print(f"{args.id}: acknowledgement by {args.by} queued; a running agent applies it "
              "within a second")  # fmt: skip
        return EXIT_OK
    incidents = read_incidents(path)
    if verb == "show":
        found = next((i for i in incidents if i.id == args.id), None)
        if found is None:
            print(f"driftgate: no incident {args.id!r} in {path}", file=sys.stderr)
            return EXIT_ERROR
        deliveries = read_deliveries(path, found.id)
        if args.json:
            out = found.to_json()
            out["deliveries"] = deliveries
            print(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            print(_told(found, deliveries, local_zone(read_timezone(path))))
        return EXIT_OK
    if not incidents:
        print(f"no incidents in {path}")
        return EXIT_OK
    now = datetime.now(UTC).timestamp() * 1e9
    recent = 7 * 86400e9
    shown = [
        i for i in incidents if args.all or i.state != "cleared" or now - i.cleared_ns < recent
    ]
    zone = local_zone(read_timezone(path))
    rows = [("id", "state", "severity", "opened", "incident", "acknowledged by")]
    for i in sorted(shown, key=lambda i: (i.state == "cleared", -i.opened_ns)):
        opened = datetime.fromtimestamp(i.opened_ns / 1e9, zone).strftime("%Y-%m-%d %H:%M %Z")
        severity = i.level if i.state != "cleared" else f"was {i.peak}"
        rows.append((i.id, i.state, severity, opened, i.label, i.acked_by or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _told(inc: Incident, deliveries: list[dict[str, Any]], zone: tzinfo) -> str:
    """One incident for a person: what, since when, who took it on, which lots, where it went."""

    def at(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9, zone).strftime("%Y-%m-%d %H:%M %Z")

    if inc.state == "cleared":
        state = f"cleared {at(inc.cleared_ns)} (was {inc.peak})"
    elif inc.acked_by:
        state = f"{inc.level}, acknowledged by {inc.acked_by} {at(inc.acked_ns)}"
        state += f": {inc.acked_note}" if inc.acked_note else ""
    else:
        state = f"{inc.level}, open, not acknowledged"
    lines = [
        f"{inc.id}  {inc.label}: {state}",
        f"  opened      {at(inc.opened_ns)}; {inc.seq} notices so far",
        f"  affects     {inc.affects or '-'}",
        f"  what to do  {inc.action or '-'}",
    ]
    if inc.escalated:
        lines.append(f"  escalated   to {', '.join(inc.escalated)}")
    lines.append(
        "  context while open (the lots to hold):" if inc.context else "  context     none set"
    )
    lines += [f"    {key}: {', '.join(values)}" for key, values in sorted(inc.context.items())]
    lines.append(
        "  detectors:" if inc.members else f"  detectors   {', '.join(inc.seen)} (none now)"
    )
    for member in inc.members.values():
        lines.append(
            f"    {member.detector} {member.level} since {at(member.since_ns)}: {member.message}"
        )
    lines.append("  deliveries:" if deliveries else "  deliveries  none (no route matched)")
    for d in deliveries:
        where = d["target"] + (f":{d['recipient']}" if d["recipient"] else "")
        error = f", last error: {d['last_error']}" if d["last_error"] else ""
        lines.append(
            f"    {d['transition']:<12} {where}: {d['state']} ({d['attempts']} attempts{error})"
        )
    return "\n".join(lines)


async def _test(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.errors import ConfigError
    from agent.incidents.model import Incident, Notice
    from agent.incidents.store import Delivery
    from agent.incidents.words import local_zone
    from agent.notify.router import Router
    from agent.notify.targets import make_target, origin_of

    if args.config is None:
        raise ConfigError(["alerts test needs -c CONFIG (its notify.targets and notify.routes)"])
    cfg = load_config(args.config)
    route = next((r for r in cfg.notify.routes if r.name == args.route), None)
    if route is None:
        names = ", ".join(r.name for r in cfg.notify.routes) or "none"
        raise ConfigError([f"{args.config}: notify.routes: no route {args.route!r} ({names})"])
    now = int(datetime.now(UTC).timestamp() * 1e9)
    incident = Incident(
        id="test-0000", key="test", channel="test.channel", zone="test",
        label=f"TEST of route {route.name}",
        kind="climate", unit="", affects="nothing: this is a test", action="nothing",
        opened_ns=now, level="warn", peak="warn",
    )  # fmt: skip
    notice = Notice(
        incident=incident.to_json(), transition="opened", seq=0, ts_ns=now,
        sentence=f"TEST from driftgate on {cfg.site}/{cfg.gateway}: route {route.name} works.",
        details="a test notice sent with `driftgate alerts test`", route=route.name,
    )  # fmt: skip
    router = Router(cfg.notify, local_zone(cfg.timezone), lambda: now)
    targets = {t.name: t for t in cfg.notify.targets}
    failures = 0
    for entry in router.deliveries_for_route(route, notice):
        target = make_target(targets[entry.target], origin_of(cfg))
        delivery = Delivery(0, entry.key, entry.incident, entry.target, entry.recipient, 0,
                            entry.body)  # fmt: skip
        try:
            (error,) = await target.send([delivery])
        finally:
            await target.close()
        where = f"{entry.target}{':' + entry.recipient if entry.recipient else ''}"
        if error is None:
            print(f"sent to {where}")
        else:
            failures += 1
            print(f"FAILED {where}: {error}")
    return EXIT_ERROR if failures else EXIT_OK
