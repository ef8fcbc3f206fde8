"""Tower lights (stack lights, andon) on the lines: each shows the state of its zone.

A light is not told about notices the way people are: it shows the worst open severity of its
zone's incidents at every moment (green: nothing open, amber: a warning, red: an alarm) and
sounds its buzzer while an alarm is unacknowledged. The state is computed from the manager's
open incidents whenever a notice arrives, and sent again after every reconnect and every
``refresh`` (a light that lost power, or missed a byte, shows the right state again).

Two ways to drive one:

- a serial light (USB, CH340 and the like) through a *command profile*: a small YAML in
  ``agent/notify/stacklights/`` (or a path) giving the port settings and the bytes of each
  lamp's on / off / blink and the buzzer's on / off. The port is kept open by the same
  ``Reconnector`` loop as the serial sources: unplugged and plugged in again, the light
  shows the current state within ``reconnect_max``;
- Raspberry Pi GPIO pins through gpiozero (with lgpio), an optional dependency: without it,
  or on a machine without GPIO, the agent refuses to start and names the target.

When the agent stops, its lights go dark: a dark tower means nobody is watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import string
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import serial
import serial_asyncio_fast
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from agent.config.base import (
    Duration,
    Loc,
    Section,
    raise_problems,
    reason,
)
from agent.config.documents import is_path, load_document, validate_document
from agent.config.loader import describe_value
from agent.config.notify import StacklightTarget
from agent.errors import ConfigError
from agent.incidents.model import CLOSED, LEVELS, OPEN, Incident, Notice
from agent.ingest.frames import SourceHealth
from agent.ingest.reconnect import Reconnector
from agent.logs import get_logger

__all__ = [
    "DARK",
    "LAMPS",
    "PROFILE_DIR",
    "GpioStackLight",
    "LightProfile",
    "SerialStackLight",
    "Signal",
    "StackLight",
    "commands_for",
    "light_profile_from_dict",
    "list_light_profiles",
    "load_light_profile",
    "make_stacklight",
    "signal_for",
]

log = get_logger("driftgate.notify.stacklight")

PROFILE_DIR = Path(__file__).resolve().parent / "stacklights"
"""The shipped command profiles (package data)."""

LAMPS = ("red", "amber", "green")
Mode = Literal["off", "on", "blink"]
BLINK_S = 0.5
"""A GPIO lamp's blink: this long on, this long off (serial lights blink at their own pace)."""

# --------------------------------------------------------------------------- what to show


@dataclass(frozen=True, slots=True)
class Signal:
    """What a tower light shows: each lamp off, on or blinking, and the buzzer."""

    red: Mode = "off"
    amber: Mode = "off"
    green: Mode = "off"
    buzzer: bool = False

    def words(self) -> str:
        """For the log: ``red, buzzer on`` or ``amber blinking`` or ``dark``."""
        lit = [lamp + (" blinking" if mode == "blink" else "")
               for lamp in LAMPS if (mode := getattr(self, lamp)) != "off"]  # fmt: skip
        if self.buzzer:
            lit.append("buzzer on")
        return ", ".join(lit) or "dark"


DARK = Signal()
"""Every lamp off and the buzzer silent: what a light shows when the agent stops."""


def signal_for(
    incidents: Iterable[Incident], zone: str | None, *, blink_unacknowledged: bool = False
) -> Signal:
    """What a light of ``zone`` (None: every zone) shows for these incidents.

    Green when none of them is open, amber for a warning, red for an alarm: the worst level
    wins. The buzzer sounds while an alarm is open and not acknowledged (an acknowledged alarm
    stays red, silent; one that gets worse than when it was acknowledged is open again).
    """
    mine = [i for i in incidents if i.state != CLOSED and (zone is None or i.zone == zone)]
    worst = max((LEVELS[i.level] for i in mine), default=LEVELS["ok"])
    if worst <= LEVELS["ok"]:
        return Signal(green="on")
    unacknowledged = any(i.state == OPEN for i in mine if LEVELS[i.level] == worst)
    mode: Mode = "blink" if blink_unacknowledged and unacknowledged else "on"
    buzzer = any(i.level == "alarm" and i.state == OPEN for i in mine)
    if worst >= LEVELS["alarm"]:
        return Signal(red=mode, buzzer=buzzer)
    return Signal(amber=mode, buzzer=buzzer)


# --------------------------------------------------------------------------- command profiles


