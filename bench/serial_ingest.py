"""Serial ingest: frames/s through socat pty pairs, and the agent's CPU at a realistic floor load.

The agent side is a real ``Agent`` (``agent.runtime``) with serial sources, in a **subprocess**
of its own (this script re-runs itself with ``--child``), so its CPU time (``os.times`` of that
process: the event loop, decoding, detection and the spool's SQLite thread) is measured apart
from the writer's. The writer is this script: it emulates the devices with
``agent.sim.devices.DeviceEmulator`` (their real frames, checksums and framing) and writes
them to the emulator ends of ``socat`` pty pairs (``tests/servers.py`` ``SerialPair``; ptys
only, no network). The spool runs on a temporary directory; no InfluxDB.

Two measurements:

* **full speed**: one pty, one device, frames written back to back (the pty's flow control
  throttles the writer to what the agent takes): frames/s and readings/s the agent decodes and
  spools, for ``hx711-tension`` (50-sample batches, ~330 bytes) and ``sht4x-serial`` (one probe
  line, ~40 bytes: per-frame overhead dominates);
* **floor load**: 40 thread-tension sensors at 100 Hz, in the profile's batches of 50 samples
  (2 frames/s each) + 20 climate probes at 1 Hz: 100 frames/s, 4,040 readings/s, for
  ``--seconds`` (30 s); CPU share of one core.

The floor load uses **60 ptys, one device each**, because that is how these sensors reach a
gateway (one USB serial adapter per sensor controller), and the per-port cost (a transport, a
reader in the event loop, a framer and a source per device) is part of what is measured. Both
profiles carry a device id in every frame, so several devices could share one RS-485 port
instead; that would only be cheaper for the agent. The demo workshop has 8 machines and 2
rooms; the 40 + 20 devices re-use those emulators' physics under their own ids (the frames
are re-signed with their checksum after the id is changed).

The whole machine has 2 cores: writer, socat processes and agent share them, so the full
speed figure is what the agent gets while the writer and socat use the rest.

    .venv/bin/python bench/serial_ingest.py            # ~60 s
    .venv/bin/python bench/serial_ingest.py --quick    # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import serial

from agent.ingest.decode import append_checksum
from agent.ingest.profiles import StxEtxFraming, load_profile
from agent.sim.devices import DeviceEmulator

TENSION, CLIMATE = "hx711-tension", "sht4x-serial"
N_TENSION, N_CLIMATE = 40, 20
MACHINES = [f"m{i:02d}" for i in range(1, 9)]
ZONES = ["edge_paint", "cutting"]
FULL_SPEED_FRAMES = 4000  # distinct frames, cycled (a tension sensor's clock wraps back then)
CHUNK = 20  # frames per write at full speed


# -- frames ----------------------------------------------------------------------------------


_profile = functools.cache(load_profile)


def _resign(profile_name: str, data: bytes, old: str, new: str) -> bytes:
    """A frame with its device id changed and its checksum recomputed."""
    profile = _profile(profile_name)
    if profile_name == TENSION:
        framing = profile.framing
        assert isinstance(framing, StxEtxFraming)
        body = data[1:-1].rsplit(b"*", 1)[0].replace(f"T,{old},".encode(), f"T,{new},".encode())
        return (
            bytes([framing.start]) + append_checksum(profile.checksum, body) + bytes([framing.end])
        )
    body = (
        data.rstrip(b"\r\n")
        .rsplit(b"*", 1)[0]
        .replace(f"id={old},".encode(), f"id={new},".encode())
    )
    return append_checksum(profile.checksum, body) + b"\r\n"


def device_frames(kind: str, index: int, start: float, seconds: float) -> list[tuple[float, bytes]]:
    """(offset from start in s, frame) of one emulated device for ``seconds``."""
    if kind == TENSION:
        base = MACHINES[index % len(MACHINES)]
        emulator = DeviceEmulator(_profile(TENSION), start=start, seed=index + 1, device=base)
        new, old = f"t{index:02d}", base
    else:
        zone = ZONES[index % len(ZONES)]
        emulator = DeviceEmulator(_profile(CLIMATE), start=start, seed=index + 1, device=zone)
        old = "sht41-ep1" if zone == "edge_paint" else "sht41-ct1"
        new = f"sht41-{index:02d}"
    phase = (index / (N_TENSION if kind == TENSION else N_CLIMATE)) * emulator.interval
    out = []
    t = start + phase
    while t < start + seconds:
        for frame in emulator.frames(t):
            out.append((t - start, _resign(kind, frame.data, old, new)))
        t += emulator.interval
    return out


# -- the agent side (child process) ----------------------------------------------------------


async def child_main(config: dict[str, Any]) -> None:
    """Run an Agent on the given config; measure between the parent's `go` and `stop`."""
    from agent.config import config_from_dict
    from agent.ingest.serial import SerialSource
    from agent.logs import configure_logging
    from agent.runtime.agent import Agent

    configure_logging("warning", "console", sys.stderr)
    cfg = config_from_dict(config)
    agent = Agent(cfg)
    run = asyncio.create_task(agent.run(handle_signals=False))
    sources = [s for s in agent.sources if isinstance(s, SerialSource)]
    while True:
        if all(s.health.connected for s in sources):
            break
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()

    def snapshot() -> dict[str, float]:
        t = os.times()
        return {
            "wall": time.monotonic(),
            "cpu": t.user + t.system,
            "frames": sum(s.health.frames for s in sources),
            "readings": sum(s.health.readings for s in sources),
            "decode_errors": sum(s.health.decode_errors for s in sources),
            "discarded": sum(s.health.discarded_bytes for s in sources),
        }

    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    first = snapshot()
    await loop.run_in_executor(None, sys.stdin.readline)
    last = snapshot()
    agent.stop_event.set()
    result = await run
    out = {k: last[k] - first[k] for k in last}
    out["total_frames"] = last["frames"]
    out["total_readings"] = last["readings"]
    out["spool_committed"] = agent.metrics.spool_committed
    out["spool_appended"] = agent.metrics.spool_appended
    out["pending_lines"] = result.pending_lines
    out["peak_rss_mib"] = _common.peak_rss_mib()
    print(json.dumps(out), flush=True)


