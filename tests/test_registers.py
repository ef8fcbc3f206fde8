"""Modbus register maps: the shipped ones, the bytes their manuals document, every type and
order encoded and decoded, read planning, and a bad map named by file, line and key."""

from __future__ import annotations

import math
import struct
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import config_from_dict
from agent.errors import ConfigError
from agent.ingest.decode import crc16
from agent.ingest.profiles import load_profile
from agent.ingest.registers import (
    REGISTER_MAP_DIR,
    Register,
    decode_block,
    encode_value,
    is_register_map,
    list_register_maps,
    load_register_map,
    read_plan,
    register_map_from_dict,
)

SHIPPED = ["vaisala-hmp", "xy-md02"]


def rtu_answer(frame: str) -> tuple[int, list[int]]:
    """(slave, registers) of a documented RTU answer to function 3 or 4, its CRC checked."""
    data = bytes.fromhex(frame)
    body, crc = data[:-2], data[-2:]
    assert crc16(body, "modbus") == int.from_bytes(crc, "little"), "the manual's CRC"
    slave, _function, count = body[0], body[1], body[2]
    payload = body[3 : 3 + count]
    return slave, [int.from_bytes(payload[i : i + 2], "big") for i in range(0, count, 2)]


def test_the_shipped_register_maps_load() -> None:
    assert list_register_maps() == SHIPPED
    for name in SHIPPED:
        registers = load_register_map(name)
        assert registers.name == name
        assert registers.description
        assert registers.factory.words()
        assert is_register_map(name)
        assert is_register_map(REGISTER_MAP_DIR / f"{name}.yaml")
    assert not is_register_map("sht4x-serial")


def test_vaisala_hmp_decodes_the_answer_printed_in_its_user_guide() -> None:
    """M212022EN, "Modbus communication examples": F0 03 04 7A E1 41 F4 62 05 is 30.56 %RH."""
    slave, words = rtu_answer("F0 03 04 7A E1 41 F4 62 05")
    registers = load_register_map("vaisala-hmp")
    humidity = next(r for r in registers.registers if r.channel == "humidity")
    block = read_plan([humidity])[0]
    assert (block.function, block.address, block.count) == (3, 0, 2)
    result = decode_block(block, words, slave=slave, ts_ns=1, tags={"sensor": "hmp"})
    assert [(v.name, v.value, v.unit, v.field) for v in result.values] == [
        ("humidity", 30.56, "%RH", "humidity_rh")
    ]
    assert registers.factory.words() == "slave 240, 19200 8N2"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # The XY-MD02 manual's examples: 0x0131 is 30.5 °C, 0xFF33 is -20.5 °C, 0x0222 54.6 %RH
        ("01 04 04 01 31 02 22", {"temperature": 30.5, "humidity": 54.6}),
        ("01 04 04 FF 33 02 22", {"temperature": -20.5, "humidity": 54.6}),
    ],
)
def test_xy_md02_decodes_its_manuals_examples(answer: str, expected: dict[str, float]) -> None:
    body = bytes.fromhex(answer)
    frame = (body + crc16(body, "modbus").to_bytes(2, "little")).hex()
    slave, words = rtu_answer(frame)
    (block,) = read_plan(load_register_map("xy-md02").registers)
    assert (block.function, block.address, block.count) == (
        4,
        1,
        2,
    )  # one request: 01 04 00 01 00 02
    result = decode_block(block, words, slave=slave, ts_ns=1, tags={})
    assert {v.name: v.value for v in result.values} == expected


def test_a_nan_or_out_of_range_value_is_invalid_with_the_registers_it_came_from() -> None:
    registers = load_register_map("vaisala-hmp")
    block = read_plan(registers.registers)[0]
    nan = struct.unpack(">HH", struct.pack(">f", math.nan))
    hot = encode_value(registers.registers[1], 250.0)
    result = decode_block(block, [nan[1], nan[0], *hot], slave=240, ts_ns=1, tags={})
    assert result.values == []
    assert [i.reason for i in result.invalid] == [
        "humidity: nan is not a number (the device has no value)",
        "temperature: 250 °C outside [-70, 180]",
    ]
    assert result.invalid[0].raw.startswith(b"modbus slave=240 holding@0: ")


def test_a_short_answer_is_a_decode_error() -> None:
    from agent.errors import DecodeError

    (block,) = read_plan(load_register_map("xy-md02").registers)
    with pytest.raises(DecodeError, match="asked for 2 registers, the answer holds 1"):
        decode_block(block, [1], slave=1, ts_ns=1, tags={})


