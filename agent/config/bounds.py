"""The sane range of every duration and rate in the configuration, as one table.

A value outside its range is refused with the range and the reason, e.g.
``self_metrics.interval: 1e-09 s is too short: at least 1 s (each interval writes a point to
the spool and to InfluxDB)``. The bounds stop the absurd (an interval of a nanosecond wrote
30 MB in 6 s) while leaving every setting a factory or a test has a reason for; NaN and
infinity are refused before any bound is checked (``Section`` sets ``allow_inf_nan=False``,
durations go through ``parse_duration``).
"""

from dataclasses import dataclass
from typing import Final

from pydantic import AfterValidator

from agent.config.base import reason

__all__ = ["BOUNDS", "Bound", "seconds_words", "within"]

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0
YEAR: Final = 365 * DAY


@dataclass(frozen=True, slots=True)
class Bound:
    """The range one setting may take, and what goes wrong outside it."""

    low: float
    high: float
    why: str
    unit: str = "s"  # "s": a duration; anything else: the number's own unit (or "")


BOUNDS: Final[dict[str, Bound]] = {
    # -- how often the agent writes or wakes up
    "self_metrics.interval": Bound(
        1.0, DAY, "each interval writes a point to the spool and to InfluxDB"
    ),
    "spool.flush_interval": Bound(
        0.01, 10.0, "shorter keeps the disk busy; longer widens what a crash can lose"
    ),
    "influx.flush_interval": Bound(
        0.01, 5 * MINUTE, "shorter sends tiny batches; longer delays every reading"
    ),
    "influx.timeout": Bound(
        0.5, 10 * MINUTE, "shorter fails healthy writes; longer hides a dead server"
    ),
    "influx.max_backoff": Bound(
        0.1, HOUR, "shorter hammers a failing server; longer leaves data waiting after it is back"
    ),
    "mqtt.session_expiry": Bound(
        MINUTE, YEAR, "the broker queues messages for the agent this long while it is away"
    ),
    "sources.reconnect_max": Bound(
        0.5, 10 * MINUTE, "shorter spins on a missing device; longer loses readings after a replug"
    ),
    "sources.interval": Bound(
        0.001, DAY, "one simulated sample per interval and channel"
    ),
    "sources.poll": Bound(
        0.05, DAY, "each poll is a request on the bus; one bus carries a few dozen a second"
    ),
    "sources.timeout": Bound(
        0.01, MINUTE, "shorter fails slow devices; longer holds the bus while one is silent"
    ),
    "sources.frame_gap": Bound(
        0.0, 1.0, "the silence between two frames on an RS-485 bus (at least 3.5 characters)"
    ),
    # -- alerting and detection (reading time, not wall time)
    "alerts.repeat": Bound(
        MINUTE, 30 * DAY, "a reminder more often than every minute is noise"
    ),
    "alerts.flap_window": Bound(MINUTE, 30 * DAY, "the span in which changes count as flapping"),
    "detectors.window": Bound(1.0, YEAR, "a detector keeps every reading of its window"),
    "detectors.hold": Bound(0.0, 30 * DAY, "an alert this late is no use"),
    "detectors.max_gap": Bound(1.0, 30 * DAY, "silence longer than this is not noticed"),
    "detectors.block": Bound(1.0, DAY, "a change is placed no closer than one block"),
    "channels.interval": Bound(
        0.001, DAY, "the time between two readings the channel's detectors are sized for"
    ),
    "baseline.window": Bound(MINUTE, YEAR, "the rolling baseline keeps every reading of it"),
    "baseline.learn": Bound(MINUTE, YEAR, "what is learned before the baseline is locked"),
    # -- incidents and their delivery (wall time)
    "notify.timeout": Bound(
        0.1, 10 * MINUTE, "shorter fails healthy deliveries; longer holds a dead endpoint's queue"
    ),
    "notify.batch_window": Bound(
        0.0, HOUR, "notices within it share one mail (0: each alone); the first waits this long"
    ),
    "notify.refresh": Bound(
        0.1, DAY, "a tower light is sent its whole state again this often"
    ),
    "notify.rate_limit.per": Bound(MINUTE, DAY, "the window a recipient's notices are counted in"),
    "notify.escalate_after": Bound(
        MINUTE, 30 * DAY, "an escalation sooner than a minute leaves nobody time to acknowledge"
    ),
    "incidents.keep_cleared": Bound(
        HOUR, YEAR, "cleared incidents stay listed (and in incidents.sqlite) this long"
    ),
    # -- the status page (wall time)
    "status.session": Bound(
        5 * MINUTE, 30 * DAY, "a login on the status page lasts this long"
    ),
    "status.health_grace": Bound(
        1.0, DAY, "/healthz tolerates a source or InfluxDB down this long (reconnects)"
    ),
    # -- device clocks against the gateway's (docs/architecture.md, "Time")
    "input_limits.max_ahead": Bound(
        MINUTE, YEAR, "device readings further ahead of the gateway's clock are refused"
    ),
    "input_limits.max_behind": Bound(
        HOUR, 10 * YEAR, "device readings further behind the gateway's clock are refused"
    ),
    # -- rates and spans that are plain numbers
    "sources.speed": Bound(
        0.001, 1e8, "simulated seconds per wall-clock second", unit=""
    ),
    "sources.days": Bound(0.001, 3650.0, "simulated days", unit="days"),
    "history.days": Bound(0.01, 3650.0, "days of per-minute history on the gateway's disk",
                          unit="days"),
}  # fmt: skip
"""Every bounded setting: low, high, and the reason given with a refusal."""


def seconds_words(seconds: float) -> str:
    """A duration as the config would write it: 10 ms, 1 s, 5 min, 1 h, 365 d."""
    for size, unit in ((DAY, "d"), (HOUR, "h"), (MINUTE, "min"), (1.0, "s")):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g} {unit}"
    if 0 < seconds < 1 and (seconds * 1000).is_integer():
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


def _shown(value: float, bound: Bound) -> str:
    if bound.unit == "s":
        return seconds_words(value)
    return f"{value:g} {bound.unit}".rstrip()


def within(key: str) -> AfterValidator:
    """The validator that holds a setting to ``BOUNDS[key]``: ``Annotated[Duration, within(k)]``."""
    bound = BOUNDS[key]

    def check(value: float) -> float:
        given = f"{value:g} s" if bound.unit == "s" else f"{value:g}"
        if value < bound.low:
            short = "too short" if bound.unit == "s" else "too small"
            raise reason(f"{given} is {short}: at least {_shown(bound.low, bound)} ({bound.why})")
        if value > bound.high:
            long = "too long" if bound.unit == "s" else "too large"
            raise reason(f"{given} is {long}: at most {_shown(bound.high, bound)} ({bound.why})")
        return value

    return AfterValidator(check)
