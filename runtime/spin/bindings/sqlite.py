"""``fermyon:spin/sqlite@2.0.0`` and ``spin:sqlite/sqlite@3.0.0``: the ``connection`` resource over the app's
SQLite databases (runtime.spin.sqlite).

``error`` is ``no-such-database | access-denied | invalid-connection | database-full | io(string)``, returned as
Spin returns it: ``open`` of a label outside the component's ``sqlite_databases`` is ``access-denied``, of a
label nothing backs ``no-such-database``; SQLite's own failures (syntax, constraints, a locked file) are
``io`` with SQLite's message. 3.0.0 adds ``last-insert-rowid`` and ``changes`` of the connection's last statement.

A connection is closed when the guest drops it and, at the latest, when the request ends (``ctx.cleanups``), so
a transaction the guest left open is rolled back rather than carried into the worker's next request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY, Interface
from runtime.host.values import Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, RequestConnections, request_connections, services_of
from runtime.spin.sqlite import MAX_OPEN_CONNECTIONS_PER_INSTANCE, Connection, SqliteError, SqliteValue

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

_OPEN_CONNECTIONS_KEY = "spin.sqlite.open-connections"
#: The ``value`` variant's cases by the Python type a column value has (bool never comes from sqlite3).
_VALUE_CASES: dict[type, str] = {int: "integer", float: "real", str: "text", bytes: "blob"}


class GuestConnection:
    """A guest's ``connection`` handle (a class of its own, so no other resource's rep is ever taken for one)."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection


def _open_connections(ctx: RequestContext) -> RequestConnections:
    return request_connections(ctx, _OPEN_CONNECTIONS_KEY)


def error_value(exc: SqliteError) -> Variant:
    """The WIT ``error`` case for ``exc`` (only ``io`` carries a message)."""
    return Variant(exc.kind, exc.message if exc.kind == "io" else None)


def guest_value(value: SqliteValue) -> Variant:
    if value is None:
        return Variant("null", None)
    return Variant(_VALUE_CASES[type(value)], value)


def host_value(value: Variant) -> SqliteValue:
    """A parameter as sqlite3 binds it (``blob`` arrives as bytes, ``null`` without payload)."""
    return None if value.tag == "null" else value.payload


def _released(ctx: RequestContext, handle: GuestConnection) -> None:
    _open_connections(ctx).release(handle.connection)


def _define(iface: Interface, with_statement_info: bool) -> None:
    kind = iface.resource("connection", on_drop=_released)

    @iface.func("[static]connection.open")
    def open_connection(ctx: RequestContext, database: str) -> Ok[Any] | Err[Variant]:
        opened = _open_connections(ctx)
        if len(opened.connections) >= MAX_OPEN_CONNECTIONS_PER_INSTANCE:
            return Err(Variant("io", "too many connections opened"))
        try:
            connection = services_of(ctx).open_database(ctx.config.id, database)
        except SqliteError as exc:
            return Err(error_value(exc))
        except NoServices as exc:
            return Err(Variant("io", str(exc)))
        opened.connections.append(connection)
        return Ok(ctx.new(kind, GuestConnection(connection)))

    def _connection(ctx: RequestContext, rep: int) -> Connection:
        return ctx.table.get(rep, GuestConnection).connection

    @iface.func("[method]connection.execute")
    def execute(ctx: RequestContext, rep: int, statement: str,
                parameters: list[Variant]) -> Ok[dict[str, Any]] | Err[Variant]:
        try:
            result = _connection(ctx, rep).execute(statement, [host_value(p) for p in parameters])
        except SqliteError as exc:
            return Err(error_value(exc))
        return Ok({"columns": result.columns,
                   "rows": [{"values": [guest_value(v) for v in row]} for row in result.rows]})

    if with_statement_info:
        @iface.func("[method]connection.last-insert-rowid")
        def last_insert_rowid(ctx: RequestContext, rep: int) -> int:
            return _connection(ctx, rep).last_insert_rowid()

        @iface.func("[method]connection.changes")
        def changes(ctx: RequestContext, rep: int) -> int:
            return _connection(ctx, rep).changes()


_define(REGISTRY.interface("fermyon:spin/sqlite", versions=("2.0.0",)), with_statement_info=False)
_define(REGISTRY.interface("spin:sqlite/sqlite", versions=("3.0.0",)), with_statement_info=True)
