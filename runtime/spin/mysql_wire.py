"""MySQL's prepared-statement protocol (COM_STMT_PREPARE / EXECUTE / CLOSE, binary result rows) as a pure codec.

Spin's MySQL host (factor-outbound-mysql, on mysql_async) runs every ``query`` and ``execute`` as a server-side
prepared statement: the server finds the ``?`` placeholders, parameters travel typed (Value::Int as LONGLONG,
Value::UInt as LONGLONG UNSIGNED, f32 as FLOAT, f64 as DOUBLE, text and bytes as VAR_STRING, NULL in the null
bitmap) and rows come back in the binary protocol, where a FLOAT is its exact 4 bytes and a DATE is a date.
PyMySQL, the driver this project uses (pure Python, so it loads inside the task's sandbox), speaks only the text
protocol, which prints FLOAT with 6 digits and leaves placeholder substitution to the client. So the statement
commands are encoded and decoded here and sent over PyMySQL's packet layer (runtime.spin.mysql_outbound).

No I/O: payloads (the bytes after a packet's 4-byte header) in, values out, and the reverse.
Reference: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_binary_resultset.html
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

COM_STMT_PREPARE: Final = 0x16
COM_STMT_EXECUTE: Final = 0x17
COM_STMT_CLOSE: Final = 0x19

SERVER_MORE_RESULTS_EXISTS: Final = 0x0008


class ColumnType:
    """``enum_field_types`` (include/field_types.h)."""

    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


#: Column definition flags Spin reads.
UNSIGNED_FLAG: Final = 0x20
BINARY_FLAG: Final = 0x80
#: The parameter-type flag byte of COM_STMT_EXECUTE for an unsigned integer.
PARAM_UNSIGNED: Final = 0x80

TYPE_NAMES: Final[dict[int, str]] = {
    value: name for name, value in vars(ColumnType).items() if not name.startswith("_")
}

#: Fixed-width binary encodings: column type -> (struct format, width) for signed and unsigned.
_FIXED: Final[dict[int, tuple[str, str]]] = {
    ColumnType.TINY: ("<b", "<B"),
    ColumnType.SHORT: ("<h", "<H"),
    ColumnType.YEAR: ("<h", "<H"),
    ColumnType.INT24: ("<i", "<I"),
    ColumnType.LONG: ("<i", "<I"),
    ColumnType.LONGLONG: ("<q", "<Q"),
    ColumnType.FLOAT: ("<f", "<f"),
    ColumnType.DOUBLE: ("<d", "<d"),
}
_TEMPORAL: Final = frozenset({ColumnType.DATE, ColumnType.DATETIME, ColumnType.TIMESTAMP, ColumnType.NEWDATE})


class ProtocolError(Exception):
    """The server sent something this codec cannot read (a truncated or malformed packet)."""


# ---------------------------------------------------------------------------------------------------- values


class WireParameter(NamedTuple):
    """A parameter as mysql_async binds it: ``kind`` is ``int`` / ``uint`` / ``float`` / ``double`` / ``bytes`` /
    ``null``."""

    kind: str
    value: int | float | bytes | None


class Date(NamedTuple):
    """A DATE / DATETIME / TIMESTAMP value of the binary protocol (mysql_common's ``Value::Date``)."""

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    microsecond: int = 0

    def __repr__(self) -> str:
        return f"Date({', '.join(map(str, self))})"


class Time(NamedTuple):
    """A TIME value (mysql_common's ``Value::Time``: negative, days, hours, minutes, seconds, microseconds)."""

    negative: bool
    days: int
    hours: int
    minutes: int
    seconds: int
    microseconds: int

    def __repr__(self) -> str:
        return f"Time({str(self.negative).lower()}, {', '.join(map(str, self[1:]))})"


#: A decoded column value: None for NULL, int, float, bytes (everything sent as a length-encoded string), Date, Time.
WireValue = None | int | float | bytes | Date | Time


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """What Spin reads of a column definition."""

    name: str
    type_code: int
    flags: int

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & UNSIGNED_FLAG)

    @property
    def binary(self) -> bool:
        return bool(self.flags & BINARY_FLAG)


# ---------------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class PrepareOk:
    statement_id: int
    num_columns: int
    num_params: int


def parse_prepare_ok(payload: bytes) -> PrepareOk:
    """COM_STMT_PREPARE_OK: status 0x00, statement id (4), columns (2), params (2), filler, warnings."""
    if len(payload) < 9 or payload[0] != 0:
        raise ProtocolError(f"expected COM_STMT_PREPARE_OK, got {payload[:1].hex() or 'nothing'}")
    statement_id, num_columns, num_params = struct.unpack_from("<IHH", payload, 1)
    return PrepareOk(statement_id, num_columns, num_params)


def close_payload(statement_id: int) -> bytes:
    return struct.pack("<I", statement_id)


