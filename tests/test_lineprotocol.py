"""Line protocol: equal to influxdb-client's Point where Point is right, and exact round trips
through a real InfluxDB 1.6 for every special character."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from agent.reading import Channel
from agent.store.lineprotocol import (
    FieldValue,
    encode_point,
    escape_key,
    format_field_value,
    series_prefix,
)

SPECIALS = ' ,="\\\n\r\t#é日本😀'
TS = st.integers(min_value=-(2**63) + 2, max_value=2**63 - 2)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_UNWRITABLE_BACKSLASH = re.compile(r'\\(?=[,= "\n\r]|\Z)')


def _text(min_size: int = 0) -> st.SearchStrategy[str]:
    alphabet = st.one_of(st.sampled_from(SPECIALS), st.characters(exclude_categories=["Cs"]))
    return st.text(alphabet, min_size=min_size, max_size=12)


def _point_compatible(text: str) -> str:
    """Remove what Point gets wrong (against InfluxDB 1.6, see tests below):
    - a tab: Point writes ``\\t``, stored as backslash + ``t``; we write it raw, stored exactly;
    - a backslash before ``,`` ``=`` space ``"`` CR/LF or at the end: Point's line is rejected
      or stores another value (a trailing one becomes a space); we write ``＼`` instead."""
    return _UNWRITABLE_BACKSLASH.sub("/", text.replace("\t", " "))


def _measurement_compatible(text: str) -> str:
    # A leading '#' makes Point's line a comment (it only warns); we write '＃'.
    text = _point_compatible(text)
    return "m" + text if text.startswith("#") else text


FIELD_VALUES = st.one_of(FLOATS, INTS, st.booleans(), _text())


@given(
    measurement=_text(min_size=1).map(_measurement_compatible),
    tags=st.dictionaries(_text().map(_point_compatible), _text().map(_point_compatible)),
    fields=st.dictionaries(_text(min_size=1).map(_point_compatible), FIELD_VALUES, min_size=1),
    ts=TS,
)
@settings(max_examples=400)
def test_encode_point_equals_influxdb_client_point(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int
) -> None:
    point = Point(measurement)
    for key, value in tags.items():
        point.tag(key, value)
    for key, field_value in fields.items():
        point.field(key, field_value)
    expected = point.time(ts, WritePrecision.NS).to_line_protocol()
    # Point sorts fields by key; we keep the caller's order (no server cares).
    ordered = {k: fields[k] for k in sorted(fields)}
    assert encode_point(measurement, tags, ordered, ts) == expected


def _stored(text: str) -> str:
    """What InfluxDB 1.6 gives back for ``text`` written as a key, tag value or measurement."""
    return _UNWRITABLE_BACKSLASH.sub("＼", text).replace("\n", "\\n").replace("\r", "\\r")


def _split_unescaped(section: str, sep: str) -> list[str]:
    """Split like InfluxDB 1.6 scans tags: a separator right after a backslash is escaped."""
    return re.split(rf"(?<!\\){re.escape(sep)}", section)


@given(measurement=_text(min_size=1), tags=st.dictionaries(_text(), _text()), ts=TS)
@settings(max_examples=400)
def test_no_input_breaks_the_line_or_swallows_a_tag(
    measurement: str, tags: dict[str, str], ts: int
) -> None:
    line = encode_point(measurement, tags, {"v": 1.5}, ts)
    assert "\n" not in line
    assert "\r" not in line
    assert not line.startswith("#")
    key_section, fields, stamp = _split_unescaped(line, " ")
    assert (fields, stamp) == ("v=1.5", str(ts))
    pairs = _split_unescaped(key_section, ",")[1:]
    kept = [k for k in sorted(tags) if k and tags[k]]
    assert len(pairs) == len(kept)
    for pair, key in zip(pairs, kept, strict=True):
        assert len(_split_unescaped(pair, "=")) == 2
        assert pair == f"{escape_key(key)}={escape_key(tags[key])}"


@given(value=FLOATS, ts=TS)
def test_channel_line_equals_encode_point(value: float, ts: int) -> None:
    channel = Channel(
        name="t1",
        measurement="climate zone",
        field="temperature_c",
        tags={"site": "Atelier, Nord", "sensor": "C:\\probe\\", "zone": "a=b"},
    )
    expected = encode_point(channel.measurement, channel.tags, {channel.field: value}, ts)
    assert channel.line(ts, value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_field_value(value)
    with pytest.raises(ValueError, match="non-finite"):
        Channel(name="c", measurement="m", field="f").line(1, value)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_integers_beyond_int64_are_rejected(value: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        format_field_value(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (-0.0, "-0"), (1e16, "1e+16"), (0.1, "0.1"), (True, "true"), (3, "3i")],
)
def test_format_field_value(value: float | int | bool, text: str) -> None:
    assert format_field_value(value) == text


def test_empty_names_are_rejected_and_empty_tags_left_out() -> None:
    with pytest.raises(ValueError, match="measurement"):
        encode_point("", {}, {"f": 1.0}, 1)
    with pytest.raises(ValueError, match="field key"):
        encode_point("m", {}, {"": 1.0}, 1)
    with pytest.raises(ValueError, match="at least one field"):
        encode_point("m", {}, {}, 1)
    assert series_prefix("m", {"": "x", "a": "", "b": "y"}) == "m,b=y"


# -- round trips through a real InfluxDB 1.6 -----------------------------------------------

NAMES = [
    "plain",
    "with space",
    "with,comma",
    "with=equals",
    'with"quote',
    "C:\\temp",
    "back\\\\slashes",
    "unicode é日本😀",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "trailing\\",
    "two trailing\\\\",
    "slash\\,comma",
    "slash\\=equals",
    "slash\\ space",
    'slash\\"quote',
    "literal \\n text",
]
STRINGS = [*NAMES, "multi\nline\nvalue", 'say "hi"\\', "\\", '"', ""]


@pytest.mark.parametrize("text", NAMES)
def test_round_trip_tags_and_field_key(influx_db: tuple[object, str], text: str) -> None:
    server, db = influx_db
    tags = {text: text, "other": text, "z": "last"}
    fields: dict[str, FieldValue] = {f"f{text}": 1.5, "s": text}
    ts = 1_700_000_000_123_456_789
    status, body = server.write(encode_point("rt", tags, fields, ts), db)  # type: ignore[attr-defined]
    assert status == 204, body
    tag_values = server.rows(  # type: ignore[attr-defined]
        'SHOW TAG VALUES FROM "rt" WITH KEY =~ /.*/', db
    )
    assert {(r["key"], r["value"]) for r in tag_values} == {
        (_stored(text), _stored(text)),
        ("other", _stored(text)),
        ("z", "last"),
    }
    (row,) = server.points("rt", db)  # type: ignore[attr-defined]
    assert row == {
        "time": ts,
        _stored(text): _stored(text),
        _stored(f"f{text}"): 1.5,
        "other": _stored(text),
        "s": text,
        "z": "last",
    }


@pytest.mark.parametrize("text", [*NAMES, "#hash"])
def test_round_trip_measurement(influx_db: tuple[object, str], text: str) -> None:
    server, db = influx_db
    status, body = server.write(encode_point(text, {"t": "v"}, {"f": 2.0}, 5), db)  # type: ignore[attr-defined]
    assert status == 204, body
    expected = _stored(text)
    expected = "＃" + expected[1:] if expected.startswith("#") else expected
    names = [r["name"] for r in server.rows("SHOW MEASUREMENTS", db)]  # type: ignore[attr-defined]
    assert names == [expected]


def test_round_trip_string_fields_and_numbers(influx_db: tuple[object, str]) -> None:
    server, db = influx_db
    lines = []
    expected = []
    for i, text in enumerate(STRINGS):
        fields: dict[str, FieldValue] = {
            "s": text,
            "f": -0.1 * i,
            "i": -(2**63) + i,
            "b": i % 2 == 0,
            "e": 1e300,
        }
        ts = 1_000_000_000_000_000_000 + i
        lines.append(encode_point("strings", {"case": str(i)}, fields, ts))
        expected.append({"time": ts, "case": str(i), **fields})
    lines.append(encode_point("strings", {"case": "max"}, {"i": 2**63 - 1}, 7))
    status, body = server.write("\n".join(lines), db)  # type: ignore[attr-defined]
    assert status == 204, body
    rows = server.points("strings", db)  # type: ignore[attr-defined]
    assert rows[0] == {
        "time": 7,
        "case": "max",
        "i": 2**63 - 1,
        "s": None,
        "f": None,
        "b": None,
        "e": None,
    }
    assert rows[1:] == expected
