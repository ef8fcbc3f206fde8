"""Baseline capture from the status page: the span a form names, what it would lock (shown for
confirmation), and the capture itself, which is ``driftgate baseline capture``'s own code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from agent.config import parse_duration
from agent.drift.baselines import Baseline
from agent.drift.capture import MIN_READINGS, CaptureError, capture, parse_time, span_words
from agent.store.history import MINUTE_NS, Pooled, channel_span, history_path, pooled
from agent.words import fmt


@dataclass(frozen=True, slots=True)
class Span:
    """A capture span as the CLI takes it: ``last``, or ``start`` and ``end`` (ISO with zone)."""

    last: str | None = None
    start: str | None = None
    end: str | None = None

    def fields(self) -> dict[str, str]:
        """The form fields that name this span again (for the confirmation's hidden inputs)."""
        return {"last": self.last or "", "start_iso": self.start or "", "end_iso": self.end or ""}


def _local(text: str, zone: tzinfo, what: str) -> str:
    """A browser's datetime-local value (no zone) read in the site's time zone, as ISO."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CaptureError(f"{what} {text!r} is not a date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.isoformat()


def span_from_form(form: Mapping[str, str], zone: tzinfo) -> Span:
    """The span of a capture form: ``last`` (30m … 7d), else ``from`` and ``to``."""
    last = (form.get("last") or "").strip()
    if last:
        return Span(last=last[:20])
    start_iso, end_iso = form.get("start_iso") or "", form.get("end_iso") or ""
    if start_iso and end_iso:
        return Span(start=start_iso[:40], end=end_iso[:40])
    start, end = (form.get("from") or "").strip(), (form.get("to") or "").strip()
    if not start or not end:
        raise CaptureError("choose a span: the last 30 min … 7 d, or both from and to")
    return Span(start=_local(start, zone, "from"), end=_local(end, zone, "to"))


def preview(state_dir: Path, channel: str, span: Span) -> Pooled:
    """What a capture of ``span`` would lock, refused like the capture would be (from a
    thread: it reads the local history)."""
    path = history_path(state_dir)
    if span.last is not None:
        try:
            seconds = parse_duration(span.last)
        except ValueError as exc:
            raise CaptureError(f"span: {exc}") from None
        if seconds <= 0:
            raise CaptureError("the span must be positive, e.g. 30m")
        _, newest = channel_span(path, channel)
        end_ns = (newest + 1) * MINUTE_NS
        start_ns = end_ns - int(seconds * 1e9)
    else:
        assert span.start is not None
        assert span.end is not None
        start_ns, end_ns = parse_time(span.start, "from"), parse_time(span.end, "to")
        if end_ns <= start_ns:
            raise CaptureError("'to' must be after 'from'")
        channel_span(path, channel)
    got = pooled(path, channel, start_ns, end_ns)
    if got is None or got.n < MIN_READINGS:
        n = got.n if got is not None else 0
        raise CaptureError(
            f"only {n} readings of {channel} in {span_words(start_ns, end_ns)}; a baseline "
            f"needs at least {MIN_READINGS}: choose a longer or another span"
        )
    return got


def preview_words(got: Pooled, unit: str) -> str:
    """The confirmation's sentence."""
    return (
        f"From the local history, {span_words(got.start_ns, got.end_ns)}: mean "
        f"{fmt(got.mean, unit)}, standard deviation {fmt(got.std, unit)}, over {got.n:,} "
        f"readings (lowest {fmt(got.minimum, unit)}, highest {fmt(got.maximum, unit)})."
    )


def run_capture(state_dir: Path, channel: str, span: Span, note: str) -> Baseline:
    """Capture, exactly as ``driftgate baseline capture`` does (from a thread)."""
    return capture(state_dir, channel, last=span.last, start=span.start, end=span.end, note=note)
