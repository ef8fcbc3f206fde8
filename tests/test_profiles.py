"""Device profiles and decoders: recorded frames per profile, framing, calibration, validation."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, DriftgateError
from agent.ingest.decode import DecodeError, Decoder, append_checksum, crc16, nmea_checksum
from agent.ingest.profiles import (
    PROFILE_DIR,
    TwoPoint,
    list_profiles,
    load_profile,
    profile_from_dict,
)
from agent.sim.devices import DeviceEmulator, frames_for

FIXTURES = Path(__file__).parent / "fixtures" / "frames"
SHIPPED = [
    "colorimeter-lab",
    "hx711-tension",
    "leather-moisture",
    "sht4x-esphome",
    "sht4x-serial",
    "spectro-31",
    "tasmota-bme280",
    "tasmota-sht3x",
]


def _cases() -> list[Any]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for item in document["cases"]:
            out.append(pytest.param(document["profile"], item, id=f"{path.stem}:{item['name']}"))
    return out


def test_every_shipped_profile_has_a_fixture() -> None:
    assert list_profiles() == SHIPPED
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == SHIPPED


@pytest.mark.parametrize(("profile_name", "item"), _cases())
def test_recorded_frames(profile_name: str, item: dict[str, Any]) -> None:
    """Each case's wire bytes go through the framer (serial) or straight in (MQTT)."""
    profile = load_profile(profile_name)
    decoder = Decoder(profile)
    wire = bytes.fromhex(item["wire_hex"]) if "wire_hex" in item else item["wire"].encode()
    frames = decoder.feed(wire) if profile.transport == "serial" else [wire]
    assert len(frames) == len(item["frames"]), frames
    fields = {f.channel: f for f in profile.fields}
    for frame, expect in zip(frames, item["frames"], strict=True):
        if "error" in expect:
            with pytest.raises(DecodeError, match=_literal(expect["error"])):
                decoder.decode(frame, item["topic"], received_ns=item["received_ns"])
            continue
        result = decoder.decode(frame, item["topic"], received_ns=item["received_ns"])
        got = sorted((v.name, v.ts_ns, v.value) for v in result.values)
        want = sorted((name, ts, value) for name, ts, value in expect["values"])
        assert [(n, t) for n, t, _ in got] == [(n, t) for n, t, _ in want]
        assert [x for _, _, x in got] == pytest.approx([x for _, _, x in want], rel=1e-12)
        for value in result.values:
            assert type(value.value) is float
            assert math.isfinite(value.value)
            assert value.tags == expect["tags"]
            spec = fields[value.name]
            assert (value.measurement, value.field, value.unit, value.kind) == (
                spec.measurement,
                spec.field,
                spec.unit,
                spec.kind,
            )
        reasons = [bad.reason for bad in result.invalid]
        assert len(reasons) == len(expect.get("invalid", [])), reasons
        for reason, want_reason in zip(reasons, expect.get("invalid", []), strict=True):
            assert want_reason in reason
        for bad in result.invalid:
            assert bad.raw == frame
        if "spectrum" in expect:
            if expect["spectrum"] is None:
                assert result.spectrum is None
            else:
                assert result.spectrum is not None
                assert list(result.spectrum.values) == pytest.approx(expect["spectrum"], rel=1e-12)
                assert result.spectrum.sample == expect["tags"].get("sample")
                assert result.spectrum.wavelengths_nm[0] == 400
                assert result.spectrum.wavelengths_nm[-1] == 700
        else:
            assert result.spectrum is None


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", SHIPPED)
def test_emulator_and_decoder_round_trip_over_a_day(name: str) -> None:
    emulator = DeviceEmulator(name, seed=11)
    decoder = Decoder(emulator.profile)
    t = 1709280000.0 + 14.8 * 86400
    for _ in range(200):
        for frame in emulator.frames(t):
            frames = decoder.feed(frame.data) if frame.topic is None else [frame.data]
            assert len(frames) == 1
            result = decoder.decode(frames[0], frame.topic, received_ns=int(t * 1e9))
            assert not result.invalid
            got = sorted((v.name, v.ts_ns, v.value) for v in result.values)
            assert got == sorted(frame.expected)
            if frame.spectrum is not None:
                assert result.spectrum is not None
                assert result.spectrum.values == frame.spectrum
        t += 3600 * 0.6
    assert decoder.discarded_bytes == 0


