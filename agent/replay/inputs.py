"""Recorded readings for replay: CSV, an influx CLI CSV export, or line protocol, streamed.

Which of the three a file is, is told by its content (``open_input``):

Line protocol: ``influx_inspect export`` / ``influx write`` input (comments, DDL and DML
header lines skipped, nanosecond timestamps). Every numeric field of every series is a reading;
string and boolean fields, and the agent's own measurements (``SKIP_MEASUREMENTS``), are not
(counted in ``skipped``). A series is named by ``_series_names``: the configured channel it
matches, else ``<measurement>.<field>`` plus the tag values that tell it apart; context tags
(``agent.context.PER_READING_TAGS``) do not split a channel.

Influx CLI CSV: what ``influx -format csv -execute 'SELECT ...'`` (InfluxDB 1.x) prints. Each
series comes under a header ``name,time,<columns>`` or, with ``GROUP BY``,
``name,tags,time,<columns>``; the CLI (1.6) repeats the header before every series and
statement, and blank lines between blocks are allowed (concatenated exports). ``name`` is the
measurement, ``tags`` the grouped tags as ``k=v,k=v`` (unescaped: a piece without ``=`` is
taken as part of the previous value, so a comma inside a value survives; an empty value is an
absent tag). ``time`` is epoch ns (the CLI's default), s/ms/us (``-precision``; not h or m,
which would read as seconds) or RFC 3339. The series become channels as line protocol names
them (``_series_specs``). Numeric cells are readings; empty cells are none.

Without ``GROUP BY`` (``SELECT *``) the tags are plain columns: a column is taken as a tag when
it is one of driftgate's tag keys (``KNOWN_TAGS``) or holds any value that is neither a number
nor a boolean (a numeric field never prints as text; the columns so guessed are named on
stderr). An unknown tag whose values all look like numbers is read as a field, and a string
field as a tag: ``GROUP BY *`` makes the export exact. Under a ``tags`` column, plain columns
are fields (driftgate's tag keys aside, for a ``GROUP BY`` of some tags only): their string and
boolean values are counted in ``skipped``, never replayed. A row wider than its header (the CLI
splits cells at a tab inside a value) or an ``ERR:`` line (the CLI's error, printed to stdout)
stops the replay with the line named.

CSV (anything else): a header row, a time column and one or more numeric value columns
(empty cells skipped; any other non-number is an error naming the line and column).

Times are ISO 8601 with a timezone (fractions down to the nanosecond), or epoch numbers whose
unit is read from the first row's magnitude (see ``EPOCH_UNITS``) and must stay the same for
the whole file.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from agent.context import PER_READING_TAGS, RESERVED
from agent.errors import DriftgateError

if TYPE_CHECKING:
    pass

TIME_COLUMNS = ("time", "timestamp", "_time", "ts", "datetime", "date")
"""Header names taken as the time column (case-insensitive) when --time-column is not given."""

EPOCH_UNITS: tuple[tuple[float, str, int], ...] = (
    (1e11, "s", 1_000_000_000),
    (1e14, "ms", 1_000_000),
    (1e17, "us", 1_000),
    (math.inf, "ns", 1),
)
"""Epoch unit by the first value's magnitude: below 1e11 seconds (up to the year 5138), below
1e14 milliseconds, below 1e17 microseconds, otherwise nanoseconds."""

SKIP_MEASUREMENTS = frozenset(
    {"drift_alert", "driftgate_agent", "driftgate_source", "spectrum", "lot_summary"}
)
"""Measurements in an export that are not sensor readings (the agent's own points)."""


KNOWN_TAGS = frozenset({*RESERVED, *PER_READING_TAGS, "sku", "part"})
"""driftgate's tag keys (README, "InfluxDB schema"): in an influx CLI export without GROUP BY
these columns are tags even where every value looks like a number (station 5, line 2)."""

_UNIT_SUFFIXES = {"rh": "%RH", "c": "°C", "cn": "cN", "pct": "%", "hpa": "hPa", "pa": "Pa"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_FRACTION = re.compile(r"(\d\d:\d\d:\d\d)[.,](\d+)")
_LOCATION_TAGS = ("zone", "line", "station", "sensor")


class ReplayError(DriftgateError):
    """A replay input cannot be read; the message names the file, the line and the column."""


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One input series as a channel: what a source would tell the registry about it."""

    name: str
    measurement: str
    field: str
    unit: str
    kind: str
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


class ReplayInput(Protocol):
    """A recorded file: its series, and its readings as (series index, ns, value) in file order.

    ``skipped`` counts what ``readings()`` passed over that was not a reading (description →
    count, e.g. a string field's values), complete once the readings are consumed.
    """

    series: list[SeriesSpec]
    skipped: Counter[str]

    def readings(self) -> Iterator[tuple[int, int, float]]:
        """Stream the readings; raise ReplayError naming the line and column on bad input."""
        ...


# What ReplayInput.skipped says, the same words for every input.
def _skipped_measurement(measurement: str) -> str:
    return f"points of measurement {measurement!r} (the agent's own, not readings)"


def _skipped_field(measurement: str, field_key: str) -> str:
    return f"values of field {field_key!r} of measurement {measurement!r} (not numbers)"


# --------------------------------------------------------------------------------- guessing


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def guess_kind(name: str) -> str:
    """A column's channel kind from its name: climate, tension or color (generic otherwise:
    judged only for changes, sized to the column's own rate)."""
    tokens = _tokens(name)
    if any(t.startswith(("humid", "temp", "dew")) or t == "rh" for t in tokens):
        return "climate"
    if any(t.startswith("tension") or t in ("cn", "load") for t in tokens):
        return "tension"
    if any(t.startswith(("de00", "deltae")) or t in ("de", "l", "a", "b") for t in tokens):
        return "color"
    return "generic"


def guess_unit(name: str) -> str:
    """A column's unit from its name: %RH, °C, cN, or none."""
    tokens = _tokens(name)
    if any(t.startswith("humid") or t == "rh" for t in tokens):
        return "%RH"
    if any(t.startswith(("temp", "dew")) for t in tokens):
        return "°C"
    if any(t.startswith("tension") or t in ("cn", "load") for t in tokens):
        return "cN"
    return ""


# ------------------------------------------------------------------------------------ time


class TimeParser:
    """Parses a file's time cells: ISO 8601 with a timezone, or epoch numbers (one unit a file)."""

    def __init__(self) -> None:
        self.unit: tuple[str, int] | None = None

    def __call__(self, text: str) -> int:
        """Nanoseconds since the epoch; ValueError with the reason a user reads."""
        text = text.strip()
        if _NUMBER.fullmatch(text):
            return self._epoch(text)
        # fromisoformat keeps microseconds only; the influx CLI's RFC 3339 times carry ns.
        fraction_ns = 0
        whole = text
        found = _FRACTION.search(text)
        if found is not None:
            fraction_ns = int(found.group(2)[:9].ljust(9, "0"))
            whole = text[: found.end(1)] + text[found.end() :]
        try:
            dt = datetime.fromisoformat(whole)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time (ISO 8601 with a timezone, or epoch s/ms/us/ns)"
            ) from None
        if dt.tzinfo is None:
            raise ValueError(f"{text!r} has no timezone (add Z or +01:00)")
        d = dt - _EPOCH
        return (d.days * 86400 + d.seconds) * 1_000_000_000 + fraction_ns

    def _epoch(self, text: str) -> int:
        try:
            number = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"{text!r} is not a time") from None
        size = abs(number)
        unit, scale = next((u, s) for limit, u, s in EPOCH_UNITS if size < limit)
        if self.unit is None:
            self.unit = (unit, scale)
        elif self.unit[0] != unit:
            raise ValueError(
                f"{text!r} looks like epoch {unit} but the file started with epoch {self.unit[0]}"
            )
        return int(number * self.unit[1])


# ------------------------------------------------------------------------------------- CSV


class CsvInput:
    """A CSV file: a header, a time column, value columns; streamed row by row."""

    def __init__(self, path: Path, time_column: str | None = None) -> None:
        self.path = path
        self.time_column = time_column
        self.skipped: Counter[str] = Counter()  # nothing: a non-number is an error here
        with _open_text(path) as f:
            self._header_line, header = _csv_header(path, f)
        self.columns = header
        self.time_index = self._time_index(header)
        self.value_columns = [i for i in range(len(header)) if i != self.time_index]
        if not self.value_columns:
            raise ReplayError(f"{path}:{self._header_line}: no value column besides the time")
        self.series = [
            SeriesSpec(
                name=header[i],
                measurement=guess_kind(header[i]),
                field=header[i],
                unit=guess_unit(header[i]),
                kind=guess_kind(header[i]),
            )
            for i in self.value_columns
        ]

    def _time_index(self, header: list[str]) -> int:
        where = f"{self.path}:{self._header_line}"
        if self.time_column is not None:
            if self.time_column not in header:
                raise ReplayError(
                    f"{where}: column {self.time_column!r}: missing (the header has "
                    f"{', '.join(map(repr, header))})"
                )
            return header.index(self.time_column)
        lowered = [h.strip().lower() for h in header]
        for name in TIME_COLUMNS:
            if name in lowered:
                return lowered.index(name)
        raise ReplayError(
            f"{where}: column 'time': missing: no column is named {', '.join(TIME_COLUMNS)} "
            f"(the header has {', '.join(map(repr, header))}); name it with --time-column"
        )

    def readings(self) -> Iterator[tuple[int, int, float]]:
        """Stream (series index, ns, value); ReplayError names the line and column."""
        parse_time = TimeParser()
        ti = self.time_index
        columns = self.columns
        width = len(columns)
        values = list(enumerate(self.value_columns))
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            for row in reader:
                if reader.line_num <= self._header_line or not row or row[0].startswith("#"):
                    continue
                line = reader.line_num
                if len(row) < width:
                    missing = columns[len(row)]
                    raise ReplayError(
                        f"{self.path}:{line}: column {missing!r}: missing (the row has "
                        f"{len(row)} of {width} columns)"
                    )
                cell = row[ti]
                try:
                    ts = parse_time(cell)
                except ValueError as exc:
                    raise ReplayError(
                        f"{self.path}:{line}: column {columns[ti]!r}: {exc}"
                    ) from None
                for index, col in values:
                    text = row[col].strip()
                    if not text:
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        raise ReplayError(
                            f"{self.path}:{line}: column {columns[col]!r}: "
                            f"{row[col]!r} is not a number"
                        ) from None
                    yield index, ts, value


def _open_text(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _csv_header(path: Path, f: IO[str]) -> tuple[int, list[str]]:
    reader = csv.reader(f)
    for row in reader:
        if row and not row[0].startswith("#") and any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            _check_header(path, reader.line_num, header)
            return reader.line_num, header
    raise ReplayError(f"{path}:1: empty file: expected a header row (time and value columns)")


def _check_header(path: Path, line: int, header: Sequence[str]) -> None:
    for i, name in enumerate(header):
        if not name:
            raise ReplayError(f"{path}:{line}: column {i + 1} has no name")
        if name in header[:i]:
            raise ReplayError(f"{path}:{line}: column {name!r} appears twice")


# ------------------------------------------------------------------------ influx CLI CSV

_NUMERIC, _BOOLEAN, _TEXT = 1, 2, 4  # what a column's cells held, per measurement
_CLI_ERROR = "ERR: "  # the influx CLI prints its errors on stdout, into a redirected export


@dataclass(frozen=True, slots=True)
class _Block:
    """One header of an influx CLI export: the columns of the rows under it."""

    line: int
    columns: tuple[str, ...]
    tags_at: int | None
    plain: tuple[int, ...]  # the columns after time: fields, and tags in a SELECT *

    @property
    def time_at(self) -> int:
        return 1 if self.tags_at is None else 2


def _influx_block(row: Sequence[str], line: int) -> _Block | None:
    """The block this row heads if it is an influx CLI header (name[,tags],time,...)."""
    cells = tuple(c.strip() for c in row)
    if len(cells) < 2 or cells[0] != "name":
        return None
    if cells[1] == "time":
        tags_at = None
    elif cells[1:3] == ("tags", "time"):
        tags_at = 1
    else:
        return None
    first = 2 if tags_at is None else 3
    return _Block(line, cells, tags_at, tuple(range(first, len(cells))))


def parse_tags_cell(text: str) -> dict[str, str]:
    """The influx CLI's ``tags`` cell (``k=v,k=v``, unescaped) as a dict of non-empty tags.

    A piece without ``=`` is part of the previous value (the value held a comma); an empty
    value is a tag the series does not have. Raises ValueError with the reason.
    """
    tags: dict[str, str] = {}
    last: str | None = None
    for piece in text.split(",") if text.strip() else ():
        key, eq, value = piece.partition("=")
        if not eq:
            if last is None:
                raise ValueError(f"{text!r} is not a tag list (key=value,...)")
            tags[last] += "," + piece
            continue
        tags[key] = value
        last = key
    return {k: v for k, v in tags.items() if v}


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one block reads one measurement's rows: which plain columns are tags, which fields."""

    tags: tuple[int, ...]
    fields: tuple[int, ...]


class InfluxCsvInput:
    """A CSV the influx CLI wrote (``-format csv``); series named as in line protocol.

    Read three times: the columns' types, the series, then the readings (streamed)."""

    def __init__(self, path: Path, configured: Sequence[str] = ()) -> None:
        self.path = path
        self.skipped: Counter[str] = Counter()
        self._types: dict[tuple[str, str], int] = {}
        self._plans: dict[tuple[int, str], _Plan] = {}
        self._guessed: dict[tuple[str, str], None] = {}  # text columns taken as tags
        for _, block, row in self._rows():
            measurement = row[0]
            if measurement in SKIP_MEASUREMENTS:
                continue
            for i in block.plain:
                text = row[i].strip()
                if text:
                    key = (measurement, block.columns[i])
                    self._types[key] = self._types.get(key, 0) | _cell_type(text)
        keys: dict[_Key, None] = {}
        for line, block, row in self._rows():
            measurement = row[0]
            if measurement in SKIP_MEASUREMENTS:
                continue
            plan = self._plan(block, measurement)
            ident = self._ident(line, block, plan, row)
            for i in plan.fields:
                if _NUMBER.fullmatch(row[i].strip()):
                    keys[(measurement, block.columns[i], ident)] = None
        self._index = {key: i for i, key in enumerate(keys)}
        self.series = _series_specs(list(keys), configured)
        if self._guessed:
            print(
                f"driftgate replay: {path}: taken as tags (no GROUP BY: an export prints tags "
                "as plain columns; export with GROUP BY * if these are string fields): "
                + ", ".join(f"{c!r} of {m!r}" for m, c in self._guessed),
                file=sys.stderr,
            )

    def _rows(self) -> Iterator[tuple[int, _Block, list[str]]]:
        """Data rows with their line and header; blank and comment lines skipped."""
        block: _Block | None = None
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or not any(c.strip() for c in row) or row[0].startswith("#"):
                    continue
                line = reader.line_num
                if row[0] in SKIP_MEASUREMENTS and block is not None:
                    yield line, block, row  # never read: its width does not matter
                    continue
                if row[0].startswith(_CLI_ERROR):
                    raise ReplayError(
                        f"{self.path}:{line}: the influx CLI wrote an error, not data: "
                        f"{','.join(row)}"
                    )
                head = _influx_block(row, line)
                if head is not None:
                    _check_header(self.path, line, head.columns)
                    block = head
                    continue
                if block is None:
                    raise ReplayError(
                        f"{self.path}:{line}: expected the influx CLI's header "
                        "(name,time,... or name,tags,time,...)"
                    )
                width = len(block.columns)
                if len(row) < width:
                    missing = block.columns[len(row)]
                    raise ReplayError(
                        f"{self.path}:{line}: column {missing!r}: missing (the row has "
                        f"{len(row)} of {width} columns)"
                    )
                if len(row) > width:
                    raise ReplayError(
                        f"{self.path}:{line}: {len(row)} cells under a header of {width} "
                        f"columns (line {block.line}): a tab inside a string or tag value? "
                        "The influx CLI splits cells at tabs; export without that column"
                    )
                yield line, block, row

    def _plan(self, block: _Block, measurement: str) -> _Plan:
        plan = self._plans.get((block.line, measurement))
        if plan is not None:
            return plan
        tags: list[int] = []
        fields: list[int] = []
        for i in block.plain:
            column = block.columns[i]
            seen = self._types.get((measurement, column), 0)
            # Without a tags column the tags are plain columns; a numeric field never prints
            # as text, so text means a tag (a string field cannot be told from one there).
            if column in KNOWN_TAGS:
                tags.append(i)
            elif block.tags_at is None and seen & _TEXT:
                tags.append(i)
                self._guessed[(measurement, column)] = None
            else:
                fields.append(i)
        plan = self._plans[(block.line, measurement)] = _Plan(tuple(tags), tuple(fields))
        return plan

    def _ident(
        self, line: int, block: _Block, plan: _Plan, row: list[str]
    ) -> tuple[tuple[str, str], ...]:
        tags: dict[str, str] = {}
        if block.tags_at is not None:
            try:
                tags = parse_tags_cell(row[block.tags_at])
            except ValueError as exc:
                raise ReplayError(f"{self.path}:{line}: column 'tags': {exc}") from None
        for i in plan.tags:
            value = row[i].strip()
            if value:
                tags[block.columns[i]] = value
        return _identity(tags)

    def readings(self) -> Iterator[tuple[int, int, float]]:
        """Stream (series index, ns, value) in file order; ReplayError names line and column."""
        parse_time = TimeParser()
        index = self._index
        skipped = self.skipped
        skipped.clear()
        for line, block, row in self._rows():
            measurement = row[0]
            if measurement in SKIP_MEASUREMENTS:
                skipped[_skipped_measurement(measurement)] += 1
                continue
            ti = block.time_at
            try:
                ts = parse_time(row[ti])
            except ValueError as exc:
                raise ReplayError(
                    f"{self.path}:{line}: column {block.columns[ti]!r}: {exc}"
                ) from None
            plan = self._plan(block, measurement)
            ident = self._ident(line, block, plan, row)
            for i in plan.fields:
                text = row[i].strip()
                if not text:
                    continue
                if _NUMBER.fullmatch(text):
                    yield index[(measurement, block.columns[i], ident)], ts, float(text)
                else:
                    skipped[_skipped_field(measurement, block.columns[i])] += 1


def _cell_type(text: str) -> int:
    if _NUMBER.fullmatch(text):
        return _NUMERIC
    if text in _BOOLS:
        return _BOOLEAN
    return _TEXT


# --------------------------------------------------------------------------- line protocol

FieldValue = float | int | bool | str
_BOOLS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True,
          "f": False, "F": False, "false": False, "False": False, "FALSE": False}  # fmt: skip


def _scan(s: str, i: int, escapes: str, stops: str) -> tuple[str, int]:
    """Read an identifier from s[i:] up to an unescaped stop character (see lineprotocol.py)."""
    out: list[str] = []
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in escapes:
            out.append(s[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int | None]:
    """Parse one line-protocol point: measurement, tags, fields, timestamp (None if absent).

    Escapes as agent/lineprotocol.py writes them: ``\\,`` and ``\\ `` (and ``\\=`` in keys
    and tag values); any other backslash is literal. String fields unescape ``\\"`` and
    ``\\\\``. Raises ValueError with the reason.
    """
    s = text.rstrip("\r\n")
    measurement, i = _scan(s, 0, ", =", ", ")
    if not measurement:
        raise ValueError("no measurement")
    tags: dict[str, str] = {}
    n = len(s)
    while i < n and s[i] == ",":
        key, i = _scan(s, i + 1, ", =", ",= ")
        if i >= n or s[i] != "=" or not key:
            raise ValueError(f"tag {key!r} has no value")
        value, i = _scan(s, i + 1, ", =", ", ")
        tags[key] = value
    if i >= n or s[i] != " ":
        raise ValueError("no field set")
    i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _scan(s, i, ", =", ",= ")
        if i >= n or s[i] != "=" or not key:
            raise ValueError(f"field {key!r} has no value")
        i += 1
        if i < n and s[i] == '"':
            chars: list[str] = []
            i += 1
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n and s[i + 1] in '"\\':
                    i += 1
                chars.append(s[i])
                i += 1
            if i >= n:
                raise ValueError(f"field {key!r}: unterminated string")
            fields[key] = "".join(chars)
            i += 1
        else:
            start = i
            while i < n and s[i] not in ", ":
                i += 1
            fields[key] = _field_value(key, s[start:i])
        if i < n and s[i] == ",":
            i += 1
            continue
        break
    rest = s[i:].strip()
    if not rest:
        return measurement, tags, fields, None
    try:
        return measurement, tags, fields, int(rest)
    except ValueError:
        raise ValueError(f"{rest!r} is not a timestamp (integer nanoseconds)") from None


def _field_value(key: str, raw: str) -> FieldValue:
    if raw in _BOOLS:
        return _BOOLS[raw]
    try:
        if raw.endswith(("i", "u")):
            return int(raw[:-1])
        return float(raw)
    except ValueError:
        raise ValueError(f"field {key!r}: {raw!r} is not a number") from None


def _lp_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "CREATE ")):
                continue
            yield number, line


