"""Context comparison: does the second lot (operator, shift) behave like the first?

Each channel compares on the context keys it names (``channels[].compare_on``, else
``lots.compare_on``, ``[lot]`` by default). When one of those keys changes on the channel's
line or zone (a new leather lot, an operator rotation, the next shift), the channel collects
the new value's first readings (``channels[].lot_readings``, else ``lots.readings``). When that
sample is complete (or the value changes again first) the agent:

- writes a ``context_summary`` point (key, value, n, mean, std, p5, p95), and for lots also
  the ``lot_summary`` point;
- hands the sample to the local history, where ``driftgate report`` and ``driftgate lot
  approve`` find it later;
- compares it with the previous value's sample and, for lots, with the approved lot's
  (``driftgate lot approve``): Welch's t-test, the two-sample Kolmogorov–Smirnov statistic and
  the difference of the means in the channel's units. A difference of at least the effect size
  with p < ``lots.alpha`` against either raises one alert: ``lot_change`` (detector
  ``lot_compare``) for lots, ``context_change`` (detector ``<key>_compare``) for other keys.

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
from typing import TYPE_CHECKING, Any, Protocol

from agent.config.models import LotsConfig
from agent.drift.alerts import AlertEvent, Level
from agent.drift.approved import ApprovedLot, ApprovedLots
from agent.drift.compare import (
    MIN_COMPARE,
    Comparison,
    StoredSample,
    Verdict,
    compare,
    p_words,
    summary_fields,
)
from agent.logs import get_logger
from agent.reading import Channel
from agent.store.lineprotocol import encode_point

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.channels import ChannelRegistry
    from agent.pipeline import Pipeline

__all__ = ["LOT", "LotTracker", "SampleSink", "compare", "load_samples", "summary_fields"]

log = get_logger("driftgate.lots")

SAVE_INTERVAL = 10.0  # wall seconds between writes of lots.json while samples fill
LOT = "lot"
_STATE_VERSION = 2
_PREPOSITION = {"lot": "of", "order": "of", "shift": "in"}  # else "with": "with operator op17"


def detector_of(key: str) -> str:
    """The detector name of comparisons on ``key``: lot_compare, operator_compare, ..."""
    return f"{key}_compare"


def transition_of(key: str) -> str:
    """``lot_change`` for lots, ``context_change`` for every other key."""
    return "lot_change" if key == LOT else "context_change"


class SampleSink(Protocol):
    """Where finished samples go to be kept (the local history)."""

    def add_sample(self, sample: StoredSample) -> None:
        """Keep this sample (written later, off the event loop)."""
        ...


@dataclass(slots=True)
class Sample:
    """The first readings of one context value (a lot, an operator) on one channel."""

    values: list[float] = field(default_factory=list)
    first_ns: int = 0
    last_ns: int = 0
    done: bool = False  # full, or the value changed: no more readings join
    summarised: bool = False  # its summary points were written and the history has it
    compared: bool = False  # it was compared with the previous value's sample


@dataclass(slots=True)
class _KeyState:
    """One channel's samples for one context key."""

    current: str | None = None
    previous: str | None = None  # the last value before `current` that has a sample
    samples: dict[str, Sample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Against:
    """One comparison of a finished sample: with the previous value's, or the approved lot's."""

    previous: bool  # against the previous value's sample (else the approved lot's)
    who: str  # "lot LOT-2411-A", "operator op12", "the approved lot LOT-2411-A"
    note: str  # the alert's baseline_note
    result: Comparison
    verdict: Verdict


def _num(x: float, unit: str) -> str:
    text = f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"
    return f"{text} {unit}".strip()


def _state_from_json(raw: Any) -> dict[str, dict[str, _KeyState]]:
    """lots.json as written by this version (per channel and key), or by the first one (per
    channel, lots only)."""
    channels = raw["channels"] if isinstance(raw, dict) and "version" in raw else {
        name: {LOT: st} for name, st in raw.items()
    }  # fmt: skip
    out: dict[str, dict[str, _KeyState]] = {}
    for name, keys in channels.items():
        out[name] = {
            key: _KeyState(
                current=st["current"],
                previous=st["previous"],
                samples={value: Sample(**s) for value, s in st["samples"].items()},
            )
            for key, st in keys.items()
        }
    return out


def load_samples(path: Path) -> list[StoredSample]:
    """Every sample in a lots.json (read-only: the CLI and the report), complete or not."""
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        state = _state_from_json(raw)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    meta = raw.get("meta", {}) if isinstance(raw, dict) and "version" in raw else {}
    return [
        StoredSample(name, key, value, tuple(s.values), s.first_ns, s.last_ns, meta.get(name, {}))
        for name, keys in state.items()
        for key, st in keys.items()
        for value, s in st.samples.items()
        if s.values
    ]


class LotTracker:
    """Per channel and context key: the current value's sample and the previous one's,
    compared when complete.

    ``quiet`` holds the channels with nothing to collect under the current context; the
    pipeline skips them, so a channel costs one set lookup per batch between changes.
    """

    def __init__(
        self,
        cfg: LotsConfig,
        path: Path | None,
        pipeline: Pipeline,
        registry: ChannelRegistry,
        *,
        approved: ApprovedLots | None = None,
        sink: SampleSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self.pipeline = pipeline
        self.registry = registry
        self.approved = approved if approved is not None else ApprovedLots(None)
        self.sink = sink
        self.quiet: set[str] = set()
        self._context_of: dict[str, dict[str, str]] = {}  # the context each channel is under
        self._keys: dict[str, tuple[str, ...]] = {}
        self._meta: dict[str, dict[str, Any]] = {}  # what a report says of each channel
        self._state: dict[str, dict[str, _KeyState]] = {}
        self._dirty = False
        self._saved_at = time.monotonic()
        self._load()

    # -- from the agent ----------------------------------------------------------------------
    def context_changed(self) -> None:
        """The production context changed and channels were re-tagged: note each one's context.

        Call after ``registry.retag_all()`` (readings received before it were processed under
        the old tags), so a reading joins the sample of the value its tags name.
        """
        for channel in self.registry.channels.values():
            self._context_of[channel.name] = self._context(channel)
        self.quiet.clear()

    def approvals_changed(self) -> None:
        """The approved lots changed on disk (``driftgate lot approve``): nothing to redo, the
        next finished lot sample compares against them."""
        log.info("approved lots changed", approved=len(self.approved.lots))

    def add(self, channel: Channel, ns: Sequence[int], values: Sequence[float]) -> None:
        """A batch of one channel's readings (a pipeline stage)."""
        name = channel.name
        if name in self.quiet:
            return
        context = self._context_of.get(name)
        if context is None:
            context = self._context_of[name] = self._context(channel)
        states = self._state.get(name)
        if states is None:
            states = self._state[name] = {}
        if name not in self._meta:
            self._meta[name] = self._describe(channel)
        size = self._size(channel)
        collecting = False
        for key in self._keys_of(channel):
            value = context.get(key)
            ks = states.get(key)
            if ks is None:
                ks = states[key] = _KeyState()
            if value != ks.current:
                self._switch(channel, key, ks, value)
            sample = ks.samples.get(value) if value is not None else None
            if sample is None or sample.done:
                continue
            if self._fill(sample, ns, values, size):
                self._dirty = True
            if len(sample.values) >= size:
                sample.done = True
                assert value is not None
                self._finish(channel, key, ks, value)
                self._save_soon()
            else:
                collecting = True
        if not collecting:
            self.quiet.add(name)

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
        channels = {
            name: {
                key: {
                    "current": ks.current,
                    "previous": ks.previous,
                    "samples": {
                        value: {
                            "first_ns": s.first_ns,
                            "last_ns": s.last_ns,
                            "done": s.done,
                            "summarised": s.summarised,
                            "compared": s.compared,
                            "values": list(s.values),  # the thread must not see it grow
                        }
                        for value, s in ks.samples.items()
                    },
                }
                for key, ks in sorted(states.items())
            }
            for name, states in sorted(self._state.items())
        }
        return {"version": _STATE_VERSION, "channels": channels, "meta": dict(self._meta)}

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
            self._state = _state_from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error(
                "cannot read the lot samples: lots start afresh",
                path=str(self.path),
                error=str(exc),
            )
            self._state = {}

    def _context(self, channel: Channel) -> dict[str, str]:
        return self.registry.context.for_tags(channel.tags)

    def _keys_of(self, channel: Channel) -> tuple[str, ...]:
        keys = self._keys.get(channel.name)
        if keys is None:
            cc = self.registry.configs.get(channel.name)
            chosen = cc.compare_on if cc is not None and cc.compare_on is not None else None
            keys = self._keys[channel.name] = tuple(
                chosen if chosen is not None else self.cfg.compare_on
            )
        return keys

    def _size(self, channel: Channel) -> int:
        cc = self.registry.configs.get(channel.name)
        if cc is not None and cc.lot_readings is not None:
            return cc.lot_readings
        return self.cfg.readings

    @staticmethod
    def _fill(sample: Sample, ns: Sequence[int], values: Sequence[float], size: int) -> int:
        need = size - len(sample.values)
        got = 0
        for ts, x in zip(ns, values, strict=True):
            if got >= need:
                break
            if math.isnan(x):  # an invalid reading is no part of a sample
                continue
            if not sample.values:
                sample.first_ns = ts
            sample.values.append(x)
            sample.last_ns = ts
            got += 1
        return got

    def _switch(self, channel: Channel, key: str, ks: _KeyState, value: str | None) -> None:
        old = ks.current
        if old is not None:
            sample = ks.samples.get(old)
            if sample is not None and sample.values:
                sample.done = True
                self._finish(channel, key, ks, old)  # a value that ended before its sample filled
                ks.previous = old
        ks.current = value
        if value is not None and value not in ks.samples:
            ks.samples[value] = Sample()
        keep = {ks.previous, ks.current}
        ks.samples = {k: v for k, v in ks.samples.items() if k in keep}
        log.info(
            "context changed", channel=channel.name, key=key, value=value, previous=ks.previous
        )
        self._save_soon()

    def _finish(self, channel: Channel, key: str, ks: _KeyState, value: str) -> None:
        sample = ks.samples[value]
        if not sample.summarised:
            sample.summarised = True
            self._summarise(channel, key, value, sample)
        if sample.compared:
            return
        sample.compared = True
        least = min(MIN_COMPARE, self._size(channel))
        if len(sample.values) < least:
            return
        effect = self._effect(channel)
        alpha = self.cfg.alpha
        prev_value = ks.previous if ks.previous != value else None
        prev = ks.samples.get(prev_value) if prev_value is not None else None
        approved = self._approved(channel, key, value)
        against: list[_Against] = []
        if prev is not None and prev_value is not None and len(prev.values) >= least:
            same = approved is not None and approved.lot == prev_value
            who = f"{key} {prev_value}" + (" (the approved lot)" if same else "")
            result = compare(sample.values, prev.values, alpha)
            note = f"{key} {prev_value}, first {result.n_prev} readings"
            against.append(_Against(True, who, note, result, result.verdict(effect, alpha)))
            if same:
                approved = None
        if approved is not None and len(approved.values) >= least:
            sku = f" for SKU {approved.sku}" if approved.sku else ""
            result = compare(sample.values, approved.values, alpha)
            note = f"approved lot {approved.lot}{sku}, first {result.n_prev} readings"
            who = f"the approved lot {approved.lot}{sku}"
            against.append(_Against(False, who, note, result, result.verdict(effect, alpha)))
        if not against:
            return
        log.info(
            "context compared",
            channel=channel.name,
            key=key,
            value=value,
            against=[a.who for a in against],
            diff=[round(a.result.diff, 4) for a in against],
            p=[a.result.p for a in against],
            verdict=[a.verdict.value for a in against],
        )
        if any(a.verdict is Verdict.DIFFERS for a in against):
            self.pipeline.alert(self._event(channel, key, value, prev_value, sample, against))

    def _approved(self, channel: Channel, key: str, value: str) -> ApprovedLot | None:
        if key != LOT:
            return None
        sku = self._context_of.get(channel.name, {}).get("sku")
        found = self.approved.find(channel.name, sku)
        return None if found is None or found.lot == value else found

    def _effect(self, channel: Channel) -> float:
        cc = self.registry.configs.get(channel.name)
        if cc is not None and cc.lot_effect is not None:
            return cc.lot_effect
        return self.cfg.effect.get(channel.kind, 0.0)

    def _scope(self, channel: Channel, key: str) -> str:
        line = channel.tags.get("line")
        if line and key in self.registry.context.scopes.get(f"line:{line}", {}):
            return f"Line {line}"
        zone = channel.tags.get("zone")
        return f"Zone {zone}" if zone else "Context change"

    def _event(
        self,
        channel: Channel,
        key: str,
        value: str,
        prev_value: str | None,
        sample: Sample,
        against: list[_Against],
    ) -> AlertEvent:
        unit = channel.unit
        label = channel.label[:1].lower() + channel.label[1:]
        r0 = against[0].result
        scope = self._scope(channel, key)
        head = (
            f"{scope}, after {key} {prev_value} → {value}"
            if against[0].previous
            else f"{scope} {key} {value}"
        )
        over = "the first" if r0.n_new >= self._size(channel) else "all"
        clauses = []
        for a in against:
            r = a.result
            prev_n = "" if r.n_prev == r.n_new else f" over {r.n_prev} readings"
            if a.verdict is Verdict.DIFFERS:
                side = "above" if r.diff > 0 else "below"
                clauses.append(
                    f"{_num(abs(r.diff), unit)} {side} {a.who} ({_num(r.mean_prev, unit)}{prev_n})"
                )
            else:
                clauses.append(
                    f"within {_num(abs(r.diff), unit)} of {a.who} ({_num(r.mean_prev, unit)}"
                    f"{prev_n})"
                )
        join = " and " if len({a.verdict is Verdict.DIFFERS for a in against}) == 1 else " but "
        message = (
            f"{head}: {label} averages {_num(r0.mean_new, unit)} over {over} {r0.n_new} "
            f"readings {_PREPOSITION.get(key, 'with')} {key} {value}, {join.join(clauses)}."
        )
        stats = [
            f"Welch t = {a.result.t:.1f}, {p_words(a.result.p)}; KS D = {a.result.ks_d:.2f}"
            for a in against
        ]
        if len(stats) == 1:
            message += f" {stats[0]}."
        else:
            message += "".join(
                f" Against {a.who}: {s}." for a, s in zip(against, stats, strict=True)
            )
        if channel.affects:
            message += f" This affects {channel.affects}."
        # The baseline is what the alert is about: the approved lot when it differs from that.
        main = next((a for a in reversed(against) if a.verdict is Verdict.DIFFERS), against[0])
        return AlertEvent(
            ts_ns=sample.last_ns,
            channel=channel,
            detector=detector_of(key),
            transition=transition_of(key),
            level=Level.WARN,
            value=main.result.mean_new,
            baseline=main.result.mean_prev,
            delta=main.result.diff,
            rate_per_h=math.nan,
            since_ns=sample.first_ns,
            baseline_note=main.note,
            message=message,
        )

    def _summarise(self, channel: Channel, key: str, value: str, sample: Sample) -> None:
        """The sample's summary points, and the sample itself to the history."""
        pipeline = self.pipeline
        tags = {
            "site": pipeline.site,
            "gateway": pipeline.gateway,
            "zone": channel.tags.get("zone", ""),
            "line": channel.tags.get("line", ""),
            "channel": channel.name,
        }
        tags = {k: v for k, v in tags.items() if v}
        fields = summary_fields(sample.values)
        if key == LOT:
            pipeline.spool.append(
                encode_point("lot_summary", {**tags, "lot": value}, fields, sample.last_ns)
            )
        pipeline.spool.append(
            encode_point(
                "context_summary", {**tags, "key": key, "value": value}, fields, sample.last_ns
            )
        )
        if self.sink is not None:
            self.sink.add_sample(
                StoredSample(
                    channel.name, key, value, tuple(sample.values), sample.first_ns,
                    sample.last_ns, self._describe(channel),
                )
            )  # fmt: skip

    def _describe(self, channel: Channel) -> dict[str, Any]:
        """What a report says of a channel, kept with its samples (no config needed to read
        them back)."""
        return {
            "label": channel.label,
            "unit": channel.unit,
            "kind": channel.kind,
            "affects": channel.affects,
            "effect": self._effect(channel),
            "alpha": self.cfg.alpha,
            "measurement": channel.measurement,
            "field": channel.field,
            "tags": dict(channel.tags),
        }