def test_frames_for_gives_topic_and_bytes() -> None:
    [(topic, data)] = frames_for("tasmota-sht3x", 1709280000.0)
    assert topic == "tele/tasmota_ep1/SENSOR"
    assert json.loads(data)["SHT3X"]["Humidity"] > 0
    esphome = frames_for("sht4x-esphome", 1709280000.0, device="cutting")
    assert [t for t, _ in esphome] == [
        "sht41-ct1/sensor/humidity/state",
        "sht41-ct1/sensor/temperature/state",
    ]
    [(topic, data)] = frames_for("hx711-tension", 1709280000.0, device="m02")
    assert topic is None
    assert data.startswith(b"\x02T,m02,1709280000000,100,")
    assert data.endswith(b"\x03")
    with pytest.raises(ValueError, match="no sewing machine"):
        frames_for("hx711-tension", 1709280000.0, device="m99")


def test_drift_scenario_reaches_the_frames() -> None:
    emulator = DeviceEmulator("sht4x-serial", seed=5)
    decoder = Decoder(emulator.profile)

    def mean_rh(day: float) -> float:
        values = []
        for k in range(48):
            t = 1709280000.0 + day * 86400 + k * 1800
            [frame] = emulator.frames(t)
            [raw] = decoder.feed(frame.data)
            result = decoder.decode(raw, received_ns=int(t * 1e9))
            values += [v.value for v in result.values if v.name == "humidity"]
        return sum(values) / len(values)

    assert mean_rh(24) - mean_rh(2) > 8.0


# --------------------------------------------------------------------------- checksums


def test_crc16_variants_match_the_catalogue_check_values() -> None:
    check = b"123456789"
    assert crc16(check, "modbus") == 0x4B37
    assert crc16(check, "ccitt-false") == 0x29B1
    assert crc16(check, "xmodem") == 0x31C3
    assert crc16(check, "kermit") == 0x2189


def test_nmea_checksum_of_a_real_gps_sentence() -> None:
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert nmea_checksum(body) == 0x47


@pytest.mark.parametrize("variant", ["modbus", "ccitt-false", "xmodem", "kermit"])
def test_each_crc_variant_verifies_what_it_seals(variant: str) -> None:
    profile = _kv_profile(checksum={"type": "crc16", "variant": variant})
    frame = append_checksum(profile.checksum, b"rh=40.5")
    assert Decoder(profile).decode(frame, received_ns=1).values[0].value == 40.5
    tampered = frame.replace(b"40.5", b"40.6")
    with pytest.raises(DecodeError, match="bad checksum"):
        Decoder(profile).decode(tampered, received_ns=1)


# --------------------------------------------------------------------------- framing


def test_partial_frames_across_feed_calls() -> None:
    decoder = Decoder(load_profile("sht4x-serial"))
    line = DeviceEmulator("sht4x-serial").frames(1709280000.0)[0].data
    out = []
    for i in range(len(line)):
        out += decoder.feed(line[i : i + 1])
    assert out == [line.rstrip(b"\r\n")]
    two = line + line
    assert decoder.feed(two[:10]) == []
    assert decoder.feed(two[10:50]) == [line.rstrip(b"\r\n")]
    assert decoder.feed(two[50:]) == [line.rstrip(b"\r\n")]


def test_stx_etx_partial_frames_across_feed_calls() -> None:
    decoder = Decoder(load_profile("hx711-tension"))
    data = DeviceEmulator("hx711-tension").frames(1709280000.0)[0].data
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    frames = [f for chunk in chunks for f in decoder.feed(chunk)]
    assert frames == [data[1:-1]]
    assert len(decoder.decode(frames[0], received_ns=0).values) == 50


