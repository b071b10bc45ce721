"""runtime.spin.postgres.codec alone: PostgreSQL binary forms <-> v4 values, and Spin's parameter refusals."""

from __future__ import annotations

import struct

import pytest

from runtime.host.values import Variant
from runtime.spin.postgres import codec
from runtime.spin.postgres.codec import ConversionError, ParameterError, decode_value, encode_parameter


def _numeric(ndigits_weight_sign_dscale: tuple[int, int, int, int], digits: tuple[int, ...]) -> bytes:
    return struct.pack(">hhHh", *ndigits_weight_sign_dscale) + struct.pack(f">{len(digits)}h", *digits)


@pytest.mark.parametrize(("header", "digits", "text"), [
    ((2, 0, 0, 2), (12, 3400), "12.34"),
    ((1, 1, 0, 0), (1,), "10000"),
    ((1, -1, 0x4000, 5), (50,), "-0.00500"),
    ((0, 0, 0, 3), (), "0.000"),
    ((3, 2, 0, 1), (1, 0, 5), "100000005.0"),
    ((0, 0, 0xC000, 0), (), "NaN"),
    ((0, 0, 0xD000, 0), (), "Infinity"),
    ((0, 0, 0xF000, 0), (), "-Infinity"),
])
def test_numeric_binary_form_is_printed_as_postgres_prints_it(header, digits, text):
    assert codec.numeric_text(_numeric(header, digits)) == text


def test_dates_use_the_proleptic_gregorian_calendar_with_astronomical_years():
    for date in ((2000, 1, 1), (1970, 1, 1), (2024, 2, 29), (1, 1, 1), (0, 12, 31), (-4712, 1, 1), (262142, 12, 31)):
        oid, fmt, raw = encode_parameter(Variant("date", date))
        assert (oid, fmt) == (codec.DATE, 1)
        assert decode_value(codec.DATE, raw) == Variant("date", date)
    assert encode_parameter(Variant("date", (2000, 1, 1)))[2] == b"\x00\x00\x00\x00"  # PostgreSQL's epoch
    for bad in ((2023, 2, 29), (1900, 2, 29), (2024, 13, 1), (2024, 4, 31), (262143, 1, 1)):
        with pytest.raises(ParameterError, match="invalid date"):
            encode_parameter(Variant("date", bad))
    with pytest.raises(ConversionError, match="value too large to decode"):
        decode_value(codec.DATE, struct.pack(">i", 2**31 - 1))  # 'infinity'


def test_times_datetimes_and_timestamps():
    raw = encode_parameter(Variant("time", (1, 2, 3, 456_789_123)))[2]
    assert struct.unpack(">q", raw)[0] == 3_723_456_789  # nanoseconds truncated to PostgreSQL's microseconds
    assert decode_value(codec.TIME, raw) == Variant("time", (1, 2, 3, 456_789_000))
    with pytest.raises(ParameterError, match="invalid time 1:2:60:0"):
        encode_parameter(Variant("time", (1, 2, 60, 0)))
    assert encode_parameter(Variant("time", (23, 59, 59, 1_500_000_000)))[2] == struct.pack(">q", 86_400_500_000)
    before_2000 = (1999, 12, 31, 23, 59, 59, 999_999_999)
    oid, _, raw = encode_parameter(Variant("datetime", before_2000))
    assert oid == codec.TIMESTAMP and struct.unpack(">q", raw)[0] == -1
    assert decode_value(codec.TIMESTAMPTZ, raw) == Variant("datetime", (1999, 12, 31, 23, 59, 59, 999_999_000))
    oid, _, raw = encode_parameter(Variant("timestamp", 946_684_800))
    assert oid == codec.TIMESTAMPTZ and raw == b"\x00" * 8  # Unix seconds, sent as a timestamptz
    with pytest.raises(ParameterError, match="invalid epoch timestamp"):
        encode_parameter(Variant("timestamp", 1 << 62))


def test_integers_floats_and_strings():
    assert encode_parameter(Variant("int8", -1)) == (codec.INT2, 1, b"\xff\xff")
    assert encode_parameter(Variant("int64", -2)) == (codec.INT8, 1, struct.pack(">q", -2))
    assert encode_parameter(Variant("floating32", 0.5)) == (codec.FLOAT4, 1, struct.pack(">f", 0.5))
    assert encode_parameter(Variant("str", "ü")) == (0, 0, "ü".encode())  # untyped text: the server infers
    assert encode_parameter(Variant("db-null", None)) == (0, 1, None)
    assert decode_value(codec.INT2, b"\x80\x00") == Variant("int16", -32768)
    assert decode_value(codec.BOOL, b"\x01") == Variant("boolean", True)
    assert decode_value(codec.TEXT, None) == Variant("db-null", None)
    with pytest.raises(ConversionError):
        decode_value(codec.TEXT, b"\xff")


