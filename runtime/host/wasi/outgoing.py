"""``wasi:http/outgoing-handler@0.2.x``: outbound HTTP as Spin's client does it, in the guest's own thread.

``handle`` decides where the request goes, as Spin's ``prepare_request`` and its interceptor do (spin
crates/factor-outbound-http/src/wasi.rs, crates/trigger-http/src/outbound_http.rs):

- no authority (or an empty host: the SDKs send ``:443``) or ``self.alt``: a *self request*, allowed when
  ``allowed_outbound_hosts`` allows relative requests (``http://self``), served by the app's own router in this
  worker (runtime.http.chaining);
- ``<component>.spin.internal``: local service chaining to that component, allowed by ``http://<id>.spin.internal``
  or ``http://*.spin.internal`` (= every component of the app), also in-process;
- anything else: checked against ``allowed_outbound_hosts`` (runtime.spin.outbound) and sent over HTTP/1.1
  (runtime.host.wasi.outgoing_conn), HTTPS verified with the component's ``[[client_tls]]`` settings or Spin's
  default roots (runtime.spin.client_tls).

A refusal by policy is ``HTTP-request-denied`` (Spin resolves the future to it, here ``handle`` returns it; the
SDKs raise the same error either way), and the container log says which entry would allow it; other failures
before anything was sent resolve the future to their error-code. Every failure is an ``error-code`` for the guest, never a
trap, except a wait past the request's deadline (the guest is about to be stopped anyway: 504).

Streaming, bounded: the connection is made in ``handle``; the request head goes out with the first body write
(chunked, unless the guest set Content-Length) or at ``finish`` (then an empty body is framed as such), and each
write goes to the socket at once, blocking the guest while the server is slower (backpressure), so the host holds
no more than one write of the body. Body bytes written before ``handle`` wait in runtime.host.wasi.http's bounded
buffer. The response head is awaited once the body is complete (or the server answered early); the response body
is read from the socket as the guest reads it.

Connections are kept alive per worker (runtime.host.wasi.outgoing_pool): one goes back to the pool only after a
clean exchange (whole body sent, whole response read, neither side asked to close); one left with an unread
response, a failed write, a broken TLS session or an aborted body is closed when the request ends. A reused
connection the server closed while idle fails before any response byte arrives: the request is then sent again
on a new connection, once, if its body was small enough to keep (``REPLAY_LIMIT``), as hyper retries a request
on a pooled connection that turned out closed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import Err, Ok, Variant
from runtime.host.wasi.http import (
    FUTURE_INCOMING_RESPONSE,
    Fields,
    FutureIncomingResponse,
    IncomingResponse,
    OutgoingRequest,
    RequestBodyBuffer,
    RequestOptions,
    method_name,
    scheme_name,
)
from runtime.host.wasi.io import READY, DeadlineExceeded, InputSource, Pollable, StreamFailure

if TYPE_CHECKING:
    from runtime.host.context import RequestContext
    from runtime.host.wasi.outgoing_conn import ClientConnection
    from runtime.http.chaining import ChainedExchange, LocalApp, LocalTarget
    from runtime.spin.outbound import OutboundPolicy

VERSIONS = ("0.2.*",)
#: Bytes of request body kept for a resend on a new connection (see the module docstring).
REPLAY_LIMIT = 64 * 1024
#: Seconds between looks at a pending response while the guest waits on it before its body is complete (the
#: server may answer early; a pollable that could never turn ready would be a trap).
PENDING_POLL = 0.005

outgoing_handler = REGISTRY.interface("wasi:http/outgoing-handler", VERSIONS)


def outbound_policy(ctx: RequestContext) -> OutboundPolicy:
    """The component's policy: from the app's services when there are some, else parsed from the config."""
    services = ctx.component.services
    if services is not None and hasattr(services, "outbound_policy"):
        return services.outbound_policy(ctx.config.id)  # type: ignore[no-any-return]

    def parse() -> OutboundPolicy:
        from runtime.spin.outbound import OutboundPolicy

        return OutboundPolicy.parse(ctx.config.allowed_outbound_hosts, where=f"component {ctx.config.id!r}")

    return ctx.component.memo("outbound-policy", parse)


#: Spin's connect, first-byte and between-bytes timeout when the guest sets none (wasi.rs DEFAULT_TIMEOUT).
DEFAULT_TIMEOUT = 600.0


def _seconds(nanoseconds: int | None, ctx: RequestContext) -> float:
    """A socket timeout: the guest's option (Spin's default without one), never past the request's deadline."""
    remaining = ctx.remaining()
    if remaining <= 0:
        raise DeadlineExceeded("request deadline passed during an outbound request")
    wanted = DEFAULT_TIMEOUT if nanoseconds is None else nanoseconds / 1e9
    return max(0.001, min(remaining, wanted))


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` / ``[v6][:port]`` -> (host without brackets, port); ValueError when malformed."""
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {authority!r}")
        host = authority[1:end]
        rest = authority[end + 1 :]
        if rest.startswith(":") and rest[1:]:
            port = int(rest[1:])
        elif rest not in ("", ":"):
            raise ValueError(f"junk after the IPv6 host in {authority!r}")
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
        if port_text:
            port = int(port_text)
    elif ":" in authority:
        raise ValueError(f"{authority!r} is not host[:port]")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


# ---------------------------------------------------------------------------------------------------- outcomes


class _Settled:
    """A request that never left (denied, unusable): its future is ready with the error at once."""

    def __init__(self, error: Variant) -> None:
        self.error = error

    def pollable(self) -> Pollable:
        return READY

    def result(self, ctx: RequestContext) -> Err[Variant]:
        return Err(self.error)


class _Polling(Pollable):
    """Ready when ``check`` says so; until then a clock-driven wake-up, so ``poll`` looks again soon."""

    def __init__(self, check: Any) -> None:
        self.check = check

    def ready(self) -> bool:
        return bool(self.check())

    def ready_at(self) -> float | None:
        return time.monotonic() + PENDING_POLL


class _RefusingBody:
    """The body of a request that was not sent: writes fail (wasmtime: the body's receiver is gone)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def write(self, ctx: RequestContext, data: bytes) -> None:
        raise StreamFailure(f"the outbound request was not sent: {self.reason}")

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        return None

    def abort(self, ctx: RequestContext, reason: str) -> None:
        pass


def _settle(ctx: RequestContext, request: OutgoingRequest, error: Variant, note: str | None = None) -> Any:
    if note:
        ctx.notes.append(note)
    if request.body is not None:
        request.body.target = _RefusingBody(note or error.tag)
    return Ok(ctx.new(FUTURE_INCOMING_RESPONSE, FutureIncomingResponse(_Settled(error))))


def _pending_chunks(request: OutgoingRequest) -> tuple[list[bytes], bool, Fields | None, str | None]:
    """What the guest wrote before ``handle``: (chunks, finished, trailers, abort reason)."""
    target = request.body.target if request.body is not None else None
    if isinstance(target, RequestBodyBuffer):
        return target.chunks, target.finished, target.trailers, target.aborted
    return [], request.body is None, None, None


# ---------------------------------------------------------------------------------------------------- network


class _AnswerFuture:
    """A future-incoming-response: ready once ``_answer_ready`` says so, its outcome made once by ``_answer``."""

    outcome: Ok[Any] | Err[Variant] | None

    def _answer_ready(self) -> bool:
        raise NotImplementedError

    def _answer(self, ctx: RequestContext) -> Ok[Any] | Err[Variant]:
        raise NotImplementedError

    def pollable(self) -> Pollable:
        return READY if self._answer_ready() else _Polling(self._answer_ready)

    def result(self, ctx: RequestContext) -> Ok[Any] | Err[Variant] | None:
        if self.outcome is None:
            if not self._answer_ready():
                return None
            self.outcome = self._answer(ctx)
        return self.outcome


class NetworkExchange(_AnswerFuture):
    """One request over the network: its connection, the request's framing, and the response."""

    def __init__(self, ctx: RequestContext, request: OutgoingRequest, options: RequestOptions,
                 scheme: str, host: str, port: int, conn_key: Any, tls: Any) -> None:
        self.request = request
        self.options = options
        self.scheme, self.host, self.port = scheme, host, port
        self.conn_key = conn_key
        self.tls = tls
        self.method = method_name(request.method)
        self.target = request.path_with_query or "/"
        self.authority = request.authority or host
        self.conn: ClientConnection | None = None
        self.failure: Variant | None = None
        self.head_sent = False
        self.chunked = False
        self.body_done = request.body is None
        self.written = 0
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.trailers: Fields | None = None
        self.outcome: Ok[Any] | Err[Variant] | None = None
        self.released = False

    # ----------------------------------------------------------------------------------------- connecting

    def open(self, ctx: RequestContext) -> None:
        from runtime.host.wasi.outgoing_conn import ClientConnection, ExchangeError, connect
        from runtime.host.wasi.outgoing_pool import POOL

        conn = POOL.take(self.conn_key)
        if conn is None:
            try:
                sock = connect(self.host, self.port, _seconds(self.options.connect_timeout, ctx), self.tls)
            except ExchangeError as exc:
                self._fail(ctx, exc)
                return
            conn = ClientConnection(sock, self.conn_key)
        self.conn = conn  # type: ignore[assignment]
        ctx.cleanups.append(self.close)

    def close(self) -> None:
        """Request end: a connection not handed back to the pool is closed."""
        if self.conn is not None and not self.released:
            self.conn.close()
        self.conn = None

    def _fail(self, ctx: RequestContext, exc: Any) -> None:
        self.failure = exc.code
        ctx.notes.append(f"outbound request to {self.scheme}://{self.authority}{self.target}: {exc.detail}")
        if self.conn is not None:
            self.conn.close()

    # ----------------------------------------------------------------------------------------- sending

    def _head_event(self, body_known_empty: bool) -> Any:
        import h11

        headers: list[tuple[bytes, bytes]] = [(b"host", self.authority.encode("latin-1"))]
        names = set()
        for name, value in self.request.fields.header_list():
            if name == b"host":
                continue  # Spin drops the guest's Host; the URI's authority is what the server gets
            names.add(name)
            headers.append((name, value))
        if b"content-length" not in names:
            if not body_known_empty:
                headers.append((b"transfer-encoding", b"chunked"))
                self.chunked = True
            elif self.method in ("POST", "PUT", "PATCH"):
                headers.append((b"content-length", b"0"))
        return h11.Request(method=self.method, target=self.target, headers=headers)

    def _send(self, ctx: RequestContext, event: Any) -> None:
        assert self.conn is not None
        self.conn.send(event, _seconds(None, ctx))

    def _send_head(self, ctx: RequestContext, body_known_empty: bool) -> None:
        self.head_sent = True
        self._send(ctx, self._head_event(body_known_empty))

    def write_body(self, ctx: RequestContext, data: bytes) -> None:
        import h11

        from runtime.host.wasi.outgoing_conn import ExchangeError

        if self.failure is not None or self.conn is None:
            raise StreamFailure("the outbound request failed", self.failure)
        try:
            if not self.head_sent:
                self._send_head(ctx, body_known_empty=False)
            self._send(ctx, h11.Data(data=data))
        except ExchangeError as exc:
            self._fail(ctx, exc)
            raise StreamFailure(f"sending the outbound request body: {exc.detail}", exc.code) from None
        self.written += len(data)
        if self.replay is not None and self.conn.uses:
            self.replay.append(bytes(data))
            self.replay_bytes += len(data)
            if self.replay_bytes > REPLAY_LIMIT:
                self.replay = None

    def finish_body(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        import h11

        from runtime.host.wasi.outgoing_conn import ExchangeError

        self.body_done = True
        self.trailers = trailers
        if self.failure is not None or self.conn is None:
            return self.failure
        try:
            if not self.head_sent:
                self._send_head(ctx, body_known_empty=True)
            trailer_list = trailers.header_list() if trailers is not None and self.chunked else []
            self._send(ctx, h11.EndOfMessage(headers=trailer_list))
        except ExchangeError as exc:
            self._fail(ctx, exc)
            return exc.code
        return None

    def abort_body(self, ctx: RequestContext, reason: str) -> None:
        self.body_done = True
        if self.failure is None:
            self.failure = Variant("internal-error", f"request body: {reason}")
        if self.conn is not None:
            self.conn.close()

    # ----------------------------------------------------------------------------------------- the response

    def _answer_ready(self) -> bool:
        if self.outcome is not None or self.failure is not None or self.body_done or self.conn is None:
            return True
        from runtime.host.wasi.outgoing_pool import is_stale

        return self.head_sent and is_stale(self.conn)  # the server answered (or closed) before the body ended

    def _answer(self, ctx: RequestContext) -> Ok[Any] | Err[Variant]:
        import h11

        from runtime.host.wasi.outgoing_conn import ExchangeError

        if self.failure is not None or self.conn is None:
            return Err(self.failure or Variant("internal-error", "no connection"))
        try:
            if not self.head_sent:  # no body at all (the guest never asked for one)
                self._send_head(ctx, body_known_empty=True)
                self._send(ctx, h11.EndOfMessage())
            try:
                response = self._read_head(ctx)
            except ExchangeError as exc:
                if not self._can_resend(exc):
                    raise
                response = self._resend(ctx)
        except ExchangeError as exc:
            self._fail(ctx, exc)
            return Err(exc.code)
        headers = [(name.decode("latin-1"), value) for name, value in response.headers]
        source = NetworkResponseSource(self)
        source.probe_end()
        return Ok(IncomingResponse(response.status_code, headers, source))

    def _read_head(self, ctx: RequestContext) -> Any:
        import h11

        from runtime.host.wasi.outgoing_conn import ExchangeError

        assert self.conn is not None
        while True:
            event = self.conn.next_event(_seconds(self.options.first_byte_timeout, ctx))
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event
            raise ExchangeError(Variant("HTTP-protocol-error"), f"unexpected {type(event).__name__} before the response")

    def _can_resend(self, exc: Any) -> bool:
        conn = self.conn
        return (conn is not None and conn.uses > 0 and conn.received == 0 and self.body_done
                and self.replay is not None and exc.code.tag in ("connection-terminated", "HTTP-protocol-error"))

    def _resend(self, ctx: RequestContext) -> Any:
        """The pooled connection was closed by the server while idle: the same request on a fresh one."""
        import h11

        from runtime.host.wasi.outgoing_conn import ClientConnection, connect

        assert self.conn is not None
        self.conn.close()
        sock = connect(self.host, self.port, _seconds(self.options.connect_timeout, ctx), self.tls)
        self.conn = ClientConnection(sock, self.conn_key)
        self.chunked = False
        self._send_head(ctx, body_known_empty=self.written == 0)
        for chunk in self.replay or ():
            self._send(ctx, h11.Data(data=chunk))
        trailers = self.trailers.header_list() if self.trailers is not None and self.chunked else []
        self._send(ctx, h11.EndOfMessage(headers=trailers))
        return self._read_head(ctx)

    def release(self) -> None:
        """The response is complete: a clean connection goes back to the pool."""
        from runtime.host.wasi.outgoing_pool import POOL

        conn = self.conn
        if conn is None or self.released:
            return
        if conn.reusable:
            conn.next_cycle()
            self.released = True
            POOL.give(conn.key, conn, keep_for=conn.server_idle)
        else:
            conn.close()
        self.conn = None


class NetworkBodyTarget:
    """The outgoing body of a network request, after ``handle``: straight to the connection."""

    def __init__(self, exchange: NetworkExchange) -> None:
        self.exchange = exchange

    def write(self, ctx: RequestContext, data: bytes) -> None:
        self.exchange.write_body(ctx, data)

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        return self.exchange.finish_body(ctx, trailers)

    def abort(self, ctx: RequestContext, reason: str) -> None:
        self.exchange.abort_body(ctx, reason)


class NetworkResponseSource(InputSource):
    """The response body, read from the socket as the guest reads it."""

    def __init__(self, exchange: NetworkExchange) -> None:
        self.exchange = exchange
        self.leftover = b""
        self.ended = False

    def probe_end(self) -> None:
        """Without blocking: an empty body (HEAD, 204, Content-Length: 0) ends now, releasing the connection."""
        import h11

        conn = self.exchange.conn
        if conn is None:
            return
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            return
        if isinstance(event, h11.EndOfMessage):
            self.ended = True
            self.exchange.release()
        elif isinstance(event, h11.Data):
            self.leftover = bytes(event.data)

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        import h11

        from runtime.host.wasi.outgoing_conn import ExchangeError

        if self.leftover:
            data, self.leftover = self.leftover[:max_bytes], self.leftover[max_bytes:]
            return data
        if self.ended:
            return b""
        conn = self.exchange.conn
        if conn is None:
            raise StreamFailure("the outbound connection was closed", Variant("connection-terminated"))
        try:
            event = conn.next_event(_seconds(self.exchange.options.between_bytes_timeout, ctx))
        except ExchangeError as exc:
            conn.close()
            raise StreamFailure(f"reading the response of an outbound request: {exc.detail}", exc.code) from None
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            self.leftover = data[max_bytes:]
            return data[:max_bytes]
        self.ended = True  # EndOfMessage (trailers are not passed on, as future-trailers has none here)
        self.exchange.release()
        return b""


# ---------------------------------------------------------------------------------------------------- in-process


class LocalExchange(_AnswerFuture):
    """A self or ``*.spin.internal`` request, served by a component of this app on a thread of this worker."""

    def __init__(self, exchange: ChainedExchange, request: OutgoingRequest) -> None:
        self.exchange = exchange
        self.body_done = request.body is None
        self.outcome: Ok[Any] | Err[Variant] | None = None

    def _answer_ready(self) -> bool:
        return self.body_done or self.exchange.head_ready()

    def _answer(self, ctx: RequestContext) -> Ok[Any] | Err[Variant]:
        try:
            status, headers = self.exchange.wait_head()
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed waiting for a local component") from None
        decoded = [(name.decode("latin-1"), value) for name, value in headers]
        return Ok(IncomingResponse(status, decoded, LocalResponseSource(self.exchange)))


class LocalBodyTarget:
    def __init__(self, local: LocalExchange) -> None:
        self.local = local

    def write(self, ctx: RequestContext, data: bytes) -> None:
        try:
            self.local.exchange.request.write(data)
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed sending a body to a local component") from None
        except ConnectionResetError as exc:
            raise StreamFailure(f"the local component stopped reading the body: {exc}",
                                Variant("connection-terminated")) from None

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        self.local.body_done = True
        self.local.exchange.request.end()
        return None

    def abort(self, ctx: RequestContext, reason: str) -> None:
        self.local.body_done = True
        self.local.exchange.request.fail(reason)


class LocalResponseSource(InputSource):
    def __init__(self, exchange: ChainedExchange) -> None:
        self.exchange = exchange

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        try:
            return self.exchange.response.read(max_bytes)
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed reading a local component's response") from None
        except ConnectionResetError as exc:
            raise StreamFailure(f"the local component's response ended early: {exc}",
                                Variant("HTTP-response-incomplete")) from None


def _local_request(ctx: RequestContext, request: OutgoingRequest, app: LocalApp, target: LocalTarget) -> Any:
    from runtime.http.chaining import ChainingRefused

    chunks, finished, _, aborted = _pending_chunks(request)
    if aborted is not None:
        return _settle(ctx, request, Variant("internal-error", f"request body: {aborted}"))
    try:
        chained = app.start(target, method_name(request.method), request.path_with_query or "/",
                            request.fields.header_list(), ctx.deadline)
    except ChainingRefused as refused:
        return _settle(ctx, request, Variant(refused.code, None if refused.code != "internal-error" else str(refused)),
                       note=f"local request refused: {refused}")
    ctx.cleanups.append(chained.close)
    local = LocalExchange(chained, request)
    for chunk in chunks:  # at most the pre-handle buffer's bound: queued without waiting for the callee
        chained.request.chunks.append(chunk)
        chained.request.queued += len(chunk)
    if request.body is not None:
        request.body.target = LocalBodyTarget(local)
        if finished:
            local.body_done = True
            chained.request.end()
    else:
        chained.request.end()
    return Ok(ctx.new(FUTURE_INCOMING_RESPONSE, FutureIncomingResponse(local)))


# ---------------------------------------------------------------------------------------------------- handle


def _denied(ctx: RequestContext, request: OutgoingRequest, note: str) -> Any:
    """``handle`` itself returns the error (Spin resolves the future to it; the SDKs raise the same either way, and
    this project's unit tests pin the direct form)."""
    ctx.notes.append(note)
    if request.body is not None:
        request.body.target = _RefusingBody(note)
    return Err(Variant("HTTP-request-denied"))


def _network_request(ctx: RequestContext, request: OutgoingRequest, options: RequestOptions, scheme: str,
                     host: str, port: int) -> Any:
    tls = None
    profile_key = None
    if scheme == "https":
        from runtime.spin.client_tls import profile_for

        services = ctx.component.services
        specs = getattr(getattr(services, "runtime_config", None), "client_tls", ()) or ()
        profile = profile_for(tuple(specs), ctx.config.id, host)
        try:
            tls, profile_key = profile.context(), profile.key
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; certifi's bundle unreadable
            return _settle(ctx, request, Variant("TLS-protocol-error"),
                           note=f"outbound request to https://{request.authority}: no TLS settings: {exc}")
    exchange = NetworkExchange(ctx, request, options, scheme, host, port, (scheme, host.lower(), port, profile_key),
                               tls)
    chunks, finished, trailers, aborted = _pending_chunks(request)
    if aborted is not None:
        return _settle(ctx, request, Variant("internal-error", f"request body: {aborted}"))
    exchange.open(ctx)
    if request.body is not None:
        request.body.target = NetworkBodyTarget(exchange)
        if exchange.failure is None:
            try:
                for chunk in chunks:
                    exchange.write_body(ctx, chunk)
                if finished:
                    exchange.finish_body(ctx, trailers)
            except StreamFailure:
                pass  # recorded in exchange.failure: the future resolves to it
        elif finished:
            exchange.body_done = True
    return Ok(ctx.new(FUTURE_INCOMING_RESPONSE, FutureIncomingResponse(exchange)))


@outgoing_handler.func("handle")
def _handle(ctx: RequestContext, request_rep: int, options_rep: int | None) -> Any:
    from runtime.http.chaining import allows_chaining, classify, installed
    from runtime.spin.outbound import OutboundDenied

    request = ctx.table.take(request_rep, OutgoingRequest)
    options = ctx.table.take(options_rep, RequestOptions) if options_rep is not None else RequestOptions()
    scheme = scheme_name(request.scheme) if request.scheme is not None else "https"
    if scheme not in ("http", "https"):
        return Err(Variant("HTTP-protocol-error"))
    default_port = 443 if scheme == "https" else 80
    try:
        host, port = split_authority(request.authority or "", default_port)
    except ValueError:
        return Err(Variant("HTTP-request-URI-invalid"))
    path = request.path_with_query or "/"
    policy = outbound_policy(ctx)
    local = classify(host)
    if local is not None and local.kind == "self":
        if not policy.allows_relative(("http", "https")):
            return _denied(ctx, request, "A component tried to make an HTTP request to its own app but it does not "
                                         "have permission: add \"http://self\" to its allowed_outbound_hosts")
        app = installed()
        if app is None:
            return _settle(ctx, request, Variant("HTTP-request-URI-invalid"),
                           note="a request to the app itself, but no app is serving here")
        return _local_request(ctx, request, app, local)
    if local is not None:
        app = installed()
        components = app.component_ids if app is not None else frozenset()
        port_rule = None if port == default_port else port
        if not allows_chaining(policy, scheme, local.component_id, port_rule, components):
            entry = f"{scheme}://{local.component_id}.spin.internal"
            return _denied(ctx, request, f"Destination not allowed: {scheme}://{request.authority}{path}: to allow "
                                         f"it, add \"{entry}\" to allowed_outbound_hosts")
        if app is None or local.component_id not in components:
            return _settle(ctx, request, Variant("destination-not-found"),
                           note=f"service chaining: the app has no component {local.component_id!r} here")
        return _local_request(ctx, request, app, local)
    url = f"{scheme}://{request.authority}{path}"
    try:
        policy.check(url)
    except OutboundDenied as denied:
        hint = ""
        if host.lower() == "self":  # as in Spin, "self" is a host name here, not the app
            hint = "; a request to the app itself has no host: use a path (\"/x\") or http://self.alt/x"
        return _denied(ctx, request, str(denied) + hint)
    return _network_request(ctx, request, options, scheme, host, port)
