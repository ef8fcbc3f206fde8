"""Tower lights: what a light shows for each incident state, the Adafruit light driven by a
running agent over a real pty pair (socat) with an emulator of the device at the far end,
unplug and replug, the periodic refresh, GPIO lights through gpiozero's MockFactory, and the
errors of command profiles and of the config."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import textwrap
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from examples import EXAMPLE, uncomment_notify, with_local_files
from servers import SerialPair

from agent.config import config_from_dict, load_config
from agent.config.notify import StacklightTarget
from agent.drift.alerts import AlertEvent, Level
from agent.errors import ConfigError
from agent.incidents.model import ACKED, CLOSED, OPEN, Incident
from agent.notify.stacklight import (
    DARK,
    PROFILE_DIR,
    Signal,
    StackLight,
    commands_for,
    light_profile_from_dict,
    list_light_profiles,
    load_light_profile,
    make_stacklight,
    signal_for,
)
from agent.reading import Channel
from agent.runtime.agent import Agent

# -- the Adafruit light, emulated -----------------------------------------------------------


class AdafruitTowerLight:
    """The Adafruit Tri-Color USB Tower Light with Buzzer (product 5125) at the far end of a
    pty, as Adafruit's published command set describes it: one byte per command, the high
    nibble what (1 on, 2 off, 4 blink), the low nibble which output (1 red, 2 yellow, 4 green,
    8 buzzer); each output keeps its state until told otherwise; other bytes change nothing
    (they are kept in ``unknown`` for the test to look at). Powered by its USB cable: all off
    when plugged in, and gone when unplugged."""

    WHAT: ClassVar[dict[int, str]] = {0x1: "on", 0x2: "off", 0x4: "blink"}
    WHICH: ClassVar[dict[int, str]] = {0x1: "red", 0x2: "amber", 0x4: "green", 0x8: "buzzer"}

    def __init__(self, path: str) -> None:
        self.state = dict.fromkeys(("red", "amber", "green", "buzzer"), "off")
        self.received = bytearray()
        self.unknown: list[int] = []
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        # Raw, and no XON/XOFF: 0x11 is RED_ON here, not DC1 (a real light has no tty layer).
        tty.setraw(self.fd)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    @property
    def plugged(self) -> bool:
        """Whether its end of the pty is still there."""
        return self.fd >= 0

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except BlockingIOError:
            return
        except OSError:  # EIO: socat is gone, the cable is out
            data = b""
        if not data:
            self.unplug()
            return
        self.received += data
        for byte in data:
            what = self.WHAT.get(byte >> 4)
            which = self.WHICH.get(byte & 0x0F)
            if what is None or which is None:
                self.unknown.append(byte)
            else:
                self.state[which] = what

    def power_cycle(self) -> None:
        """The light lost power for a moment (its port stayed): everything off."""
        self.state = dict.fromkeys(self.state, "off")

    def unplug(self) -> None:
        """Stop listening and let go of the pty."""
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        self.power_cycle()

    def shows(self) -> dict[str, str]:
        """What is lit (or sounding), and how: ``{"red": "on", "buzzer": "on"}``."""
        return {k: v for k, v in self.state.items() if v != "off"}


# -- helpers ----------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    """Poll until ``predicate`` holds; fail after ``limit`` seconds (generous: no timings
    are asserted, the machine is shared)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > limit:
            pytest.fail(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.02)


async def shows(light: AdafruitTowerLight, expected: dict[str, str], what: str) -> None:
    await wait_until(lambda: light.shows() == expected, 15, f"{what}: {expected}")


def channel(zone: str, quantity: str = "humidity") -> Channel:
    return Channel(
        name=f"{zone}.{quantity}",
        measurement="climate",
        field=quantity,
        unit="%RH",
        kind="climate",
        label=f"{zone.replace('_', ' ').capitalize()} room {quantity}",
        tags={"zone": zone},
    )


