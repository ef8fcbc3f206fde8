"""Hot-path records: a Channel (one stream of one quantity) and a Reading (one value of it)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from agent.store.lineprotocol import escape_key, format_float, series_prefix

if TYPE_CHECKING:
    from agent.drift.baselines import ChannelBaseline
    from agent.drift.detectors import Detector


@dataclass(slots=True)
class Channel:
    """One stream of one quantity: where it is (tags), what it means (label, affects), its units.

    ``prefix`` and ``field_key`` are the precomputed line-protocol pieces; ``retag`` rebuilds
    them when the production context (lot, operator, shift) changes.
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
    field_key: str = ""
    readings: int = 0
    detectors: list[Detector] = dataclasses.field(default_factory=list)
    rate_per_h: float = math.nan  # latest trend from a slope detector, quoted in other alerts
    rates: np.ndarray | None = None  # the slope detector's trend for each reading of the batch
    pending_ns: list[int] = dataclasses.field(default_factory=list)  # readings awaiting detection
    pending_x: list[float] = dataclasses.field(default_factory=list)
    last_ns: int = -(2**63)  # newest reading the detectors have seen
    baseline: ChannelBaseline | None = None  # what the detectors compare against
    wants_invalid: bool = False  # an invalid_rate detector counts out-of-range readings

    def publish_rate(self, per_h: np.ndarray) -> None:
        """Record a slope detector's trend for this batch (other detectors quote it).

        Where the trend is undefined the latest known one holds, as on the scalar path.
        """
        known = np.isfinite(per_h)
        index = np.maximum.accumulate(np.where(known, np.arange(len(per_h)), -1))
        self.rates = np.where(index >= 0, per_h[np.maximum(index, 0)], self.rate_per_h)
        if known.any():
            self.rate_per_h = float(per_h[known][-1])

    def rate_at(self, j: int) -> float:
        """The trend at reading j of the current batch (j < 0: the latest known)."""
        rates = self.rates
        if rates is not None and 0 <= j < len(rates):
            return float(rates[j])
        return self.rate_per_h

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name
        self.retag({})

    def retag(self, context: Mapping[str, str]) -> None:
        """Recompute the line-protocol prefix with the channel's tags plus context tags."""
        if not self.field:
            raise ValueError(f"channel {self.name!r} needs a non-empty field key")
        merged = {**self.tags, **context}
        self.prefix = series_prefix(self.measurement, merged) + " " + escape_key(self.field) + "="
        self.field_key = self.field

    def line(self, ts_ns: int, value: float) -> str:
        """Encode one reading of this channel as a line-protocol line (ValueError if not finite)."""
        return f"{self.prefix}{format_float(value)} {ts_ns}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel at one time (nanoseconds since the epoch, UTC)."""

    channel: Channel
    ts_ns: int
    value: float
