"""``fermyon:spin/rdbms-types@2.0.0``: the database-neutral values of Spin's MySQL and PostgreSQL 2.0.0 APIs.

Both ``fermyon:spin/mysql@2.0.0`` and ``fermyon:spin/postgres@2.0.0`` take ``list<parameter-value>`` and return
``result<row-set, error>`` of this interface. This module turns a ``parameter-value`` into a Python value with
its WIT width (``Parameter``), builds ``column`` / ``db-value`` / ``row-set`` in the forms runtime.host.values
fixes (records as dicts, variants as ``Variant``, enums as str), checks each value against its case's range
(a value out of range is ``value-conversion-failed``, as Spin's ``from_value_opt`` / ``FromSql`` are, instead of a
lowering error that would trap the guest), and holds the ``error`` variant as an exception, ``RdbmsError``.

It also counts a query result as Spin does (spin-world ``DbValue::memory_size`` against
``MAX_HOST_BUFFERED_BYTES``, 128 MiB), so no driver buffers an unbounded result for the guest.

Which database column maps to which case is each driver's business (runtime.spin.mysql_outbound, the
PostgreSQL one); nothing here knows a database. Pure: no I/O, no driver imports.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from runtime.host.values import Err, Variant

# ---------------------------------------------------------------------------------------------------- error

#: The cases of ``variant error`` (each carries a string).
ErrorKind = Literal["connection-failed", "bad-parameter", "query-failed", "value-conversion-failed", "other"]
ERROR_KINDS: Final[tuple[str, ...]] = (
    "connection-failed", "bad-parameter", "query-failed", "value-conversion-failed", "other",
)


class RdbmsError(Exception):
    """A call of a Spin RDBMS API failed: ``kind`` is the WIT ``error`` case, ``message`` its string."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"{kind!r} is not a case of rdbms-types.error")
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def variant(self) -> Variant:
        """The ``error`` value, as a host function returns it (every case carries its message)."""
        return Variant(self.kind, self.message)


def error_value(exc: RdbmsError) -> Variant:
    return exc.variant()


def err(exc: RdbmsError) -> Err[Variant]:
    """``Err(error)`` for a host function's ``result<_, error>``."""
    return Err(exc.variant())


# ---------------------------------------------------------------------------------------------------- widths

#: Inclusive ranges of the integer cases (shared by parameter-value, db-value and db-data-type).
INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}
FLOAT_CASES: Final[frozenset[str]] = frozenset({"floating32", "floating64"})
#: The largest finite f32.
F32_MAX: Final[float] = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]

#: ``enum db-data-type``, in WIT order.
DB_DATA_TYPES: Final[tuple[str, ...]] = (
    "boolean", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "floating32", "floating64", "str", "binary", "other",
)
#: ``variant parameter-value``'s cases, in WIT order (``db-null`` has no payload).
PARAMETER_CASES: Final[tuple[str, ...]] = (
    "boolean", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "floating32", "floating64", "str", "binary", "db-null",
)
#: ``variant db-value``'s cases, in WIT order (``db-null`` and ``unsupported`` have no payload).
DB_VALUE_CASES: Final[tuple[str, ...]] = PARAMETER_CASES + ("unsupported",)

#: A parameter's or value's Python form: bool, int, float, str, bytes, or None for ``db-null``.
PythonValue = bool | int | float | str | bytes | None


def to_f32(value: float) -> float:
    """``value`` rounded to the nearest f32, as the guest will see it; ValueError when a finite value is
    outside f32's range (lowering it would trap)."""
    if math.isnan(value) or math.isinf(value):
        return value
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        raise ValueError(f"{value!r} is outside the range of a 32-bit float") from None


def _checked(case: str, value: Any) -> PythonValue:
    """``value`` if it fits ``case`` (the payload of a parameter-value / db-value case); ValueError if not."""
    if case in ("db-null", "unsupported"):
        if value is not None:
            raise ValueError(f"{case} carries no value")
        return None
    if case == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"boolean needs a bool, not {type(value).__name__}")
        return value
    bounds = INTEGER_RANGES.get(case)
    if bounds is not None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{case} needs an integer, not {type(value).__name__}")
        low, high = bounds
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for {case} ({low}..{high})")
        return value
    if case in FLOAT_CASES:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{case} needs a number, not {type(value).__name__}")
        return to_f32(float(value)) if case == "floating32" else float(value)
    if case == "str":
        if not isinstance(value, str):
            raise ValueError(f"str needs a string, not {type(value).__name__}")
        return value
    if case == "binary":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"binary needs bytes, not {type(value).__name__}")
        return bytes(value)
    raise ValueError(f"{case!r} is not a case of this variant")