def _register(**kw: object) -> Register:
    base: dict[str, object] = {"function": 3, "address": 0, "type": "int16", "measurement": "m",
                               "field": "f", "kind": "climate"}  # fmt: skip
    return Register.model_validate({**base, **kw})


@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.floats(-30000, 30000, allow_nan=False),
)
def test_every_type_and_order_decodes_what_was_encoded(
    kind: str, words: str, byte_order: str, value: float
) -> None:
    width = 2 if kind[-2:] in ("32",) else 1
    item = _register(
        type=kind,
        word_order=words if width == 2 else "big",
        byte_order=byte_order,
        scale=0.01,
        offset=-5.0,
        name="v",
    )
    encoded = encode_value(item, value)
    assert len(encoded) == width
    (block,) = read_plan([item])
    (got,) = decode_block(block, encoded, slave=1, ts_ns=1, tags={}).values
    raw = (value + 5.0) / 0.01
    if kind == "float32":
        assert got.value == pytest.approx(value, rel=1e-6, abs=1e-4)
    elif kind.startswith("u") and raw < 0:
        assert got.value == -5.0  # an unsigned register holds no negative: clamped to 0
    elif kind == "int16" and not -32768 <= round(raw) <= 32767:
        assert got.value in (-32768 * 0.01 - 5.0, 32767 * 0.01 - 5.0)
    elif kind == "uint16" and round(raw) > 65535:
        assert got.value == round(65535 * 0.01 - 5.0, 2)
    else:
        assert got.value == round(round(raw) * 0.01 - 5.0, 2)


def test_word_and_byte_order_are_those_of_the_manuals() -> None:
    # 30.56 as float32 is 0x41F47AE1; Vaisala sends the low word first.
    little = _register(type="float32", word_order="little")
    assert encode_value(little, 30.56) == [0x7AE1, 0x41F4]
    swapped = _register(type="uint16", byte_order="little")
    assert encode_value(swapped, 0x0102) == [0x0201]
    big = _register(type="int32")
    assert encode_value(big, -2) == [0xFFFF, 0xFFFE]