def _hex(v: Any) -> bytes:
    if not isinstance(v, str):
        raise reason(
            f'{describe_value(v)} is not a quoted hex string: write e.g. "11" or '
            '"A0 01 01 A2" (YAML reads a bare 11 as the number eleven)'
        )
    out = bytearray()
    for token in v.replace(",", " ").split():
        digits = token.removeprefix("0x").removeprefix("0X")
        if not digits or len(digits) % 2 or any(c not in string.hexdigits for c in digits):
            raise reason(f'{v!r} is not hex bytes: write e.g. "11", "0x11" or "A0 01 01 A2"')
        out += bytes.fromhex(digits)
    if not out:
        raise reason('must not be empty: write the bytes in hex, e.g. "11"')
    return bytes(out)


def _short_gap(v: float) -> float:
    if not 0 <= v <= 1.0:
        raise reason(f"must be between 0 and 1s, got {v:g}s")
    return v


Hex = Annotated[bytes, BeforeValidator(_hex)]
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _profile_name(v: str) -> str:
    if not _NAME.fullmatch(v):
        raise reason(f"{v!r} is not a profile name: use lowercase letters, digits, - and _")
    return v


class PortSettings(Section):
    """The light's serial line settings."""

    baud: Annotated[int, Field(ge=50, le=4_000_000)] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class Commands(Section):
    """The bytes of each command, as hex strings; blink and the buzzer are optional."""

    red_on: Hex
    red_off: Hex
    red_blink: Hex | None = None
    amber_on: Hex
    amber_off: Hex
    amber_blink: Hex | None = None
    green_on: Hex
    green_off: Hex
    green_blink: Hex | None = None
    buzzer_on: Hex | None = None
    buzzer_off: Hex | None = None

    @model_validator(mode="after")
    def _buzzer_pair(self) -> Commands:
        if (self.buzzer_on is None) != (self.buzzer_off is None):
            given, missing = (
                ("buzzer_on", "buzzer_off")
                if self.buzzer_off is None
                else ("buzzer_off", "buzzer_on")
            )
            raise_problems("Commands", [((given,), f"needs {missing} too (or neither of them)")])
        return self

    @property
    def has_blink(self) -> bool:
        """Whether every lamp has a blink command."""
        return all(getattr(self, f"{lamp}_blink") is not None for lamp in LAMPS)


class LightProfile(Section):
    """One model of serial tower light: its line settings and its command bytes."""

    name: Annotated[str, AfterValidator(_profile_name)]
    description: str = ""
    port: PortSettings = Field(default_factory=PortSettings)
    gap: Annotated[Duration, AfterValidator(_short_gap)] = Field(
        default=0.0, description="pause between two commands (lights that drop bytes sent together)"
    )
    commands: Commands


def _validate(data: Any, source: str, lines: dict[Loc, int]) -> LightProfile:
    return validate_document(data, source, lines, LightProfile, "name:, commands:")


def light_profile_from_dict(data: Any, source: str = "<light profile>") -> LightProfile:
    """Validate in-memory profile data exactly like a file; ConfigError lists every problem."""
    return _validate(data, source, {})


def list_light_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    """The names of the shipped command profiles, sorted."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_light_profile(name_or_path: str | Path, directory: Path = PROFILE_DIR) -> LightProfile:
    """A command profile by name (``adafruit-tower-light``) or path; ConfigError on problems,
    one ``file:line: key: reason`` each."""
    text = str(name_or_path)
    if is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError([f"{path}: no such light profile file"])
    else:
        path = directory / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(list_light_profiles(directory)) or "none"
            raise ConfigError([f"{text}: no such light profile in {directory}; known: {known}"])
    return load_document(path, _validate)


def commands_for(signal: Signal, commands: Commands) -> list[bytes]:
    """The commands that make a light show ``signal`` from any state: every lamp and the
    buzzer is set, what goes off first (a moment dark rather than two colours at once)."""
    offs: list[bytes] = []
    ons: list[bytes] = []
    if commands.buzzer_off is not None and not signal.buzzer:
        offs.append(commands.buzzer_off)
    for lamp in LAMPS:
        mode = getattr(signal, lamp)
        if mode == "off":
            offs.append(getattr(commands, f"{lamp}_off"))
        elif mode == "blink" and getattr(commands, f"{lamp}_blink") is not None:
            ons.append(getattr(commands, f"{lamp}_blink"))
        else:
            ons.append(getattr(commands, f"{lamp}_on"))
    if commands.buzzer_on is not None and signal.buzzer:
        ons.append(commands.buzzer_on)
    return offs + ons


# --------------------------------------------------------------------------- the lights


class StackLight:
    """One tower light: a notice listener that works out what to show; subclasses show it."""

    what = "tower light"

    def __init__(
        self, cfg: StacklightTarget, open_incidents: Callable[[], Iterable[Incident]]
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.zone = cfg.zone
        self.open_incidents = open_incidents
        self.health = SourceHealth()  # connected and reconnects, as for a source
        self.shown: Signal | None = None  # what was sent last (None: unknown, send all)
        self.sent = 0  # how many times a state was sent
        self._logged: Signal | None = None  # a refresh or a reconnect is not news for the log
        self._changed = asyncio.Event()

    def __call__(self, notice: Notice) -> None:
        """A manager listener: look again at the open incidents (never blocks)."""
        self._changed.set()

    def signal(self) -> Signal:
        """What this light should show now."""
        return signal_for(
            self.open_incidents(), self.zone, blink_unacknowledged=self.cfg.blink_unacknowledged
        )

    async def _until_changed(self, *others: asyncio.Future[Any]) -> bool:
        """Wait for a notice, one of ``others`` or the refresh period; True when it was the
        refresh (then everything is sent again). The loops clear the flag before they look
        at the incidents, so a notice that comes while a state is being sent is not lost."""
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            done, _ = await asyncio.wait(
                {changed, *others}, timeout=self.cfg.refresh, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            changed.cancel()
            await asyncio.gather(changed, return_exceptions=True)
        return not done

    def _showing(self, signal: Signal) -> None:
        if signal != self._logged:
            log.info(f"{self.what} shows {signal.words()}", target=self.name, zone=self.zone)
            self._logged = signal
        self.shown = signal
        self.sent += 1

    async def run(self) -> None:
        """Show the state until cancelled (a supervised task)."""
        raise NotImplementedError

    def release(self) -> None:
        """Release what the light holds (pins); the agent calls it once, at shutdown."""


class _PortProtocol(asyncio.Protocol):
    """Resolves ``lost`` when the port goes (unplugged); bytes from the light are ignored."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}
