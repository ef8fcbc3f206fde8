"""``driftgate context set|show``: the production context (lot, operator, shift, order)."""

from __future__ import annotations

import argparse
import json
import sys

from agent.cli.common import EXIT_CONFIG, EXIT_OK, Subparsers, add_state_args, state_dir


def add_parser(sub: Subparsers) -> None:
    """The ``context`` command and its verbs."""
    ctx = sub.add_parser(
        "context",
        help="show or set the production context (lot, operator, shift, order) of a line or zone",
        description="Every reading on that line or zone carries these tags from now on; a "
        "running agent picks the change up within a second.",
    )
    verbs = ctx.add_subparsers(dest="context_command", required=True)
    ctx_set = verbs.add_parser("set", help="set tags: driftgate context set --line L2 lot=X")
    where = ctx_set.add_mutually_exclusive_group(required=True)
    where.add_argument("--line", help="production line, e.g. L2")
    where.add_argument("--zone", help="zone, e.g. edge_paint")
    ctx_set.add_argument("tags", nargs="+", metavar="KEY=VALUE", help="KEY= removes a tag")
    ctx_show = verbs.add_parser("show", help="print the current context of every line and zone")
    for p in (ctx_set, ctx_show):
        add_state_args(p)
    ctx.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Show the context, or merge tags into one line's or zone's."""
    from agent.context import ContextStore

    store = ContextStore(state_dir(args) / "context.json")
    if args.context_command == "show":
        print(json.dumps(store.scopes, indent=2, sort_keys=True))
        return EXIT_OK
    tags: dict[str, str | None] = {}
    for item in args.tags:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"driftgate: {item!r} is not KEY=VALUE (KEY= removes a tag)", file=sys.stderr)
            return EXIT_CONFIG
        tags[key.strip()] = value.strip() or None
    scope, name = ("line", args.line) if args.line else ("zone", args.zone)
    changed = store.set(scope, name, tags)
    now = store.scopes.get(f"{scope}:{name}", {})
    shown = ", ".join(f"{k}={v}" for k, v in sorted(now.items())) or "(none)"
    print(f"{scope} {name}: {shown}" + ("" if changed else " (unchanged)"))
    return EXIT_OK
