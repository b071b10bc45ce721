"""PostgreSQL's binary wire formats <-> the values of ``spin:postgres/postgres@4.0.0`` (pure: bytes in, values out).

This mirrors factor-outbound-pg's types.rs, which reads every column with tokio-postgres in binary format:

- Column types (``convert_data_type``): bool, bytea, float4/8, int2/4/8, text/varchar/bpchar, timestamp and
  timestamptz (both ``datetime``, in UTC), date, time, uuid, jsonb, numeric (``decimal``), int4range, int8range,
  numrange, int4[], int8[], numeric[], text[]/varchar[]/bpchar[], interval. Any other type is ``other(<type
  name>)`` and its values ``unsupported(<the value's binary form>)``, as in Spin (json, name, inet, timetz, ...).
- ``decimal`` is the number in base 10 with the column's scale (PostgreSQL's numeric_out; rust_decimal prints the
  same for the values it can hold), jsonb the document re-serialised compactly with sorted keys (serde_json's
  to_vec of a serde_json::Value), a uuid lower-case and hyphenated, ranges their two optional bounds (an empty
  range, like an unbounded one, has neither), arrays one-dimensional.
- Parameters are sent with the type their case names (int16 -> int2, decimal -> numeric, datetime -> timestamp,
  timestamp -> timestamptz, ...), so the server converts them where SQL allows; ``str`` goes untyped in text
  form, so the server gives it the type the statement wants (varchar, name, citext, ...) as it does for Spin's
  String. tokio-postgres instead refuses a Rust type that does not exactly match the type the server inferred
  (an int32 for an int8 column), so this host accepts a few statements Spin refuses, never the reverse.
  ``int8`` (s8) is sent as int2: tokio-postgres maps i8 to the one-byte ``"char"`` type, which no app means.
- Invalid parameters (a date that does not exist, a malformed uuid/decimal/JSON) raise ParameterError with Spin's
  message (``invalid date y=2023, m=2, d=30``), which the client turns into bad-parameter /
  value-conversion-failed as Spin does.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from wasmtime.component import Variant

# ------------------------------------------------------------------------------------------------- type OIDs

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 18, 19, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, UNKNOWN = 700, 701, 705
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL = 1042, 1043, 1082, 1083, 1114, 1184, 1186
NUMERIC, UUID, JSONB = 1700, 2950, 3802
INT4RANGE, NUMRANGE, INT8RANGE = 3904, 3906, 3926
INT4_ARRAY, TEXT_ARRAY, BPCHAR_ARRAY, VARCHAR_ARRAY, INT8_ARRAY, NUMERIC_ARRAY = 1007, 1009, 1014, 1015, 1016, 1231

#: Column type OID -> v4 ``db-data-type`` case (Spin's convert_data_type).
DATA_TYPES: dict[int, str] = {
    BOOL: "boolean", BYTEA: "binary", FLOAT4: "floating32", FLOAT8: "floating64", INT2: "int16", INT4: "int32",
    INT8: "int64", TEXT: "str", VARCHAR: "str", BPCHAR: "str", TIMESTAMP: "datetime", TIMESTAMPTZ: "datetime",
    DATE: "date", TIME: "time", UUID: "uuid", JSONB: "jsonb", NUMERIC: "decimal", INT4RANGE: "range-int32",
    INT8RANGE: "range-int64", NUMRANGE: "range-decimal", INT4_ARRAY: "array-int32", INT8_ARRAY: "array-int64",
    NUMERIC_ARRAY: "array-decimal", TEXT_ARRAY: "array-str", VARCHAR_ARRAY: "array-str",
    BPCHAR_ARRAY: "array-str", INTERVAL: "interval",
}

#: Names of built-in types Spin reports as ``other(name)`` (tokio-postgres's Type::name(), = pg_type.typname), so
#: the common ones need no catalog lookup; any other OID is looked up in pg_type by the client.
BUILTIN_TYPE_NAMES: dict[int, str] = {
    CHAR: "char", NAME: "name", OID: "oid", JSON: "json", 22: "int2vector", 24: "regproc", 27: "tid", 28: "xid",
    29: "cid", 30: "oidvector", 142: "xml", 199: "_json", 600: "point", 601: "lseg", 602: "path", 603: "box",
    604: "polygon", 628: "line", 650: "cidr", 718: "circle", 774: "macaddr8", 790: "money", 829: "macaddr",
    869: "inet", 1000: "_bool", 1001: "_bytea", 1002: "_char", 1003: "_name", 1005: "_int2", 1021: "_float4",
    1022: "_float8", 1028: "_oid", 1115: "_timestamp", 1182: "_date", 1183: "_time", 1185: "_timestamptz",
    1187: "_interval", 1266: "timetz", 1270: "_timetz", 1560: "bit", 1562: "varbit", 2205: "regclass",
    2206: "regtype", 2249: "record", 2278: "void", 2951: "_uuid", 3614: "tsvector", 3615: "tsquery",
    3807: "_jsonb", 3908: "tsrange", 3910: "tstzrange", 3912: "daterange", 4451: "int4multirange",
    705: "unknown", 2287: "_record", 3220: "pg_lsn",
}

# ------------------------------------------------------------------------------------------------- errors


class ParameterError(ValueError):
    """A parameter value Spin would refuse to convert; the message is Spin's."""


