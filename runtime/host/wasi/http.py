"""``wasi:http/types@0.2.x``: fields, the incoming request and its body, the response and its streaming body.

The response goes to the ResponseSink of contract.py as the guest produces it, as wasmtime-wasi-http (Spin) does:
``response-outparam.set`` sends the status line and headers at once (``sink.start``); body writes go to
``sink.write`` as they come (a guest may also write the body before setting the outparam: those bytes wait
here until it does). A Content-Length the guest set is honoured: writing past it fails the write, finishing
short of it fails ``finish``, and either way the connection is aborted rather than sending a wrong body.
A body the guest drops without ``finish`` is aborted too (wasmtime: ``HostOutgoingBody`` dropped = abort).

Header rules follow wasmtime-wasi-http, which Spin uses: names must be HTTP tokens (stored lower-case), values
may not contain control characters other than tab (``invalid-syntax``); hop-by-hop headers the host owns are
``forbidden``; headers handed out by ``headers()`` of a request/response are read-only (``immutable``).

Outgoing requests and responses of ``wasi:http/outgoing-handler`` are declared here (they are types of this
interface); sending them is runtime.host.wasi.outgoing's job.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.host.wasi.io import (
    INPUT_STREAM,
    OUTPUT_STREAM,
    POLLABLE,
    READY,
    InputSource,
    InputStream,
    IoError,
    OutputStream,
    OutputTarget,
    Pollable,
    StreamFailure,
)
from runtime.http.contract import ClientGone

if TYPE_CHECKING:
    from runtime.host.context import RequestContext
    from runtime.http.contract import RequestBody, RequestHead, ResponseSink

VERSIONS = ("0.2.*",)

types = REGISTRY.interface("wasi:http/types", VERSIONS)
FIELDS = types.resource("fields")
INCOMING_REQUEST = types.resource("incoming-request")
INCOMING_BODY = types.resource("incoming-body")
FUTURE_TRAILERS = types.resource("future-trailers")
OUTGOING_REQUEST = types.resource("outgoing-request")
REQUEST_OPTIONS = types.resource("request-options")
INCOMING_RESPONSE = types.resource("incoming-response")
FUTURE_INCOMING_RESPONSE = types.resource("future-incoming-response")


def _abort_dropped_body(ctx: RequestContext, body: OutgoingBody) -> None:
    if not body.finished:
        body.target.abort(ctx, "the guest dropped the body without finishing it")


OUTGOING_BODY = types.resource("outgoing-body", on_drop=_abort_dropped_body)
OUTGOING_RESPONSE = types.resource("outgoing-response")
RESPONSE_OUTPARAM = types.resource("response-outparam")

#: wasmtime-wasi-http's DEFAULT_FORBIDDEN_HEADERS: the host owns the connection and the framing.
FORBIDDEN_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "transfer-encoding", "upgrade", "http2-settings"}
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

INVALID_SYNTAX = Err(Variant("invalid-syntax"))
FORBIDDEN = Err(Variant("forbidden"))
IMMUTABLE = Err(Variant("immutable"))
ERR_EMPTY: Err[Any] = Err(None)


# ------------------------------------------------------------------------------------------------ fields


class Fields:
    """Header or trailer fields. A read-only view shares its list with the owner (a request or response)."""

    __slots__ = ("entries", "mutable")

    def __init__(self, entries: list[tuple[str, bytes]] | None = None, mutable: bool = True) -> None:
        self.entries = entries if entries is not None else []
        self.mutable = mutable

    def header_list(self) -> list[tuple[bytes, bytes]]:
        return [(name.encode("ascii"), value) for name, value in self.entries]


def check_field(name: str, value: bytes | None) -> Err[Variant] | None:
    """The header-error for a guest-supplied field, or None when it is acceptable."""
    if not _TOKEN.match(name):
        return INVALID_SYNTAX
    if value is not None and _BAD_VALUE.search(value):
        return INVALID_SYNTAX
    if name.lower() in FORBIDDEN_HEADERS:
        return FORBIDDEN
    return None


@types.func("[constructor]fields")
def _fields_new(ctx: RequestContext) -> Any:
    return ctx.new(FIELDS, Fields())


@types.func("[static]fields.from-list")
def _fields_from_list(ctx: RequestContext, entries: list[tuple[str, bytes]]) -> Any:
    checked: list[tuple[str, bytes]] = []
    for name, value in entries:
        problem = check_field(name, value)
        if problem is not None:
            return problem
        checked.append((name.lower(), value))
    return Ok(ctx.new(FIELDS, Fields(checked)))


@types.func("[method]fields.get")
def _fields_get(ctx: RequestContext, fields: int, name: str) -> list[bytes]:
    key = name.lower()
    return [value for field_name, value in ctx.table.get(fields, Fields).entries if field_name == key]


@types.func("[method]fields.has")
def _fields_has(ctx: RequestContext, fields: int, name: str) -> bool:
    key = name.lower()
    return any(field_name == key for field_name, _ in ctx.table.get(fields, Fields).entries)


@types.func("[method]fields.set")
def _fields_set(ctx: RequestContext, fields_rep: int, name: str, values: list[bytes]) -> Any:
    fields = ctx.table.get(fields_rep, Fields)
    if not fields.mutable:
        return IMMUTABLE
    for value in values or [None]:
        problem = check_field(name, value)
        if problem is not None:
            return problem
    key = name.lower()
    fields.entries[:] = [entry for entry in fields.entries if entry[0] != key] + [(key, value) for value in values]
    return OK_EMPTY


@types.func("[method]fields.delete")
def _fields_delete(ctx: RequestContext, fields_rep: int, name: str) -> Any:
    fields = ctx.table.get(fields_rep, Fields)
    if not fields.mutable:
        return IMMUTABLE
    problem = check_field(name, None)
    if problem is not None:
        return problem
    key = name.lower()
    fields.entries[:] = [entry for entry in fields.entries if entry[0] != key]
    return OK_EMPTY


@types.func("[method]fields.append")
def _fields_append(ctx: RequestContext, fields_rep: int, name: str, value: bytes) -> Any:
    fields = ctx.table.get(fields_rep, Fields)
    if not fields.mutable:
        return IMMUTABLE
    problem = check_field(name, value)
    if problem is not None:
        return problem
    fields.entries.append((name.lower(), value))
    return OK_EMPTY


@types.func("[method]fields.entries")
def _fields_entries(ctx: RequestContext, fields: int) -> list[tuple[str, bytes]]:
    return list(ctx.table.get(fields, Fields).entries)


@types.func("[method]fields.clone")
def _fields_clone(ctx: RequestContext, fields: int) -> Any:
    return ctx.new(FIELDS, Fields(list(ctx.table.get(fields, Fields).entries)))


# ------------------------------------------------------------------------------------------------ methods


_METHODS = {"GET": "get", "HEAD": "head", "POST": "post", "PUT": "put", "DELETE": "delete", "CONNECT": "connect",
            "OPTIONS": "options", "TRACE": "trace", "PATCH": "patch"}
_METHOD_NAMES = {tag: name for name, tag in _METHODS.items()}
_METHOD_VARIANTS = {name: Variant(tag) for name, tag in _METHODS.items()}


def method_variant(method: str) -> Variant:
    return _METHOD_VARIANTS.get(method) or Variant("other", method)


def method_name(method: Variant) -> str:
    return _METHOD_NAMES.get(method.tag) or str(method.payload)


def scheme_variant(scheme: str) -> Variant:
    lowered = scheme.lower()
    if lowered == "http":
        return Variant("HTTP")
    if lowered == "https":
        return Variant("HTTPS")
    return Variant("other", scheme)


def scheme_name(scheme: Variant) -> str:
    return {"HTTP": "http", "HTTPS": "https"}.get(scheme.tag) or str(scheme.payload)


# ------------------------------------------------------------------------------------------------ incoming


class RequestBodySource(InputSource):
    """The client's request body, as contract.RequestBody streams it from the socket."""

    def __init__(self, body: RequestBody) -> None:
        self.body = body

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        try:
            return self.body.read(max_bytes)
        except ClientGone as exc:
            raise StreamFailure(f"reading the request body: {exc or 'the client went away'}") from None


