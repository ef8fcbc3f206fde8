"""The `driftgate` command: run (the demo without a config), check-config, version."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import ConfigError, DriftgateError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftgate",
        description="Edge agent that catches slow drift on the workshop floor.",
    )
    parser.add_argument("--version", action="version", version=f"driftgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the agent (without -c: the embedded workshop demo)",
        description="Run the agent from a config file, or without one the embedded demo.",
    )
    run.add_argument("-c", "--config", type=Path, help="agent YAML config; omit for the demo")
    run.add_argument("--state-dir", type=Path, help="spool and baselines (demo: ./.driftgate)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    demo = run.add_argument_group("demo options (without -c)")
    demo.add_argument("--days", type=float, default=None, help="simulated days (default 28)")
    demo.add_argument("--speed", type=float, default=None, help="simulated s per wall s")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the simulation")
    demo.add_argument("--influx", metavar="URL", help="forward to InfluxDB at URL")
    demo.add_argument("--influx-api", choices=["v1", "v2"], default="v1")
    demo.add_argument("--influx-db", default="driftgate", help="v1 database (default driftgate)")
    demo.add_argument("--influx-rp", default=None, help="v1 retention policy")
    demo.add_argument("--influx-user", default=None, help="v1 user (password: env or file)")
    demo.add_argument("--influx-password-file", type=Path, default=None)
    demo.add_argument("--influx-org", default="driftgate", help="v2 organisation")
    demo.add_argument("--influx-bucket", default="driftgate", help="v2 bucket")
    demo.add_argument("--influx-token-file", type=Path, default=None)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("-c", "--config", type=Path, required=True)

    ctx = sub.add_parser(
        "context",
        help="show or set the production context (lot, operator, shift, order) of a line or zone",
        description="Every reading on that line or zone carries these tags from now on; a "
        "running agent picks the change up within a second.",
    )
    ctx_sub = ctx.add_subparsers(dest="context_command", required=True)
    ctx_set = ctx_sub.add_parser("set", help="set tags: driftgate context set --line L2 lot=X")
    where = ctx_set.add_mutually_exclusive_group(required=True)
    where.add_argument("--line", help="production line, e.g. L2")
    where.add_argument("--zone", help="zone, e.g. edge_paint")
    ctx_set.add_argument("tags", nargs="+", metavar="KEY=VALUE", help="KEY= removes a tag")
    ctx_show = ctx_sub.add_parser("show", help="print the current context of every line and zone")
    for p in (ctx_set, ctx_show):
        p.add_argument("-c", "--config", type=Path, help="agent config (for its state_dir)")
        p.add_argument("--state-dir", type=Path, help="state dir (default ./.driftgate)")
    return parser


def _log_level(verbose: int, default: str) -> str:
    if verbose >= 2:
        return "debug"
    if verbose == 1:
        return "info"
    return default


def _demo_influx(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.influx:
        return None
    influx: dict[str, Any] = {"url": args.influx, "api": args.influx_api}
    if args.influx_api == "v1":
        influx["database"] = args.influx_db
        if args.influx_rp:
            influx["retention_policy"] = args.influx_rp
        if args.influx_user:
            influx["username"] = args.influx_user
        if args.influx_password_file:
            influx["password_file"] = str(args.influx_password_file.resolve())
    else:
        influx["org"] = args.influx_org
        influx["bucket"] = args.influx_bucket
        if args.influx_token_file:
            influx["token_file"] = str(args.influx_token_file.resolve())
    return influx


def _run(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    if args.config is None:
        from agent.demo import DEMO_DAYS, DEMO_SPEED, DemoOptions, run_demo

        opts = DemoOptions(
            state_dir=args.state_dir or Path(".driftgate"),
            days=args.days if args.days is not None else DEMO_DAYS,
            speed=args.speed if args.speed is not None else DEMO_SPEED,
            seed=args.seed,
            influx=_demo_influx(args),
            log_level=_log_level(args.verbose, "warning"),
        )
        configure_logging(opts.log_level)
        asyncio.run(run_demo(opts))
        return EXIT_OK

    from agent.config import load_config
    from agent.runtime import Agent

    if args.influx:
        print("--influx and the demo options apply without -c; set influx: in the config file")
        return EXIT_CONFIG
    cfg = load_config(args.config)
    if args.state_dir is not None:
        cfg = cfg.model_copy(update={"state_dir": args.state_dir})
    configure_logging(_log_level(args.verbose, cfg.log.level), cfg.log.format)

    async def main() -> None:
        agent = Agent(cfg)
        if cfg.alerts.console:
            agent.pipeline.sinks.append(lambda e: print(e.message, flush=True))
        await agent.run()

    asyncio.run(main())
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is not None:
        from agent.config import load_config

        return load_config(args.config).state_dir
    return Path(".driftgate")


def _context(args: argparse.Namespace) -> int:
    import json

    from agent.context import ContextStore

    store = ContextStore(_state_dir(args) / "context.json")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `driftgate` console script and `python -m agent`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            from agent.config import check_config_command

            return check_config_command(args.config)
        if args.command == "run":
            return _run(args)
        if args.command == "context":
            return _context(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except DriftgateError as exc:
        print(f"driftgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
