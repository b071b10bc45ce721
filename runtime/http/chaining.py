"""Spin's local service chaining and self requests, dispatched in-process to the app's own components.

What Spin does (spin crates/factor-outbound-http/src/wasi.rs ``prepare_request``, crates/trigger-http
``OutboundHttpInterceptor``, crates/outbound-networking-config/src/allowed_hosts.rs):

- A *self request* has no authority (or an empty host, as the SDKs send ``:443``) or the host ``self.alt``. It is
  allowed when ``allowed_outbound_hosts`` allows relative requests for http or https (``http://self``,
  ``https://self.alt``, ``*://*:*`` ...), and goes through the app's router as if it came from outside: routes,
  Spin's well-known paths and the empty 404 alike. Spin sends it over the network to its own listener; here it is
  dispatched in the worker, to the same router and executors, without a socket.
- A request to ``<component-id>.spin.internal`` (any scheme, any port) runs that component directly (private
  routes included), with Spin's synthetic route ``/...`` (``RouteMatch::synthetic``): ``spin-path-info`` is the
  whole path, ``spin-client-addr`` is ``0.0.0.0:0``, the Host header is dropped. It must be allowed like any host,
  and ``http://*.spin.internal`` allows exactly the app's components (Spin expands the wildcard to one entry per
  component, so an unknown component is denied, never a DNS lookup).
- Anything else is not for this module.

Bounds (Spin has none; a self request calling itself would fork wasm instances until memory runs out): at most
``MAX_DEPTH`` nested in-process requests (``loop-detected`` past it) and ``MAX_IN_FLIGHT`` at once per worker
(``connection-limit-reached``). Each runs on its own thread, its body and response pass through bounded pipes
(``PIPE_HIGH`` bytes queued at most), and it inherits the caller's deadline.

Pure parts (``classify``, ``allows_chaining``) are tested alone; ``LocalApp`` needs executors.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from runtime import telemetry
from runtime.http.contract import ClientGone, Executor, GuestFailure, Headers, RequestHead, RouteInfo
from runtime.http.headers import full_url, request_path, spin_request_headers, with_spin_headers

if TYPE_CHECKING:
    from runtime.http.routing import Router
    from runtime.http.wellknown import AppInfo
    from runtime.spin.outbound import AllowedHost, OutboundPolicy

SERVICE_CHAINING_DOMAIN = "spin.internal"
SELF_ALT = "self.alt"
CHAINED_CLIENT_ADDR = "0.0.0.0:0"
MAX_DEPTH = 8
MAX_IN_FLIGHT = 32
PIPE_HIGH = 256 * 1024


# ---------------------------------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class LocalTarget:
    kind: Literal["self", "component"]
    #: The component id for "component".
    component_id: str = ""


def classify(host: str) -> LocalTarget | None:
    """Which in-process target a request's host names (``host`` without port; "" when there is none)."""
    host = host.strip().lower()
    if host in ("", SELF_ALT):
        return LocalTarget("self")
    first, dot, rest = host.partition(".")
    if dot and first and rest == SERVICE_CHAINING_DOMAIN:
        return LocalTarget("component", first)
    return None


def allows_chaining(policy: OutboundPolicy, scheme: str, component_id: str, port: int | None,
                    components: Iterable[str]) -> bool:
    """Whether ``scheme://<component_id>.spin.internal[:port]`` is allowed, with Spin's wildcard expansion."""
    from runtime.spin.outbound import Destination

    destination = Destination(scheme=scheme, host=f"{component_id}.{SERVICE_CHAINING_DOMAIN}", port=port)
    known = component_id in set(components)

    def allows(rule: AllowedHost) -> bool:
        if rule.host.kind == "subdomain" and rule.host.value == f".{SERVICE_CHAINING_DOMAIN}":
            return known and rule.allows(destination)
        return rule.allows(destination)

    return any(allows(rule) for rule in policy.hosts)


# ---------------------------------------------------------------------------------------------------- pipes