def test_uuid_jsonb_and_decimal_parameters_are_checked_as_spin_checks_them():
    assert encode_parameter(Variant("uuid", "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}"))[2] == bytes.fromhex(
        "a0eebc999c0b4ef8bb6d6bb9bd380a11")
    with pytest.raises(ParameterError, match="invalid UUID xyz"):
        encode_parameter(Variant("uuid", "xyz"))
    assert encode_parameter(Variant("jsonb", b'{ "a" : [1, 2] }')) == (codec.JSONB, 1, b'\x01{"a":[1,2]}')
    for bad in (b"{", b"NaN", b"\xff"):
        with pytest.raises(ParameterError, match="invalid JSON"):
            encode_parameter(Variant("jsonb", bad))
    assert decode_value(codec.JSONB, b'\x01{"b": 1, "a": 2}') == Variant("jsonb", b'{"a":2,"b":1}')
    assert encode_parameter(Variant("decimal", "1.50")) == (codec.NUMERIC, 0, b"1.50")
    assert encode_parameter(Variant("decimal", "1.5e3")) == (codec.NUMERIC, 0, b"1500")
    for bad in ("NaN", "1_000", "abc", "Infinity"):
        with pytest.raises(ParameterError, match="invalid decimal"):
            encode_parameter(Variant("decimal", bad))


def test_ranges_follow_postgres_range_normalisation():
    flags_and_bounds = encode_parameter(Variant("range-int32", ((1, "exclusive"), (5, "inclusive"))))[2]
    assert flags_and_bounds == bytes([0x02]) + struct.pack(">ii", 4, 2) + struct.pack(">ii", 4, 6)
    assert encode_parameter(Variant("range-int64", (None, None)))[2] == bytes([0x08 | 0x10])
    assert encode_parameter(Variant("range-int32", ((3, "inclusive"), (3, "exclusive"))))[2] == b"\x01"  # empty
    assert encode_parameter(Variant("range-decimal", (("2", "inclusive"), ("1", "inclusive"))))[2] == b"empty"
    assert encode_parameter(Variant("range-decimal", (None, ("1.5", "inclusive"))))[2] == b"(,1.5]"
    raw = bytes([0x02 | 0x10]) + struct.pack(">ii", 4, -7)
    assert decode_value(codec.INT4RANGE, raw) == Variant("range-int32", ((-7, "inclusive"), None))
    assert decode_value(codec.INT8RANGE, b"\x01") == Variant("range-int64", (None, None))


def test_arrays_and_intervals():
    raw = encode_parameter(Variant("array-str", ["a", None]))[2]
    assert decode_value(codec.TEXT_ARRAY, raw) == Variant("array-str", ["a", None])
    assert decode_value(codec.INT4_ARRAY, encode_parameter(Variant("array-int32", []))[2]) == Variant(
        "array-int32", [])
    assert encode_parameter(Variant("array-decimal", ["1.0", None]))[2] == b"{1.0,NULL}"
    with pytest.raises(ParameterError):
        encode_parameter(Variant("array-int32", [1 << 31]))
    two_dims = struct.pack(">iiiiiii", 2, 0, codec.INT4, 1, 1, 1, 1) + struct.pack(">ii", 4, 1)
    with pytest.raises(ConversionError, match="too many dimensions"):
        decode_value(codec.INT4_ARRAY, two_dims)
    interval = {"micros": -1, "days": 2, "months": -3}
    assert decode_value(codec.INTERVAL, encode_parameter(Variant("interval", interval))[2]) == Variant(
        "interval", interval)


def test_types_spin_does_not_map_are_other_and_unsupported_with_their_binary_form():
    assert codec.data_type(codec.JSON, "json") == Variant("other", "json")
    assert codec.data_type(codec.VARCHAR, "varchar") == Variant("str", None)
    assert decode_value(869, b"\x02\x20\x00\x04\x0a\x00\x00\x01") == Variant(
        "unsupported", b"\x02\x20\x00\x04\x0a\x00\x00\x01")
