"""runtime.spin.mysql_wire: the prepared-statement commands and binary rows, byte for byte, without a server."""

from __future__ import annotations

import struct

import pytest

from runtime.spin import mysql_wire as wire
from runtime.spin.mysql_wire import ColumnDef, ColumnType, Date, Time, WireParameter


def test_execute_payload_binds_each_kind_as_mysql_async_does():
    payload = wire.execute_payload(7, [
        WireParameter("int", -2), WireParameter("null", None), WireParameter("uint", (1 << 64) - 1),
        WireParameter("float", 1.5), WireParameter("double", -0.25), WireParameter("bytes", b"ab"),
    ])
    header = struct.pack("<IBI", 7, 0, 1)
    assert payload.startswith(header)
    rest = payload[len(header):]
    assert rest[0] == 0b0000_0010  # the NULL bitmap: parameter 2
    assert rest[1] == 1  # new-params-bound
    types = rest[2:14]
    assert types == bytes([ColumnType.LONGLONG, 0, ColumnType.NULL, 0, ColumnType.LONGLONG, 0x80,
                           ColumnType.FLOAT, 0, ColumnType.DOUBLE, 0, ColumnType.VAR_STRING, 0])
    assert rest[14:] == (struct.pack("<q", -2) + struct.pack("<Q", (1 << 64) - 1) + struct.pack("<f", 1.5)
                         + struct.pack("<d", -0.25) + b"\x02ab")


def test_execute_payload_without_parameters_has_no_bitmap():
    assert wire.execute_payload(1, []) == struct.pack("<IBI", 1, 0, 1)


def test_null_bitmap_spans_bytes():
    payload = wire.execute_payload(1, [WireParameter("int", 0)] * 8 + [WireParameter("null", None)])
    assert payload[9:11] == b"\x00\x01"


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (250, b"\xfa"), (251, b"\xfc\xfb\x00"), (0xFFFF, b"\xfc\xff\xff"),
    (0x10000, b"\xfd\x00\x00\x01"), (0x1000000, b"\xfe" + struct.pack("<Q", 0x1000000)),
])
def test_length_encoded_integers(value, encoded):
    assert wire.length_encoded_int(value) == encoded
    assert wire.column_count(encoded) == value


def test_prepare_ok_is_parsed_and_anything_else_is_a_protocol_error():
    ok = wire.parse_prepare_ok(b"\x00" + struct.pack("<IHH", 9, 3, 2) + b"\x00\x00\x00")
    assert ok == wire.PrepareOk(statement_id=9, num_columns=3, num_params=2)
    with pytest.raises(wire.ProtocolError):
        wire.parse_prepare_ok(b"\xff\x01\x02")


