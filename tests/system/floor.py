"""What the system tests put around the installed agent: its config, a serial probe on a pty
inside the gateway, drop-ins, and reading back what reached the host's InfluxDB."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from container import Container
from servers import InfluxDB1Server, free_port
from waiting import wait_for

from agent.sim.devices import DeviceEmulator

SRC = "/srv/driftgate"  # the checkout, read-only inside
WHEELS = "/srv/wheels"  # the wheel directory for install.sh --wheels, read-only inside
INSTALL = f"{SRC}/deploy/install.sh"
CONFIG = "/etc/driftgate/agent.yaml"
STATE = "/var/lib/driftgate"
PTY_DIR = "/run/probe"
PORT = f"{PTY_DIR}/ttyUSB0"  # the agent's end, like a USB adapter
EMULATOR = f"{PTY_DIR}/emulator"  # the device's end, written by the test
STATUS_PORT = free_port()
"""The status page's port: the gateway shares the host's network namespace, so not the default
8765 another test or engineer on this machine may hold."""


@dataclass(frozen=True, slots=True)
class Installed:
    """The session's run of install.sh on a fresh gateway, and what it left behind."""

    layer: Path  # the overlay upper directory holding the installation
    root: Path  # the cached bookworm root below it
    wheels: Path
    dry_run: str  # what `install.sh --dry-run` printed before the real run
    dry_run_left: list[str]  # paths the dry run created (must be none)
    output: str  # what install.sh printed
    seconds: float  # how long install.sh took


def config(influx_url: str, database: str, *, probe: bool = True, extra: str = "") -> str:
    """An agent config for the gateway: the serial probe, InfluxDB on the host."""
    text = f"""\
site: lab
gateway: gw-system
state_dir: {STATE}
status:
  listen: 127.0.0.1:{STATUS_PORT}
influx:
  url: {influx_url}
  database: {database}
  flush_interval: 200ms
  max_backoff: 1s
"""
    if probe:
        text += f"""\
sources:
  - type: serial
    name: probe
    port: {PORT}
    profile: sht4x-serial
    zone: bench
    reconnect_max: 1s
"""
    return text + extra


def write_config(gw: Container, text: str) -> None:
    """Replace /etc/driftgate/agent.yaml (the file install.sh made keeps its owner and mode)."""
    gw.path(CONFIG).write_text(text)


def drop_in(gw: Container, name: str, text: str) -> None:
    """A drop-in for driftgate.service, as `systemctl edit` would write it; daemon-reload."""
    gw.sh(f"mkdir -p /etc/systemd/system/driftgate.service.d && cat > "
          f"/etc/systemd/system/driftgate.service.d/{name}.conf && systemctl daemon-reload",
          input="[Service]\n" + text)  # fmt: skip


SERIAL_DEVICES = "DeviceAllow=char-pts rw\n"
"""The drop-in a pty needs: the unit lets the agent open serial adapters only (ttyUSB, ttyACM,
ttyAMA, ttyS), and a pty is none of them. A site with another device does the same."""


def start_probe(gw: Container) -> None:
    """A pty pair inside the gateway (socat as a transient unit), its agent end usable by the
    dialout group like a USB adapter's."""
    gw.sh(
        f"mkdir -p {PTY_DIR} && systemd-run --unit=probe-pty --quiet "
        f"socat pty,raw,echo=0,link={PORT},group=dialout,perm=0660 "
        f"pty,raw,echo=0,link={EMULATOR}"
    )
    wait_for(lambda: gw.path(PORT).exists() and gw.path(EMULATOR).exists(), 20, "the probe's pty")


def wait_connected(gw: Container) -> None:
    """Until the agent has the probe's port open: READY=1 says the sources started, and a
    serial device's bytes are read only while the port is open."""
    wait_for(lambda: '"event": "serial device connected"' in gw.journal("driftgate"), 30,
             "the agent to open the probe's port")  # fmt: skip


@dataclass
class Probe:
    """An emulated SHT41 humidity probe writing frames into the gateway's pty."""

    gw: Container
    emulator: DeviceEmulator
    t: float = 1.7e9
    sent: int = 0

    def send(self, frames: int) -> list[float]:
        """Write ``frames`` frames; return the humidity values they carry, in order."""
        values = []
        with self.gw.path(EMULATOR).open("wb", buffering=0) as port:
            for _ in range(frames):
                for frame in self.emulator.frames(self.t):
                    port.write(frame.data)
                    values += [v for name, _, v in frame.expected if name == "humidity"]
                self.t += 1.0
                self.sent += 1
                time.sleep(0.005)  # a real probe sends one frame at a time
        return values


def probe(gw: Container) -> Probe:
    return Probe(gw, DeviceEmulator("sht4x-serial"))


def humidity_in_influx(influx: InfluxDB1Server, database: str) -> list[float]:
    """The probe's humidity readings InfluxDB holds, oldest first (its zone is the bench: a
    simulated workshop has climate readings of its own)."""
    rows = influx.points("climate", database, where="\"zone\" = 'bench'")
    return [row["humidity_rh"] for row in rows if row.get("humidity_rh") is not None]