class ConversionError(ValueError):
    """A column value that cannot be given to the guest (e.g. an infinite timestamp), with the reason."""


# ------------------------------------------------------------------------------------------------- calendar

_PG_EPOCH_DAYS = 10957  # 2000-01-01 in days since 1970-01-01
_DAY_US = 86_400_000_000
_I64 = (-(1 << 63), (1 << 63) - 1)
#: chrono's NaiveDate range, the one Spin converts through (years -262143 ..= 262142, astronomical numbering).
_MIN_YEAR, _MAX_YEAR = -262143, 262142


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical years: 0 = 1 BC), H. Hinnant's."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _valid_date(year: int, month: int, day: int) -> bool:
    if not (_MIN_YEAR <= year <= _MAX_YEAR and 1 <= month <= 12 and day >= 1):
        return False
    days_in_month = (31, 29 if _is_leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    return day <= days_in_month


def _time_micros(hour: int, minute: int, second: int, nanosecond: int) -> int | None:
    """Microseconds since midnight, None if chrono's from_hms_nano_opt refuses it (a leap second needs s=59)."""
    if hour > 23 or minute > 59 or second > 59 or nanosecond >= 2_000_000_000:
        return None
    if nanosecond >= 1_000_000_000 and second != 59:
        return None
    return ((hour * 60 + minute) * 60 + second) * 1_000_000 + nanosecond // 1000


# ------------------------------------------------------------------------------------------------- parameters

#: What ``encode_parameter`` returns: the type OID for Parse (0 = let the server infer), the Bind format code
#: (0 text, 1 binary) and the value's bytes (None = SQL NULL).
Encoded = tuple[int, int, bytes | None]

_INT_RANGES = {"int16": (-(1 << 15), (1 << 15) - 1), "int32": (-(1 << 31), (1 << 31) - 1), "int64": _I64}


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ParameterError(f"invalid decimal {text}") from None
    if not value.is_finite() or "_" in text:
        raise ParameterError(f"invalid decimal {text}")
    return value


def _decimal_text(text: str) -> str:
    return format(_decimal(text), "f")


def _encode_date(value: Sequence[int]) -> bytes:
    year, month, day = value
    if not _valid_date(year, month, day):
        raise ParameterError(f"invalid date y={year}, m={month}, d={day}")
    return struct.pack(">i", _days_from_civil(year, month, day) - _PG_EPOCH_DAYS)


def _encode_time(value: Sequence[int]) -> bytes:
    hour, minute, second, nanosecond = value
    micros = _time_micros(hour, minute, second, nanosecond)
    if micros is None:
        raise ParameterError(f"invalid time {hour}:{minute}:{second}:{nanosecond}")
    return struct.pack(">q", micros)


def _encode_datetime(value: Sequence[int]) -> bytes:
    year, month, day, hour, minute, second, nanosecond = value
    if not _valid_date(year, month, day):
        raise ParameterError(f"invalid date y={year}, m={month}, d={day}")
    micros = _time_micros(hour, minute, second, nanosecond)
    if micros is None:
        raise ParameterError(f"invalid time {hour}:{minute}:{second}:{nanosecond}")
    return _pack_i64((_days_from_civil(year, month, day) - _PG_EPOCH_DAYS) * _DAY_US + micros)


def _encode_timestamp(seconds: int) -> bytes:
    # chrono's DateTime::from_timestamp range: the NaiveDate years above.
    if not (_days_from_civil(_MIN_YEAR, 1, 1) * 86400 <= seconds < _days_from_civil(_MAX_YEAR + 1, 1, 1) * 86400):
        raise ParameterError(f"invalid epoch timestamp {seconds}")
    return _pack_i64((seconds - _PG_EPOCH_DAYS * 86400) * 1_000_000)


def _pack_i64(value: int) -> bytes:
    if not _I64[0] <= value <= _I64[1]:
        raise ParameterError("value too large to transmit")
    return struct.pack(">q", value)


def _encode_uuid(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise ParameterError(f"invalid UUID {text}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _encode_jsonb(document: bytes) -> bytes:
    try:
        value = json.loads(document, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # also UnicodeDecodeError; RecursionError: nested too deeply
        raise ParameterError(f"invalid JSON {document.decode('utf-8', 'replace')[:200]}") from None
    return b"\x01" + json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


_RANGE_EMPTY, _RANGE_LB_INC, _RANGE_UB_INC, _RANGE_LB_INF, _RANGE_UB_INF = 0x01, 0x02, 0x04, 0x08, 0x10

Bound = tuple[Any, str] | None


def _range_is_empty(lower: Bound, upper: Bound) -> bool:
    """postgres_range::Range::new's rule: lower > upper, or equal unless both inclusive, is the empty range."""
    if lower is None or upper is None:
        return False
    if lower[1] == "inclusive" and upper[1] == "inclusive":
        return bool(lower[0] > upper[0])
    return bool(lower[0] >= upper[0])


def _normalise_int_bounds(lower: Bound, upper: Bound) -> tuple[Bound, Bound]:
    """postgres_range's Normalizable for integers: ``[lower, upper)``."""
    if lower is not None and lower[1] == "exclusive":
        lower = (lower[0] + 1, "inclusive")
    if upper is not None and upper[1] == "inclusive":
        upper = (upper[0] + 1, "exclusive")
    return lower, upper


def _encode_int_range(value: tuple[Bound, Bound], fmt: str) -> bytes:
    lower, upper = _normalise_int_bounds(*value)
    if _range_is_empty(lower, upper):
        return bytes([_RANGE_EMPTY])
    flags = 0
    body = b""
    size = struct.calcsize(fmt)
    for bound, inclusive, infinite in ((lower, _RANGE_LB_INC, _RANGE_LB_INF), (upper, _RANGE_UB_INC, _RANGE_UB_INF)):
        if bound is None:
            flags |= infinite
            continue
        if bound[1] == "inclusive":
            flags |= inclusive
        try:
            body += struct.pack(f">i{fmt}", size, bound[0])
        except struct.error:
            raise ParameterError(f"range bound {bound[0]} out of range") from None
    return bytes([flags]) + body


def _decimal_range_text(value: tuple[Bound, Bound]) -> bytes:
    lower_raw, upper_raw = value
    lower = None if lower_raw is None else (_decimal(lower_raw[0]), lower_raw[1])
    upper = None if upper_raw is None else (_decimal(upper_raw[0]), upper_raw[1])
    if _range_is_empty(lower, upper):
        return b"empty"
    opening = "[" if lower is not None and lower[1] == "inclusive" else "("
    closing = "]" if upper is not None and upper[1] == "inclusive" else ")"
    low = "" if lower is None else format(lower[0], "f")
    high = "" if upper is None else format(upper[0], "f")
    return f"{opening}{low},{high}{closing}".encode()


def _encode_array(elements: Sequence[Any], element_oid: int, encode: Callable[[Any], bytes]) -> bytes:
    if not elements:
        return struct.pack(">iii", 0, 0, element_oid)
    has_null = any(e is None for e in elements)
    parts = [struct.pack(">iiiii", 1, int(has_null), element_oid, len(elements), 1)]
    for element in elements:
        if element is None:
            parts.append(struct.pack(">i", -1))
        else:
            data = encode(element)
            parts.append(struct.pack(">i", len(data)) + data)
    return b"".join(parts)


def _decimal_array_text(elements: Sequence[str | None]) -> bytes:
    return ("{" + ",".join("NULL" if e is None else _decimal_text(e) for e in elements) + "}").encode()


def _int(case: str, value: int) -> int:
    low, high = _INT_RANGES[case]
    if not low <= value <= high:
        raise ParameterError(f"{case} value {value} out of range")
    return value


_BINARY_ENCODERS: dict[str, tuple[int, Callable[[Any], bytes]]] = {
    "boolean": (BOOL, lambda v: b"\x01" if v else b"\x00"),
    "int8": (INT2, lambda v: struct.pack(">h", v)),
    "int16": (INT2, lambda v: struct.pack(">h", _int("int16", v))),
    "int32": (INT4, lambda v: struct.pack(">i", _int("int32", v))),
    "int64": (INT8, lambda v: struct.pack(">q", _int("int64", v))),
    "floating32": (FLOAT4, lambda v: struct.pack(">f", v)),
    "floating64": (FLOAT8, lambda v: struct.pack(">d", v)),
    "binary": (BYTEA, bytes),
    "date": (DATE, _encode_date),
    "time": (TIME, _encode_time),
    "datetime": (TIMESTAMP, _encode_datetime),
    "timestamp": (TIMESTAMPTZ, _encode_timestamp),
    "uuid": (UUID, _encode_uuid),
    "jsonb": (JSONB, _encode_jsonb),
    "range-int32": (INT4RANGE, lambda v: _encode_int_range(v, "i")),
    "range-int64": (INT8RANGE, lambda v: _encode_int_range(v, "q")),
    "array-int32": (INT4_ARRAY, lambda v: _encode_array(v, INT4, lambda e: struct.pack(">i", _int("int32", e)))),
    "array-int64": (INT8_ARRAY, lambda v: _encode_array(v, INT8, lambda e: struct.pack(">q", _int("int64", e)))),
    "array-str": (TEXT_ARRAY, lambda v: _encode_array(v, TEXT, lambda e: e.encode())),
    "interval": (INTERVAL, lambda v: struct.pack(">qii", v["micros"], v["days"], v["months"])),
}

#: Cases sent in text form (numeric's binary form is base 10000; the server parses decimal text exactly).
_TEXT_ENCODERS: dict[str, tuple[int, Callable[[Any], bytes]]] = {
    "str": (0, lambda v: v.encode()),
    "decimal": (NUMERIC, lambda v: _decimal_text(v).encode()),
    "range-decimal": (NUMRANGE, _decimal_range_text),
    "array-decimal": (NUMERIC_ARRAY, _decimal_array_text),
}


def encode_parameter(value: Variant) -> Encoded:
    """One v4 ``parameter-value`` as (type OID, format, bytes); ParameterError for a value Spin refuses."""
    if value.tag == "db-null":
        return 0, 1, None  # untyped NULL: the server infers the type, as Spin's PgNull accepts any
    if value.tag in _BINARY_ENCODERS:
        oid, encode = _BINARY_ENCODERS[value.tag]
        return oid, 1, encode(value.payload)
    if value.tag in _TEXT_ENCODERS:
        oid, encode = _TEXT_ENCODERS[value.tag]
        return oid, 0, encode(value.payload)
    raise ParameterError(f"unsupported parameter type {value.tag}")


# ------------------------------------------------------------------------------------------------- columns


def data_type(oid: int, type_name: str) -> Variant:
    """The v4 ``db-data-type`` of a column: its case, or ``other(<type name>)``."""
    case = DATA_TYPES.get(oid)
    return Variant(case, None) if case is not None else Variant("other", type_name)


def _i16(raw: bytes) -> int:
    return struct.unpack(">h", raw)[0]


def _i32(raw: bytes) -> int:
    return struct.unpack(">i", raw)[0]


def _i64(raw: bytes) -> int:
    return struct.unpack(">q", raw)[0]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError("invalid UTF-8 in a text value") from None


def _date(raw: bytes) -> tuple[int, int, int]:
    days = _i32(raw) + _PG_EPOCH_DAYS
    year, month, day = _civil_from_days(days)
    if not _MIN_YEAR <= year <= _MAX_YEAR:  # incl. 'infinity' (i32 max/min)
        raise ConversionError("value too large to decode")
    return year, month, day


def _split_micros(micros: int) -> tuple[int, int, int, int]:
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return hour, minute, second, fraction * 1000


def _time(raw: bytes) -> tuple[int, int, int, int]:
    return _split_micros(_i64(raw) % _DAY_US)  # 24:00:00 wraps to midnight, as chrono's NaiveTime + Duration


def _datetime(raw: bytes) -> tuple[int, int, int, int, int, int, int]:
    days, micros = divmod(_i64(raw), _DAY_US)
    year, month, day = _civil_from_days(days + _PG_EPOCH_DAYS)
    if not _MIN_YEAR <= year <= _MAX_YEAR:  # incl. 'infinity'
        raise ConversionError("value too large to decode")
    return (year, month, day, *_split_micros(micros))


def numeric_text(raw: bytes) -> str:
    """PostgreSQL's numeric binary form (base-10000 digits, weight, sign, display scale) as decimal text."""
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHh", raw)
    if sign == 0xC000:
        return "NaN"
    if sign in (0xD000, 0xF000):
        return "Infinity" if sign == 0xD000 else "-Infinity"
    digits = struct.unpack_from(f">{ndigits}h", raw, 8)

    def digit(index: int) -> int:
        return digits[index] if 0 <= index < ndigits else 0

    whole = "".join(f"{digit(i):04d}" for i in range(weight + 1)).lstrip("0") or "0"
    groups = (dscale + 3) // 4
    fraction = "".join(f"{digit(i):04d}" for i in range(weight + 1, weight + 1 + groups))[:dscale]
    text = f"{whole}.{fraction}" if dscale > 0 else whole
    return f"-{text}" if sign == 0x4000 and text.strip("0.") else text


def _jsonb(raw: bytes) -> bytes:
    if not raw or raw[0] != 1:
        raise ConversionError("unsupported JSONB encoding version")
    try:
        value = json.loads(raw[1:])
    except (ValueError, RecursionError):
        raise ConversionError("invalid JSON from database") from None
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _range(raw: bytes, element: Callable[[bytes], Any]) -> tuple[Bound, Bound]:
    flags = raw[0]
    if flags & _RANGE_EMPTY:
        return None, None
    position = 1
    bounds: list[Bound] = []
    for inclusive, infinite in ((_RANGE_LB_INC, _RANGE_LB_INF), (_RANGE_UB_INC, _RANGE_UB_INF)):
        if flags & infinite:
            bounds.append(None)
            continue
        size = _i32(raw[position:position + 4])
        value = element(raw[position + 4:position + 4 + size])
        position += 4 + size
        bounds.append((value, "inclusive" if flags & inclusive else "exclusive"))
    return bounds[0], bounds[1]


def _array(raw: bytes, element: Callable[[bytes], Any]) -> list[Any]:
    ndim, _flags, _element_oid = struct.unpack_from(">iii", raw)
    if ndim == 0:
        return []
    if ndim > 1:
        raise ConversionError("array contains too many dimensions")
    length, _lower = struct.unpack_from(">ii", raw, 12)
    position = 20
    values: list[Any] = []
    for _ in range(length):
        size = _i32(raw[position:position + 4])
        position += 4
        if size < 0:
            values.append(None)
        else:
            values.append(element(raw[position:position + size]))
            position += size
    return values


def _interval(raw: bytes) -> dict[str, int]:
    if len(raw) != 16:
        raise ConversionError("unexpected binary format for Postgres INTERVAL")
    micros, days, months = struct.unpack(">qii", raw)
    return {"micros": micros, "days": days, "months": months}


#: Column OID -> (db-value case, decoder of the binary form).
_DECODERS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    BOOL: ("boolean", lambda raw: raw != b"\x00"),
    BYTEA: ("binary", bytes),
    FLOAT4: ("floating32", lambda raw: struct.unpack(">f", raw)[0]),
    FLOAT8: ("floating64", lambda raw: struct.unpack(">d", raw)[0]),
    INT2: ("int16", _i16),
    INT4: ("int32", _i32),
    INT8: ("int64", _i64),
    TEXT: ("str", _text), VARCHAR: ("str", _text), BPCHAR: ("str", _text),
    TIMESTAMP: ("datetime", _datetime), TIMESTAMPTZ: ("datetime", _datetime),
    DATE: ("date", _date),
    TIME: ("time", _time),
    UUID: ("uuid", lambda raw: str(uuid.UUID(bytes=bytes(raw)))),
    JSONB: ("jsonb", _jsonb),
    NUMERIC: ("decimal", numeric_text),
    INT4RANGE: ("range-int32", lambda raw: _range(raw, _i32)),
    INT8RANGE: ("range-int64", lambda raw: _range(raw, _i64)),
    NUMRANGE: ("range-decimal", lambda raw: _range(raw, numeric_text)),
    INT4_ARRAY: ("array-int32", lambda raw: _array(raw, _i32)),
    INT8_ARRAY: ("array-int64", lambda raw: _array(raw, _i64)),
    NUMERIC_ARRAY: ("array-decimal", lambda raw: _array(raw, numeric_text)),
    TEXT_ARRAY: ("array-str", lambda raw: _array(raw, _text)),
    VARCHAR_ARRAY: ("array-str", lambda raw: _array(raw, _text)),
    BPCHAR_ARRAY: ("array-str", lambda raw: _array(raw, _text)),
    INTERVAL: ("interval", _interval),
}

DB_NULL = Variant("db-null", None)


def decode_value(oid: int, raw: bytes | None) -> Variant:
    """One column value (binary form, None = NULL) as a v4 ``db-value``; ConversionError if it cannot be."""
    if raw is None:
        return DB_NULL
    decoder = _DECODERS.get(oid)
    if decoder is None:
        return Variant("unsupported", bytes(raw))
    case, decode = decoder
    try:
        return Variant(case, decode(raw))
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"malformed {case} value: {exc}") from None
