"""Per-request state reachable from host functions: one RequestContext per request, found through a thread-local.

Host callbacks get a ``StoreContext`` without ``.data()`` (only ``Store`` has it: wasmtime-py wasmtime/_store.py),
and a worker runs requests on several guest threads at once, each thread one request at a time (contract.py:
``Executor.handle`` runs on a guest thread). So the executor binds the request's context to its thread for the
duration of the wasm call (``bound``), and the registry's call wrapper reads it once per host call and passes it as
the first argument.

A RequestContext holds what every provider needs: the component (config, services, a per-component memo), the
resource table, the request head/body and response sink, and a ``state`` dict for providers' own per-request
objects. It is dropped, table and all, when the request ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from runtime.host.table import ResourceTable
from runtime.host.traps import HostTrap

if TYPE_CHECKING:
    from wasmtime import StoreContext
    from wasmtime.component import ResourceHost

    from runtime.host.registry import ResourceKind
    from runtime.http.contract import ComponentConfig, RequestBody, RequestHead, ResponseSink

T = TypeVar("T")


class ComponentHost:
    """What the host knows about one loaded component, shared by all its requests (and guest threads).

    ``memo`` is for per-component objects a provider builds once (a parsed outbound policy, a key-value store
    handle): built on first use, under a lock because two guest threads may ask at once.
    """

    def __init__(self, config: ComponentConfig) -> None:
        self.config = config
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def services(self) -> Any:
        """The app's Spin services (runtime.spin), or None when the app has none (e.g. in unit tests)."""
        return self.config.services

    def memo(self, key: str, factory: Callable[[], T]) -> T:
        try:
            return self._memo[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        with self._lock:
            if key not in self._memo:
                self._memo[key] = factory()
            return self._memo[key]  # type: ignore[no-any-return]


class RequestContext:
    """One request's host-side state. Only its guest thread touches it, so nothing here is locked."""

    def __init__(
        self,
        component: ComponentHost,
        *,
        head: RequestHead | None = None,
        body: RequestBody | None = None,
        sink: ResponseSink | None = None,
        deadline: float | None = None,
    ) -> None:
        self.component = component
        self.config = component.config
        self.table = ResourceTable()
        self.head = head
        self.body = body
        self.sink = sink
        #: time.monotonic() after which blocking host calls give up (outbound HTTP, body reads): the guest is
        #: about to be interrupted anyway.
        self.deadline = deadline if deadline is not None else time.monotonic() + 3600.0
        #: The StoreContext of the host call in progress (valid only during that call).
        self.store: StoreContext | None = None
        #: Providers' per-request objects, keyed by a name of the provider's choosing.
        self.state: dict[str, Any] = {}
        #: The first exception a host function raised (HostTrap, GuestExit, or a bug): the executor reports it
        #: instead of wasmtime's generic "python exception" trap.
        self.host_failure: BaseException | None = None
        #: Non-fatal problems for HandleOutcome.notes (e.g. an outbound request denied by policy).
        self.notes: list[str] = []
        #: Run by the executor when the request ends, whatever happened (e.g. closing outbound connections).
        self.cleanups: list[Callable[[], None]] = []

    def new(self, kind: ResourceKind, obj: Any) -> ResourceHost:
        """Put ``obj`` in the table and return the ``own<kind>`` handle to give to the guest."""
        return kind.own(self.table.push(obj))

    def state_for(self, key: str, factory: Callable[[], T]) -> T:
        try:
            return self.state[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self.state[key] = factory()
            return value

    def remaining(self) -> float:
        """Seconds until the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


_local = threading.local()


def current() -> RequestContext:
    """The context of the request this thread is serving; HostTrap outside a request (a host bug)."""
    ctx: RequestContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        raise HostTrap("host function called outside a request")
    return ctx


def current_or_none() -> RequestContext | None:
    return getattr(_local, "ctx", None)


@contextmanager
def bound(ctx: RequestContext) -> Iterator[RequestContext]:
    """Make ``ctx`` the current context of this thread while the guest runs."""
    previous = getattr(_local, "ctx", None)
    _local.ctx = ctx
    try:
        yield ctx
    finally:
        _local.ctx = previous