class IncomingBody:
    __slots__ = ("source", "stream_taken")

    def __init__(self, source: InputSource) -> None:
        self.source = source
        self.stream_taken = False


class IncomingRequest:
    __slots__ = ("head", "body", "consumed", "headers")

    def __init__(self, head: RequestHead, body: RequestBody | None) -> None:
        self.head = head
        self.body = body
        self.consumed = False
        self.headers = [(name.decode("latin-1"), value) for name, value in head.headers]


class FutureTrailers:
    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = False


def new_incoming_request(ctx: RequestContext, head: RequestHead, body: RequestBody | None) -> Any:
    """The ``own<incoming-request>`` handle the executor passes to ``handle``."""
    return ctx.new(INCOMING_REQUEST, IncomingRequest(head, body))


@types.func("[method]incoming-request.method")
def _request_method(ctx: RequestContext, request: int) -> Variant:
    return method_variant(ctx.table.get(request, IncomingRequest).head.method)


@types.func("[method]incoming-request.path-with-query")
def _request_path(ctx: RequestContext, request: int) -> str:
    return ctx.table.get(request, IncomingRequest).head.target


@types.func("[method]incoming-request.scheme")
def _request_scheme(ctx: RequestContext, request: int) -> Variant:
    return scheme_variant(ctx.table.get(request, IncomingRequest).head.scheme)