# -- the writer side (this process) ----------------------------------------------------------


@dataclass
class Measured:
    name: str
    seconds: float
    frames: float
    readings: float
    cpu_s: float
    decode_errors: float
    sent: int
    received_total: int
    committed: int
    appended: int
    pending: int
    rss_mib: float

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds if self.seconds else 0.0


def _agent_config(state_dir: Path, ports: list[tuple[str, str]], detectors: bool) -> dict[str, Any]:
    sources = []
    channels = []
    counters = {TENSION: 0, CLIMATE: 0}
    for i, (profile, port) in enumerate(ports):
        zone = "sewing" if profile == TENSION else "climate"
        sources.append(
            {"type": "serial", "name": f"dev{i:02d}", "profile": profile, "port": port,
             "zone": zone}
        )  # fmt: skip
        index = counters[profile]
        counters[profile] += 1
        if profile == TENSION:
            names = [f"sewing.t{index:02d}.tension"]
        else:
            names = [f"climate.sht41-{index:02d}.{q}" for q in ("humidity", "temperature")]
        channels += [{"name": name, "detectors": []} for name in names]
    return {
        "channels": [] if detectors else channels,
        "site": "bench",
        "gateway": "gw1",
        "state_dir": str(state_dir),
        "log": {"level": "warning"},
        "self_metrics": {"interval": 10},
        "sources": sources,
    }


class AgentProcess:
    """The agent child: started on a config, told when to start and stop measuring."""

    def __init__(
        self, workdir: Path, ports: list[tuple[str, str]], *, detectors: bool = True
    ) -> None:
        config = workdir / "agent.json"
        config.write_text(json.dumps(_agent_config(workdir / "state", ports, detectors)))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_common.ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"agent child did not start: {line!r}")

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._say("go")

    def stop(self) -> dict[str, float]:
        self._say("stop")
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(30)
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pairs(workdir: Path, n: int) -> list[Any]:
    servers = _common.load_servers()
    pairs = []
    for i in range(n):
        pair = servers.SerialPair(workdir / f"pty{i:02d}")
        pair.start()
        pairs.append(pair)
    return pairs


def full_speed(workdir: Path, profile: str, seconds: float) -> Measured:
    """One device writing back to back for ``seconds``."""
    (pair,) = _pairs(workdir / profile, 1)
    try:
        agent = AgentProcess(workdir / profile, [(profile, pair.device)])
        interval = 0.5 if profile == TENSION else 1.0
        frames = [
            f for _, f in device_frames(profile, 5, time.time(), FULL_SPEED_FRAMES * interval)
        ]
        chunks = [b"".join(frames[i : i + CHUNK]) for i in range(0, len(frames), CHUNK)]
        port = serial.Serial(pair.emulator, 115200)
        sent = 0
        agent.go()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            for chunk in chunks:
                port.write(chunk)
            sent += len(frames)
        out = agent.stop()
        port.close()
    finally:
        pair.stop()
    return _measured(f"full speed, 1 pty, {profile}", out, sent)