@pytest.mark.parametrize("name", ["sht4x-serial", "hx711-tension", "colorimeter-lab", "spectro-31"])
def test_reset_discards_a_partial_frame(name: str) -> None:
    emulator = DeviceEmulator(name)
    decoder = Decoder(emulator.profile)
    first = emulator.frames(1709280000.0)[0].data
    second = emulator.frames(1709280060.0)[0].data
    assert decoder.feed(first[: len(first) // 2]) == []
    decoder.reset()
    assert decoder.discarded_bytes == len(first) // 2
    frames = decoder.feed(second)
    assert len(frames) == 1
    result = decoder.decode(frames[0], received_ns=1709280060 * 10**9)
    assert result.values or result.spectrum is not None


def test_line_garbage_over_max_length_is_discarded_and_counted() -> None:
    decoder = Decoder(load_profile("sht4x-serial"))  # max_length 256
    good = DeviceEmulator("sht4x-serial").frames(1709280000.0)[0].data
    assert decoder.feed(b"\x55" * 300) == []
    assert decoder.overflows == 1
    # The rest of the long line: the framer resynchronises at its `$` (a valid frame there is
    # kept, see test_a_valid_frame_after_an_overlong_run_is_kept); this tail is no frame and
    # fails its checksum, a counted decode error.
    assert decoder.feed(b"\xaa" * 100 + b"$partial tail\r\n") == [b"$partial tail"]
    with pytest.raises(DecodeError, match="checksum"):
        decoder.decode(b"$partial tail", received_ns=1)
    assert decoder.feed(good) == [good.rstrip(b"\r\n")]
    assert decoder.discarded_bytes >= 300 + 100


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "garbage-then-frame"])
def test_a_valid_frame_after_an_overlong_run_is_kept(split: bool) -> None:
    """Before: 300 unterminated bytes in one read, the frame in the next: the framer skipped
    to the next terminator and took the frame with it (2 of 5 frames lost)."""
    decoder = Decoder(load_profile("sht4x-serial"))  # max_length 256, start "$"
    frames = [f.data for f in emitted_frames("sht4x-serial", 5)]
    got: list[bytes] = []
    for n, good in enumerate(frames):
        garbage = bytes([0x41 + n]) * (257 + 40 * n)  # no terminator, no "$"
        if split:
            got += decoder.feed(garbage)
            got += decoder.feed(good)
        else:
            got += decoder.feed(garbage + good)
    assert got == [f.rstrip(b"\r\n") for f in frames]
    assert decoder.discarded_bytes == sum(257 + 40 * n for n in range(5))
    # A frame cut by an over-long run is still found by its start: garbage, then "$id…".
    partial = frames[0][:10]
    assert decoder.feed(b"z" * 300 + partial) == []
    assert decoder.feed(frames[0][10:]) == [frames[0].rstrip(b"\r\n")]


def test_without_a_start_marker_the_next_terminator_resynchronises() -> None:
    """A profile without ``start`` (spectro-31) cannot tell a frame inside an over-long line:
    the line is dropped up to its terminator and the next line is a frame again."""
    decoder = Decoder(load_profile("spectro-31"))  # max_length 1024, no start
    good = emitted_frames("spectro-31", 1)[0].data
    assert decoder.feed(b"x" * 1100) == []
    assert decoder.feed(b"tail of the long line\r\n" + good) == [good.rstrip(b"\r\n")]
    assert decoder.discarded_bytes == 1100 + len(b"tail of the long line")


def emitted_frames(name: str, n: int) -> list[Any]:
    """The first ``n`` frames an emulated device sends (one per interval from a fixed day)."""
    emulator = DeviceEmulator(name)
    out: list[Any] = []
    t = 1709280000.0
    while len(out) < n:
        out += emulator.frames(t)
        t += emulator.interval
    return out[:n]


def test_wrong_baud_rate_noise_never_yields_a_decodable_frame() -> None:
    import random

    rng = random.Random(4)
    for name in ("sht4x-serial", "hx711-tension", "colorimeter-lab", "spectro-31"):
        decoder = Decoder(load_profile(name))
        noise = bytes(rng.randrange(256) for _ in range(20000))
        frames = decoder.feed(noise)
        for frame in frames:
            with pytest.raises(DecodeError):
                decoder.decode(frame, received_ns=1709280000 * 10**9)
        # With a start marker the framer drops the noise; plain lines reach decode and fail.
        assert decoder.discarded_bytes > 0 if name != "spectro-31" else len(frames) > 0


def test_stx_etx_overflow_resyncs_on_next_stx() -> None:
    profile = load_profile("hx711-tension")
    decoder = Decoder(profile)
    assert decoder.feed(b"\x02" + b"1" * 5000) == []
    assert decoder.overflows == 1
    good = DeviceEmulator(profile).frames(1709280000.0)[0].data
    assert decoder.feed(b"1" * 100 + good) == [good[1:-1]]


def test_fixed_frames_without_sync_are_chopped_by_length() -> None:
    profile = _kv_profile(framing={"type": "fixed", "length": 8}, checksum=None)
    decoder = Decoder(profile)
    assert decoder.feed(b"rh=40.50rh=4") == [b"rh=40.50"]
    assert decoder.feed(b"1.25") == [b"rh=41.25"]
    assert decoder.decode(b"rh=41.25", received_ns=5).values[0].value == 41.25


def test_mqtt_feed_passes_the_message_through() -> None:
    decoder = Decoder(load_profile("sht4x-esphome"))
    assert decoder.feed(b"48.2") == [b"48.2"]
    assert decoder.feed(b"x" * 70000) == []
    assert decoder.overflows == 1