def _numeric_fields(fields: Mapping[str, FieldValue]) -> Iterator[tuple[str, float]]:
    for key, value in fields.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield key, float(value)


def _identity(tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in tags.items() if k not in PER_READING_TAGS))


_Key = tuple[str, str, tuple[tuple[str, str], ...]]


class LineProtocolInput:
    """An InfluxDB line-protocol export; a first pass finds the series, a second streams them."""

    def __init__(self, path: Path, configured: Sequence[str] = ()) -> None:
        self.path = path
        self.skipped: Counter[str] = Counter()
        keys: dict[_Key, None] = {}
        for number, line in _lp_lines(path):
            measurement, tags, fields, _ = self._parse(number, line)
            if measurement in SKIP_MEASUREMENTS:
                continue
            ident = _identity(tags)
            for key, _ in _numeric_fields(fields):
                keys[(measurement, key, ident)] = None
        self._index = {key: i for i, key in enumerate(keys)}
        self.series = _series_specs(list(keys), configured)

    def _parse(
        self, number: int, line: str
    ) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
        try:
            measurement, tags, fields, ts = parse_line(line)
        except ValueError as exc:
            raise ReplayError(f"{self.path}:{number}: {exc}") from None
        if ts is None:
            raise ReplayError(f"{self.path}:{number}: no timestamp (replay needs reading times)")
        return measurement, tags, fields, ts

    def readings(self) -> Iterator[tuple[int, int, float]]:
        """Stream (series index, ns, value) in file order."""
        index = self._index
        skipped = self.skipped
        skipped.clear()
        for number, line in _lp_lines(self.path):
            measurement, tags, fields, ts = self._parse(number, line)
            if measurement in SKIP_MEASUREMENTS:
                skipped[_skipped_measurement(measurement)] += 1
                continue
            ident = _identity(tags)
            for key, value in _numeric_fields(fields):
                yield index[(measurement, key, ident)], ts, value
            for key, raw in fields.items():
                if isinstance(raw, bool | str):
                    skipped[_skipped_field(measurement, key)] += 1