def _row(columns: list[ColumnDef], null_columns: set[int], values: bytes) -> bytes:
    bitmap = bytearray((len(columns) + 9) // 8)
    for index in null_columns:
        bitmap[(index + 2) // 8] |= 1 << ((index + 2) % 8)
    return b"\x00" + bytes(bitmap) + values


def col(type_code: int, flags: int = 0, name: str = "c") -> ColumnDef:
    return ColumnDef(name, type_code, flags)


def test_binary_row_values_by_column_type():
    columns = [col(ColumnType.TINY), col(ColumnType.TINY, wire.UNSIGNED_FLAG), col(ColumnType.SHORT),
               col(ColumnType.INT24, wire.UNSIGNED_FLAG), col(ColumnType.LONG), col(ColumnType.LONGLONG),
               col(ColumnType.LONGLONG, wire.UNSIGNED_FLAG), col(ColumnType.FLOAT), col(ColumnType.DOUBLE),
               col(ColumnType.VAR_STRING), col(ColumnType.NEWDECIMAL), col(ColumnType.BLOB), col(ColumnType.YEAR)]
    values = (struct.pack("<b", -1) + struct.pack("<B", 255) + struct.pack("<h", -300) + struct.pack("<I", 1 << 24)
              + struct.pack("<i", -5) + struct.pack("<q", -(1 << 63)) + struct.pack("<Q", (1 << 64) - 1)
              + struct.pack("<f", 0.5) + struct.pack("<d", 0.1) + b"\x03abc" + b"\x0512.34" + b"\x00"
              + struct.pack("<h", 2024))
    assert wire.decode_binary_row(_row(columns, set(), values), columns) == [
        -1, 255, -300, 1 << 24, -5, -(1 << 63), (1 << 64) - 1, 0.5, 0.1, b"abc", b"12.34", b"", 2024]


def test_binary_row_nulls_are_in_the_bitmap_offset_by_two():
    columns = [col(ColumnType.LONG)] * 9
    row = _row(columns, {0, 5, 8}, b"".join(struct.pack("<i", i) for i in range(6)))
    assert wire.decode_binary_row(row, columns) == [None, 0, 1, 2, 3, None, 4, 5, None]


@pytest.mark.parametrize(("raw", "value"), [
    (b"\x00", Date(0, 0, 0)),
    (b"\x04" + struct.pack("<H", 2024) + b"\x01\x02", Date(2024, 1, 2)),
    (b"\x07" + struct.pack("<H", 2024) + b"\x01\x02\x03\x04\x05", Date(2024, 1, 2, 3, 4, 5)),
    (b"\x0b" + struct.pack("<H", 2024) + b"\x01\x02\x03\x04\x05" + struct.pack("<I", 678),
     Date(2024, 1, 2, 3, 4, 5, 678)),
])
def test_binary_dates(raw, value):
    assert wire.decode_binary_row(_row([col(ColumnType.DATETIME)], set(), raw), [col(ColumnType.DATETIME)]) == [value]


@pytest.mark.parametrize(("raw", "value"), [
    (b"\x00", Time(False, 0, 0, 0, 0, 0)),
    (b"\x08\x01" + struct.pack("<I", 2) + b"\x03\x04\x05", Time(True, 2, 3, 4, 5, 0)),
    (b"\x0c\x00" + struct.pack("<I", 0) + b"\x03\x04\x05" + struct.pack("<I", 9), Time(False, 0, 3, 4, 5, 9)),
])
def test_binary_times(raw, value):
    assert wire.decode_binary_row(_row([col(ColumnType.TIME)], set(), raw), [col(ColumnType.TIME)]) == [value]
    assert repr(value).startswith("Time(true" if value.negative else "Time(false")


@pytest.mark.parametrize("row", [
    b"\x00\x00" + b"\x01",  # a LONG needs 4 bytes
    b"\x00\x00" + struct.pack("<i", 1) + b"\x00",  # a byte after the last value
    b"\x01\x00" + struct.pack("<i", 1),  # not a row
    b"\x00",  # no bitmap
])
def test_malformed_rows_are_protocol_errors(row):
    with pytest.raises(wire.ProtocolError):
        wire.decode_binary_row(row, [col(ColumnType.LONG)])


def test_a_string_longer_than_the_packet_is_a_protocol_error():
    with pytest.raises(wire.ProtocolError):
        wire.decode_binary_row(b"\x00\x00\x05ab", [col(ColumnType.VAR_STRING)])


def test_eof_and_ok_packets_and_their_status():
    eof = b"\xfe\x00\x00" + struct.pack("<H", wire.SERVER_MORE_RESULTS_EXISTS | 2)
    assert wire.is_eof(eof) and wire.eof_status(eof) & wire.SERVER_MORE_RESULTS_EXISTS
    assert not wire.is_eof(b"\xfe" + b"x" * 9)  # a length-encoded 0xfe prefix, not an EOF
    ok = b"\x00\x01\xfc\x00\x01" + struct.pack("<H", 2) + b"\x00\x00"
    assert wire.is_ok(ok) and wire.ok_status(ok) == 2
