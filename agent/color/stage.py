"""The colour stage: a measured spectrum (or a colorimeter's L*a*b*) against its approved
reference, under every light the customer may see it in.

For a spectrum: CIE XYZ and CIELAB under each configured illuminant (D65 daylight, F11
warehouse fluorescent, a CIE LED) with the configured observer, ΔE00 per illuminant against the
SKU's reference, and metamerism: the spread of ΔE00 across the illuminants (``metamerism``) and
the ISO 18314-4 / CIE special metamerism index for change of illuminant (``mi_<light>``, the
first illuminant being the reference light). All colour maths is colour-science's
(``agent.color.colorimetry``).

A colorimeter gives L*a*b* under one illuminant only: ΔE00 under that one, and metamerism is
reported as not computable (``metamerism_computable=false`` and no metamerism value).

Which SKU and part a measurement is of: the sample id, read with ``color.sample_pattern``
(``4711-clasp-0042`` → sku 4711, part clasp); else the ``sku`` and ``part`` tags of the
frame or its source (``sources: - tags: {sku: "4711", part: clasp}``). Neither: the
measurement is dead-lettered ("no SKU").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

from agent.color.colorimetry import (
    DEFAULT_AFFECTS,
    Array,
    Colorimetry,
    delta_e00,
    illuminant_slug,
    illuminant_words,
    metamerism_index,
)
from agent.color.references import (
    MAX_REFLECTANCE,
    CaptureRequest,
    Reference,
    ReferenceStore,
    load_reference_file,
)
from agent.config.detectors import DetectorConfig, SlopeConfig
from agent.config.models import ColorConfig
from agent.drift.alerts import (
    CLEARED,
    EASED,
    FLAPPING,
    SETTLED,
    AlertEvent,
    AlertState,
    Level,
)
from agent.logs import get_logger
from agent.reading import Channel
from agent.store.lineprotocol import encode_point
from agent.words import duration_words, when

if TYPE_CHECKING:
    from agent.channels import ChannelRegistry
    from agent.ingest.decode import DecodedValue, Spectrum
    from agent.ingest.frames import FrameHandler
    from agent.pipeline import Pipeline

__all__ = [
    "COLOR_DETECTORS",
    "ColorResult",
    "ColorStage",
    "ColorStats",
]

log = get_logger("driftgate.color")


# Proposed DEFAULT_DETECTORS["color"] (drift/engine.py), attached to the ΔE00 channels here
# (engine.py's "color" kind also covers a colorimeter's raw L*, a*, b*, where they do not
# belong). The tolerance itself is the stage's own alert, which sees every illuminant at once
# and names the light that reveals the mismatch; this catches the trend across a production
# run before it reaches the tolerance: ΔE00 rising by 0.1 per hour over 8 hours.
COLOR_DETECTORS: Final[tuple[DetectorConfig, ...]] = (
    SlopeConfig(type="slope", window=8 * 3600, warn=0.1, alarm=0.25, direction="up",
                min_samples=10, hold=0),
)  # fmt: skip


@dataclass(slots=True)
class ColorStats:
    """What the colour stage did (tests, bench, logs)."""

    measurements: int = 0
    compared: int = 0
    no_reference: int = 0
    rejected: int = 0
    captured: int = 0
    alerts: int = 0


@dataclass(frozen=True, slots=True)
class ColorResult:
    """One measurement's colour figures, as written to the ``color`` measurement."""

    sku: str
    part: str
    sample: str
    ts_ns: int
    illuminants: tuple[str, ...]
    lab: dict[str, tuple[float, float, float]]
    de00: dict[str, float] = field(default_factory=dict)
    metamerism: float | None = None
    metamerism_index: dict[str, float] = field(default_factory=dict)
    captured: bool = False

    @property
    def metamerism_computable(self) -> bool:
        """True when two or more illuminants compared spectra (a spread exists)."""
        return self.metamerism is not None

    def fields(self) -> dict[str, float | int | bool | str]:
        """The InfluxDB fields of the ``color`` point."""
        out: dict[str, float | int | bool | str] = {}
        for name, (L, a, b) in self.lab.items():
            slug = illuminant_slug(name)
            out[f"L_{slug}"] = L
            out[f"a_{slug}"] = a
            out[f"b_{slug}"] = b
        for name, de in self.de00.items():
            out[f"de00_{illuminant_slug(name)}"] = de
        if self.metamerism is not None:
            out["metamerism"] = self.metamerism
        for name, mi in self.metamerism_index.items():
            if math.isfinite(mi):
                out[f"mi_{illuminant_slug(name)}"] = mi
        out["metamerism_computable"] = self.metamerism_computable
        out["reference_captured"] = self.captured
        return out


