"""The channel registry: creates channels as sources first see them, with their detectors,
their configured words (label, affects) and the production context as tags.

A source creates a channel for every new sensor id or topic level it sees, so a careless or
hostile publisher could create channels without end (8,000 made-up sensor ids once made
16,000 channels and 200 MB). The registry holds at most ``max_channels``
(``input_limits.max_channels``): past it, a new channel from a source is refused with
``ChannelLimitError`` (the source drops and counts the reading); channels named in the config
and those the agent makes itself (colour ΔE00, bounded by the approved references) are still
admitted. "new channel" is logged for the first few of each minute and summarised after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from agent.config.detectors import BaselineSpecConfig, DetectorConfig
from agent.config.models import ChannelConfig
from agent.context import ContextStore
from agent.drift.engine import DriftEngine
from agent.errors import DriftgateError
from agent.logs import get_logger
from agent.reading import Channel

log = get_logger("driftgate.channels")

NEW_CHANNEL_LINES = 20
"""New channels logged one by one per NEW_CHANNEL_WINDOW_S; the rest go into one summary."""
NEW_CHANNEL_WINDOW_S = 60.0


class ChannelLimitError(DriftgateError):
    """A new channel was refused: the registry already holds ``input_limits.max_channels``."""


class _NewChannelLog:
    """'new channel' per channel for the first few of a window, then one summary line."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = float("-inf")
        self.logged = 0
        self.held: list[str] = []

    def new(self, name: str, measurement: str, field: str) -> None:
        now = self.clock()
        if now - self.started >= NEW_CHANNEL_WINDOW_S:
            self.flush()
            self.started, self.logged = now, 0
        if self.logged < NEW_CHANNEL_LINES:
            self.logged += 1
            log.info("new channel", channel=name, measurement=measurement, field=field)
        else:
            self.held.append(name)

    def flush(self, *, force: bool = False) -> None:
        """Log the summary of the held-back channels once their window has closed."""
        if not self.held or (not force and self.clock() - self.started < NEW_CHANNEL_WINDOW_S):
            return
        log.info(
            "new channels",
            count=len(self.held),
            first=self.held[0],
            last=self.held[-1],
            window_s=int(NEW_CHANNEL_WINDOW_S),
        )
        self.held = []


class ChannelRegistry:
    """Every channel of the agent, by name."""

    def __init__(
        self,
        configs: Iterable[ChannelConfig],
        engine: DriftEngine,
        context: ContextStore,
        *,
        max_channels: int | None = None,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.engine = engine
        self.context = context
        self.channels: dict[str, Channel] = {}
        self.max_channels = max_channels  # None: no cap (a replay of a file)
        self.new_channels = _NewChannelLog()

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
        if cc is not None and cc.enabled and cc.compare_on:
            # Compared on context changes though it may have no detectors (a moisture meter at
            # intake): its readings reach the pipeline's stages (history, lots) in batches.
            channel.watched = True
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
        capped: bool = True,
    ) -> Channel:
        """The channel of that name, created on first sight (a source's new sensor).

        ChannelLimitError when it would be new and the registry is full (``capped=False``:
        admit it anyway, for channels the agent makes itself from bounded state).
        """
        channel = self.channels.get(name)
        if channel is not None:
            return channel
        limit = self.max_channels
        full = limit is not None and len(self.channels) >= limit
        if capped and full and name not in self.configs:
            raise ChannelLimitError(
                f"channel {name[:120]!r} would be channel {len(self.channels) + 1}: at most "
                f"{limit} (input_limits.max_channels)"
            )
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
        self.new_channels.new(name, measurement, field)
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
