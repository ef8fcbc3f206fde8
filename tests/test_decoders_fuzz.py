"""Hypothesis throws 100,000+ random frames and payloads at every shipped decoder.

Nothing but DecodeError may escape ``decode`` (or anything escape ``feed``), and every value
that comes out is a finite plain float inside its profile's range. Reproducible in CI:
derandomize=True, no example database; about 15 s in total.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ingest.decode import DecodeError, Decoder
from agent.ingest.profiles import list_profiles, load_profile

FIXTURES = Path(__file__).parent / "fixtures" / "frames"
PROFILES = list_profiles()
TOTAL = 100_000
KINDS = ("bytes", "mutated", "json")
PER_TEST = -(-TOTAL // (len(PROFILES) * len(KINDS)))  # frames each test must push through
PER_EXAMPLE = 16  # frames derived from each hypothesis example
BLOB = 200
EXAMPLES = -(-PER_TEST // PER_EXAMPLE)
NS = 1_709_280_000_000_000_000
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _recorded(name: str) -> list[tuple[str | None, bytes]]:
    document = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    out = []
    for item in document["cases"]:
        wire = bytes.fromhex(item["wire_hex"]) if "wire_hex" in item else item["wire"].encode()
        out.append((item["topic"], wire))
    return out


def _checker(name: str) -> tuple[Decoder, Callable[[bytes, str | None], None]]:
    profile = load_profile(name)
    decoder = Decoder(profile)
    ranges = {f.channel: f.range or (-math.inf, math.inf) for f in profile.fields}

    def check(frame: bytes, topic: str | None) -> None:
        try:
            result = decoder.decode(frame, topic, received_ns=NS)
        except DecodeError:
            return
        for value in result.values:
            assert type(value.value) is float
            low, high = ranges[value.name]
            assert math.isfinite(value.value)
            assert low <= value.value <= high
            assert isinstance(value.ts_ns, int)
        for bad in result.invalid:
            assert bad.raw == frame
        if result.spectrum is not None:
            assert all(type(x) is float and math.isfinite(x) for x in result.spectrum.values)

    return decoder, check


def _topics(name: str) -> st.SearchStrategy[str | None]:
    known = sorted({t for t, _ in _recorded(name) if t is not None})
    return st.one_of(
        st.sampled_from(known) if known else st.none(),
        st.none(),
        st.text(max_size=40),
        st.builds(lambda s: f"tele/{s}/SENSOR", st.text(max_size=10)),
        st.builds(lambda a, b: f"{a}/sensor/{b}/state", st.text(max_size=8), st.text(max_size=8)),
    )


_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "SHT3X",
                    "BME280",
                    "Temperature",
                    "Humidity",
                    "Pressure",
                    "DewPoint",
                    "TempUnit",
                    "PressureUnit",
                    "Time",
                    "x",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


def _mutate(frame: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(frame)
    for op, where, value in ops:
        if not data:
            data.append(value)
            continue
        i = where % len(data)
        if op == 0:
            data[i] = value
        elif op == 1:
            data.insert(i, value)
        elif op == 2:
            del data[i]
        elif op == 3:
            del data[i:]
        else:
            data[i] ^= 1 << (value % 8)
    return bytes(data)


def _count(counter: list[int], n: int) -> None:
    counter[0] += n


@pytest.mark.parametrize("name", PROFILES)
def test_random_bytes(name: str) -> None:
    decoder, check = _checker(name)
    done = [0]

    @FUZZ
    @given(blob=st.binary(min_size=BLOB, max_size=4 * BLOB), topic=_topics(name))
    def run(blob: bytes, topic: str | None) -> None:
        # One draw, cut at PER_EXAMPLE places: each piece is fed as a chunk and decoded as a
        # frame / MQTT payload of its own.
        step = max(len(blob) // PER_EXAMPLE, 1)
        for i in range(PER_EXAMPLE):
            piece = blob[i * step : i * step + 1 + (blob[i * step] if i * step < len(blob) else 0)]
            for frame in decoder.feed(piece):
                check(frame, topic)
            check(piece, topic)
        _count(done, PER_EXAMPLE)

    run()
    assert done[0] >= PER_TEST


@pytest.mark.parametrize("name", PROFILES)
def test_mutated_recorded_frames(name: str) -> None:
    decoder, check = _checker(name)
    recorded = _recorded(name)
    done = [0]
    op = st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.integers(0, 255))

    @FUZZ
    @given(ops=st.lists(op, min_size=1, max_size=4), shift=st.integers(0, 10_000))
    def run(ops: list[tuple[int, int, int]], shift: int) -> None:
        # The same mutations, shifted along, applied to every recorded frame and edge case.
        n = 0
        while n < PER_EXAMPLE:
            for topic, wire in recorded:
                moved = [(o, w + shift * (n + 1), v) for o, w, v in ops]
                mutated = _mutate(wire, moved)
                if topic is None:
                    for frame in decoder.feed(mutated):
                        check(frame, topic)
                check(mutated.strip(b"\x02\x03"), topic)
                n += 1
        _count(done, n)

    run()
    assert done[0] >= PER_TEST


@pytest.mark.parametrize("name", PROFILES)
def test_random_json_and_text_payloads(name: str) -> None:
    _, check = _checker(name)
    done = [0]
    payload = st.one_of(
        _JSON.map(lambda doc: json.dumps(doc).encode()),
        st.text(max_size=60).map(str.encode),
        st.floats().map(lambda x: repr(x).encode()),
    )

    @FUZZ
    @given(data=payload, topic=_topics(name))
    def run(data: bytes, topic: str | None) -> None:
        # The payload whole and cut short at PER_EXAMPLE - 1 places (a truncated message).
        check(data, topic)
        for i in range(1, PER_EXAMPLE):
            check(data[: len(data) * i // PER_EXAMPLE], topic)
        _count(done, PER_EXAMPLE)

    run()
    assert done[0] >= PER_TEST