@types.func("[method]incoming-request.authority")
def _request_authority(ctx: RequestContext, request: int) -> str:
    return ctx.table.get(request, IncomingRequest).head.authority


@types.func("[method]incoming-request.headers")
def _request_headers(ctx: RequestContext, request: int) -> Any:
    return ctx.new(FIELDS, Fields(ctx.table.get(request, IncomingRequest).headers, mutable=False))


@types.func("[method]incoming-request.consume")
def _request_consume(ctx: RequestContext, request_rep: int) -> Any:
    request = ctx.table.get(request_rep, IncomingRequest)
    if request.consumed:
        return ERR_EMPTY
    request.consumed = True
    source = RequestBodySource(request.body) if request.body is not None else InputSource()
    return Ok(ctx.new(INCOMING_BODY, IncomingBody(source)))


@types.func("[method]incoming-body.stream")
def _body_stream(ctx: RequestContext, body_rep: int) -> Any:
    body = ctx.table.get(body_rep, IncomingBody)
    if body.stream_taken:
        return ERR_EMPTY
    body.stream_taken = True
    return Ok(ctx.new(INPUT_STREAM, InputStream(body.source)))


@types.func("[static]incoming-body.finish")
def _body_finish(ctx: RequestContext, body_rep: int) -> Any:
    ctx.table.take(body_rep, IncomingBody)
    return ctx.new(FUTURE_TRAILERS, FutureTrailers())


@types.func("[method]future-trailers.subscribe")
def _trailers_subscribe(ctx: RequestContext, trailers: int) -> Any:
    ctx.table.get(trailers, FutureTrailers)
    return ctx.new(POLLABLE, READY)


@types.func("[method]future-trailers.get")
def _trailers_get(ctx: RequestContext, trailers_rep: int) -> Any:
    trailers = ctx.table.get(trailers_rep, FutureTrailers)
    if trailers.taken:
        return ERR_EMPTY  # some(err): already retrieved
    trailers.taken = True
    return Ok(Ok(None))  # some(ok(ok(none))): the contract's RequestBody carries no trailers


# ------------------------------------------------------------------------------------------------ outgoing bodies


