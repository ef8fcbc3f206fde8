"""The channel registry: creates channels as sources first see them, with their detectors,
their configured words (label, affects) and the production context as tags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from agent.config.detectors import BaselineSpecConfig, DetectorConfig
from agent.config.models import ChannelConfig
from agent.context import ContextStore
from agent.drift.engine import DriftEngine
from agent.logs import get_logger
from agent.reading import Channel

log = get_logger("driftgate.channels")


class ChannelRegistry:
    """Every channel of the agent, by name."""

    def __init__(
        self, configs: Iterable[ChannelConfig], engine: DriftEngine, context: ContextStore
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.engine = engine
        self.context = context
        self.channels: dict[str, Channel] = {}

    def add(
        self,
        channel: Channel,
        *,
        detectors: Sequence[DetectorConfig] | None = None,
        baseline: BaselineSpecConfig | None = None,
    ) -> Channel:
        """Register a channel: apply its config, attach detectors, tag it with the context.

        ``detectors``/``baseline`` replace the kind's defaults unless the config names the
        channel (for channels the agent makes itself, such as a colour stage's ΔE00).
        """
        existing = self.channels.get(channel.name)
        if existing is not None:
            return existing
        cc = self.configs.get(channel.name)
        if cc is not None:
            channel.label = cc.label or channel.label
            channel.unit = cc.unit or channel.unit
            channel.affects = cc.affects or channel.affects
            channel.kind = cc.kind or channel.kind
        self.engine.attach(channel, cc, detectors=detectors, baseline=baseline)
        self._retag(channel)
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
        detectors: Sequence[DetectorConfig] | None = None,
        baseline: BaselineSpecConfig | None = None,
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
        return self.add(channel, detectors=detectors, baseline=baseline)

    def retag_all(self) -> int:
        """Re-apply the production context to every channel (after a context change)."""
        for channel in self.channels.values():
            self._retag(channel)
        return len(self.channels)

    def _retag(self, channel: Channel) -> None:
        context = self.context.for_tags(channel.tags)
        channel.retag(context)
        self.engine.context_changed(channel, context)

    def warn_unused_configs(self) -> None:
        """Log configured channel names no source has produced (a typo, or a device offline)."""
        for name in sorted(set(self.configs) - set(self.channels)):
            log.warning("configured channel has no readings yet", channel=name)
