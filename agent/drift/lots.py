"""Lot comparison: does the second batch behave like the first?

When the production context's `lot` changes on a line or zone, every channel there (with
detectors) collects the new lot's first `lots.readings` readings. When the sample is complete
(or the lot ends early) the agent writes a `lot_summary` point (n, mean, std, p5, p95) and
compares the sample with the previous lot's: Welch's t-test, a two-sample Kolmogorov–Smirnov
statistic and the mean difference in the channel's units. A difference of at least the
configured effect size with p < alpha raises a `lot_change` alert.

Samples are kept in state_dir/lots.json, so a restart continues where the agent stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.config.models import LotsConfig
from agent.drift.alerts import AlertEvent, Level
from agent.logs import get_logger
from agent.reading import Channel
from agent.store.lineprotocol import encode_point

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.channels import ChannelRegistry
    from agent.pipeline import Pipeline

log = get_logger("driftgate.lots")

MIN_COMPARE = 30
"""Fewest readings in each of two samples before they are compared (a lot that ended early)."""
SAVE_INTERVAL = 10.0  # wall seconds between writes of lots.json while samples fill
DETECTOR = "lot_compare"
KIND = "lot_change"
_UNKNOWN = object()


@dataclass(slots=True)
class LotSample:
    """The first readings of one lot on one channel."""

    values: list[float] = field(default_factory=list)
    first_ns: int = 0
    last_ns: int = 0
    done: bool = False  # full, or the lot ended: no more readings join
    summarised: bool = False  # its lot_summary point was written
    compared: bool = False  # it was compared with the previous lot's sample


@dataclass(slots=True)
class _ChannelLots:
    current: str | None = None
    previous: str | None = None  # the last lot before `current` that has a sample
    samples: dict[str, LotSample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LotComparison:
    """Two lots' samples side by side: Welch's t, KS and the difference of the means."""

    n_new: int
    n_prev: int
    mean_new: float
    mean_prev: float
    diff: float
    t: float
    p: float
    ks_d: float
    ks_p: float


def compare(new: Sequence[float], prev: Sequence[float]) -> LotComparison:
    """Compare a new lot's sample with the previous lot's."""
    from scipy import stats  # ~80 MB and a second to import: only when a lot is compared

    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(prev, dtype=np.float64)
    welch = stats.ttest_ind(a, b, equal_var=False)
    ks = stats.ks_2samp(a, b)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    return LotComparison(
        n_new=len(a),
        n_prev=len(b),
        mean_new=mean_a,
        mean_prev=mean_b,
        diff=mean_a - mean_b,
        t=float(welch.statistic),
        p=float(welch.pvalue),
        ks_d=float(ks.statistic),
        ks_p=float(ks.pvalue),
    )


def summary_fields(values: Sequence[float]) -> dict[str, float | int | bool | str]:
    """The lot_summary fields of a sample: n, mean, std (n-1), p5, p95."""
    x = np.asarray(values, dtype=np.float64)
    p5, p95 = np.percentile(x, [5.0, 95.0])
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "p5": float(p5),
        "p95": float(p95),
    }


def _num(x: float, unit: str) -> str:
    text = f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"
    return f"{text} {unit}".strip()


class LotTracker:
    """Per channel: the current lot's sample and the previous lot's, compared when complete.

    ``quiet`` holds the channels with nothing to collect under the current context; the
    pipeline skips them, so a channel costs one set lookup per batch between lot changes.
    """

    def __init__(
        self,
        cfg: LotsConfig,
        path: Path | None,
        pipeline: Pipeline,
        registry: ChannelRegistry,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.pipeline = pipeline
        self.registry = registry
        self.quiet: set[str] = set()
        self._lot_of: dict[str, str | None] = {}  # the lot each channel's readings are tagged with
        self._state: dict[str, _ChannelLots] = {}
        self._dirty = False
        self._saved_at = time.monotonic()
        self._load()

    # -- from the agent ----------------------------------------------------------------------
    def context_changed(self) -> None:
        """The production context changed and channels were re-tagged: note each one's lot.

        Call after ``registry.retag_all()`` (readings received before it were processed under
        the old tags), so a reading joins the lot its tags name.
        """
        for channel in self.registry.channels.values():
            self._lot_of[channel.name] = self._tagged_lot(channel)
        self.quiet.clear()

    def add(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> None:
        """A batch of one channel's readings (a pipeline stage)."""
        name = channel.name
        if name in self.quiet:
            return
        lot = self._lot_of.get(name, _UNKNOWN)
        if lot is _UNKNOWN:
            lot = self._lot_of[name] = self._tagged_lot(channel)
        assert lot is None or isinstance(lot, str)
        st = self._state.get(name)
        if st is None:
            st = self._state[name] = _ChannelLots()
        if lot != st.current:
            self._switch(channel, st, lot)
        sample = st.samples.get(lot) if lot is not None else None
        if sample is None or sample.done:
            self.quiet.add(name)
            return
        need = self.cfg.readings - len(sample.values)
        got = 0
        for ts, x in zip(ns, values, strict=True):
            if math.isnan(x):  # an invalid reading is no part of a lot's sample
                continue
            if not sample.values:
                sample.first_ns = ts
            sample.values.append(x)
            sample.last_ns = ts
            got += 1
            if got >= need:
                break
        if got:
            self._dirty = True
        if len(sample.values) >= self.cfg.readings:
            sample.done = True
            assert lot is not None
            self._finish(channel, st, lot)
            self.quiet.add(name)
            self._save_soon()

    def due(self) -> bool:
        """Whether samples changed and SAVE_INTERVAL passed (the agent's 1 s loop asks)."""
        return self._dirty and time.monotonic() - self._saved_at >= SAVE_INTERVAL

    async def save_soon(self) -> None:
        """Write lots.json from a thread (the samples are copied first, on the loop)."""
        payload = self._payload()
        await asyncio.to_thread(self._write, payload)

    def save(self) -> None:
        """Write lots.json atomically, here and now (at shutdown)."""
        self._write(self._payload())

    def _payload(self) -> dict[str, object]:
        self._dirty = False
        self._saved_at = time.monotonic()
        return {
            name: {
                "current": st.current,
                "previous": st.previous,
                "samples": {
                    lot: {
                        "first_ns": s.first_ns,
                        "last_ns": s.last_ns,
                        "done": s.done,
                        "summarised": s.summarised,
                        "compared": s.compared,
                        "values": list(s.values),  # the thread must not see it grow
                    }
                    for lot, s in st.samples.items()
                },
            }
            for name, st in sorted(self._state.items())
        }

    def _write(self, payload: dict[str, object]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(payload), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot save the lot samples", path=str(self.path), error=str(exc))

    # -- internals ---------------------------------------------------------------------------
    def _save_soon(self) -> None:
        # at the next save_if_due (within a second): one write for many channels' changes
        self._dirty = True
        self._saved_at = -math.inf

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            for name, st in raw.items():
                self._state[name] = _ChannelLots(
                    current=st["current"],
                    previous=st["previous"],
                    samples={lot: LotSample(**s) for lot, s in st["samples"].items()},
                )
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error(
                "cannot read the lot samples: lots start afresh",
                path=str(self.path),
                error=str(exc),
            )
            self._state = {}

    def _tagged_lot(self, channel: Channel) -> str | None:
        return self.registry.context.for_tags(channel.tags).get("lot")

    def _switch(self, channel: Channel, st: _ChannelLots, lot: str | None) -> None:
        old = st.current
        if old is not None:
            sample = st.samples.get(old)
            if sample is not None and sample.values:
                sample.done = True
                self._finish(channel, st, old)  # a lot that ended before its sample filled
                st.previous = old
        st.current = lot
        if lot is not None and lot not in st.samples:
            st.samples[lot] = LotSample()
        keep = {st.previous, st.current}
        st.samples = {k: v for k, v in st.samples.items() if k in keep}
        log.info("lot changed", channel=channel.name, lot=lot, previous=st.previous)
        self._save_soon()

    def _finish(self, channel: Channel, st: _ChannelLots, lot: str) -> None:
        sample = st.samples[lot]
        if not sample.summarised:
            sample.summarised = True
            self.pipeline.spool.append(self._summary_line(channel, lot, sample))
        if sample.compared:
            return
        sample.compared = True
        prev_lot = st.previous
        prev = st.samples.get(prev_lot) if prev_lot is not None and prev_lot != lot else None
        if prev is None or min(len(prev.values), len(sample.values)) < MIN_COMPARE:
            return
        assert prev_lot is not None
        result = compare(sample.values, prev.values)
        effect = self._effect(channel)
        differs = abs(result.diff) >= effect and result.p < self.cfg.alpha
        log.info(
            "lot compared",
            channel=channel.name,
            lot=lot,
            previous=prev_lot,
            diff=round(result.diff, 4),
            p=result.p,
            ks_d=round(result.ks_d, 4),
            differs=differs,
        )
        if differs:
            self.pipeline.alert(self._event(channel, lot, prev_lot, sample, result))

    def _effect(self, channel: Channel) -> float:
        cc = self.registry.configs.get(channel.name)
        if cc is not None and cc.lot_effect is not None:
            return cc.lot_effect
        return self.cfg.effect.get(channel.kind, 0.0)

    def _scope(self, channel: Channel) -> str:
        line = channel.tags.get("line")
        if line and "lot" in self.registry.context.scopes.get(f"line:{line}", {}):
            return f"Line {line}"
        zone = channel.tags.get("zone")
        return f"Zone {zone}" if zone else "Lot change"

    def _event(
        self,
        channel: Channel,
        lot: str,
        prev_lot: str,
        sample: LotSample,
        r: LotComparison,
    ) -> AlertEvent:
        unit = channel.unit
        label = channel.label[:1].lower() + channel.label[1:]
        first = "its first" if r.n_new >= self.cfg.readings else "its only"
        prev_n = "" if r.n_prev == r.n_new else f" over {r.n_prev} readings"
        p_text = "p < 0.001" if r.p < 0.001 else f"p = {r.p:.3f}"
        message = (
            f"{self._scope(channel)} lot {lot}: {label} averages {_num(r.mean_new, unit)} over "
            f"{first} {r.n_new} readings, {_num(abs(r.diff), unit)} "
            f"{'above' if r.diff > 0 else 'below'} lot {prev_lot} ({_num(r.mean_prev, unit)}"
            f"{prev_n}); Welch t = {r.t:.1f}, {p_text}; KS D = {r.ks_d:.2f}."
        )
        if channel.affects:
            message += f" This affects {channel.affects}."
        return AlertEvent(
            ts_ns=sample.last_ns,
            channel=channel,
            detector=DETECTOR,
            transition=KIND,
            level=Level.WARN,
            value=r.mean_new,
            baseline=r.mean_prev,
            delta=r.diff,
            rate_per_h=math.nan,
            since_ns=sample.first_ns,
            baseline_note=f"lot {prev_lot}, first {r.n_prev} readings",
            message=message,
        )

    def _summary_line(self, channel: Channel, lot: str, sample: LotSample) -> str:
        pipeline = self.pipeline
        tags = {
            "site": pipeline.site,
            "gateway": pipeline.gateway,
            "zone": channel.tags.get("zone", ""),
            "line": channel.tags.get("line", ""),
            "channel": channel.name,
            "lot": lot,
        }
        tags = {k: v for k, v in tags.items() if v}
        return encode_point("lot_summary", tags, summary_fields(sample.values), sample.last_ns)