def floor_load(workdir: Path, seconds: float, *, detectors: bool = True) -> Measured:
    """40 tension sensors (100 Hz, 50-sample frames) + 20 climate probes (1 Hz), 60 ptys."""
    kinds = [TENSION] * N_TENSION + [CLIMATE] * N_CLIMATE
    workdir = workdir / ("floor" if detectors else "floor-nodetect")
    pairs = _pairs(workdir, len(kinds))
    try:
        agent = AgentProcess(
            workdir,
            [(k, p.device) for k, p in zip(kinds, pairs, strict=True)],
            detectors=detectors,
        )
        start = time.time() + 1.0
        schedule: list[tuple[float, int, bytes]] = []
        counters = {TENSION: 0, CLIMATE: 0}
        for dev, kind in enumerate(kinds):
            index = counters[kind]
            counters[kind] += 1
            schedule += [(t, dev, f) for t, f in device_frames(kind, index, start, seconds)]
        heapq.heapify(schedule)
        ports = [serial.Serial(p.emulator, 115200) for p in pairs]
        sent = 0
        wall0 = time.monotonic() + max(start - time.time(), 0.0)
        agent.go()
        while schedule:
            due, dev, frame = heapq.heappop(schedule)
            delay = wall0 + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ports[dev].write(frame)
            sent += 1
        time.sleep(0.5)  # the last frames through socat and the loop
        out = agent.stop()
        for port in ports:
            port.close()
    finally:
        for pair in pairs:
            pair.stop()
    name = f"floor load, {len(kinds)} ptys" + ("" if detectors else ", no detectors")
    return _measured(name, out, sent)


def _measured(name: str, out: dict[str, float], sent: int) -> Measured:
    return Measured(
        name=name,
        seconds=out["wall"],
        frames=out["frames"],
        readings=out["readings"],
        cpu_s=out["cpu"],
        decode_errors=out["decode_errors"],
        sent=sent,
        received_total=int(out["total_frames"]),
        committed=int(out["spool_committed"]),
        appended=int(out["spool_appended"]),
        pending=int(out["pending_lines"]),
        rss_mib=out["peak_rss_mib"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="5 s full speed, 10 s floor load")
    parser.add_argument("--seconds", type=float, default=None, help="floor-load duration (30)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(child_main(json.loads(args.child.read_text())))
        return

    machine = _common.print_header(
        "Serial ingest: socat pty pairs → SerialSource → Pipeline → Spool"
    )
    burst = 5.0 if args.quick else 10.0
    floor_s = args.seconds or (10.0 if args.quick else 30.0)
    with tempfile.TemporaryDirectory(prefix="driftgate-serial-bench-") as tmp:
        workdir = Path(tmp)
        runs = [
            full_speed(workdir, TENSION, burst),
            full_speed(workdir, CLIMATE, burst),
            floor_load(workdir, max(floor_s / 3, 10.0), detectors=False),
            floor_load(workdir, floor_s),
        ]
    rows = []
    for r in runs:
        rows.append(
            [
                r.name,
                f"{r.seconds:.1f}",
                f"{r.frames / r.seconds:,.0f}",
                f"{r.readings / r.seconds:,.0f}",
                f"{100 * r.cpu_share:.1f}%",
                f"{r.received_total:,} / {r.sent:,}",
                int(r.decode_errors),
                "yes" if r.committed == r.appended else "NO",
                f"{r.rss_mib:.0f}",
            ]
        )
    _common.table(
        ["run", "s", "frames/s", "readings/s", "CPU of 1 core", "frames in / sent",
         "decode errors", "spool committed all", "peak RSS MiB"],
        rows,
    )  # fmt: skip
    floor = runs[-1]
    print()
    print(
        f"floor load: {floor.frames / floor.seconds:,.0f} frames/s, "
        f"{floor.readings / floor.seconds:,.0f} readings/s at "
        f"{100 * floor.cpu_share:.1f}% of one core "
        f"({1e6 * floor.cpu_s / max(floor.readings, 1):.1f} µs CPU per reading)"
    )
    _common.emit_json(
        "serial_ingest",
        machine,
        runs=[
            {
                "name": r.name,
                "seconds": round(r.seconds, 2),
                "frames_per_s": round(r.frames / r.seconds, 1),
                "readings_per_s": round(r.readings / r.seconds, 1),
                "cpu_share_of_one_core": round(r.cpu_share, 4),
                "frames_received_total": r.received_total,
                "frames_sent": r.sent,
                "decode_errors": int(r.decode_errors),
                "spool_committed": r.committed,
                "spool_appended": r.appended,
                "peak_rss_mib": round(r.rss_mib, 1),
            }
            for r in runs
        ],
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
