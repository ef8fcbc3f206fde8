"""Logging: structlog to a console renderer on a TTY, JSON lines otherwise (journald).

Identical warnings and errors in a burst are logged once and then summarised
(``repeated=N, window_s=60``); values of secret-looking keys are replaced with ``***``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

BURST_WINDOW_S = 60.0
BURST_LEVELS = frozenset({"warning", "error", "critical"})
SECRET_KEY = re.compile(r"token|passw(or)?d|secret|authorization|api_?key", re.IGNORECASE)
REDACTED = "***"
FORMATS = ("auto", "console", "json")

_STRUCTURAL_KEYS = frozenset({"event", "level", "logger", "timestamp"})
_SUMMARY_MARK = "_burst_summary"
_EVERY_TIME_MARK = "_every_time"
EVERY_TIME = {_EVERY_TIME_MARK: True}
"""``log.error(event, **EVERY_TIME, ...)``: never summarised, for the answer to something an
operator did (a reload refused twice in a minute must say why both times)."""


def _redact(mapping: MutableMapping[str, Any]) -> None:
    for key, value in mapping.items():
        if SECRET_KEY.search(key):
            mapping[key] = REDACTED
        elif isinstance(value, dict):
            copy = dict(value)
            _redact(copy)
            mapping[key] = copy


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: replace the value of any key named like a token, password or secret."""
    _redact(event_dict)
    return event_dict


@dataclass(slots=True)
class _Burst:
    started: float
    suppressed: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class BurstSummariser:
    """Processor: log the first of identical warnings/errors in a window, count the rest,
    and log one summary line with ``repeated=N`` when the window has closed."""

    def __init__(
        self, window_s: float = BURST_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._bursts: dict[tuple[str, str, str], _Burst] = {}

    def reset(self, window_s: float, clock: Callable[[], float]) -> None:
        """Forget open bursts and use a new window and clock."""
        self.window_s = window_s
        self.clock = clock
        self._bursts.clear()

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        if event_dict.pop(_SUMMARY_MARK, False) | event_dict.pop(_EVERY_TIME_MARK, False):
            return event_dict
        now = self.clock()
        self.flush(now=now)
        level = str(event_dict.get("level", ""))
        if level not in BURST_LEVELS:
            return event_dict
        key = (str(event_dict.get("logger", "")), level, str(event_dict.get("event", "")))
        burst = self._bursts.get(key)
        if burst is None:
            self._bursts[key] = _Burst(started=now)
            return event_dict
        burst.suppressed += 1
        burst.last = {k: v for k, v in event_dict.items() if k not in _STRUCTURAL_KEYS}
        raise structlog.DropEvent

    def flush(self, *, now: float | None = None, force: bool = False) -> None:
        """Log the summary of every burst whose window has closed (every burst if ``force``)."""
        if now is None:
            now = self.clock()
        closed = [
            key
            for key, burst in self._bursts.items()
            if force or now - burst.started >= self.window_s
        ]
        for key in closed:
            burst = self._bursts.pop(key)
            if burst.suppressed:
                self._emit(key, burst)

    def _emit(self, key: tuple[str, str, str], burst: _Burst) -> None:
        logger_name, level, event = key
        window = int(self.window_s) if float(self.window_s).is_integer() else self.window_s
        log = structlog.get_logger().bind(logger=logger_name)
        summary = {**burst.last, "repeated": burst.suppressed, "window_s": window}
        getattr(log, level)(event, **summary, **{_SUMMARY_MARK: True})


_summariser = BurstSummariser()


def _level_number(level: str) -> int:
    names = logging.getLevelNamesMapping()
    number = names.get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    return number


class _SafeStream:
    """A log stream that never raises: a closed or broken stream must not kill the task that
    logs (a reconnect loop logging its outage, say); the line is lost, the agent goes on."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def writes_to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to journald: systemd sets ``$JOURNAL_STREAM`` to the
    device and inode of the service's stdout/stderr stream."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class _WithPriority:
    """Prefix each line with its syslog priority (``<4>`` for a warning), which journald takes
    off and stores as the line's priority: ``journalctl -u driftgate -p warning`` then selects
    the agent's warnings and errors. Without it every line of stderr is stored as info."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level", "")), 6)
        return f"<{priority}>" + str(self.renderer(logger, method, event_dict))


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    burst_window_s: float = BURST_WINDOW_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Configure structlog for the whole process: level, renderer, burst summaries, redaction.

    ``fmt`` is ``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = sys.stderr if stream is None else stream
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    _summariser.reset(burst_window_s, clock)
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[Processor] = [
        _rename_logger,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        redact_secrets,
        _summariser,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    if not console:
        processors.append(structlog.processors.format_exc_info)
    processors.append(_WithPriority(renderer) if writes_to_journal(out) else renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _SafeStream(out))),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """Return a logger whose lines carry ``logger=name``."""
    # A lazy proxy: module-level loggers pick up configure_logging() done later.
    # structlog.get_logger(logger=...) clashes with its own parameter name, hence the rename.
    return cast(FilteringBoundLogger, structlog.get_logger(logger_name=name))


def _rename_logger(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def flush_bursts(*, force: bool = False) -> None:
    """Log summaries of closed bursts; call periodically, and with ``force=True`` at shutdown."""
    _summariser.flush(force=force)