def event(ch: Channel, transition: str, level: Level) -> AlertEvent:
    """A real detector event, as the drift engine hands it to its sinks."""
    now = time.time_ns()
    return AlertEvent(
        ts_ns=now,
        channel=ch,
        detector="baseline_shift",
        transition=transition,
        level=level,
        value=55.0,
        baseline=50.0,
        delta=5.0,
        rate_per_h=math.nan,
        since_ns=now,
        baseline_note="learned",
        message=f"{ch.label} {transition}",
    )


def light_target(name: str, port: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "stacklight",
        "name": name,
        "profile": "adafruit-tower-light",
        "port": port,
        **extra,
    }


def agent_config(state: Path, targets: list[dict[str, Any]]) -> Any:
    return config_from_dict(
        {"site": "t", "gateway": "gw1", "state_dir": str(state), "notify": {"targets": targets}},
        env={},
    )


class Running:
    """Agents started by a test, stopped at its end even when it fails."""

    def __init__(self) -> None:
        self.runs: list[tuple[Agent, asyncio.Task[Any]]] = []

    def start(self, cfg: Any) -> Agent:
        agent = Agent(cfg)
        self.runs.append((agent, asyncio.create_task(agent.run(handle_signals=False))))
        return agent

    async def stop(self, agent: Agent) -> None:
        for i, (a, task) in enumerate(self.runs):
            if a is agent:
                agent.stop_event.set()
                result = await asyncio.wait_for(task, 15)
                assert result.failure is None
                del self.runs[i]
                return


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    runs = Running()
    yield runs
    for agent, task in runs.runs:
        agent.stop_event.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture
def second_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SerialPair]:
    pair = SerialPair(tmp_path_factory.mktemp("serial2"))
    pair.start()
    yield pair
    pair.stop()


def light_of(agent: Agent, name: str) -> StackLight:
    return next(light for light in agent.lights if light.name == name)


def incident_id(agent: Agent, ch: Channel) -> str:
    return agent.incidents.manager.open[ch.name].id


GREEN = {"green": "on"}
AMBER = {"amber": "on"}
RED = {"red": "on"}
RED_BUZZING = {"red": "on", "buzzer": "on"}

# -- a running agent and the Adafruit light on a pty ------------------------------------------


async def test_lights_of_two_zones_follow_the_incidents_and_go_dark_when_the_agent_stops(
    tmp_path: Path, serial_pair: SerialPair, second_pair: SerialPair, running: Running
) -> None:
    """One light for the cutting room, one for every zone; an incident in each zone through
    warn, alarm, acknowledgement and clear."""
    cutting_light = AdafruitTowerLight(serial_pair.emulator)
    floor_light = AdafruitTowerLight(second_pair.emulator)
    cfg = agent_config(
        tmp_path / "state",
        [
            light_target("tower-cutting", serial_pair.device, zone="cutting"),
            light_target("tower-floor", second_pair.device),
        ],
    )
    agent = running.start(cfg)
    cutting, paint = channel("cutting"), channel("edge_paint")
    try:
        await shows(cutting_light, GREEN, "nothing open")
        await shows(floor_light, GREEN, "nothing open")

        agent.pipeline.alert(event(cutting, "raised", Level.WARN))
        await shows(cutting_light, AMBER, "a warning in the cutting room")
        await shows(floor_light, AMBER, "a warning in the cutting room")

        agent.pipeline.alert(event(paint, "raised", Level.ALARM))
        await shows(floor_light, RED_BUZZING, "an alarm in the edge paint room")
        # The cutting room's light computed its state again on that notice, and kept it.
        assert light_of(agent, "tower-cutting").signal() == Signal(amber="on")
        assert cutting_light.shows() == AMBER

        agent.pipeline.alert(event(cutting, "escalated", Level.ALARM))
        await shows(cutting_light, RED_BUZZING, "the cutting warning escalated")

        agent.acknowledge(incident_id(agent, cutting), "Mara", "checking the humidifier")
        await shows(cutting_light, RED, "the cutting alarm acknowledged")
        # The edge paint alarm is not acknowledged: the floor light keeps buzzing.
        assert floor_light.shows() == RED_BUZZING
        agent.acknowledge(incident_id(agent, paint), "Jonas")
        await shows(floor_light, RED, "every alarm acknowledged")

        agent.pipeline.alert(event(cutting, "cleared", Level.OK))
        await shows(cutting_light, GREEN, "the cutting incident cleared")
        assert floor_light.shows() == RED  # the edge paint alarm is still open

        agent.pipeline.alert(event(paint, "cleared", Level.OK))
        await shows(floor_light, GREEN, "everything cleared")

        await running.stop(agent)
        assert cutting_light.shows() == {}, "dark once stopped"
        assert floor_light.shows() == {}, "dark once stopped"
        # Only the documented command bytes were ever sent.
        assert cutting_light.unknown == []
        assert floor_light.unknown == []
        assert set(cutting_light.received) <= {0x11, 0x21, 0x12, 0x22, 0x14, 0x24, 0x18, 0x28}
    finally:
        cutting_light.unplug()
        floor_light.unplug()