def execute_payload(statement_id: int, params: Sequence[WireParameter]) -> bytes:
    """COM_STMT_EXECUTE (without the command byte): no cursor, one iteration, types sent with every execute."""
    out = bytearray(struct.pack("<IBI", statement_id, 0, 1))
    if not params:
        return bytes(out)
    null_bitmap = bytearray((len(params) + 7) // 8)
    types = bytearray()
    values = bytearray()
    for index, param in enumerate(params):
        if param.kind == "null":
            null_bitmap[index // 8] |= 1 << (index % 8)
            types += bytes((ColumnType.NULL, 0))
        elif param.kind == "int":
            types += bytes((ColumnType.LONGLONG, 0))
            values += struct.pack("<q", param.value)
        elif param.kind == "uint":
            types += bytes((ColumnType.LONGLONG, PARAM_UNSIGNED))
            values += struct.pack("<Q", param.value)
        elif param.kind == "float":
            types += bytes((ColumnType.FLOAT, 0))
            values += struct.pack("<f", param.value)
        elif param.kind == "double":
            types += bytes((ColumnType.DOUBLE, 0))
            values += struct.pack("<d", param.value)
        elif param.kind == "bytes":
            assert isinstance(param.value, bytes)
            types += bytes((ColumnType.VAR_STRING, 0))
            values += length_encoded_int(len(param.value)) + param.value
        else:
            raise ValueError(f"unknown parameter kind {param.kind!r}")
    out += null_bitmap
    out.append(1)  # new-params-bound: the types follow
    out += types
    out += values
    return bytes(out)


def length_encoded_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", value)
    if value <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", value)[:3]
    return b"\xfe" + struct.pack("<Q", value)


def _read_length_encoded_int(payload: bytes, offset: int) -> tuple[int, int]:
    try:
        first = payload[offset]
        if first < 0xFB:
            return first, offset + 1
        if first == 0xFC:
            return struct.unpack_from("<H", payload, offset + 1)[0], offset + 3
        if first == 0xFD:
            return int.from_bytes(payload[offset + 1:offset + 4], "little"), offset + 4
        if first == 0xFE:
            return struct.unpack_from("<Q", payload, offset + 1)[0], offset + 9
    except (IndexError, struct.error):
        pass
    raise ProtocolError("truncated length-encoded integer")


# ---------------------------------------------------------------------------------------------------- replies


def is_eof(payload: bytes) -> bool:
    """An EOF packet (0xfe, shorter than 9 bytes): ends column definitions and rows (no CLIENT_DEPRECATE_EOF)."""
    return len(payload) < 9 and payload[:1] == b"\xfe"


def is_ok(payload: bytes) -> bool:
    return payload[:1] == b"\x00"


def eof_status(payload: bytes) -> int:
    """The server status flags of an EOF packet."""
    return struct.unpack_from("<H", payload, 3)[0] if len(payload) >= 5 else 0


def ok_status(payload: bytes) -> int:
    """The server status flags of an OK packet (after affected rows and last insert id)."""
    _, offset = _read_length_encoded_int(payload, 1)
    _, offset = _read_length_encoded_int(payload, offset)
    if len(payload) < offset + 2:
        return 0
    return struct.unpack_from("<H", payload, offset)[0]


def column_count(payload: bytes) -> int:
    """The first packet of a result set: its number of columns."""
    count, _ = _read_length_encoded_int(payload, 0)
    return count


def decode_binary_row(payload: bytes, columns: Sequence[ColumnDef]) -> list[WireValue]:
    """A binary-protocol row: 0x00, a NULL bitmap offset by 2 bits, then each non-NULL value by column type."""
    if payload[:1] != b"\x00":
        raise ProtocolError("a binary row must start with 0x00")
    bitmap_length = (len(columns) + 7 + 2) // 8
    bitmap = payload[1:1 + bitmap_length]
    if len(bitmap) != bitmap_length:
        raise ProtocolError("truncated NULL bitmap")
    offset = 1 + bitmap_length
    values: list[WireValue] = []
    try:
        for index, column in enumerate(columns):
            bit = index + 2
            if bitmap[bit // 8] & (1 << (bit % 8)):
                values.append(None)
                continue
            value, offset = _decode_value(payload, offset, column)
            values.append(value)
    except (IndexError, struct.error):
        raise ProtocolError("truncated binary row") from None
    if offset != len(payload):
        raise ProtocolError(f"binary row has {len(payload) - offset} bytes after its last value")
    return values


def _decode_value(payload: bytes, offset: int, column: ColumnDef) -> tuple[WireValue, int]:
    code = column.type_code
    fixed = _FIXED.get(code)
    if fixed is not None:
        fmt = fixed[1] if column.unsigned else fixed[0]
        return struct.unpack_from(fmt, payload, offset)[0], offset + struct.calcsize(fmt)
    if code in _TEMPORAL:
        length = payload[offset]
        raw = payload[offset + 1:offset + 1 + length]
        if len(raw) != length or length not in (0, 4, 7, 11):
            raise ProtocolError(f"bad {TYPE_NAMES.get(code, code)} value of {length} bytes")
        parts = [0, 0, 0, 0, 0, 0, 0]
        if length >= 4:
            parts[0] = struct.unpack_from("<H", raw)[0]
            parts[1], parts[2] = raw[2], raw[3]
        if length >= 7:
            parts[3], parts[4], parts[5] = raw[4], raw[5], raw[6]
        if length == 11:
            parts[6] = struct.unpack_from("<I", raw, 7)[0]
        return Date(*parts), offset + 1 + length
    if code == ColumnType.TIME:
        length = payload[offset]
        raw = payload[offset + 1:offset + 1 + length]
        if len(raw) != length or length not in (0, 8, 12):
            raise ProtocolError(f"bad TIME value of {length} bytes")
        if length == 0:
            return Time(False, 0, 0, 0, 0, 0), offset + 1
        negative, days = raw[0] == 1, struct.unpack_from("<I", raw, 1)[0]
        micro = struct.unpack_from("<I", raw, 8)[0] if length == 12 else 0
        return Time(negative, days, raw[5], raw[6], raw[7], micro), offset + 1 + length
    if code == ColumnType.NULL:
        return None, offset
    length, start = _read_length_encoded_int(payload, offset)
    end = start + length
    if end > len(payload):
        raise ProtocolError("truncated string value")
    return bytes(payload[start:end]), end