class BodyTarget(Protocol):
    """Where an outgoing body's bytes go: the response sink, or an outbound request's connection."""

    def write(self, ctx: RequestContext, data: bytes) -> None: ...

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        """Complete the body; the error-code when it cannot be completed."""
        ...

    def abort(self, ctx: RequestContext, reason: str) -> None: ...


class OutgoingBody:
    __slots__ = ("target", "stream_taken", "finished")

    def __init__(self, target: BodyTarget) -> None:
        self.target = target
        self.stream_taken = False
        self.finished = False


class BodyWriter(OutputTarget):
    """The output-stream of an outgoing body."""

    def __init__(self, body: OutgoingBody) -> None:
        self.body = body

    def write(self, ctx: RequestContext, data: bytes) -> None:
        if self.body.finished:
            raise StreamFailure("the body was already finished")
        self.body.target.write(ctx, data)


@types.func("[method]outgoing-body.write")
def _outgoing_body_write(ctx: RequestContext, body_rep: int) -> Any:
    body = ctx.table.get(body_rep, OutgoingBody)
    if body.stream_taken:
        return ERR_EMPTY
    body.stream_taken = True
    return Ok(ctx.new(OUTPUT_STREAM, OutputStream(BodyWriter(body))))


@types.func("[static]outgoing-body.finish")
def _outgoing_body_finish(ctx: RequestContext, body_rep: int, trailers_rep: int | None) -> Any:
    body = ctx.table.take(body_rep, OutgoingBody)
    trailers = ctx.table.take(trailers_rep, Fields) if trailers_rep is not None else None
    body.finished = True
    error = body.target.finish(ctx, trailers)
    return OK_EMPTY if error is None else Err(error)


# ------------------------------------------------------------------------------------------------ the response


class OutgoingResponse:
    __slots__ = ("status", "fields", "body", "exchange")

    def __init__(self, fields: Fields) -> None:
        self.status = 200
        self.fields = fields
        self.body: OutgoingBody | None = None
        self.exchange: IncomingExchange | None = None


class IncomingExchange:
    """The response side of the request being served: what the guest set, and how far it reached the sink."""

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.response: OutgoingResponse | None = None
        #: The error-code the guest answered with instead of a response (``set(err(...))``).
        self.error: Variant | None = None
        self.started = False
        self.finished = False
        #: Why the body cannot be completed (the connection must be aborted), once it is known.
        self.broken: str | None = None
        self.client_gone = False
        self.declared_length: int | None = None
        self.written = 0

    def set_response(self, ctx: RequestContext, response: OutgoingResponse) -> None:
        self.response = response
        response.exchange = self
        headers = response.fields.header_list()
        for name, value in headers:
            if name == b"content-length":
                try:
                    self.declared_length = int(value)
                except ValueError:
                    self.declared_length = None
        try:
            self.sink.start(response.status, headers)
        except ClientGone:
            self.client_gone = True
        self.started = True
        target = response.body.target if response.body is not None else None
        if isinstance(target, ResponseBodyTarget):
            target.attached(ctx, self)

    def write(self, data: bytes) -> None:
        if self.broken is not None:
            raise StreamFailure(self.broken)
        if self.client_gone:
            raise StreamFailure("the client went away")
        if self.declared_length is not None and self.written + len(data) > self.declared_length:
            self.broken = (
                f"the guest wrote more than the {self.declared_length} bytes its Content-Length announced"
            )
            raise StreamFailure(self.broken, Variant("HTTP-response-body-size", self.written + len(data)))
        try:
            self.sink.write(data)
        except ClientGone:
            self.client_gone = True
            raise StreamFailure("the client went away") from None
        self.written += len(data)

    def finish(self, trailers: Fields | None) -> Variant | None:
        if self.broken is not None:
            return Variant("internal-error", self.broken)
        if self.declared_length is not None and self.written != self.declared_length:
            self.broken = (
                f"the guest finished the body after {self.written} of the {self.declared_length} bytes its "
                "Content-Length announced"
            )
            return Variant("HTTP-response-body-size", self.written)
        if not self.client_gone:
            try:
                self.sink.finish(trailers.header_list() if trailers is not None else None)
            except ClientGone:
                self.client_gone = True
        self.finished = True
        return None