async def test_an_unplugged_light_shows_the_current_state_again_when_plugged_back_in(
    tmp_path: Path, serial_pair: SerialPair, running: Running
) -> None:
    light = AdafruitTowerLight(serial_pair.emulator)
    agent = running.start(
        agent_config(tmp_path / "state", [light_target("tower", serial_pair.device)])
    )
    tower = light_of(agent, "tower")
    cutting = channel("cutting")
    try:
        await shows(light, GREEN, "nothing open")
        agent.pipeline.alert(event(cutting, "raised", Level.ALARM))
        await shows(light, RED_BUZZING, "an alarm")

        async def unplug() -> None:
            light.unplug()
            serial_pair.stop()
            await wait_until(lambda: not tower.health.connected, 10, "the unplug to be noticed")

        async def replug() -> AdafruitTowerLight:
            serial_pair.start()
            return AdafruitTowerLight(serial_pair.emulator)  # powered up again: all off

        # Unplugged and plugged in again, nothing changed meanwhile: the same state again.
        await unplug()
        await asyncio.sleep(1.0)  # a few failed opens
        light = await replug()
        await shows(light, RED_BUZZING, "the alarm again after the replug")

        # Unplugged, and someone acknowledges the alarm meanwhile: the state of now.
        await unplug()
        agent.acknowledge(incident_id(agent, cutting), "Mara")
        light = await replug()
        await shows(light, RED, "the acknowledged alarm after the replug")
        assert tower.health.connected
        assert tower.health.reconnects == 2
        assert light.unknown == []
    finally:
        light.unplug()


async def test_a_light_that_lost_power_shows_the_state_again_at_the_next_refresh(
    tmp_path: Path, serial_pair: SerialPair, running: Running
) -> None:
    light = AdafruitTowerLight(serial_pair.emulator)
    cfg = agent_config(
        tmp_path / "state", [light_target("tower", serial_pair.device, refresh="300ms")]
    )
    agent = running.start(cfg)
    try:
        agent.pipeline.alert(event(channel("cutting"), "raised", Level.WARN))
        await shows(light, AMBER, "a warning")
        light.power_cycle()  # its own supply dipped; the USB port stayed
        assert light.shows() == {}
        await shows(light, AMBER, "the warning again after a refresh")
        assert light_of(agent, "tower").health.reconnects == 0
    finally:
        light.unplug()


async def test_blink_unacknowledged_blinks_until_acknowledged(
    tmp_path: Path, serial_pair: SerialPair, running: Running
) -> None:
    light = AdafruitTowerLight(serial_pair.emulator)
    cfg = agent_config(
        tmp_path / "state", [light_target("tower", serial_pair.device, blink_unacknowledged=True)]
    )
    agent = running.start(cfg)
    cutting = channel("cutting")
    try:
        await shows(light, GREEN, "nothing open")
        agent.pipeline.alert(event(cutting, "raised", Level.WARN))
        await shows(light, {"amber": "blink"}, "an unacknowledged warning")
        agent.pipeline.alert(event(cutting, "escalated", Level.ALARM))
        await shows(light, {"red": "blink", "buzzer": "on"}, "an unacknowledged alarm")
        agent.acknowledge(incident_id(agent, cutting), "Mara")
        await shows(light, RED, "the alarm acknowledged")
        # Acknowledged, still open: the light stops blinking, the red stays.
        assert [(i.level, i.acked_by) for i in agent.incidents.manager.open.values()] == [
            ("alarm", "Mara")
        ]
    finally:
        light.unplug()


