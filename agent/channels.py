"""The channel registry: creates channels as sources first see them, with their detectors,
their configured words (label, affects) and the production context as tags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.config import ChannelConfig
from agent.context import ContextStore
from agent.drift.alerts import FLAP_COUNT, FLAP_WINDOW
from agent.drift.baselines import BaselineStore
from agent.drift.engine import attach_detectors
from agent.logs import get_logger
from agent.reading import Channel

log = get_logger("driftgate.channels")


class ChannelRegistry:
    """Every channel of the agent, by name."""

    def __init__(
        self,
        configs: Iterable[ChannelConfig],
        baselines: BaselineStore,
        context: ContextStore,
        repeat: float | None = None,
        flap: tuple[int, float] = (FLAP_COUNT, FLAP_WINDOW),
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.baselines = baselines
        self.context = context
        self.repeat = repeat
        self.flap = flap
        self.channels: dict[str, Channel] = {}

    def add(self, channel: Channel) -> Channel:
        """Register a channel: apply its config, attach detectors, tag it with the context."""
        existing = self.channels.get(channel.name)
        if existing is not None:
            return existing
        cc = self.configs.get(channel.name)
        specs: list[dict[str, Any]] | None = None
        baseline: dict[str, Any] | None = None
        if cc is not None:
            if cc.baseline is not None:
                baseline = cc.baseline.model_dump()
            channel.label = cc.label or channel.label
            channel.unit = cc.unit or channel.unit
            channel.affects = cc.affects or channel.affects
            channel.kind = cc.kind or channel.kind
            if not cc.enabled:
                specs = []
            elif cc.detectors is not None:
                specs = [d.model_dump() for d in cc.detectors]
        attach_detectors(channel, specs, self.baselines, self.repeat, baseline, self.flap)
        channel.retag(self.context.for_tags(channel.tags))
        self.channels[channel.name] = channel
        return channel

    def get_or_create(
        self,
        name: str,
        *,
        measurement: str,
        field: str,
        unit: str,
        kind: str,
        tags: Mapping[str, str],
    ) -> Channel:
        """The channel of that name, created on first sight (a source's new sensor)."""
        channel = self.channels.get(name)
        if channel is not None:
            return channel
        label = name.replace(".", " ").replace("_", " ")
        channel = Channel(
            name=name,
            measurement=measurement,
            field=field,
            unit=unit,
            kind=kind,
            label=label[:1].upper() + label[1:],
            tags=dict(tags),
        )
        log.info("new channel", channel=name, measurement=measurement, field=field)
        return self.add(channel)

    def retag_all(self) -> int:
        """Re-apply the production context to every channel (after a context change)."""
        for channel in self.channels.values():
            channel.retag(self.context.for_tags(channel.tags))
        return len(self.channels)

    def reload_baselines(self) -> bool:
        """Pick up baselines captured or cleared with the CLI; True if any changed."""
        if not self.baselines.reload():
            return False
        for channel in self.channels.values():
            if channel.baseline is not None:
                channel.baseline.reload()
        return True

    def warn_unused_configs(self) -> None:
        """Log configured channel names no source has produced (a typo, or a device offline)."""
        for name in sorted(set(self.configs) - set(self.channels)):
            log.warning("configured channel has no readings yet", channel=name)
