"""Hot-path records: a Channel (one stream of one quantity) and a Reading (one value of it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from agent.store.lineprotocol import escape_key, format_float, series_prefix


@dataclass(slots=True)
class Channel:
    """One stream of one quantity: where it is (tags), what it means (label, affects), its units.

    ``prefix`` is the precomputed line-protocol head (measurement, tags, field key);
    ``retag`` rebuilds it when the production context (lot, operator, shift) changes. The
    pending lists are the pipeline's queue of readings awaiting detection; what the detectors
    know of the channel is the drift engine's (``agent.drift.engine.ChannelDrift``).
    """

    name: str
    measurement: str
    field: str
    unit: str = ""
    kind: str = "climate"
    label: str = ""
    affects: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    prefix: str = ""
    readings: int = 0
    watched: bool = False  # the drift engine runs detectors on it
    wants_invalid: bool = False  # a detector counts out-of-range readings (as NaN)
    pending_ns: list[int] = dataclasses.field(default_factory=list)
    pending_x: list[float] = dataclasses.field(default_factory=list)
    pending_since: float = 0.0  # monotonic time the oldest pending reading arrived

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name
        self.retag({})

    def retag(self, context: Mapping[str, str]) -> None:
        """Recompute the line-protocol prefix with the channel's tags plus context tags."""
        self.prefix = self.prefix_for(context)

    def prefix_for(self, extra: Mapping[str, str]) -> str:
        """The line-protocol head of this channel's points with ``extra`` tags on top."""
        if not self.field:
            raise ValueError(f"channel {self.name!r} needs a non-empty field key")
        merged = {**self.tags, **extra}
        return series_prefix(self.measurement, merged) + " " + escape_key(self.field) + "="

    def line(self, ts_ns: int, value: float) -> str:
        """Encode one reading of this channel as a line-protocol line (ValueError if not finite)."""
        return f"{self.prefix}{format_float(value)} {ts_ns}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel at one time (nanoseconds since the epoch, UTC)."""

    channel: Channel
    ts_ns: int
    value: float