def _stem(field_key: str) -> str:
    head, _, suffix = field_key.rpartition("_")
    return head if head and suffix.lower() in _UNIT_SUFFIXES else field_key


def _lp_unit(field_key: str) -> str:
    _, _, suffix = field_key.rpartition("_")
    return _UNIT_SUFFIXES.get(suffix.lower(), "") or guess_unit(field_key)


def _series_specs(keys: list[_Key], configured: Sequence[str]) -> list[SeriesSpec]:
    """The channels that line protocol and influx CSV series become (names: _series_names)."""
    names = _series_names(keys, configured)
    return [
        SeriesSpec(
            name=names[key],
            measurement=key[0],
            field=key[1],
            unit=_lp_unit(key[1]),
            kind=key[0] if key[0] in ("climate", "tension", "color") else guess_kind(key[1]),
            tags=dict(key[2]),
        )
        for key in keys
    ]


def _series_names(keys: list[_Key], configured: Sequence[str]) -> dict[_Key, str]:
    """Name each series: the configured channel it matches, else measurement.field + the tag
    values that tell it apart from the other series of that measurement and field."""
    names: dict[_Key, str] = {}
    claimed: dict[str, list[_Key]] = {}
    for key in keys:
        match = _config_match(key, configured)
        if match is not None:
            claimed.setdefault(match, []).append(key)
    for name, claimants in claimed.items():
        if len(claimants) == 1:
            names[claimants[0]] = name
        else:
            print(
                f"driftgate replay: {len(claimants)} series match channel {name!r}; "
                "naming them by measurement, field and tags instead",
                file=sys.stderr,
            )
    groups: dict[tuple[str, str], list[_Key]] = {}
    for key in keys:
        groups.setdefault((key[0], key[1]), []).append(key)
    for (measurement, field_key), members in groups.items():
        tagsets = [dict(m[2]) for m in members]
        all_keys = {k for t in tagsets for k in t}
        differing = [k for k in all_keys if len({t.get(k, "") for t in tagsets}) > 1]
        ranked = [k for k in _LOCATION_TAGS if k in differing]
        ranked += sorted(k for k in differing if k not in _LOCATION_TAGS)
        order: list[str] = []
        for k in ranked:  # only the tags needed to tell the series apart, location tags first
            seen: dict[tuple[str, ...], set[str]] = {}
            for t in tagsets:
                seen.setdefault(tuple(t.get(c, "") for c in order), set()).add(t.get(k, ""))
            if any(len(values) > 1 for values in seen.values()):
                order.append(k)
        for member, tags in zip(members, tagsets, strict=True):
            if member in names:
                continue
            parts = [measurement, field_key, *(tags[k] for k in order if tags.get(k))]
            names[member] = ".".join(parts)
    return names