# --------------------------------------------------------------------------- values


def _kv_profile(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "name": "test-kv",
        "framing": {"type": "line"},
        "format": {"type": "kv"},
        "tags": {},
        "fields": [
            {
                "source": "rh",
                "name": "humidity",
                "measurement": "climate",
                "field": "humidity_rh",
                "unit": "%RH",
                "kind": "climate",
                "range": [0, 100],
            }
        ],
    }
    fields = overrides.pop("fields", None)
    if fields:
        data["fields"][0].update(fields)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return profile_from_dict(data)


def test_scale_and_offset_apply_before_the_range() -> None:
    profile = _kv_profile(fields={"scale": 0.1, "offset": -5.0})
    decoder = Decoder(profile)
    assert decoder.decode(b"rh=500", received_ns=1).values[0].value == pytest.approx(45.0)
    result = decoder.decode(b"rh=1060", received_ns=1)
    assert result.values == []
    assert "humidity: 101 %RH outside [0, 100]" in result.invalid[0].reason
    assert result.invalid[0].value == pytest.approx(101.0)


def test_two_point_calibration_per_sensor_from_profile_and_source() -> None:
    profile = _kv_profile(
        tags={"sensor": "id"},
        calibration={"p1": {"humidity": {"raw": [33.6, 74.1], "ref": [32.8, 75.3]}}},
    )
    decoder = Decoder(profile)
    p1 = decoder.decode(b"id=p1,rh=33.6", received_ns=1).values[0]
    assert p1.value == pytest.approx(32.8)
    assert decoder.decode(b"id=p1,rh=74.1", received_ns=1).values[0].value == pytest.approx(75.3)
    mid = (33.6 + 74.1) / 2
    assert decoder.decode(f"id=p1,rh={mid}".encode(), received_ns=1).values[0].value == (
        pytest.approx((32.8 + 75.3) / 2)
    )
    # another sensor is not calibrated
    assert decoder.decode(b"id=p2,rh=33.6", received_ns=1).values[0].value == 33.6
    # the source config names the sensor of a frame that carries none, and brings its own points
    plain = _kv_profile()
    source_side = Decoder(
        plain,
        sensor="probe-7",
        tags={"zone": "edge_paint"},
        calibration={"probe-7": {"humidity": TwoPoint(raw=(0.0, 100.0), ref=(1.0, 99.0))}},
    )
    value = source_side.decode(b"rh=50", received_ns=1).values[0]
    assert value.value == pytest.approx(50.0)
    assert source_side.decode(b"rh=0", received_ns=1).values[0].value == pytest.approx(1.0)
    assert value.tags == {"zone": "edge_paint", "sensor": "probe-7"}


def test_calibration_can_push_a_value_out_of_range() -> None:
    profile = _kv_profile(
        tags={"sensor": "id"},
        calibration={"p1": {"humidity": {"raw": [0, 100], "ref": [5, 105]}}},
    )
    result = Decoder(profile).decode(b"id=p1,rh=99", received_ns=1)
    assert result.values == []
    assert "104 %RH outside" in result.invalid[0].reason


def test_decode_error_is_a_driftgate_error_with_a_reason() -> None:
    with pytest.raises(DriftgateError) as info:
        Decoder(_kv_profile()).decode(b"rh", received_ns=1)
    assert isinstance(info.value, DecodeError)
    assert "is not key=value" in info.value.reason


def test_batch_with_arrival_time_ends_at_arrival() -> None:
    profile = profile_from_dict(
        {
            "name": "batch-arrival",
            "framing": {"type": "line"},
            "format": {"type": "csv", "columns": ["id"], "rest": "v"},
            "batch": {"rate_hz": 50},
            "tags": {"station": "id"},
            "fields": [
                {"source": "v", "measurement": "tension", "field": "tension_cn", "kind": "tension"}
            ],
        }
    )
    values = Decoder(profile).decode(b"m1,1,2,3", received_ns=10**18).values
    assert [v.ts_ns for v in values] == [10**18 - 40_000_000, 10**18 - 20_000_000, 10**18]
    assert [v.value for v in values] == [1.0, 2.0, 3.0]