class ResponseBodyTarget:
    """A response body: buffered until the response is set (then streamed), finished with it."""

    def __init__(self) -> None:
        self.exchange: IncomingExchange | None = None
        self.pending: list[bytes] = []
        self.finish_pending: tuple[Fields | None] | None = None
        self.aborted: str | None = None

    def attached(self, ctx: RequestContext, exchange: IncomingExchange) -> None:
        self.exchange = exchange
        if self.aborted is not None:
            exchange.broken = self.aborted
            return
        pending, self.pending = self.pending, []
        try:
            for chunk in pending:
                exchange.write(chunk)
        except StreamFailure:
            return
        if self.finish_pending is not None:
            exchange.finish(self.finish_pending[0])

    def write(self, ctx: RequestContext, data: bytes) -> None:
        if self.exchange is None:
            self.pending.append(bytes(data))
        else:
            self.exchange.write(data)

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        if self.exchange is None:
            self.finish_pending = (trailers,)
            return None
        return self.exchange.finish(trailers)

    def abort(self, ctx: RequestContext, reason: str) -> None:
        self.aborted = reason
        if self.exchange is not None and not self.exchange.finished and self.exchange.broken is None:
            self.exchange.broken = reason


EXCHANGE_KEY = "wasi:http/incoming-exchange"


def new_response_outparam(ctx: RequestContext, sink: ResponseSink) -> Any:
    """The ``own<response-outparam>`` handle the executor passes to ``handle``; the exchange is in ctx.state."""
    exchange = ctx.state[EXCHANGE_KEY] = IncomingExchange(sink)
    return ctx.new(RESPONSE_OUTPARAM, exchange)


def exchange_of(ctx: RequestContext) -> IncomingExchange | None:
    return ctx.state.get(EXCHANGE_KEY)


@types.func("[constructor]outgoing-response")
def _response_new(ctx: RequestContext, headers_rep: int) -> Any:
    fields = ctx.table.take(headers_rep, Fields)
    fields.mutable = False
    return ctx.new(OUTGOING_RESPONSE, OutgoingResponse(fields))


@types.func("[method]outgoing-response.status-code")
def _response_status(ctx: RequestContext, response: int) -> int:
    return ctx.table.get(response, OutgoingResponse).status


@types.func("[method]outgoing-response.set-status-code")
def _response_set_status(ctx: RequestContext, response_rep: int, status: int) -> Any:
    if not 100 <= status <= 999:  # http::StatusCode::from_u16
        return ERR_EMPTY
    ctx.table.get(response_rep, OutgoingResponse).status = status
    return OK_EMPTY


@types.func("[method]outgoing-response.headers")
def _response_headers(ctx: RequestContext, response: int) -> Any:
    return ctx.new(FIELDS, Fields(ctx.table.get(response, OutgoingResponse).fields.entries, mutable=False))


@types.func("[method]outgoing-response.body")
def _response_body(ctx: RequestContext, response_rep: int) -> Any:
    response = ctx.table.get(response_rep, OutgoingResponse)
    if response.body is not None:
        return ERR_EMPTY
    target = ResponseBodyTarget()
    response.body = OutgoingBody(target)
    if response.exchange is not None:  # body() after response-outparam.set: stream straight to the sink
        target.attached(ctx, response.exchange)
    return Ok(ctx.new(OUTGOING_BODY, response.body))


@types.func("[static]response-outparam.set")
def _outparam_set(ctx: RequestContext, outparam_rep: int, response: Ok[int] | Err[Variant]) -> None:
    exchange = ctx.table.take(outparam_rep, IncomingExchange)
    if isinstance(response, Err):
        exchange.error = response.value
        return
    exchange.set_response(ctx, ctx.table.take(response.value, OutgoingResponse))


# ------------------------------------------------------------------------------------------------ outbound types


