"""``fermyon:spin/mysql@2.0.0``: the ``connection`` resource over runtime.spin.mysql_outbound.

Errors are ``fermyon:spin/rdbms-types@2.0.0``'s ``error`` (``connection-failed | bad-parameter | query-failed |
value-conversion-failed | other``, each with a message), returned as Spin returns them. The Spin Python SDK 3.4.1
imports no other MySQL interface (Spin's ``spin:mysql/mysql@3.0.0`` streams rows as WASIp3 streams).

Connections are closed when the guest drops them and, at the latest, when the request ends (``ctx.cleanups``),
so no socket, and no transaction a guest left open, outlives the request that opened it. A request holds at most
``MAX_OPEN_CONNECTIONS_PER_INSTANCE``; more is Spin's ``connection-failed("too many connections")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, RequestConnections, request_connections, services_of
from runtime.spin.mysql_outbound import MAX_OPEN_CONNECTIONS_PER_INSTANCE, MysqlConnection, masked
from runtime.spin.rdbms_types import RdbmsError, err

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

_OPEN_KEY = "spin.mysql.open-connections"


class GuestMysql:
    """A guest's ``connection`` handle (its own class, so no other resource's rep is taken for one)."""

    __slots__ = ("connection",)

    def __init__(self, connection: MysqlConnection) -> None:
        self.connection = connection


def _open_connections(ctx: RequestContext) -> RequestConnections:
    return request_connections(ctx, _OPEN_KEY)


def _released(ctx: RequestContext, handle: GuestMysql) -> None:
    _open_connections(ctx).release(handle.connection)


mysql = REGISTRY.interface("fermyon:spin/mysql", versions=("2.0.0",))
CONNECTION = mysql.resource("connection", on_drop=_released)


@mysql.func("[static]connection.open")
def open_connection(ctx: RequestContext, address: str) -> Ok[Any] | Err[Variant]:
    opened = _open_connections(ctx)
    if len(opened.connections) >= MAX_OPEN_CONNECTIONS_PER_INSTANCE:
        return Err(Variant("connection-failed", "too many connections"))
    try:
        policy = services_of(ctx).outbound_policy(ctx.config.id)
        connection = MysqlConnection(address, policy, ctx.remaining())
    except RdbmsError as exc:
        if "is not permitted" in exc.message:
            ctx.notes.append(f"fermyon:spin/mysql: {exc.message}")
        return err(exc)
    except NoServices as exc:
        return Err(Variant("other", str(exc)))
    except Exception as exc:  # noqa: BLE001 - a driver surprise is the guest's error value, never a trap
        return Err(Variant("connection-failed", f"{masked(address)}: {type(exc).__name__}"))
    opened.connections.append(connection)
    return Ok(ctx.new(CONNECTION, GuestMysql(connection)))


@mysql.func("[method]connection.query")
def query(ctx: RequestContext, rep: int, statement: str, params: list[Variant]) -> Ok[Any] | Err[Variant]:
    connection = ctx.table.get(rep, GuestMysql).connection
    try:
        return Ok(connection.query(statement, params, ctx.remaining()))
    except RdbmsError as exc:
        return err(exc)


@mysql.func("[method]connection.execute")
def execute(ctx: RequestContext, rep: int, statement: str, params: list[Variant]) -> Ok[None] | Err[Variant]:
    connection = ctx.table.get(rep, GuestMysql).connection
    try:
        connection.execute(statement, params, ctx.remaining())
    except RdbmsError as exc:
        return err(exc)
    return OK_EMPTY