async def test_a_notice_that_comes_while_a_state_is_sent_is_not_lost(
    tmp_path: Path, serial_pair: SerialPair, running: Running
) -> None:
    """A light that needs a pause between commands: the escalation comes while the warning is
    still being sent, and is shown right after it (not at the next refresh, a minute on)."""
    slow = (PROFILE_DIR / "adafruit-tower-light.yaml").read_text(encoding="utf-8")
    slow = slow.replace("name: adafruit-tower-light", "name: slow-light") + "gap: 200ms\n"
    profile = tmp_path / "slow-light.yaml"
    profile.write_text(slow, encoding="utf-8")
    light = AdafruitTowerLight(serial_pair.emulator)
    target = {**light_target("tower", serial_pair.device), "profile": str(profile)}
    agent = running.start(agent_config(tmp_path / "state", [target]))
    tower = light_of(agent, "tower")
    cutting = channel("cutting")
    try:
        await shows(light, GREEN, "nothing open")
        sent = tower.sent
        agent.pipeline.alert(event(cutting, "raised", Level.WARN))
        await wait_until(lambda: len(light.received) >= 4 * (sent + 1) - 2, 10, "the warning sent")
        agent.pipeline.alert(event(cutting, "escalated", Level.ALARM))  # in the middle of it
        await shows(light, RED_BUZZING, "the alarm right after the warning")
        assert [i.level for i in agent.incidents.manager.open.values()] == ["alarm"]
    finally:
        light.unplug()


# -- GPIO, through gpiozero's mock pins --------------------------------------------------------


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    """gpiozero's MockFactory as the default pin factory (gpiozero's own testing aid)."""
    mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero is not installed")
    from gpiozero import Device

    factory = mock.MockFactory()
    before = Device.pin_factory
    Device.pin_factory = factory
    yield factory
    Device.pin_factory = before
    factory.reset()


async def test_a_gpio_light_drives_its_pins(
    tmp_path: Path, mock_pins: Any, running: Running
) -> None:
    """Relays that switch on a low pin (active_high: false), every zone, blink while
    unacknowledged."""
    pins = {"red": 17, "amber": 27, "green": 22, "buzzer": 23}
    cfg = agent_config(
        tmp_path / "state",
        [
            {
                "type": "stacklight",
                "name": "tower-pi",
                "blink_unacknowledged": True,
                "gpio": {**pins, "active_high": False},
            }
        ],
    )
    agent = running.start(cfg)

    def lit() -> set[str]:
        return {name for name, pin in pins.items() if mock_pins.pin(pin).state == 0}

    def toggles(name: str) -> int:
        return len(mock_pins.pin(pins[name]).states)

    await wait_until(lambda: lit() == {"green"}, 10, "green")
    cutting = channel("cutting")
    agent.pipeline.alert(event(cutting, "raised", Level.ALARM))
    await wait_until(lambda: "buzzer" in lit() and "green" not in lit(), 10, "an alarm")
    before = toggles("red")
    await wait_until(lambda: toggles("red") >= before + 2, 10, "the red lamp blinking")
    assert "amber" not in lit()

    agent.acknowledge(incident_id(agent, cutting), "Mara")
    await wait_until(lambda: lit() == {"red"}, 10, "red, steady and silent")
    steady = toggles("red")
    await asyncio.sleep(1.2)  # longer than a blink period: a blinking lamp would have toggled
    assert toggles("red") == steady
    assert lit() == {"red"}

    agent.pipeline.alert(event(cutting, "cleared", Level.OK))
    await wait_until(lambda: lit() == {"green"}, 10, "green again")
    await running.stop(agent)
    assert lit() == set(), "dark once stopped"


