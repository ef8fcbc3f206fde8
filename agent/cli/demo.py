"""The embedded demo on the terminal: incident notices in plain words as they happen (what a
supervisor would receive), a progress line with the simulated date, and a one-screen summary
at the end."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TextIO

from agent.config import AgentConfig
from agent.drift.alerts import AlertEvent
from agent.incidents.model import ACKNOWLEDGED, REMINDER, Notice
from agent.incidents.store import FILENAME
from agent.runtime.agent import Agent, RunResult
from agent.sim.demo import DEMO_DAYS, DemoOptions, demo_config
from agent.words import when


class Console:
    """Prints alerts as they happen and keeps a progress line with the simulated date."""

    def __init__(self, agent: Agent, out: TextIO = sys.stdout, days: float = DEMO_DAYS) -> None:
        self.agent = agent
        self.out = out
        self.tty = out.isatty()
        self.days = days
        self._last_day = -1
        self._progress_shown = False

    def notice(self, notice: Notice) -> None:
        """Print one incident notice as a supervisor would receive it."""
        mark = {"alarm": "!!", "warn": "! "}.get(notice.severity, "ok")
        if notice.transition in (ACKNOWLEDGED, REMINDER):
            mark = ".."
        zone = self.agent.incidents.manager.zone
        moment = datetime.fromtimestamp(notice.ts_ns / 1e9, zone)
        self._clear_progress()
        print(f"[{moment:%Y-%m-%d %H:%M %Z}] {mark} {notice.sentence}", file=self.out, flush=True)

    def say(self, text: str) -> None:
        """A line of its own (the progress line is redrawn after it)."""
        self._clear_progress()
        print(text, file=self.out, flush=True)

    def _clear_progress(self) -> None:
        if self.tty and self._progress_shown:
            self.out.write("\r\x1b[2K")
            self._progress_shown = False

    def progress(self) -> None:
        """Show the simulated date; a rewritten line on a terminal, a line a day otherwise."""
        clock = self.agent.pipeline.clock_ns
        if not clock:
            return
        m = self.agent.metrics
        sim_start = min((s.start for s in self.agent.sources), default=0.0)  # type: ignore[attr-defined]
        day = int((clock / 1e9 - sim_start) // 86400) + 1
        text = (
            f"simulated {when(clock)} (day {min(day, int(self.days))} of {self.days:g}): "
            f"{m.readings_in:,} readings, {m.alerts} alert events, "
            f"spool {m.spool_pending_lines:,} lines waiting, {m.forwarded:,} forwarded"
        )
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
            self._progress_shown = True
        elif day != self._last_day:
            print(text, file=self.out, flush=True)
        self._last_day = day

    def finish(self) -> None:
        """End the progress line before the summary."""
        if self.tty and self._progress_shown:
            self.out.write("\n")
            self._progress_shown = False


STORY_MAX = 6
"""Detector events shown per channel and detector in the summary (the rest are in the spool)."""


def summary(result: RunResult, cfg: AgentConfig, zone: tzinfo, out: TextIO = sys.stdout) -> None:
    """The one-screen summary: readings per channel, incidents (in the site's time), detector
    events, spool state, forwarded count."""
    m = result.metrics
    start = datetime.fromtimestamp(result.sim_start_ns / 1e9, UTC)
    end = datetime.fromtimestamp(result.sim_end_ns / 1e9, UTC)
    days = (result.sim_end_ns - result.sim_start_ns) / 86400e9
    p = print
    p("", file=out)
    p(
        f"driftgate demo summary: simulated {start:%Y-%m-%d} to {end:%Y-%m-%d %H:%M} UTC "
        f"({days:.1f} days) in {result.wall_seconds:.1f} s of wall time",
        file=out,
    )
    p("readings per channel:", file=out)
    width = max((len(c.name) for c in result.channels), default=10)
    total = 0
    for channel in result.channels:
        p(f"  {channel.name:<{width}}  {channel.readings:>9,}", file=out)
        total += channel.readings
    p(f"  {'total':<{width}}  {total:>9,}", file=out)
    incidents = result.incidents
    told = sum(i.seq for i in incidents)
    p(f"incidents: {len(incidents)} ({told} notices)" if incidents else "incidents: none",
      file=out)  # fmt: skip
    for inc in incidents:
        opened = datetime.fromtimestamp(inc.opened_ns / 1e9, zone)
        state = "still open" if inc.state != "cleared" else "cleared"
        detectors = ", ".join(inc.seen)
        p(f"  {inc.id}  {inc.label}: {inc.peak} from {opened:%Y-%m-%d %H:%M %Z}, {state}; "
          f"{detectors}; {inc.seq} notices", file=out)  # fmt: skip
    kinds = Counter(e.transition for e in result.events)
    p(
        f"alerts (detector events, the evidence in InfluxDB): {len(result.events)} events ("
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        + ")"
        if result.events
        else "alerts (detector events): none",
        file=out,
    )
    per_key: dict[tuple[str, str], list[AlertEvent]] = {}
    for event in result.events:
        per_key.setdefault((event.channel.name, event.detector), []).append(event)
    for (channel_name, detector), events in sorted(per_key.items()):
        told_events = [f"{e.transition} {e.level.label} {when(e.ts_ns)}" for e in events]
        if len(told_events) > STORY_MAX:  # a limit breached every afternoon: first and last
            hidden = len(told_events) - STORY_MAX
            told_events[STORY_MAX - 1 : -1] = [f"... {hidden} more ..."]
        story = ", ".join(told_events)
        p(f"  {channel_name} / {detector}: {story}", file=out)
    quiet = [c.name for c in result.channels if not any(k[0] == c.name for k in per_key)]
    p(f"  no alerts: {', '.join(quiet)}" if quiet else "", file=out)
    for idle in result.not_ready:
        p(f"  never judged a reading: {idle.channel} / {idle.detector}: {idle.why}", file=out)
    p(
        f"spool: {m.spool_appended:,} lines written this run "
        f"({total:,} readings, {len(result.events)} alert events, "
        f"{m.spool_appended - total - len(result.events)} self-metrics); "
        f"{result.pending_lines:,} lines ({result.pending_bytes / 1e6:.1f} MB) waiting in "
        f"{cfg.state_dir}; dropped {m.spool_dropped}; dead letters {result.dead_letters}",
        file=out,
    )
    if cfg.influx is None:
        p(
            "forwarded: nothing (no --influx given); the spool keeps every line for a later run "
            "with --influx URL",
            file=out,
        )
    else:
        target = cfg.influx.database if cfg.influx.api == "v1" else cfg.influx.bucket
        p(
            f"forwarded: {m.forwarded:,} lines to {cfg.influx.url} ({cfg.influx.api}, {target}) "
            f"in {m.forward_batches} batches; {m.forward_retries} retries",
            file=out,
        )


def forget_earlier_incidents(state_dir: Path) -> None:
    """Every demo run simulates the same weeks again from day 1: incidents of an earlier run
    belong to a timeline this one replaces. The spool (for a later --influx) and captured
    baselines stay."""
    for leftover in Path(state_dir).glob(f"{FILENAME}*"):
        leftover.unlink()


async def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> RunResult:
    """Run the demo to the end (or Ctrl-C) and print its summary."""
    cfg = demo_config(opts)
    forget_earlier_incidents(cfg.state_dir)
    agent = Agent(cfg, status_fallback=True)
    console = Console(agent, out, opts.days)
    agent.incidents.manager.listeners.append(console.notice)
    print(
        f"driftgate demo: {opts.days:g} simulated days of a leather-goods workshop "
        f"(edge-paint room, cutting room, 8 sewing machines) at {opts.speed:,.0f}x; "
        f"state in {cfg.state_dir}. Ctrl-C stops early.",
        file=out,
        flush=True,
    )
    import asyncio

    # On a terminal the page stays up once the simulation is done, until Ctrl-C: a newcomer
    # looks at the floor in a browser at leisure. Piped (tests, scripts) the demo just ends.
    linger = out.isatty()

    async def tick() -> None:
        told = False
        if agent.status is not None:  # the address first, before the progress starts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.status.bound.wait(), 2.0)
        while True:
            if not told and agent.status is not None and agent.status.bound.is_set():
                told = True
                console.say(f"status page: {agent.status.url} (the floor, live in a browser)")
            console.progress()
            if linger and all(getattr(s, "finished", False) for s in agent.sources):
                url = agent.status.url if agent.status is not None else "(no page)"
                console.say(
                    f"simulation done; the status page stays up at {url} until Ctrl-C, "
                    "then the summary"
                )
                return
            await asyncio.sleep(0.2)

    ticker = asyncio.create_task(tick())
    t0 = time.monotonic()
    try:
        result = await agent.run(drain_at_end=30.0, linger=linger)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    console.progress()
    console.finish()
    result.wall_seconds = time.monotonic() - t0
    summary(result, cfg, agent.incidents.manager.zone, out)
    return result