_BYTESIZE = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}


class SerialStackLight(StackLight):
    """A tower light on a serial port, driven through its command profile."""

    def __init__(
        self,
        cfg: StacklightTarget,
        open_incidents: Callable[[], Iterable[Incident]],
        profile: LightProfile,
    ) -> None:
        super().__init__(cfg, open_incidents)
        assert cfg.port is not None
        self.port = cfg.port
        self.profile = profile
        self.baud = cfg.baud if cfg.baud is not None else profile.port.baud
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _PortProtocol | None = None

    async def run(self) -> None:
        """Keep the port open and the state shown, reopening it after an unplug."""
        reconnector = Reconnector(
            self, source=self.name, what=self.what, health=self.health,
            cap=self.cfg.reconnect_max,
        )  # fmt: skip
        await reconnector.run()

    # -- the link (what the Reconnector drives)

    async def open(self) -> None:
        """Open the port with the profile's line settings."""
        line = self.profile.port
        transport, protocol = await serial_asyncio_fast.create_serial_connection(
            asyncio.get_running_loop(),
            _PortProtocol,
            self.port,
            baudrate=self.baud,
            bytesize=_BYTESIZE[line.bytesize],
            parity=_PARITY[line.parity],
            stopbits=_STOPBITS[line.stopbits],
        )
        assert isinstance(protocol, _PortProtocol)
        self._transport, self._protocol = transport, protocol

    async def wait_lost(self) -> BaseException | None:
        """Show the state while the port is open: at once (the light may have been off or
        showing something else), on every change, and every ``refresh``; return when the
        port goes."""
        assert self._protocol is not None
        lost = self._protocol.lost
        self.shown = None
        try:
            while not lost.done():
                self._changed.clear()
                signal = self.signal()
                if signal != self.shown:
                    await self._send(signal)
                if await self._until_changed(lost):
                    self.shown = None
            return lost.result()
        except asyncio.CancelledError:
            # The agent stops: leave the light dark rather than showing a state nobody keeps.
            if not lost.done():
                self._write(commands_for(DARK, self.profile.commands))
            raise

    async def _send(self, signal: Signal) -> None:
        commands = commands_for(signal, self.profile.commands)
        if self.profile.gap > 0:
            for i, command in enumerate(commands):
                if i:
                    await asyncio.sleep(self.profile.gap)
                self._write([command])
        else:
            self._write(commands)
        self._showing(signal)

    def _write(self, commands: Sequence[bytes]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(commands))  # buffered by the transport: never blocks

    async def close(self) -> None:
        """Close the port (the Link's close; also after it was lost)."""
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is not None and not transport.is_closing():
            transport.close()  # written bytes go out first
        if protocol is not None and not protocol.lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(protocol.lost), 1.0)
            except TimeoutError:
                log.warning("tower light port did not close in time", target=self.name)