def test_a_gpio_light_without_gpiozero_names_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # import gpiozero raises ImportError
    cfg = StacklightTarget.model_validate(
        {"type": "stacklight", "name": "tower-pi", "gpio": {"red": 17, "amber": 27, "green": 22}}
    )
    with pytest.raises(ConfigError) as caught:
        make_stacklight(cfg, list)
    (problem,) = caught.value.problems
    assert problem.startswith("notify.targets: tower-pi: a GPIO light needs gpiozero and lgpio")
    assert "pip install gpiozero lgpio" in problem


def test_a_gpio_light_on_a_machine_without_gpio_names_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpiozero = pytest.importorskip("gpiozero", reason="gpiozero is not installed")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    cfg = StacklightTarget.model_validate(
        {"type": "stacklight", "name": "tower-pi", "gpio": {"red": 17, "amber": 27, "green": 22}}
    )
    try:
        light = make_stacklight(cfg, list)
    except ConfigError as exc:
        (problem,) = exc.problems
        assert problem.startswith("notify.targets: tower-pi: cannot drive GPIO pins here")
        assert "is this a Raspberry Pi" in problem
    else:
        light.release()
        pytest.skip("this machine has GPIO pins: the error cannot happen here")


# -- what is shown, as a table ---------------------------------------------------------------


def incident(zone: str, level: str, state: str = OPEN, n: int = 1) -> Incident:
    return Incident(
        id=f"20260105-{n:04d}",
        key=f"{zone}.humidity",
        channel=f"{zone}.humidity",
        zone=zone,
        label="",
        kind="climate",
        unit="%RH",
        affects="",
        action="",
        opened_ns=0,
        level=level,
        state=state,
    )


@pytest.mark.parametrize(
    ("incidents", "zone", "expected"),
    [
        ([], None, Signal(green="on")),
        ([incident("cutting", "warn")], "cutting", Signal(amber="on")),
        ([incident("cutting", "warn", ACKED)], "cutting", Signal(amber="on")),
        ([incident("cutting", "alarm")], "cutting", Signal(red="on", buzzer=True)),
        ([incident("cutting", "alarm", ACKED)], "cutting", Signal(red="on")),
        ([incident("cutting", "ok", CLOSED)], "cutting", Signal(green="on")),
        ([incident("edge_paint", "alarm")], "cutting", Signal(green="on")),
        ([incident("edge_paint", "alarm")], None, Signal(red="on", buzzer=True)),
        # An acknowledged alarm and an unacknowledged one: red, and it buzzes for the second.
        ([incident("a", "alarm", ACKED), incident("b", "alarm", n=2)], None,
         Signal(red="on", buzzer=True)),
        # An unacknowledged warning does not buzz beside an acknowledged alarm.
        ([incident("a", "alarm", ACKED), incident("b", "warn", n=2)], None, Signal(red="on")),
    ],
)  # fmt: skip
def test_what_a_light_shows(incidents: list[Incident], zone: str | None, expected: Signal) -> None:
    assert signal_for(incidents, zone) == expected


def test_blinking_follows_the_acknowledgement_of_the_worst_level() -> None:
    acked_alarm, open_warn = incident("a", "alarm", ACKED), incident("b", "warn", n=2)
    assert signal_for([acked_alarm, open_warn], None, blink_unacknowledged=True) == Signal(red="on")
    assert signal_for([open_warn], None, blink_unacknowledged=True) == Signal(amber="blink")


def test_the_adafruit_commands_set_every_output_offs_first() -> None:
    commands = load_light_profile("adafruit-tower-light").commands
    red_buzzing = commands_for(Signal(red="on", buzzer=True), commands)
    assert red_buzzing == [b"\x22", b"\x24", b"\x11", b"\x18"]
    assert commands_for(DARK, commands) == [b"\x28", b"\x21", b"\x22", b"\x24"]
    assert commands_for(Signal(green="blink"), commands) == [b"\x28", b"\x21", b"\x22", b"\x44"]


