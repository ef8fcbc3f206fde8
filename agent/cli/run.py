"""``driftgate run``: the agent from a config file, or without one the embedded workshop demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import (
    DEFAULT_STATE_DIR,
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    Subparsers,
    log_level,
)

DEMO_GROUP = "demo options (without -c)"
"""The argument group of the options only the demo takes; with ``-c`` the config file says
these things, so giving one is an error naming it (it was once ignored: ``--days 2`` ran for
ever)."""


def add_parser(sub: Subparsers) -> None:
    """The ``run`` command."""
    run_ = sub.add_parser(
        "run",
        help="run the agent (without -c: the embedded workshop demo)",
        description="Run the agent from a config file, or without one the embedded demo.",
    )
    run_.add_argument("-c", "--config", type=Path, help="agent YAML config; omit for the demo")
    run_.add_argument(
        "--state-dir", type=Path, help="spool, baselines, history, context (demo: ./.driftgate)"
    )
    run_.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    # Every demo option defaults to None, so that one given with -c is noticed (even --days 0).
    demo = run_.add_argument_group(DEMO_GROUP)
    demo.add_argument("--days", type=float, default=None, help="simulated days (default 28)")
    demo.add_argument(
        "--speed", type=float, default=None, help="simulated s per wall s (default 86400)"
    )
    demo.add_argument("--seed", type=int, default=None, help="random seed of the simulation")
    demo.add_argument("--influx", metavar="URL", help="forward to InfluxDB at URL")
    demo.add_argument("--influx-api", choices=["v1", "v2"], help="InfluxDB write API (v1)")
    demo.add_argument("--influx-db", help="v1 database (default driftgate)")
    demo.add_argument("--influx-rp", default=None, help="v1 retention policy")
    demo.add_argument("--influx-user", default=None, help="v1 user (password: env or file)")
    demo.add_argument(
        "--influx-password-file", type=Path, default=None, help="v1 password, in a file"
    )
    demo.add_argument("--influx-org", help="v2 organisation (default driftgate)")
    demo.add_argument("--influx-bucket", help="v2 bucket (default driftgate)")
    demo.add_argument("--influx-token-file", type=Path, default=None, help="v2 token, in a file")
    run_.set_defaults(handler=run, demo_options=[a.dest for a in demo._group_actions])


def demo_options_given(args: argparse.Namespace) -> list[str]:
    """The demo-only options on the command line, as typed (``--days``)."""
    return [
        "--" + dest.replace("_", "-")
        for dest in args.demo_options
        if getattr(args, dest) is not None
    ]


def _demo_influx(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.influx:
        return None
    api = args.influx_api or "v1"
    influx: dict[str, Any] = {"url": args.influx, "api": api}
    if api == "v1":
        influx["database"] = args.influx_db or "driftgate"
        if args.influx_rp:
            influx["retention_policy"] = args.influx_rp
        if args.influx_user:
            influx["username"] = args.influx_user
        if args.influx_password_file:
            influx["password_file"] = str(args.influx_password_file.resolve())
    else:
        influx["org"] = args.influx_org or "driftgate"
        influx["bucket"] = args.influx_bucket or "driftgate"
        if args.influx_token_file:
            influx["token_file"] = str(args.influx_token_file.resolve())
    return influx


def run(args: argparse.Namespace) -> int:
    """Run the demo, or the agent from ``-c``."""
    from agent.logs import configure_logging

    if args.config is None:
        from agent.cli.demo import run_demo
        from agent.sim.demo import DEMO_DAYS, DEMO_SPEED, DemoOptions

        opts = DemoOptions(
            state_dir=args.state_dir or DEFAULT_STATE_DIR,
            days=args.days if args.days is not None else DEMO_DAYS,
            speed=args.speed if args.speed is not None else DEMO_SPEED,
            seed=args.seed if args.seed is not None else 1,
            influx=_demo_influx(args),
            log_level=log_level(args.verbose, "warning"),
        )
        configure_logging(opts.log_level)
        asyncio.run(run_demo(opts))
        return EXIT_OK

    given = demo_options_given(args)
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        print(
            f"driftgate run: {', '.join(given)} only {verb} to the demo (without -c); with -c "
            "the config file says these things: a simulated source's speed, days and seed "
            "under sources:, InfluxDB under influx:",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    from agent.runtime.systemd import hold_sighup

    hold_sighup()  # a reload asked while the imports below take their seconds is kept

    from agent.config import AgentConfig, load_config
    from agent.config.loader import load_config_files
    from agent.logs import get_logger
    from agent.runtime.agent import Agent
    from agent.runtime.plan import plan_sources, unproduced

    def read_config() -> AgentConfig:
        cfg = load_config(args.config)
        if args.state_dir is not None:
            cfg = cfg.model_copy(update={"state_dir": args.state_dir})
        return cfg

    loaded = load_config_files(args.config)
    cfg = loaded.config
    missing = unproduced(cfg, plan_sources(cfg))
    if args.state_dir is not None:
        cfg = cfg.model_copy(update={"state_dir": args.state_dir})
    configure_logging(log_level(args.verbose, cfg.log.level), cfg.log.format)
    log = get_logger("driftgate.config")
    log.info(
        "configuration read",
        files=[str(f) for f in loaded.files],
        variables=sorted(loaded.variables),
    )
    for channel in missing:  # as check-config says it, in the journal too
        log.warning(
            "no source produces a configured channel",
            where=loaded.where(("channels", channel.index, "name")),
            detail=channel.detail,
        )

    async def main() -> str | None:
        # SIGHUP (systemctl reload) reads the file again: see Agent.reload
        agent = Agent(cfg, reload_config=read_config)
        if cfg.alerts.console:
            agent.pipeline.sinks.append(lambda e: print(e.message, flush=True))
        return (await agent.run()).failure

    failure = asyncio.run(main())
    if failure is not None:
        print(f"driftgate: {failure}", file=sys.stderr)
        return EXIT_ERROR  # not 2: systemd restarts the service (Restart=on-failure)
    return EXIT_OK