class GpioStackLight(StackLight):
    """A tower light on Raspberry Pi GPIO pins (through relays), driven with gpiozero."""

    def __init__(
        self,
        cfg: StacklightTarget,
        open_incidents: Callable[[], Iterable[Incident]],
        *,
        pin_factory: Any = None,
    ) -> None:
        super().__init__(cfg, open_incidents)
        self.outputs: dict[str, Any] = _gpio_outputs(cfg, pin_factory)
        self._modes: dict[str, Mode] = {}
        # The last _apply may still run in its thread when a cancel makes run() go dark.
        self._lock = threading.Lock()

    async def run(self) -> None:
        """Set the pins on every change (and every ``refresh``) until cancelled."""
        self.health.connected = True
        try:
            while True:
                self._changed.clear()
                signal = self.signal()
                if signal != self.shown:
                    await asyncio.to_thread(self._apply, signal)
                    self._showing(signal)
                if await self._until_changed():
                    self._modes.clear()
                    self.shown = None
        finally:
            self.health.connected = False
            # Cancelled (the agent stops): dark. Setting a few pins takes microseconds, so it
            # is done right here rather than awaited in a thread that a second cancel would cut.
            self._apply(DARK)
            self.shown = DARK

    def _apply(self, signal: Signal) -> None:
        with self._lock:
            self._set_pins(signal)

    def _set_pins(self, signal: Signal) -> None:
        for lamp in LAMPS:
            mode: Mode = getattr(signal, lamp)
            if self._modes.get(lamp) == mode:
                continue  # calling blink() again would restart the blink
            led = self.outputs[lamp]
            if mode == "blink":
                led.blink(on_time=BLINK_S, off_time=BLINK_S, background=True)
            elif mode == "on":
                led.on()
            else:
                led.off()
            self._modes[lamp] = mode
        buzzer = self.outputs.get("buzzer")
        if buzzer is not None:
            if signal.buzzer:
                buzzer.on()
            else:
                buzzer.off()

    def release(self) -> None:
        """Release the pins."""
        for output in self.outputs.values():
            with contextlib.suppress(Exception):
                output.close()


def _gpio_outputs(cfg: StacklightTarget, pin_factory: Any) -> dict[str, Any]:
    pins = cfg.gpio
    assert pins is not None
    where = f"notify.targets: {cfg.name}"
    try:
        import gpiozero
    except ImportError:
        raise ConfigError(
            [
                f"{where}: a GPIO light needs gpiozero and lgpio, which are not installed here: "
                "on the Raspberry Pi run `pip install gpiozero lgpio` in the agent's environment "
                "(or install driftgate[gpio]), or use a serial light (port: and profile:)"
            ]
        ) from None
    outputs: dict[str, Any] = {}
    wanted = [("red", pins.red), ("amber", pins.amber), ("green", pins.green)]
    # gpiozero tries one pin library after another and says why each failed in a warning;
    # kept for the error, which would otherwise only say that none could be loaded.
    with warnings.catch_warnings(record=True) as tried:
        warnings.simplefilter("always")
        try:
            _make_outputs(gpiozero, outputs, wanted, pins.buzzer, pins.active_high, pin_factory)
        except Exception as exc:  # the pin libraries raise their own errors (lgpio.error, …)
            for output in outputs.values():
                with contextlib.suppress(Exception):
                    output.close()
            why = "; ".join([f"{type(exc).__name__}: {exc}", *(str(w.message) for w in tried)])
            raise ConfigError(
                [
                    f"{where}: cannot drive GPIO pins here ({why}): is this a Raspberry Pi with "
                    "lgpio installed (`pip install gpiozero lgpio`), and are the pins free? "
                    "Elsewhere use a serial light (port: and profile:)"
                ]
            ) from None
    return outputs


def _make_outputs(
    gpiozero: Any,
    outputs: dict[str, Any],
    lamps: list[tuple[str, int]],
    buzzer: int | None,
    active_high: bool,
    pin_factory: Any,
) -> None:
    for lamp, pin in lamps:
        outputs[lamp] = gpiozero.LED(
            pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )
    if buzzer is not None:
        outputs["buzzer"] = gpiozero.Buzzer(
            buzzer, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )


def make_stacklight(
    cfg: StacklightTarget, open_incidents: Callable[[], Iterable[Incident]]
) -> StackLight:
    """The light of one ``notify.targets`` entry of type stacklight; ConfigError naming the
    target when its profile is wrong or its GPIO cannot be had."""
    if cfg.gpio is not None:
        return GpioStackLight(cfg, open_incidents)
    assert cfg.profile is not None
    try:
        profile = load_light_profile(cfg.profile)
    except ConfigError as exc:
        raise ConfigError([f"notify.targets: {cfg.name}: {p}" for p in exc.problems]) from None
    if cfg.blink_unacknowledged and not profile.commands.has_blink:
        raise ConfigError(
            [
                f"notify.targets: {cfg.name}: blink_unacknowledged needs blink commands, and "
                f"profile {profile.name} has none: add red_blink, amber_blink and green_blink "
                "to the profile, or set blink_unacknowledged: false"
            ]
        )
    return SerialStackLight(cfg, open_incidents, profile)
