"""``spin:postgres/postgres@4.0.0`` and ``@3.0.0``, ``fermyon:spin/postgres@2.0.0``: the ``connection`` resource
over runtime.spin.postgres.

Spin serves all three from one v4 implementation and converts at the edge (spin-world conversions.rs), and so
does this module: parameters become v4 ``parameter-value``\\ s (v2's through runtime.spin.rdbms_types, its
unsigned cases refused with value-conversion-failed "Postgres does not support unsigned integers"), results come
back as v4 values and are narrowed for older versions: a value v3 has no case for (uuid, jsonb, decimal, ranges,
arrays, interval) is ``unsupported`` and its column ``other``; v2 also loses date, time and datetime. v3/v2's
``query-failed`` carries the v4 query-error's text (a db-error's ``as-text``).

Connections are closed when the guest drops them and, at the latest, when the request ends (``ctx.cleanups``);
all versions share one bound of MAX_OPEN_CONNECTIONS_PER_INSTANCE per request, beyond which ``open`` is Spin's
connection-failed("too many connections").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY, Interface
from runtime.host.values import Err, Ok, Variant
from runtime.spin import rdbms_types
from runtime.spin.bindings.support import NoServices, RequestConnections, request_connections, services_of
from runtime.spin.postgres.client import MAX_OPEN_CONNECTIONS_PER_INSTANCE, PgConnection, RowSet
from runtime.spin.postgres.errors import DbError, PgError

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

_OPEN_KEY = "spin.postgres.open-connections"

#: db-value / db-data-type cases each older version has (v4's others narrow to unsupported / other).
V3_CASES = frozenset({"boolean", "int8", "int16", "int32", "int64", "floating32", "floating64", "str", "binary",
                      "date", "time", "datetime", "timestamp", "db-null"})
V2_CASES = frozenset({"boolean", "int8", "int16", "int32", "int64", "floating32", "floating64", "str", "binary",
                      "db-null"})
_UNSIGNED = frozenset({"uint8", "uint16", "uint32", "uint64"})
UNSUPPORTED = Variant("unsupported", None)


class GuestPostgres:
    """A guest's ``connection`` handle (its own class, so no other resource's rep is taken for one)."""

    __slots__ = ("connection",)

    def __init__(self, connection: PgConnection) -> None:
        self.connection = connection


def _open_connections(ctx: RequestContext) -> RequestConnections:
    return request_connections(ctx, _OPEN_KEY)


def _released(ctx: RequestContext, handle: GuestPostgres) -> None:
    _open_connections(ctx).release(handle.connection)


def open_connection(ctx: RequestContext, address: str) -> PgConnection:
    """Spin's ``open``: the per-request bound, the address check, then the connection; PgError otherwise."""
    opened = _open_connections(ctx)
    if len(opened.connections) >= MAX_OPEN_CONNECTIONS_PER_INSTANCE:
        raise PgError("connection-failed", "too many connections")
    try:
        policy = services_of(ctx).outbound_policy(ctx.config.id)
    except NoServices as exc:
        raise PgError("other", str(exc)) from None
    try:
        connection = PgConnection(address, policy, ctx.remaining())
    except PgError as exc:
        if "is not permitted" in exc.text:
            ctx.notes.append(f"postgres: {exc.text}")
        raise
    opened.connections.append(connection)
    return connection


# ---------------------------------------------------------------------------------------------------- v4 forms


def v4_error(exc: PgError) -> Variant:
    if exc.kind != "query-failed":
        return Variant(exc.kind, exc.text)
    payload = exc.payload
    if isinstance(payload, DbError):
        return Variant("query-failed", Variant("db-error", {
            "as-text": payload.as_text, "severity": payload.severity, "code": payload.code,
            "message": payload.message, "detail": payload.detail, "extras": [tuple(e) for e in payload.extras]}))
    return Variant("query-failed", Variant("text", payload))