def _config_match(key: _Key, configured: Sequence[str]) -> str | None:
    """The configured channel this series is: its name's last part is the field (or the field
    without its unit suffix), every other part one of the series' tag values."""
    measurement, field_key, ident = key
    values = {v for _, v in ident}
    best: tuple[int, str] | None = None
    ambiguous = False
    for name in configured:
        if name == f"{measurement}.{field_key}":
            return name
        *where, what = name.split(".")
        if what not in (field_key, _stem(field_key)) or not all(p in values for p in where):
            continue
        if best is None or len(where) > best[0]:
            best, ambiguous = (len(where), name), False
        elif len(where) == best[0]:
            ambiguous = True
    return None if best is None or ambiguous else best[1]


def open_input(path: Path, *, time_column: str | None = None,
               configured: Sequence[str] = ()) -> ReplayInput:  # fmt: skip
    """Line protocol, an influx CLI CSV or a CSV, told apart by the first line that is not
    blank or a comment (an influx export's header is ``name,time,...`` or
    ``name,tags,time,...``; a ``--time-column`` other than ``time`` means a plain CSV)."""
    first, where = "", 1
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                first, where = line, number
                break
    if first.startswith(_CLI_ERROR):
        raise ReplayError(
            f"{path}:{where}: the influx CLI wrote an error, not data: {first.strip()}"
        )
    if time_column is None and _is_line_protocol(first):
        return LineProtocolInput(path, configured)
    if time_column in (None, "time") and _influx_block(next(csv.reader([first]), []), 1):
        return InfluxCsvInput(path, configured)
    return CsvInput(path, time_column)


def _is_line_protocol(line: str) -> bool:
    if line.startswith("CREATE "):
        return True
    try:
        _, _, fields, ts = parse_line(line)
    except ValueError:
        return False
    return ts is not None and bool(fields)
