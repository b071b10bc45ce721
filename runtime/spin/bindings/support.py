"""What the Spin providers share: reaching the app's services from a host call, and Spin's open-store limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.spin.key_value import MAX_OPEN_STORES_PER_INSTANCE

if TYPE_CHECKING:
    from runtime.host.context import RequestContext
    from runtime.spin.services import SpinServices

_OPEN_STORES_KEY = "spin.open-stores"


class NoServices(Exception):
    """The component was loaded without Spin services (a host set up without runtime.spin, e.g. a bare test)."""

    def __init__(self) -> None:
        super().__init__("this host was started without Spin services (variables, key-value)")


def services_of(ctx: RequestContext) -> SpinServices:
    services = ctx.component.services
    if services is None:
        raise NoServices()
    return services


class OpenStores:
    """How many key-value handles (Spin stores and wasi buckets) the request holds, for ``store-table-full``.

    Spin bounds each instance's table of open stores (factor-key-value's table capacity); a guest that opens
    without dropping in a loop gets the error instead of growing the host without limit.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def reserve(self) -> bool:
        if self.count >= MAX_OPEN_STORES_PER_INSTANCE:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count = max(0, self.count - 1)


def open_stores(ctx: RequestContext) -> OpenStores:
    return ctx.state_for(_OPEN_STORES_KEY, OpenStores)


class RequestConnections:
    """The connections (SQLite, Redis) a request holds: bounded like Spin's resource tables, and all closed when
    the request ends, so none outlives it (nor a guest's open transaction)."""

    __slots__ = ("connections",)

    def __init__(self) -> None:
        self.connections: list[Any] = []

    def close_all(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()

    def release(self, connection: Any) -> None:
        """The guest dropped its handle: close the connection now."""
        if connection in self.connections:
            self.connections.remove(connection)
        connection.close()


def request_connections(ctx: RequestContext, key: str) -> RequestConnections:
    """The request's connections of one kind (``key``), registered for closing at the end of the request."""

    def new() -> RequestConnections:
        opened = RequestConnections()
        ctx.cleanups.append(opened.close_all)
        return opened

    return ctx.state_for(key, new)
