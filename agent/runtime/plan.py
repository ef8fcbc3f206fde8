"""What a configuration will produce, known before anything runs: the channels of each
source, named by the code that names them at run time, and the ``channels:`` entries that no
source can produce (their label, affects, limits and detectors would never apply).

``check-config`` prints both; ``driftgate run`` logs the second at start.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.color.colorimetry import illuminant_slug
from agent.color.stage import measurement_channel
from agent.config.models import (
    AgentConfig,
    ModbusSourceConfig,
    MqttSourceConfig,
    SerialSourceConfig,
    SimulatedSourceConfig,
)
from agent.errors import ConfigError
from agent.ingest.modbus import modbus_device
from agent.ingest.mqtt import MqttSource
from agent.ingest.naming import (
    PlannedChannel,
    channel_name,
    placeholder,
    planned_channels,
    split_tags,
)
from agent.ingest.profiles import Profile, load_profile
from agent.ingest.serial import SerialSource
from agent.sim.workshop import Workshop

_PLACEHOLDER = re.compile(r"\\\{[A-Za-z_][A-Za-z0-9_]*\\\}")


@dataclass(frozen=True)
class SourcePlan:
    """One source and the channels it will produce."""

    index: int
    name: str
    what: str
    channels: list[PlannedChannel] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    @property
    def patterns(self) -> list[str]:
        """Every channel name this source may produce, frame-given parts as ``{tag}``."""
        return [p for c in self.channels for p in c.patterns]


@dataclass(frozen=True)
class Unproduced:
    """A ``channels:`` entry whose name no source produces."""

    index: int
    name: str
    detail: str


def _colour_channels(cfg: AgentConfig, prefix: str, profile: Profile) -> list[PlannedChannel]:
    """The ΔE00 (and metamerism) channels the colour stage makes for an instrument."""
    sku, part = placeholder("sku"), placeholder("part")
    if profile.spectrum is not None:
        names = [f"de00_{illuminant_slug(n)}" for n in cfg.color.illuminants] + ["metamerism"]
    elif any(f.kind == "color" for f in profile.fields):
        names = [f"de00_{illuminant_slug(cfg.color.colorimeter_illuminant)}"]
    else:
        return []
    return [
        PlannedChannel(measurement_channel(prefix, sku, part, n), "color", n, "ΔE00", "color")
        for n in names
    ]


def plan_sources(cfg: AgentConfig) -> list[SourcePlan]:
    """Each configured source and its channels; ConfigError with every source's problem (a
    profile that does not exist or does not fit the source, an MQTT topic that cannot be)."""
    plans: list[SourcePlan] = []
    problems: list[str] = []
    for index, sc in enumerate(cfg.sources):
        if isinstance(sc, SimulatedSourceConfig):
            shop = Workshop.build(0.0, seed=sc.seed, rooms=sc.rooms, machines=sc.machines)
            channels = [
                PlannedChannel(c.name, c.measurement, c.field, c.unit, c.kind)
                for c in shop.channels()
            ]
            plans.append(SourcePlan(index, sc.name, "simulated workshop", channels))
            continue
        if isinstance(sc, ModbusSourceConfig):
            try:
                plans.append(_modbus_plan(index, sc))
            except ConfigError as exc:
                problems += exc.problems
            continue
        try:
            profile = load_profile(sc.profile)
            if isinstance(sc, MqttSourceConfig):
                topics = MqttSource.topic_templates(sc, profile)
            else:
                topics = []
                SerialSource.check_profile(sc, profile)
        except ConfigError as exc:
            problems += exc.problems
            continue
        where = f"on {sc.port}" if isinstance(sc, SerialSourceConfig) else f"on {', '.join(topics)}"
        channels = planned_channels(sc, profile, topics)
        channels += _colour_channels(cfg, sc.prefix(), profile)
        plans.append(SourcePlan(index, sc.name, f"{sc.type} {profile.name} {where}", channels,
                                topics))  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return plans


def _modbus_plan(index: int, sc: ModbusSourceConfig) -> SourcePlan:
    """A Modbus bus: each device's registers, named as its FrameHandler names them (the
    device's ``sensor`` tag is the frame's, so it is part of the name unless the device's
    ``tags:`` set the same)."""
    channels: list[PlannedChannel] = []
    for device_cfg in sc.devices:
        device = modbus_device(sc, device_cfg)
        identity = split_tags(device.tags, device.base_tags)[0]
        for item in device.registers.registers:
            name = channel_name(device.prefix, identity, item.channel)
            channels.append(
                PlannedChannel(name, item.measurement, item.field, item.unit, item.kind)
            )
    bus = sc.port if sc.port is not None else f"{sc.host}:{sc.tcp_port}"
    return SourcePlan(index, sc.name, f"modbus {sc.transport} on {bus}", channels)


def _matcher(pattern: str) -> Callable[[str], bool]:
    regex = re.compile(_PLACEHOLDER.sub(".+", re.escape(pattern)))
    return lambda name: regex.fullmatch(name) is not None


def _without_placeholders(pattern: str) -> str:
    return ".".join(part for part in pattern.split(".") if not part.startswith("{"))


def unproduced(cfg: AgentConfig, plans: Sequence[SourcePlan]) -> list[Unproduced]:
    """The ``channels:`` entries no source's channels match, each with what is nearest."""
    if not cfg.channels:
        return []  # run calls this at every start: 1,000 channels' regexes cost 0.15 s
    patterns = [(plan, p) for plan in plans for p in plan.patterns]
    exact = {p for _, p in patterns if "{" not in p}
    matchers = [_matcher(p) for _, p in patterns if "{" in p]
    out: list[Unproduced] = []
    for index, channel in enumerate(cfg.channels):
        if channel.name in exact or any(match(channel.name) for match in matchers):
            continue
        what = (
            "no source produces this channel, so its label, affects, action, limits and "
            "detectors never apply"
        )
        if not patterns:
            out.append(Unproduced(index, channel.name, f"{what}: there are no sources"))
            continue
        near = difflib.get_close_matches(channel.name, [p for _, p in patterns], n=1, cutoff=0.5)
        if not near:
            out.append(Unproduced(index, channel.name, f"{what} (check-config lists theirs)"))
            continue
        plan = next(plan for plan, p in patterns if p == near[0])
        hint = f"the nearest is {near[0]} from source {plan.name}"
        tags = [part[1:-1] for part in near[0].split(".") if part.startswith("{")]
        if tags and _without_placeholders(near[0]) == channel.name:
            values = ", ".join(f"{tag}: <its {tag}>" for tag in tags)
            named = near[0]
            for tag in tags:
                named = named.replace(placeholder(tag), f"<{tag}>")
            hint += (
                f": the {' and '.join(tags)} each device sends is part of the name; set "
                f"{values} on that source to leave it out, or name the channel {named}"
            )
        out.append(Unproduced(index, channel.name, f"{what}; {hint}"))
    return out


def configured_for(cfg: AgentConfig, channel: PlannedChannel) -> list[str]:
    """The ``channels:`` entries that will apply to a planned channel."""
    matchers = [_matcher(p) for p in channel.patterns]
    return [c.name for c in cfg.channels if any(match(c.name) for match in matchers)]
