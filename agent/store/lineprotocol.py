"""InfluxDB line protocol encoding: escaping rules in one place, fast prefix reuse for the hot path.

A point is ``measurement[,tag=value...] field=value[,field=value...] timestamp``. The hot path
encodes one float field per reading; the prefix (measurement and tags) is built once per
channel and reused, so a reading costs one f-string.

What InfluxDB 1.6 stores for each special character was checked against a real server
(tests/test_lineprotocol.py keeps those checks). In measurements, tag keys, tag values and
field keys:

- ``,`` ``=`` and space are escaped with a backslash and come back exactly (``=`` needs no
  escape in a measurement).
- A backslash before any other character is stored as is, so ``C:\\temp`` needs no escaping.
- A tab is stored exactly when written raw, so it is written raw (influxdb-client writes the
  two characters ``\\t``, which the server keeps as a backslash and a ``t``).
- A newline cannot be written raw (it ends the line) and the server has no escape for it:
  newline and carriage return become the two visible characters ``\\n`` / ``\\r``, as
  influxdb-client writes them.
- A backslash before an escaped character or at the end cannot be written faithfully: 1.6
  rejects ``\\,`` in a field key and a trailing backslash anywhere (the separator after it
  counts as escaped), and drops the backslash of ``\\,``/``\\=``/``\\"`` in a
  measurement. Such a backslash (before ``,`` ``=`` space ``"`` newline, or last) becomes
  U+FF3C FULLWIDTH REVERSE SOLIDUS ``＼``. influxdb-client appends a space to a tag value
  ending in a backslash (stored as a space in place of the backslash) and writes the rest as
  is (a rejected line).
- A measurement starting with ``#`` makes the line a comment, silently dropped by the server;
  the leading ``#`` becomes U+FF03 FULLWIDTH NUMBER SIGN ``＃``.

String field values carry everything exactly (newlines included) with ``"`` and ``\\``
escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_STRING = str.maketrans({'"': r"\"", "\\": "\\\\"})
_FULLWIDTH_BACKSLASH = "\uff3c"
_UNWRITABLE_BACKSLASH = re.compile(r'\\(?=[,= "\n\r]|\Z)')
_COMMENT_HASH = "\uff03"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

FieldValue = float | int | bool | str


def escape_measurement(name: str) -> str:
    """Escape a measurement name (commas, spaces; see the module doc)."""
    if "\\" in name:
        name = _UNWRITABLE_BACKSLASH.sub(_FULLWIDTH_BACKSLASH, name)
    escaped = name.translate(_MEASUREMENT)
    if escaped.startswith("#"):
        escaped = _COMMENT_HASH + escaped[1:]
    return escaped


def escape_key(key: str) -> str:
    """Escape a tag key, tag value or field key (commas, equals signs, spaces, see module doc)."""
    if "\\" in key:
        key = _UNWRITABLE_BACKSLASH.sub(_FULLWIDTH_BACKSLASH, key)
    return key.translate(_KEY)


def escape_string(value: str) -> str:
    """Escape a string field value's content (double quotes and backslashes)."""
    return value.translate(_STRING)


def series_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """Return ``measurement,k=v,...`` with tags sorted by key, as InfluxDB prefers them.

    Tags with an empty key or value are left out: line protocol cannot carry them. Sorting
    by ``str`` is sorting by code point, which is the UTF-8 byte order InfluxDB uses.
    """
    if not measurement:
        raise ValueError("a point needs a non-empty measurement name")
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if key == "" or value == "":
            continue
        parts.append(f"{escape_key(key)}={escape_key(value)}")
    return ",".join(parts)


def format_float(value: float) -> str:
    """Format a float field value: shortest round-trip repr, a trailing ``.0`` dropped."""
    if not math.isfinite(value):
        raise ValueError(f"line protocol cannot carry a non-finite float: {value!r}")
    text = repr(float(value))  # float(): numpy scalars repr as "np.float64(...)"
    return text[:-2] if text.endswith(".0") else text


def format_field_value(value: FieldValue) -> str:
    """Format one field value: floats as shortest repr, ints with ``i``, bools, quoted strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"line protocol integers are 64-bit signed: {value!r}")
        return f"{value}i"
    if isinstance(value, float):
        return format_float(value)
    return '"' + value.translate(_STRING) + '"'


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts_ns: int,
) -> str:
    """Encode one point with any number of fields (alerts, self-metrics; not the reading hot path).

    Fields keep the mapping's order.
    """
    if not fields:
        raise ValueError("a point needs at least one field")
    if "" in fields:
        raise ValueError("a field key cannot be empty")
    body = ",".join(f"{escape_key(k)}={format_field_value(v)}" for k, v in fields.items())
    return f"{series_prefix(measurement, tags)} {body} {ts_ns}"