def test_json_paths_dotted_dollar_and_index() -> None:
    profile = profile_from_dict(
        {
            "name": "json-paths",
            "framing": {"type": "message"},
            "format": {"type": "json"},
            "timestamp": {"source": "device", "field": "ts", "unit": "iso8601"},
            "tags": {"sensor": "$.dev.id"},
            "fields": [
                {
                    "source": "$.a.b",
                    "name": "x",
                    "measurement": "m",
                    "field": "x",
                    "kind": "climate",
                },
                {
                    "source": "r[1]",
                    "name": "y",
                    "measurement": "m",
                    "field": "y",
                    "kind": "climate",
                },
            ],
        }
    )
    doc = b'{"ts":"2024-03-01T09:00:00+01:00","dev":{"id":7},"a":{"b":1.5},"r":[0,2.5]}'
    result = Decoder(profile).decode(doc, "any/topic", received_ns=1)
    assert [(v.name, v.value) for v in result.values] == [("x", 1.5), ("y", 2.5)]
    assert result.values[0].ts_ns == 1709280000 * 10**9
    assert result.values[0].tags == {"sensor": "7"}


# --------------------------------------------------------------------------- validation


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_broken_profile_names_file_line_and_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "broken",
        """\
        name: broken
        framing:
          type: line
          terminater: "\\n"
        format:
          type: csv
          columns: [a, b]
        checksum:
          type: crc16
          variant: ibm
        fields:
          - source: a
            measurement: climate
            field: humidity_rh
            kind: climate
            range: [100, 0]
          - source: b
            measurement: climate
            field: humidity_rh
            kind: humidity
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    problems = info.value.problems
    assert problems == [
        f"{path}:4: framing.terminater: unknown key 'terminater'; did you mean 'terminator'?",
        f"{path}:10: checksum.variant: Input should be 'modbus', 'ccitt-false', 'xmodem' or "
        "'kermit', got 'ibm'",
        f"{path}:16: fields[0].range: must be [min, max] with finite min < max, got [100, 0]",
        f"{path}:20: fields[1].kind: Input should be 'climate', 'tension', 'color' or 'moisture', "
        "got 'humidity'",
    ]


def test_unknown_framing_type_lists_the_choices(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bad-type",
        """\
        name: bad-type
        framing: {type: slip}
        format: {type: kv}
        fields: [{source: a, measurement: m, field: f, kind: climate}]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.problems == [
        f"{path}:2: framing.type: unknown type 'slip'; one of: line, fixed, stx_etx, message"
    ]


def test_cross_field_problems_point_at_their_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cross",
        """\
        name: cross
        framing: {type: line}
        format: {type: esphome}
        fields:
          - {source: a, measurement: m, field: f, kind: climate}
        calibration:
          p1:
            nope: {raw: [1, 2], ref: [1, 2]}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.problems == [
        f"{path}:2: framing.type: format esphome is MQTT: use framing message",
        f"{path}:8: calibration.p1.nope: no field named 'nope'; fields here: f",
    ]


def test_name_must_match_the_file_and_yaml_errors_are_located(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "other",
        """\
        name: mismatch
        framing: {type: message}
        format: {type: esphome}
        fields: [{source: a, measurement: m, field: f, kind: climate}]
        """,
    )
    with pytest.raises(ConfigError, match=r"other.yaml:1: name: 'mismatch' must match"):
        load_profile(path)
    bad = _write(tmp_path, "syntax", "name: syntax\nframing: {type: line\n")
    with pytest.raises(ConfigError, match=r"syntax.yaml:3:1: YAML syntax error"):
        load_profile(bad)


def test_regex_groups_are_checked_against_fields() -> None:
    with pytest.raises(ConfigError) as info:
        profile_from_dict(
            {
                "name": "rx",
                "framing": {"type": "line"},
                "format": {"type": "regex", "pattern": r"L(?P<L>\d+)"},
                "fields": [{"source": "M", "measurement": "color", "field": "L", "kind": "color"}],
            },
            source="rx.yaml",
        )
    assert info.value.problems == ["rx.yaml: fields[0].source: the pattern has no group named 'M'"]


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: colorimeter-lab, hx711-tension"):
        load_profile("nonexistent")


def test_a_search_path_finds_a_site_profile(tmp_path: Path) -> None:
    shutil.copy(PROFILE_DIR / "sht4x-serial.yaml", tmp_path / "sht4x-serial.yaml")
    assert load_profile("sht4x-serial", [tmp_path]).name == "sht4x-serial"
    assert load_profile(tmp_path / "sht4x-serial.yaml").transport == "serial"


def test_repository_root_firmware_configs_is_the_package_data() -> None:
    root = Path(__file__).resolve().parents[1] / "firmware_configs"
    assert (root / "README.md").is_file()
    assert (root / "esphome" / "sht4x-probe.yaml").is_file()
    assert sorted(p.stem for p in root.glob("*.yaml")) == SHIPPED