class OutgoingRequest:
    __slots__ = ("method", "path_with_query", "scheme", "authority", "fields", "body")

    def __init__(self, fields: Fields) -> None:
        self.method = Variant("get")
        self.path_with_query: str | None = None
        self.scheme: Variant | None = None
        self.authority: str | None = None
        self.fields = fields
        self.body: OutgoingBody | None = None


class RequestOptions:
    __slots__ = ("connect_timeout", "first_byte_timeout", "between_bytes_timeout")

    def __init__(self) -> None:
        #: Nanoseconds, or None for the host's default.
        self.connect_timeout: int | None = None
        self.first_byte_timeout: int | None = None
        self.between_bytes_timeout: int | None = None


class PendingResponse(Protocol):
    """What a future-incoming-response waits on (runtime.host.wasi.outgoing implements it)."""

    def pollable(self) -> Pollable: ...

    def result(self, ctx: RequestContext) -> Ok[Any] | Err[Variant] | None:
        """None while pending; then Ok(IncomingResponse) or Err(error-code), computed once."""
        ...


class FutureIncomingResponse:
    __slots__ = ("pending", "taken")

    def __init__(self, pending: PendingResponse) -> None:
        self.pending = pending
        self.taken = False


class IncomingResponse:
    __slots__ = ("status", "headers", "source", "consumed")

    def __init__(self, status: int, headers: list[tuple[str, bytes]], source: InputSource) -> None:
        self.status = status
        self.headers = headers
        self.source = source
        self.consumed = False


#: Bytes of an outgoing request body a guest may write before ``outgoing-handler.handle`` (they wait here; after
#: ``handle`` the body streams to the connection and nothing accumulates).
MAX_PENDING_REQUEST_BODY = 1 << 20