@dataclass(slots=True)
class _Target:
    """The channels and alert states of one source's sku/part."""

    de00: dict[str, Channel]
    metamerism: Channel | None
    tolerance: AlertState
    spread: AlertState


def measurement_channel(prefix: str, sku: str, part: str, field_name: str) -> str:
    """The name of a colour channel the stage makes (``qc.4711.clasp.de00_d65``): the source's
    prefix, the approved reference's SKU and part, the field. ``check-config`` lists them."""
    return f"{prefix}.{sku}.{part}.{field_name}"


class ColorStage:
    """Turns spectra and L*a*b* frames into colour points, ΔE00 channels and colour alerts.

    Sources call ``spectrum`` / ``lab_values`` through their FrameHandler; the agent calls
    ``poll`` about once a second to pick up references and capture requests the CLI wrote.
    """

    def __init__(
        self,
        cfg: ColorConfig,
        references: ReferenceStore,
        registry: ChannelRegistry,
        pipeline: Pipeline,
    ) -> None:
        self.cfg = cfg
        self.references = references
        self.registry = registry
        self.pipeline = pipeline
        self.colorimetry = Colorimetry(cfg.observer, cfg.illuminants)
        self.pattern = re.compile(cfg.sample_pattern)
        self.stats = ColorStats()
        self._targets: dict[tuple[str, str, str], _Target] = {}
        self._ref_lab: dict[tuple[str, str, tuple[str, ...]], dict[str, Array]] = {}
        self._told_no_reference: set[tuple[str, str]] = set()
        if cfg.references is not None:
            # The configured file is the source of truth for the SKUs it lists: imported at start.
            for ref in load_reference_file(cfg.references, cfg.colorimeter_illuminant):
                references.put(ref)

    # -- bookkeeping

    def references_changed(self) -> None:
        """References or capture requests changed on disk (the CLI wrote them): forget what
        was computed from the old ones and say what is armed now."""
        self._ref_lab.clear()
        self._told_no_reference.clear()
        for problem in self.references.problems:
            log.error("unreadable reference file", problem=problem)
        for sku, part in self.references.requests:
            log.info("reference capture armed", sku=sku, part=part)

    def poll(self) -> bool:
        """Re-read references and capture requests if the CLI changed them; True if it did."""
        changed = self.references.reload()
        if changed:
            self.references_changed()
        return changed

    def identify(self, sample: str | None, tags: Mapping[str, str]) -> tuple[str, str] | None:
        """(sku, part) of a measurement: from the sample id, else the sku/part tags."""
        if sample:
            match = self.pattern.match(sample)
            if match:
                return match.group("sku"), match.group("part")
        sku, part = tags.get("sku"), tags.get("part")
        if sku and part:
            return sku, part
        return None

    def reject(
        self, handler: FrameHandler, raw: bytes, reason: str, *, decoded: bool = True
    ) -> None:
        """Count a measurement that cannot be used and dead-letter its frame with the reason."""
        self.stats.rejected += 1
        if decoded:  # a frame that did not decode is already counted in decode_errors
            handler.health.invalid += 1
        self.pipeline.reject(raw, f"{handler.source}: {reason}")
        log.warning("colour measurement rejected", source=handler.source, reason=reason)

    # -- measurements in

    def spectrum(self, handler: FrameHandler, spectrum: Spectrum, raw: bytes) -> ColorResult | None:
        """A spectrophotometer measurement: L*a*b* per illuminant, ΔE00, metamerism."""
        values = spectrum.values
        bad = next(
            (
                i
                for i, v in enumerate(values)
                if not (math.isfinite(v) and 0 <= v <= MAX_REFLECTANCE)
            ),
            None,
        )
        if len(values) < 3:
            self.reject(handler, raw, f"spectrum has {len(values)} values, too few for colour")
            return None
        if bad is not None:
            nm = spectrum.start_nm + bad * spectrum.step_nm
            self.reject(
                handler, raw, f"spectrum at {nm:g} nm: reflectance {values[bad]:g} outside [0, 1.5]"
            )
            return None
        who = self._identify_or_reject(handler, spectrum.sample, spectrum.tags, raw)
        if who is None:
            return None
        sku, part = who
        names = self.colorimetry.illuminants
        lab = self.colorimetry.lab(values, spectrum.start_nm, spectrum.step_nm)
        captured = self._capture(
            sku, part, spectrum.ts_ns, handler.source,
            spectrum=(values, spectrum.start_nm, spectrum.step_nm),
        )  # fmt: skip
        ref = self.references.get(sku, part)
        return self._finish(
            handler, sku, part, spectrum.sample or "", spectrum.ts_ns, spectrum.tags,
            names, lab, ref, spectral=True, captured=captured,
        )  # fmt: skip

    def lab_values(
        self, handler: FrameHandler, values: Sequence[DecodedValue], raw: bytes
    ) -> ColorResult | None:
        """A colorimeter measurement (L*, a*, b* of one frame): ΔE00 under its own illuminant."""
        found = {v.field: v for v in values if v.measurement == "color"}
        if not {"L", "a", "b"} <= set(found):
            return None
        first = found["L"]
        sample = first.tags.get("sample")
        who = self._identify_or_reject(handler, sample, first.tags, raw)
        if who is None:
            return None
        sku, part = who
        illuminant = self.cfg.colorimeter_illuminant
        lab = np.array([[found["L"].value, found["a"].value, found["b"].value]])
        captured = self._capture(sku, part, first.ts_ns, handler.source, lab=(illuminant, lab[0]))
        ref = self.references.get(sku, part)
        return self._finish(
            handler, sku, part, sample or "", first.ts_ns, first.tags, (illuminant,), lab, ref,
            spectral=False, captured=captured,
        )  # fmt: skip

    def bad_frame(self, handler: FrameHandler, raw: bytes, reason: str) -> None:
        """A spectrophotometer frame that did not decode is a lost measurement: dead-letter it."""
        self.reject(handler, raw, reason, decoded=False)

    # -- internals

    def _identify_or_reject(
        self, handler: FrameHandler, sample: str | None, tags: Mapping[str, str], raw: bytes
    ) -> tuple[str, str] | None:
        who = self.identify(sample, {**handler.base_tags, **tags})
        if who is None:
            self.reject(
                handler,
                raw,
                f"no SKU: sample id {sample!r} is not <sku>-<part>-<serial> (color.sample_pattern) "
                "and the source sets no sku and part tags",
            )
        return who

    def _capture(
        self,
        sku: str,
        part: str,
        ts_ns: int,
        source: str,
        *,
        spectrum: tuple[tuple[float, ...], float, float] | None = None,
        lab: tuple[str, Array] | None = None,
    ) -> bool:
        request: CaptureRequest | None = self.references.requests.get((sku, part))
        if request is None:
            return False
        values, start, step = spectrum if spectrum is not None else (None, 400.0, 10.0)
        ref = Reference(
            sku=sku,
            part=part,
            spectrum=values,
            start_nm=start,
            step_nm=step,
            lab={lab[0]: (float(lab[1][0]), float(lab[1][1]), float(lab[1][2]))} if lab else {},
            captured_ns=ts_ns,
            note=request.note,
            source=f"captured from {source}",
            label=request.label,
            affects=request.affects,
        )
        self.references.capture(request, ref)
        self._ref_lab = {k: v for k, v in self._ref_lab.items() if k[:2] != (sku, part)}
        self.stats.captured += 1
        log.info("reference captured", sku=sku, part=part, kind=ref.kind, source=source)
        return True

    def _reference_lab(self, ref: Reference, names: tuple[str, ...]) -> dict[str, Array]:
        key = (ref.sku, ref.part, names)
        found = self._ref_lab.get(key)
        if found is None:
            found = self.colorimetry.reference_lab(ref, names)
            self._ref_lab[key] = found
        return found

    def _finish(
        self,
        handler: FrameHandler,
        sku: str,
        part: str,
        sample: str,
        ts_ns: int,
        frame_tags: Mapping[str, str],
        names: tuple[str, ...],
        lab: Array,
        ref: Reference | None,
        *,
        spectral: bool,
        captured: bool,
    ) -> ColorResult:
        self.stats.measurements += 1
        de00: dict[str, float] = {}
        spread: float | None = None
        mi: dict[str, float] = {}
        if ref is None:
            self.stats.no_reference += 1
            if (sku, part) not in self._told_no_reference:
                self._told_no_reference.add((sku, part))
                log.warning(
                    "no approved colour reference",
                    sku=sku,
                    part=part,
                    hint=f"driftgate reference capture --sku {sku} --part {part}",
                )
        else:
            ref_lab = self._reference_lab(ref, names)
            common = [i for i, n in enumerate(names) if n in ref_lab]
            if common:
                ours = lab[common]
                theirs = np.stack([ref_lab[names[i]] for i in common])
                de = delta_e00(ours, theirs)
                de00 = {names[i]: float(d) for i, d in zip(common, de, strict=True)}
                if spectral and ref.spectrum is not None and len(common) >= 2:
                    spread = float(de.max() - de.min())
                    if common[0] == 0:
                        index = metamerism_index(ours[1:], theirs[1:], ours[:1], theirs[:1])
                        mi = {names[i]: float(x) for i, x in zip(common[1:], index, strict=True)}
                self.stats.compared += 1
        labs = {n: (float(x[0]), float(x[1]), float(x[2])) for n, x in zip(names, lab, strict=True)}
        result = ColorResult(sku, part, sample, ts_ns, names, labs, de00, spread, mi, captured)
        pipeline = self.pipeline
        tags = {**handler.base_tags, **frame_tags}
        tags.update(site=pipeline.site, gateway=pipeline.gateway, sku=sku, part=part)
        if sample:
            tags["sample"] = sample
        context = self.registry.context.for_tags(tags)
        fields = result.fields()
        if de00:
            target = self._target(handler, sku, part, tags, tuple(de00), spread is not None)
            for name, value in de00.items():
                channel = target.de00[name]
                _follow(channel, tags, context)
                pipeline.ingest(channel, ts_ns, value)
                fields.pop(f"de00_{illuminant_slug(name)}")  # the channel writes it (same series)
            if spread is not None and target.metamerism is not None:
                _follow(target.metamerism, tags, context)
                pipeline.ingest(target.metamerism, ts_ns, spread)
                fields.pop("metamerism")
            assert ref is not None
            self._alerts(target, ref, result)
        pipeline.spool.append(encode_point("color", {**tags, **context}, fields, ts_ns))
        return result

    def _target(
        self,
        handler: FrameHandler,
        sku: str,
        part: str,
        tags: Mapping[str, str],
        names: tuple[str, ...],
        spectral: bool,
    ) -> _Target:
        key = (handler.prefix, sku, part)
        target = self._targets.get(key)
        if target is None:
            tol = self.cfg.tolerance
            alerts = self.registry.engine.alerts
            target = _Target(
                {},
                None,
                AlertState(tol.warn, tol.alarm, repeat=alerts.repeat,
                           flap_count=alerts.flap_count, flap_window=alerts.flap_window),
                AlertState(self.cfg.metamerism, repeat=alerts.repeat,
                           flap_count=alerts.flap_count, flap_window=alerts.flap_window),
            )  # fmt: skip
            self._targets[key] = target
        for name in names:
            if name not in target.de00:
                target.de00[name] = self._channel(
                    handler, sku, part, f"de00_{illuminant_slug(name)}", tags,
                    f"ΔE00 under {illuminant_words(name)}", COLOR_DETECTORS,
                )  # fmt: skip
        if spectral and target.metamerism is None:
            target.metamerism = self._channel(
                handler, sku, part, "metamerism", tags, "Metamerism (ΔE00 spread)", ()
            )
        return target

    def _channel(
        self,
        handler: FrameHandler,
        sku: str,
        part: str,
        field_name: str,
        tags: Mapping[str, str],
        what: str,
        detectors: Sequence[DetectorConfig],
    ) -> Channel:
        name = measurement_channel(handler.prefix, sku, part, field_name)
        known = name in self.registry.channels
        channel = self.registry.get_or_create(
            name, measurement="color", field=field_name, unit="ΔE00", kind="color", tags=tags,
            detectors=detectors, capped=False,  # one per approved reference: people make those
        )  # fmt: skip
        if not known:
            channel.label = f"{what}, SKU {sku} {part}"
            channel.affects = "plating or leather tone as customers see it in shops"
        return channel

    def _alerts(self, target: _Target, ref: Reference, result: ColorResult) -> None:
        de00 = result.de00
        worst = max(de00, key=lambda n: de00[n])
        t = result.ts_ns * 1e-9
        kind = target.tolerance.observe(t, de00[worst])
        if kind is not None:
            message = (
                _flap_message(ref, "colour tolerance", kind, target.tolerance)
                if kind in (FLAPPING, SETTLED)
                else self._tolerance_message(kind, target.tolerance, ref, result, worst)
            )
            self._emit(target, "color_tolerance", kind, target.tolerance, worst, de00[worst],
                       message, result, ref)  # fmt: skip
        if result.metamerism is not None:
            kind = target.spread.observe(t, result.metamerism)
            if kind is not None:
                best = min(de00, key=lambda n: de00[n])
                message = (
                    _flap_message(ref, "metamerism", kind, target.spread)
                    if kind in (FLAPPING, SETTLED)
                    else f"{_subject(ref)}: metamerism {result.metamerism:.1f} ΔE00 (limit "
                    f"{self.cfg.metamerism:g}): ΔE00 {de00[worst]:.1f} under "
                    f"{illuminant_words(worst)} but {de00[best]:.1f} under "
                    f"{illuminant_words(best)}; the match depends on the light."
                    if kind not in (CLEARED, EASED)
                    else f"{_subject(ref)}: metamerism back to {result.metamerism:.1f} ΔE00, "
                    f"within the {self.cfg.metamerism:g} limit."
                )
                self._emit(target, "metamerism", kind, target.spread, worst, result.metamerism,
                           message, result, ref)  # fmt: skip

    def _emit(
        self,
        target: _Target,
        detector: str,
        kind: str,
        state: AlertState,
        worst: str,
        value: float,
        message: str,
        result: ColorResult,
        ref: Reference,
    ) -> None:
        channel = target.metamerism if detector == "metamerism" else target.de00[worst]
        assert channel is not None
        since = state.since if state.since is not None else result.ts_ns * 1e-9
        self.stats.alerts += 1
        self.pipeline.alert(
            AlertEvent(
                ts_ns=result.ts_ns,
                channel=channel,
                detector=detector,
                transition=kind,
                level=state.level,
                value=value,
                baseline=0.0,
                delta=value,
                rate_per_h=math.nan,
                since_ns=int(since * 1e9),
                baseline_note=f"approved reference {ref.key}"
                + (f" from {when(ref.captured_ns)}" if ref.captured_ns else ""),
                message=message,
            )
        )

    def _tolerance_message(
        self, kind: str, state: AlertState, ref: Reference, result: ColorResult, worst: str
    ) -> str:
        tol = self.cfg.tolerance
        de00 = result.de00
        subject = _subject(ref)
        if kind in (CLEARED, EASED) and state.level == Level.OK:
            return (
                f"{subject} matches its approved reference again under every light checked "
                f"(worst ΔE00 {de00[worst]:.1f} under {illuminant_words(worst)}, within the "
                f"{tol.warn:g} warning level)."
            )
        limit = tol.alarm if state.level == Level.ALARM else tol.warn
        over = [n for n in result.illuminants if n in de00 and de00[n] >= limit]
        fine = [n for n in result.illuminants if n in de00 and de00[n] < tol.warn]
        lights = " and ".join(illuminant_words(n) for n in over) or illuminant_words(worst)
        values = ", ".join(f"{de00[n]:.1f}" for n in over) or f"{de00[worst]:.1f}"
        if state.level == Level.ALARM:
            level = f"above the {tol.alarm:g} tolerance"
            verb = "differs from"
        else:
            level = f"above the {tol.warn:g} warning level (tolerance {tol.alarm:g})"
            verb = "is drifting from"
        text = f"{subject} {verb} its approved reference under {lights}: ΔE00 {values}, {level}"
        if fine:
            lights_ok = " and ".join(illuminant_words(n) for n in fine)
            values_ok = " and ".join(f"{de00[n]:.1f}" for n in fine)
            text += f"; under {lights_ok} it matches (ΔE00 {values_ok})"
        elif len(de00) > 1:
            text += "; no light checked hides it"
        return f"{text}. {ref.affects or DEFAULT_AFFECTS}"


def _flap_message(ref: Reference, what: str, kind: str, state: AlertState) -> str:
    if kind == FLAPPING:
        return (
            f"{_subject(ref)}: the {what} alert keeps coming and going ({state.flap_count} "
            f"changes within {duration_words(state.flap_window)}); further changes are held back "
            "until it settles. Check the instrument's calibration and the tolerance."
        )
    return f"{_subject(ref)}: the {what} alert has settled, now {state.level.label}."


def _subject(ref: Reference) -> str:
    label = ref.label or ref.part[:1].upper() + ref.part[1:]
    return f"{label} SKU {ref.sku}"


def _follow(channel: Channel, tags: Mapping[str, str], context: Mapping[str, str]) -> None:
    """Give a colour channel this measurement's tags (its sample id), so the line the pipeline
    spools for it lands in the same series as the ``color`` point and merges with it."""
    if channel.tags != tags:
        channel.tags = dict(tags)
        channel.retag(context)