def test_adjacent_registers_share_a_request_and_gaps_do_not() -> None:
    items = [
        _register(address=0, type="float32", name="a"),
        _register(address=2, type="float32", name="b"),
        _register(address=6, type="int16", name="c"),
        _register(address=7, type="int16", name="d", function=4),
        _register(address=8, type="int16", name="e", function=4),
    ]
    plan = [
        (b.function, b.address, b.count, [r.channel for r in b.registers]) for b in read_plan(items)
    ]
    assert plan == [(3, 0, 4, ["a", "b"]), (3, 6, 1, ["c"]), (4, 7, 2, ["d", "e"])]
    many = [_register(address=i, name=f"r{i}") for i in range(130)]
    assert [b.count for b in read_plan(many)] == [125, 5]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_bad_register_map_names_file_line_and_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bad-map",
        """\
        name: bad-map
        factory: {slave: 1, baud: 9600}
        registers:
          - function: input
            adress: 1
            type: int16
            measurement: climate
            field: temperature_c
            kind: climate
          - function: coil
            address: 2
            type: float32
            count: 1
            measurement: climate
            field: humidity_rh
            kind: climate
          - function: 4
            address: 3
            type: int64
            measurement: climate
            field: humidity_rh
            kind: climate
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    assert info.value.problems == [
        f"{path}:4: registers[0].address: required key is missing",
        f"{path}:5: registers[0].adress: unknown key 'adress'; did you mean 'address'?",
        f"{path}:10: registers[1].function: 'coil' is not a read function: use 3 or holding "
        "(read holding registers), 4 or input (read input registers)",
        f"{path}:19: registers[2].type: Input should be 'int16', 'uint16', 'int32', 'uint32' or "
        "'float32', got 'int64'",
    ]


def test_cross_register_problems_point_at_their_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cross-map",
        """\
        name: cross-map
        registers:
          - {function: 3, address: 0, type: float32, count: 1,
             measurement: m, field: a, kind: climate}
          - {function: 3, address: 1, type: int16, word_order: little,
             measurement: m, field: b, kind: climate}
          - {function: 3, address: 9, type: int16, measurement: m, field: a, kind: climate}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    assert info.value.problems == [
        f"{path}:3: registers[0].count: float32 spans 2 register(s), not 1",
        f"{path}:5: registers[1].word_order: only 32-bit types have a word order, not int16",
    ]
    ok_but_overlapping = {
        "name": "x",
        "registers": [
            {"function": 3, "address": 0, "type": "float32", "measurement": "m", "field": "a",
             "kind": "climate"},
            {"function": 3, "address": 1, "type": "int16", "measurement": "m", "field": "b",
             "kind": "climate"},
            {"function": 4, "address": 1, "type": "int16", "measurement": "m", "field": "a",
             "kind": "climate"},
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as info:
        register_map_from_dict(ok_but_overlapping, "x.yaml")
    assert info.value.problems == [
        "x.yaml: registers[1].address: holding register 1 overlaps registers[0] (0…1)",
        "x.yaml: registers[2].name: channel name 'a' already used by registers[0]; set name: "
        "to tell them apart",
    ]


def test_a_frame_profile_is_not_a_register_map_and_the_other_way_round() -> None:
    with pytest.raises(ConfigError, match="framing: this is a device profile for a serial or MQTT"):
        load_register_map(Path(__file__).parents[1] / "firmware_configs" / "sht4x-serial.yaml")
    with pytest.raises(ConfigError, match=r"xy-md02 is a Modbus register map: use it in a source"):
        load_profile("xy-md02")
    with pytest.raises(
        ConfigError, match=r"no such Modbus register map .*known: vaisala-hmp, xy-md02"
    ):
        load_register_map("xy-md03")


# -- the source's configuration ---------------------------------------------------------------


def _config(source: dict[str, object]) -> object:
    return config_from_dict(
        {"site": "s", "gateway": "g", "sources": [{"type": "modbus", "name": "bus", **source}]}
    )


def test_modbus_source_problems_are_located() -> None:
    with pytest.raises(ConfigError) as info:
        _config(
            {
                "port": "/dev/ttyUSB0",
                "timeout": "1ms",
                "devices": [
                    {"slave": 1, "profile": "xy-md02"},
                    {"slave": 5, "profile": "xy-md02", "poll": "10ms"},
                ],
            }
        )
    assert info.value.problems == [
        "<built-in>: sources[0].timeout: 0.001 s is too short: at least 10 ms (shorter fails "
        "slow devices; longer holds the bus while one is silent)",
        "<built-in>: sources[0].devices[1].poll: 0.01 s is too short: at least 50 ms (each poll "
        "is a request on the bus; one bus carries a few dozen a second)",
    ]
    one = [{"slave": 1, "profile": "xy-md02"}]
    with pytest.raises(ConfigError) as info:
        _config({"port": "/dev/ttyUSB0", "host": "10.0.0.5", "devices": one})
    assert info.value.problems == [
        "<built-in>: sources[0].port: set port (Modbus RTU on a serial port) or host (Modbus "
        "TCP), exactly one"
    ]


def test_modbus_device_problems_are_located() -> None:
    with pytest.raises(ConfigError) as info:
        _config(
            {
                "port": "/dev/ttyUSB0",
                "devices": [
                    {"slave": 0, "profile": "xy-md02"},
                    {"slave": 5, "profile": "xy-md02"},
                    {"slave": 5, "profile": "vaisala-hmp", "sensor": "xy-md02-0"},
                ],
            }
        )
    assert info.value.problems == [
        "<built-in>: sources[0].devices[0].slave: 0 is not an RTU address: 1-247",
        "<built-in>: sources[0].devices[2].slave: slave 5 is already devices[1]: two devices at "
        "one address answer at once and garble each other",
        "<built-in>: sources[0].devices[2].sensor: sensor 'xy-md02-0' is already devices[0]; "
        "their channels would be one",
    ]


def test_the_frame_gap_follows_the_baud_rate() -> None:
    from agent.config import ModbusSourceConfig

    def gap(**kw: object) -> float:
        base = {"type": "modbus", "name": "b", "devices": [{"slave": 1, "profile": "xy-md02"}]}
        return ModbusSourceConfig.model_validate({**base, **kw}).gap

    assert gap(port="/dev/x", baud=9600) == pytest.approx(3.5 * 11 / 9600)  # 4.0 ms
    assert gap(port="/dev/x", baud=115200) == 0.00175
    assert gap(port="/dev/x", frame_gap="20ms") == 0.02
    assert gap(host="10.1.1.1") == 0.0