class RequestBodyBuffer:
    """The body of an outgoing request until ``outgoing-handler.handle`` takes it over (runtime.host.wasi.outgoing,
    which imports this module, never the reverse, replaces the body's target then): bounded."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.finished = False
        self.aborted: str | None = None
        self.trailers: Fields | None = None

    def write(self, ctx: RequestContext, data: bytes) -> None:
        if self.buffered + len(data) > MAX_PENDING_REQUEST_BODY:
            raise StreamFailure(f"more than {MAX_PENDING_REQUEST_BODY} bytes of request body written before the "
                                "request was sent (outgoing-handler.handle)")
        self.chunks.append(bytes(data))
        self.buffered += len(data)

    def finish(self, ctx: RequestContext, trailers: Fields | None) -> Variant | None:
        self.finished = True
        self.trailers = trailers
        return None

    def abort(self, ctx: RequestContext, reason: str) -> None:
        self.aborted = reason

    @property
    def complete(self) -> bool:
        return self.finished or self.aborted is not None


@types.func("[constructor]outgoing-request")
def _request_new(ctx: RequestContext, headers_rep: int) -> Any:
    fields = ctx.table.take(headers_rep, Fields)
    fields.mutable = False
    return ctx.new(OUTGOING_REQUEST, OutgoingRequest(fields))


@types.func("[method]outgoing-request.body")
def _outgoing_request_body(ctx: RequestContext, request_rep: int) -> Any:
    request = ctx.table.get(request_rep, OutgoingRequest)
    if request.body is not None:
        return ERR_EMPTY
    request.body = OutgoingBody(RequestBodyBuffer())
    return Ok(ctx.new(OUTGOING_BODY, request.body))


def _get_attr(attr: str) -> Any:
    return lambda ctx, rep: getattr(ctx.table.get(rep, OutgoingRequest), attr)


types.define("[method]outgoing-request.method", _get_attr("method"))
types.define("[method]outgoing-request.path-with-query", _get_attr("path_with_query"))
types.define("[method]outgoing-request.scheme", _get_attr("scheme"))
types.define("[method]outgoing-request.authority", _get_attr("authority"))


@types.func("[method]outgoing-request.set-method")
def _request_set_method(ctx: RequestContext, request_rep: int, method: Variant) -> Any:
    if method.tag == "other" and not _TOKEN.match(str(method.payload)):
        return ERR_EMPTY
    ctx.table.get(request_rep, OutgoingRequest).method = method
    return OK_EMPTY


@types.func("[method]outgoing-request.set-path-with-query")
def _request_set_path(ctx: RequestContext, request_rep: int, path: str | None) -> Any:
    if path is not None and (re.search(r"[\x00-\x20\x7f#]", path)):
        return ERR_EMPTY
    ctx.table.get(request_rep, OutgoingRequest).path_with_query = path
    return OK_EMPTY


@types.func("[method]outgoing-request.set-scheme")
def _request_set_scheme(ctx: RequestContext, request_rep: int, scheme: Variant | None) -> Any:
    if scheme is not None and scheme.tag == "other" and not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*$", str(scheme.payload)):
        return ERR_EMPTY
    ctx.table.get(request_rep, OutgoingRequest).scheme = scheme
    return OK_EMPTY


@types.func("[method]outgoing-request.set-authority")
def _request_set_authority(ctx: RequestContext, request_rep: int, authority: str | None) -> Any:
    if authority is not None and re.search(r"[\x00-\x20\x7f/?#@]", authority):
        return ERR_EMPTY
    ctx.table.get(request_rep, OutgoingRequest).authority = authority
    return OK_EMPTY


@types.func("[method]outgoing-request.headers")
def _outgoing_request_headers(ctx: RequestContext, request: int) -> Any:
    return ctx.new(FIELDS, Fields(ctx.table.get(request, OutgoingRequest).fields.entries, mutable=False))


types.define("[constructor]request-options", lambda ctx: ctx.new(REQUEST_OPTIONS, RequestOptions()))
for _field in ("connect-timeout", "first-byte-timeout", "between-bytes-timeout"):
    _attr = _field.replace("-", "_")
    types.define(
        f"[method]request-options.{_field}",
        lambda ctx, rep, _attr=_attr: getattr(ctx.table.get(rep, RequestOptions), _attr),
    )

    def _setter(ctx: RequestContext, rep: int, duration: int | None, _attr: str = _attr) -> Any:
        setattr(ctx.table.get(rep, RequestOptions), _attr, duration)
        return OK_EMPTY

    types.define(f"[method]request-options.set-{_field}", _setter)


@types.func("[method]future-incoming-response.subscribe")
def _future_subscribe(ctx: RequestContext, future: int) -> Any:
    return ctx.new(POLLABLE, ctx.table.get(future, FutureIncomingResponse).pending.pollable())


@types.func("[method]future-incoming-response.get")
def _future_get(ctx: RequestContext, future_rep: int) -> Any:
    future = ctx.table.get(future_rep, FutureIncomingResponse)
    if future.taken:
        return ERR_EMPTY  # some(err): already retrieved
    outcome = future.pending.result(ctx)
    if outcome is None:
        return None
    future.taken = True
    if isinstance(outcome, Ok):
        return Ok(Ok(ctx.new(INCOMING_RESPONSE, outcome.value)))
    return Ok(outcome)


@types.func("[method]incoming-response.status")
def _incoming_response_status(ctx: RequestContext, response: int) -> int:
    return ctx.table.get(response, IncomingResponse).status


@types.func("[method]incoming-response.headers")
def _incoming_response_headers(ctx: RequestContext, response: int) -> Any:
    return ctx.new(FIELDS, Fields(ctx.table.get(response, IncomingResponse).headers, mutable=False))


@types.func("[method]incoming-response.consume")
def _incoming_response_consume(ctx: RequestContext, response_rep: int) -> Any:
    response = ctx.table.get(response_rep, IncomingResponse)
    if response.consumed:
        return ERR_EMPTY
    response.consumed = True
    return Ok(ctx.new(INCOMING_BODY, IncomingBody(response.source)))


@types.func("http-error-code")
def _http_error_code(ctx: RequestContext, error: int) -> Variant | None:
    return ctx.table.get(error, IoError).http_error
