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

    spool = sub.add_parser(
        "spool",
        help="what waits in the spool, what was dropped, and the newest dead letters",
        description="Reads the spool read-only, so it is safe while the agent runs.",
    )
    spool.add_argument("-c", "--config", type=Path, help="agent config (for its state_dir)")
    spool.add_argument("--state-dir", type=Path, help="state dir (default ./.driftgate)")
    spool.add_argument("--dead", type=int, default=10, metavar="N", help="dead letters to show")

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

    sim = sub.add_parser(
        "simulate",
        help="emulate a device: write its real frames to a serial port or an MQTT broker",
        description="Write one emulated device's frames (the demo's physics and drift "
        "scenarios) to a serial port / pty or to MQTT, to check wiring and config without "
        "the hardware. Stops on Ctrl-C, after --count frames or --days simulated days.",
    )
    sim.add_argument("--profile", required=True, help="device profile, e.g. sht4x-serial")
    target = sim.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", metavar="PORT", help="serial port or pty to write to")
    target.add_argument("--mqtt", metavar="URL", help="broker: mqtt://[user:pass@]host:port")
    pace = sim.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="frames per second (wall clock)")
    pace.add_argument("--speed", type=float, default=1.0, help="simulated s per wall s (1)")
    sim.add_argument("--start", help="simulated start, ISO 8601 (default: now)")
    sim.add_argument("--days", type=float, help="stop after this many simulated days")
    sim.add_argument("--seed", type=int, default=1, help="random seed of the simulation")
    sim.add_argument("--device", help="which device: a zone, machine (m01-m08) or sample kind")
    sim.add_argument("--count", type=int, help="stop after this many frames")
    sim.add_argument("--baud", type=int, default=115200, help="serial baud rate (115200)")
    sim.add_argument("--qos", type=int, choices=[0, 1, 2], default=0, help="MQTT QoS (0)")

    rep = sub.add_parser(
        "replay",
        help="run the detectors over recorded readings (CSV or line protocol); print the events",
        description="Replay a CSV (time column + value columns) or an InfluxDB line-protocol "
        "export through the same detectors as a live agent: alert events as JSON lines, then a "
        "summary table. Baselines stay in memory unless --state-dir is given.",
    )
    rep.add_argument("file", type=Path, help="CSV or line-protocol file")
    rep.add_argument("-c", "--config", type=Path, help="agent config (channels and detectors)")
    rep.add_argument("--plot", type=Path, metavar="PNG", help="draw signals and alerts to PNG")
    rep.add_argument("--channel", action="extend", nargs="+", metavar="NAME", help="only these")
    rep.add_argument("--time-column", metavar="NAME", help="CSV time column (default: time, ...)")
    rep.add_argument("--state-dir", type=Path, help="read and keep baselines in this state dir")
    _reference_parser(sub)
    from agent.drift.capture import add_baseline_parser

    add_baseline_parser(sub)
    return parser


def _reference_parser(sub: Any) -> None:
    ref = sub.add_parser(
        "reference",
        help="approved colour references per SKU and part (capture, import, list, show, clear)",
        description="ΔE00 and metamerism are measured against these. A running agent picks "
        "changes up within a second.",
    )
    ref_sub = ref.add_subparsers(dest="reference_command", required=True)
    cap = ref_sub.add_parser(
        "capture", help="the NEXT measurement of this SKU and part becomes its reference"
    )
    cap.add_argument("--sku", required=True, help="e.g. 4711")
    cap.add_argument("--part", required=True, help="e.g. clasp")
    cap.add_argument("--note", default="", help="e.g. 'golden sample approved 2024-03-01'")
    cap.add_argument("--label", default="", help="how alerts name it, e.g. 'Clasp plating'")
    cap.add_argument("--affects", default="", help="consequence sentence quoted in alerts")
    imp = ref_sub.add_parser("import", help="references from a YAML or CSV file (see README)")
    imp.add_argument("file", type=Path)
    ref_sub.add_parser("list", help="one line per reference and pending capture")
    show = ref_sub.add_parser("show", help="one reference in full, as JSON")
    clear = ref_sub.add_parser("clear", help="delete a reference (and a pending capture)")
    for p in (show, clear):
        p.add_argument("--sku", required=True)
        p.add_argument("--part", required=True)
    for p in (cap, imp, ref_sub.choices["list"], show, clear):
        p.add_argument("-c", "--config", type=Path, help="agent config (for its state_dir)")
        p.add_argument("--state-dir", type=Path, help="state dir (default ./.driftgate)")


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
        from agent.cli.demo import DEMO_DAYS, DEMO_SPEED, DemoOptions, run_demo

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
    from agent.runtime.agent import Agent

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


def _spool(args: argparse.Namespace) -> int:
    import time

    from agent.drift.alerts import duration_words
    from agent.store.spool import inspect, spool_path

    path = spool_path(_state_dir(args))
    stats, oldest_ns, dead = inspect(path, args.dead)
    age = (
        f", oldest spooled {duration_words((time.time_ns() - oldest_ns) / 1e9)} ago"
        if oldest_ns
        else ""
    )
    print(f"spool {path}")
    print(
        f"  waiting: {stats.pending_lines:,} lines ({stats.pending_bytes / 1e6:.1f} MB) in "
        f"{stats.chunks:,} chunks{age}"
    )
    print(f"  dropped at the byte cap, ever: {stats.dropped_total:,} lines")
    print(f"  dead letters (refused by InfluxDB or out of range): {stats.dead_letters:,}")
    for letter in dead:
        status = f"HTTP {letter.status}" if letter.status else "agent"
        print(f"    [{status}] {letter.reason[:160]}\n      {letter.line[:200]}")
    return EXIT_OK


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


def _reference(args: argparse.Namespace) -> int:
    from agent.color.references import run_reference_command

    return run_reference_command(args, _state_dir(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `driftgate` console script and `python -m agent`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            from agent.config import check_config_command

            return check_config_command(args.config)
        if args.command == "run":
            return _run(args)
        if args.command == "baseline":
            from agent.drift.capture import run_baseline_command

            return run_baseline_command(args, _state_dir(args))
        if args.command == "reference":
            return _reference(args)
        if args.command == "context":
            return _context(args)
        if args.command == "spool":
            return _spool(args)
        if args.command == "replay":
            from agent.replay.run import replay_command

            return replay_command(args)
        if args.command == "simulate":
            from agent.sim.emulator import options_from_args, run_simulate

            return run_simulate(options_from_args(args))
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