def v4_row_set(result: RowSet) -> dict[str, Any]:
    return {"columns": [{"name": name, "data-type": data_type} for name, data_type in result.columns],
            "rows": result.rows}


# ---------------------------------------------------------------------------------------------------- v3 forms


def v3_error(exc: PgError) -> Variant:
    return Variant(exc.kind, exc.text)


def v3_value(value: Variant) -> Variant:
    return value if value.tag in V3_CASES else UNSUPPORTED


def v3_row_set(result: RowSet) -> dict[str, Any]:
    return {"columns": [{"name": name, "data-type": t.tag if t.tag in V3_CASES else "other"}
                        for name, t in result.columns],
            "rows": [[v3_value(value) for value in row] for row in result.rows]}


# ---------------------------------------------------------------------------------------------------- v2 forms


def v2_error(exc: PgError) -> Variant:
    return rdbms_types.RdbmsError(exc.kind, exc.text).variant()


def v2_parameters(values: list[Variant]) -> list[Variant]:
    converted = []
    for parameter in rdbms_types.parameters(values):
        if parameter.kind in _UNSIGNED:
            raise rdbms_types.RdbmsError("value-conversion-failed", "Postgres does not support unsigned integers")
        converted.append(Variant(parameter.kind, parameter.value))
    return converted


def v2_row_set(result: RowSet) -> dict[str, Any]:
    columns = [rdbms_types.column(name, t.tag if t.tag in V2_CASES else "other") for name, t in result.columns]
    rows = [[rdbms_types.db_value(v.tag, v.payload) if v.tag in V2_CASES else rdbms_types.UNSUPPORTED
             for v in row] for row in result.rows]
    return rdbms_types.row_set(columns, rows)


# ---------------------------------------------------------------------------------------------------- interfaces


def _define(iface: Interface, error: Callable[[PgError], Variant], row_set: Callable[[RowSet], dict[str, Any]],
            params: Callable[[list[Variant]], list[Variant]]) -> None:
    kind = iface.resource("connection", on_drop=_released)

    @iface.func("[static]connection.open")
    def open_(ctx: RequestContext, address: str) -> Ok[Any] | Err[Variant]:
        try:
            return Ok(ctx.new(kind, GuestPostgres(open_connection(ctx, address))))
        except PgError as exc:
            return Err(error(exc))

    def call(ctx: RequestContext, rep: int, values: list[Variant],
             op: Callable[[PgConnection, list[Variant]], Any]) -> Ok[Any] | Err[Variant]:
        try:
            converted = params(values)
        except rdbms_types.RdbmsError as exc:
            return Err(exc.variant())
        try:
            return Ok(op(ctx.table.get(rep, GuestPostgres).connection, converted))
        except PgError as exc:
            return Err(error(exc))
        except rdbms_types.RdbmsError as exc:  # a value v2 cannot carry
            return Err(exc.variant())

    @iface.func("[method]connection.query")
    def query(ctx: RequestContext, rep: int, statement: str, values: list[Variant]) -> Ok[Any] | Err[Variant]:
        return call(ctx, rep, values, lambda c, p: row_set(c.query(statement, p, ctx.remaining())))

    @iface.func("[method]connection.execute")
    def execute(ctx: RequestContext, rep: int, statement: str, values: list[Variant]) -> Ok[int] | Err[Variant]:
        return call(ctx, rep, values, lambda c, p: c.execute(statement, p, ctx.remaining()))


def _same(values: list[Variant]) -> list[Variant]:
    return values


_define(REGISTRY.interface("spin:postgres/postgres", versions=("4.0.0",)), v4_error, v4_row_set, _same)
_define(REGISTRY.interface("spin:postgres/postgres", versions=("3.0.0",)), v3_error, v3_row_set, _same)
_define(REGISTRY.interface("fermyon:spin/postgres", versions=("2.0.0",)), v2_error, v2_row_set, v2_parameters)