# -- command profiles --------------------------------------------------------------------------


def test_the_shipped_profiles_load() -> None:
    assert list_light_profiles() == ["adafruit-tower-light", "lcus-relay"]
    adafruit = load_light_profile("adafruit-tower-light")
    assert adafruit.port.baud == 9600
    assert adafruit.commands.red_on == b"\x11"
    assert adafruit.commands.buzzer_off == b"\x28"
    assert adafruit.commands.has_blink
    lcus = load_light_profile("lcus-relay")
    for name in (
        "red_on",
        "red_off",
        "amber_on",
        "amber_off",
        "green_on",
        "green_off",
        "buzzer_on",
        "buzzer_off",
    ):
        command = getattr(lcus.commands, name)
        assert len(command) == 4
        assert command[0] == 0xA0
        assert command[3] == sum(command[:3]) % 256, f"{name}: wrong checksum"
    assert not lcus.commands.has_blink


def write_profile(tmp_path: Path, text: str, name: str = "my-light") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GOOD = """\
name: my-light
commands:
  red_on: "11"
  red_off: "21"
  amber_on: "12"
  amber_off: "22"
  green_on: "14"
  green_off: "24"
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_light_profile(path)
    return caught.value.problems


def test_a_profile_problem_names_file_line_and_key(tmp_path: Path) -> None:
    path = write_profile(
        tmp_path, GOOD.replace('  red_off: "21"', '  red_offf: "21"') + "baud: 9600\n"
    )
    assert problems_of(path) == [
        f"{path}:2: commands.red_off: required key is missing",
        f"{path}:4: commands.red_offf: unknown key 'red_offf'; did you mean 'red_off'?",
        f"{path}:9: baud: unknown key 'baud'; allowed here: name, description, port, gap, commands",
    ]


def test_a_bare_number_is_not_taken_for_hex(tmp_path: Path) -> None:
    path = write_profile(tmp_path, GOOD.replace('red_on: "11"', "red_on: 11"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3: commands.red_on: 11 is not a quoted hex string")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("11", b"\x11"), ("0x11", b"\x11"), ("A0 01 01 A2", b"\xa0\x01\x01\xa2"),
     ("a00101a2", b"\xa0\x01\x01\xa2"), ("0xA0, 0x01", b"\xa0\x01")],
)  # fmt: skip
def test_hex_commands(value: str, expected: bytes) -> None:
    data = {
        "name": "x",
        "commands": {
            **dict.fromkeys(
                ("red_on", "red_off", "amber_on", "amber_off", "green_on", "green_off"), "00"
            ),
            "red_on": value,
        },
    }
    assert light_profile_from_dict(data).commands.red_on == expected


@pytest.mark.parametrize("value", ["", "1", "GG", "0x", "11 2"])
def test_not_hex_is_an_error(value: str) -> None:
    data = {
        "name": "x",
        "commands": {
            **dict.fromkeys(
                ("red_on", "red_off", "amber_on", "amber_off", "green_on", "green_off"), "00"
            ),
            "red_on": value,
        },
    }
    with pytest.raises(ConfigError) as caught:
        light_profile_from_dict(data)
    (problem,) = caught.value.problems
    assert problem.startswith("<light profile>: commands.red_on: ")


def test_other_profile_problems(tmp_path: Path) -> None:
    half_buzzer = write_profile(tmp_path, GOOD + '  buzzer_on: "18"\n')
    assert problems_of(half_buzzer) == [
        f"{half_buzzer}:9: commands.buzzer_on: needs buzzer_off too (or neither of them)"
    ]
    renamed = write_profile(tmp_path, GOOD, name="other")
    assert problems_of(renamed) == [
        f"{renamed}:1: name: 'my-light' must match the file name 'other'"
    ]
    with pytest.raises(ConfigError) as caught:
        load_light_profile("no-such-light")
    assert caught.value.problems == [
        f"no-such-light: no such light profile in {PROFILE_DIR}; known: adafruit-tower-light, "
        "lcus-relay"
    ]


def test_a_broken_profile_stops_the_agent_at_start_naming_the_target(tmp_path: Path) -> None:
    path = write_profile(tmp_path, GOOD.replace('green_on: "14"', 'green_on: "1"'))
    cfg = agent_config(
        tmp_path / "state", [{**light_target("tower", "/dev/null"), "profile": str(path)}]
    )
    with pytest.raises(ConfigError) as caught:
        Agent(cfg)
    (problem,) = caught.value.problems
    assert problem.startswith(f"notify.targets: tower: {path}:7: commands.green_on: '1' is not")


def test_blinking_needs_a_profile_with_blink_commands(tmp_path: Path) -> None:
    cfg = agent_config(
        tmp_path / "state",
        [
            {
                **light_target("tower", "/dev/null"),
                "profile": "lcus-relay",
                "blink_unacknowledged": True,
            }
        ],
    )
    with pytest.raises(ConfigError) as caught:
        Agent(cfg)
    (problem,) = caught.value.problems
    assert problem.startswith("notify.targets: tower: blink_unacknowledged needs blink commands")


# -- the config ----------------------------------------------------------------------------------


def config_problems(targets: list[dict[str, Any]], routes: Any = ()) -> list[str]:
    notify = {"targets": targets, "routes": list(routes)}
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"site": "t", "gateway": "g", "notify": notify}, env={})
    return caught.value.problems


def test_stacklight_config_problems() -> None:
    gpio = {"red": 17, "amber": 27, "green": 22}
    assert config_problems([{"type": "stacklight", "name": "t", "port": "/dev/ttyUSB0"}]) == [
        "<built-in>: notify.targets[0].profile: a serial light needs one: "
        "adafruit-tower-light, lcus-relay, a path"
    ]
    assert config_problems(
        [{"type": "stacklight", "name": "t", "gpio": gpio, "profile": "adafruit-tower-light"}]
    ) == [
        "<built-in>: notify.targets[0].profile: profile is for serial lights (port:); a GPIO "
        "light has only its pins"
    ]
    assert config_problems(
        [{"type": "stacklight", "name": "t", "gpio": {**gpio, "buzzer": 17}}]
    ) == ["<built-in>: notify.targets[0].gpio.buzzer: GPIO17 is already the red pin"]
    assert config_problems([{"type": "stacklight", "name": "t"}]) == [
        "<built-in>: notify.targets[0].port: give either port (serial) or gpio (pins)"
    ]


def test_a_route_to_a_stack_light_is_refused() -> None:
    light = light_target("tower", "/dev/ttyUSB0")
    hook = {"type": "webhook", "name": "mes", "url": "http://mes.local/hook"}
    assert config_problems([light, hook], [{"name": "all", "to": ["mes", "tower"]}]) == [
        "<built-in>: notify.routes[0].to[1]: 'tower' is a stack light: it shows the state of "
        "its zone by itself and takes no notices; remove it from this route"
    ]
    assert config_problems([light, {**light, "port": "/dev/ttyUSB1"}]) == [
        "<built-in>: notify.targets[1].name: 'tower' is already the name of targets[0]"
    ]


def test_the_example_config_has_a_stack_light(tmp_path: Path) -> None:
    text = with_local_files(uncomment_notify(EXAMPLE.read_text(encoding="utf-8")), tmp_path)
    text = text.replace("  password_file: /etc/driftgate/influx-password\n", "")
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path, env={"DRIFTGATE_INFLUX_PASSWORD": "x"})
    (light,) = [t for t in cfg.notify.targets if isinstance(t, StacklightTarget)]
    assert (light.zone, light.profile, light.refresh) == ("cutting", "adafruit-tower-light", 60.0)
    load_light_profile(light.profile or "")