# ---------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class Parameter:
    """One ``parameter-value``: its case (the WIT width, which a driver may need to bind it) and Python value."""

    kind: str
    value: PythonValue

    @property
    def is_null(self) -> bool:
        return self.kind == "db-null"


def parameter(value: Variant, index: int | None = None) -> Parameter:
    """A ``parameter-value`` as the guest passed it -> Parameter; ``bad-parameter`` if it is not one."""
    tag = getattr(value, "tag", None)
    where = f"parameter {index + 1}" if index is not None else "parameter"
    if tag not in PARAMETER_CASES:
        raise RdbmsError("bad-parameter", f"{where}: {tag!r} is not a case of parameter-value")
    try:
        return Parameter(tag, _checked(tag, value.payload))
    except ValueError as exc:
        raise RdbmsError("bad-parameter", f"{where}: {exc}") from None


def parameters(values: Iterable[Variant]) -> list[Parameter]:
    return [parameter(value, index) for index, value in enumerate(values)]


def python_value(value: Variant) -> PythonValue:
    """Just the Python value of a ``parameter-value`` (None for ``db-null``), for drivers that infer the type."""
    return parameter(value).value


# ---------------------------------------------------------------------------------------------------- results

DB_NULL: Final[Variant] = Variant("db-null", None)
UNSUPPORTED: Final[Variant] = Variant("unsupported", None)


def db_value(kind: str, value: PythonValue = None) -> Variant:
    """A ``db-value`` of case ``kind``; ``value-conversion-failed`` if ``value`` does not fit it (an int8 of 300,
    a str that is bytes), so the guest gets an error value, never a trap when the result is lowered."""
    if kind == "db-null":
        return DB_NULL
    if kind == "unsupported":
        return UNSUPPORTED
    if kind not in DB_VALUE_CASES:
        raise ValueError(f"{kind!r} is not a case of db-value")
    try:
        return Variant(kind, _checked(kind, value))
    except ValueError as exc:
        raise RdbmsError("value-conversion-failed", f"cannot convert {_short(value)} to {kind}: {exc}") from None


def column(name: str, data_type: str) -> dict[str, str]:
    """A ``column`` record."""
    if data_type not in DB_DATA_TYPES:
        raise ValueError(f"{data_type!r} is not a case of db-data-type")
    return {"name": name, "data-type": data_type}


def row_set(columns: Sequence[dict[str, str]], rows: Sequence[Sequence[Variant]]) -> dict[str, Any]:
    """A ``row-set`` record (``type row = list<db-value>``: each row is a plain list)."""
    return {"columns": list(columns), "rows": [list(row) for row in rows]}


#: Spin's cap on a host-buffered query result (spin-world ``MAX_HOST_BUFFERED_BYTES``).
MAX_RESULT_BYTES: Final[int] = 128 << 20
#: ``std::mem::size_of`` of spin-world's v2 ``DbValue`` and ``RowSet`` on 64-bit (a 24-byte Vec/String payload
#: plus the tag), which Spin counts for every value and once per result.
DB_VALUE_SIZE: Final[int] = 32
ROW_SET_SIZE: Final[int] = 48


def memory_size(value: Variant) -> int:
    """Spin's ``DbValue::memory_size``: the value's own size plus the bytes of a str / binary payload."""
    payload = value.payload
    if isinstance(payload, str):
        return DB_VALUE_SIZE + len(payload.encode("utf-8", "surrogatepass"))
    if isinstance(payload, (bytes, bytearray)):
        return DB_VALUE_SIZE + len(payload)
    return DB_VALUE_SIZE


class ResultBudget:
    """Counts a result's rows as Spin does and stops at ``limit`` bytes with Spin's ``other`` error."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = MAX_RESULT_BYTES) -> None:
        self.limit = limit
        self.used = ROW_SET_SIZE

    def add_row(self, row: Sequence[Variant]) -> None:
        self.used += sum(memory_size(value) for value in row)
        if self.used > self.limit:
            raise RdbmsError("other", f"query result exceeds limit of {self.limit} bytes")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