class _Pipe:
    """Bytes from one thread to another, at most ``high`` queued; each side waits with a deadline."""

    def __init__(self, deadline: float, high: int = PIPE_HIGH) -> None:
        self.deadline = deadline
        self.high = high
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.ended = False
        self.failed: str | None = None
        #: The reader went away: writes fail.
        self.reader_gone = False
        self.cond = threading.Condition()

    def _wait(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        self.cond.wait(min(remaining, 1.0))

    def write(self, data: bytes) -> None:
        with self.cond:
            while self.queued >= self.high and not self.reader_gone and self.failed is None:
                self._wait()
            if self.reader_gone:
                raise ConnectionResetError("the reader went away")
            if self.failed is not None:
                raise ConnectionResetError(self.failed)
            self.chunks.append(bytes(data))
            self.queued += len(data)
            self.cond.notify_all()

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def fail(self, reason: str) -> None:
        with self.cond:
            if not self.ended:
                self.failed = reason
            self.cond.notify_all()

    def close_reader(self) -> None:
        with self.cond:
            self.reader_gone = True
            self.chunks.clear()
            self.queued = 0
            self.cond.notify_all()

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; b"" at the end; ConnectionResetError when the writer failed."""
        with self.cond:
            while not self.chunks and not self.ended and self.failed is None:
                self._wait()
            if self.chunks:
                chunk = self.chunks.popleft()
                if len(chunk) > max_bytes:
                    self.chunks.appendleft(chunk[max_bytes:])
                    chunk = chunk[:max_bytes]
                self.queued -= len(chunk)
                self.cond.notify_all()
                return chunk
            if self.failed is not None:
                raise ConnectionResetError(self.failed)
            return b""


class _ChainedBody:
    """The callee's RequestBody: what the caller writes into its outgoing body."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def read(self, max_bytes: int) -> bytes:
        try:
            return self.pipe.read(max_bytes)
        except (ConnectionResetError, TimeoutError) as exc:
            raise ClientGone(str(exc)) from None


class _ChainedSink:
    """The callee's ResponseSink: the caller's incoming response."""

    def __init__(self, exchange: ChainedExchange) -> None:
        self.exchange = exchange
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def start(self, status: int, headers: Headers) -> None:
        self._started = True
        self.exchange._set_head(status, headers)

    def write(self, data: bytes) -> None:
        try:
            self.exchange.response.write(data)
        except (ConnectionResetError, TimeoutError) as exc:
            raise ClientGone(str(exc)) from None

    def finish(self, trailers: Headers | None = None) -> None:
        self.exchange.response.end()


# ---------------------------------------------------------------------------------------------------- exchanges


class ChainedExchange:
    """One in-process request: the caller writes the body and reads the response; the callee runs on a thread."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.request = _Pipe(deadline)
        self.response = _Pipe(deadline)
        self.status: int | None = None
        self.headers: Headers = []
        #: Why no response came (the callee failed before answering); with ``status`` set, its answer.
        self.failure: str | None = None
        self._head = threading.Event()

    def _set_head(self, status: int, headers: Headers) -> None:
        self.status, self.headers = status, list(headers)
        self._head.set()

    def head_ready(self) -> bool:
        return self._head.is_set()

    def wait_head(self) -> tuple[int, Headers]:
        """Blocks until the callee started its response (or answered for it); TimeoutError at the deadline."""
        while not self._head.wait(min(1.0, max(0.0, self.deadline - time.monotonic()))):
            if time.monotonic() >= self.deadline:
                raise TimeoutError("the request's deadline passed before the local component answered")
        assert self.status is not None
        return self.status, self.headers

    def close(self) -> None:
        """The caller is done (or gone): the callee's further writes fail, its body reads end in failure."""
        self.response.close_reader()
        self.request.fail("the calling component went away")


_local = threading.local()
_in_flight = 0
_in_flight_lock = threading.Lock()


def current_depth() -> int:
    return getattr(_local, "depth", 0)


class ChainingRefused(Exception):
    """No in-process request could start: ``code`` is the wasi:http error-code tag."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class LocalApp:
    """The app's router and executors, as one worker serves them, for requests its own components make."""

    def __init__(self, router: Router, executors: Mapping[str, Executor], *, scheme: str = "http",
                 authority: str = "localhost", request_timeout: float | None = None,
                 app_info: AppInfo | None = None) -> None:
        self.router = router
        self.app_info = app_info
        self.executors = executors
        self.scheme = scheme
        #: The listener's address: a self request's Host, as Spin's self-request origin gives it.
        self.authority = authority
        self.request_timeout = request_timeout

    @property
    def component_ids(self) -> frozenset[str]:
        """The components ``*.spin.internal`` may name (not the static routes' responders)."""
        from runtime.http.static_response import is_static_destination

        return frozenset(key for key in self.executors if not is_static_destination(key))

    def start(self, target: LocalTarget, method: str, path_with_query: str, headers: Headers,
              caller_deadline: float) -> ChainedExchange:
        """Start the request on a thread of its own; ChainingRefused when it cannot start."""
        global _in_flight
        depth = current_depth() + 1
        if depth > MAX_DEPTH:
            raise ChainingRefused("loop-detected", f"more than {MAX_DEPTH} nested requests to the app itself")
        now = time.monotonic()
        deadline = caller_deadline
        if self.request_timeout is not None:
            deadline = min(deadline, now + self.request_timeout)
        if not math.isfinite(deadline):
            deadline = now + 3600.0
        head, executor, early = self._route(target, method, path_with_query, headers, deadline)
        exchange = ChainedExchange(deadline)
        if early is not None:  # Spin's own answer (well-known path, no route): no guest runs
            status, response_headers, body = early
            exchange._set_head(status, response_headers)
            if body:
                exchange.response.write(body)
            exchange.response.end()
            exchange.request.end()
            return exchange
        assert head is not None and executor is not None
        with _in_flight_lock:
            if _in_flight >= MAX_IN_FLIGHT:
                raise ChainingRefused("connection-limit-reached",
                                      f"{MAX_IN_FLIGHT} requests to the app itself are already in flight")
            _in_flight += 1
        thread = threading.Thread(target=_run, args=(executor, head, exchange, depth, target.kind == "self"),
                                  daemon=True, name=f"chained-{head.component_id}")
        try:
            thread.start()
        except RuntimeError as exc:
            with _in_flight_lock:
                _in_flight -= 1
            raise ChainingRefused("internal-error", f"cannot start a thread: {exc}") from None
        return exchange

    def _route(self, target: LocalTarget, method: str, target_path: str, headers: Headers, deadline: float
               ) -> tuple[RequestHead | None, Executor | None, tuple[int, Headers, bytes] | None]:
        from runtime.http.routing import RouteMatch
        from runtime.http.wellknown import AppInfo, well_known_response

        content_length = next((v for n, v in headers if n == b"content-length"), None)
        declared = int(content_length) if content_length is not None and content_length.isdigit() else None
        path = request_path(target_path)
        if target.kind == "component":
            component_id = target.component_id
            match = RouteMatch(component_id=component_id, info=RouteInfo(
                raw_route="/...", component_route="", matched_route="/...", path_info=path))
            scheme = "http"  # Spin's interceptor hands chained requests to the trigger as Scheme::HTTP
            host: str | None = None
            client_addr = CHAINED_CLIENT_ADDR
            kept = [(n, v) for n, v in headers if n != b"host"]
        else:
            special = well_known_response(path, self.app_info or AppInfo())
            if special is not None:
                return None, None, (special.status, list(special.headers), special.body)
            found = self.router.match(path)
            if found is None:
                return None, None, (404, [(b"content-length", b"0")], b"")
            match = found
            component_id = match.component_id
            scheme = self.scheme  # the self-request origin's: the scheme the app is served with
            host = self.authority
            client_addr = f"{self.authority.rpartition(':')[0] or '127.0.0.1'}:0"
            kept = [(n, v) for n, v in headers if n != b"host"] + [(b"host", host.encode())]
        executor = self.executors.get(component_id)
        if executor is None:
            raise ChainingRefused("destination-not-found", f"the app has no component {component_id!r} here")
        spin_headers = spin_request_headers(scheme=scheme, host=host, target=target_path, match=match,
                                            client_addr=client_addr)
        head = RequestHead(
            method=method, target=target_path, headers=with_spin_headers(kept, spin_headers), scheme=scheme,
            authority=host or "localhost", client_addr=client_addr, component_id=component_id,
            route=match.info, full_url=full_url(scheme, host, target_path), deadline=deadline,
            content_length=declared,
        )
        return head, executor, None


def _run(executor: Executor, head: RequestHead, exchange: ChainedExchange, depth: int, self_request: bool) -> None:
    """The callee, on its own thread: as runtime.http.server's ``_run_guest`` turns outcomes into answers.

    With telemetry on, its spans are Spin's for the same request: a self request reaches Spin's listener from the
    network, so it gets a server span (and its execute span) whose parent is the caller's outbound client span,
    by the ``traceparent`` the caller's request carries; a ``*.spin.internal`` one gets only its execute span,
    under that client span (runtime.telemetry.request.RequestTrace). The callee's host calls are children of
    its execute span, current on this thread."""
    global _in_flight
    _local.depth = depth
    sink = _ChainedSink(exchange)
    request_trace = None
    try:
        if telemetry.active is not None:
            request_trace = telemetry.active.begin_request(head, sink, server_span=self_request)
        executor.handle(head, _ChainedBody(exchange.request), sink if request_trace is None else request_trace.sink)
    except GuestFailure as failure:
        if sink.started:
            exchange.response.fail(failure.log_line or failure.public_message)
        else:
            body = failure.public_message.encode()
            exchange._set_head(failure.status, [(b"content-type", b"text/plain; charset=utf-8"),
                                                (b"content-length", str(len(body)).encode())])
            try:
                exchange.response.write(body)
            except (ConnectionResetError, TimeoutError):
                pass
            exchange.response.end()
        if failure.log_line:
            _log(failure.log_line)
    except ClientGone as gone:
        exchange.response.fail(f"the calling component went away: {gone}")
    except Exception as exc:  # noqa: BLE001 - an executor bug must cost one request, not the worker
        _log(f"spin: {head.component_id}: internal error handling a local {head.method} {head.target}: "
             f"{type(exc).__name__}: {exc}")
        exchange.failure = str(exc)
        if not sink.started:
            exchange._set_head(500, [(b"content-length", b"0")])
            exchange.response.end()
        else:
            exchange.response.fail(str(exc))
    else:
        if not sink.started:
            exchange._set_head(500, [(b"content-length", b"0")])
        exchange.response.end()
    finally:
        exchange.request.close_reader()
        _local.depth = 0
        with _in_flight_lock:
            _in_flight -= 1
        if request_trace is not None:  # the answers given above for the guest bypass its sink
            request_trace.status = exchange.status
            request_trace.aborted = exchange.response.failed is not None
            request_trace.end()


def _log(line: str) -> None:
    from runtime.exits import write_stderr_line

    write_stderr_line(line)


_installed: LocalApp | None = None


def install(app: LocalApp | None) -> None:
    """Make ``app`` the one this worker's guests reach with self and ``*.spin.internal`` requests."""
    global _installed
    _installed = app


def installed() -> LocalApp | None:
    return _installed
