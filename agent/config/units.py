"""Durations and sizes as people write them in the config: ``30s``, ``5m``, ``7d``, ``512MiB``."""

import math
import re

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)\s*")
_DURATION_HINT = "use e.g. 30s, 5m, 2h, 7d"

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")
_SIZE_HINT = "use e.g. 512MiB, 1GB, 64KiB or a number of bytes"


def parse_duration(v: str | float | int) -> float:
    """Seconds from ``30s``, ``5m``, ``2h``, ``7d``, ``250ms``, ``1h30m`` or a number of seconds."""
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"{v!r} is not a duration: {_DURATION_HINT}")
    if isinstance(v, int | float):
        seconds = float(v)
    else:
        text = v.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_text(v, text)
    if not math.isfinite(seconds):
        raise ValueError(f"{v!r} is not a duration: {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"{v!r} is not a duration: it must not be negative")
    return seconds


def _parse_duration_text(original: str, text: str) -> float:
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_UNITS.get(match.group(2))
        if match.start() != pos or unit is None:
            break
        total += float(match.group(1)) * unit
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"{original!r} is not a duration: {_DURATION_HINT}")
    return total


def parse_size(v: str | int) -> int:
    """Bytes from ``512MiB``, ``1GB``, ``64KiB`` or a whole number of bytes."""
    value: object = v  # YAML may hand over a float or anything else despite the signature
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{v!r} is not a size: {_SIZE_HINT}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{v!r} is not a size: a number of bytes must be whole")
        value = int(value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip().lower())
        unit = _SIZE_UNITS.get(match.group(2) or "b") if match else None
        if match is None or unit is None:
            raise ValueError(f"{v!r} is not a size: {_SIZE_HINT}")
        number = float(match.group(1))
        if unit == 1 and not number.is_integer():
            raise ValueError(f"{v!r} is not a size: a number of bytes must be whole")
        size = round(number * unit)
    if size < 0:
        raise ValueError(f"{v!r} is not a size: it must not be negative")
    return size
