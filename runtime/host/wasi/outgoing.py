"""``wasi:http/outgoing-handler@0.2.x``: outbound HTTP with the stdlib's http.client, in the guest's own thread.

Every request is checked against the component's ``allowed_outbound_hosts`` (runtime.spin.outbound, Spin's
rules) before any connection: a denied one gets ``error-code.HTTP-request-denied`` and a note saying which entry
would allow it. The exchange runs when the guest first asks for the response (``future-incoming-response.get``
or a wait on its pollable) and the request body is complete: guests send the body after ``handle`` (the Spin
SDKs do), so the body is collected here and sent in one go with its Content-Length. Every wait is bounded by
the request's deadline and the guest's request-options; connections are closed when the request ends.

Not supported yet: requests without an authority (Spin routes them to the app itself) and service chaining
(``*.spin.internal``): both get ``HTTP-request-denied`` with a note.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import Err, Ok, Variant
from runtime.host.wasi.http import (
    FUTURE_INCOMING_RESPONSE,
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
    from runtime.spin.outbound import OutboundPolicy

VERSIONS = ("0.2.*",)
SERVICE_CHAINING_SUFFIX = ".spin.internal"

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


class _BodyPending(Pollable):
    def __init__(self, body: RequestBodyBuffer) -> None:
        self.body = body

    def ready(self) -> bool:
        return self.body.complete


class OutboundExchange:
    """One outbound request: performed at most once, when the guest wants the response."""

    def __init__(self, request: OutgoingRequest, options: RequestOptions | None, url: str) -> None:
        self.request = request
        self.options = options or RequestOptions()
        self.url = url
        self.body = request.body.target if request.body is not None else None
        self.outcome: Ok[Any] | Err[Variant] | None = None

    def pollable(self) -> Pollable:
        if isinstance(self.body, RequestBodyBuffer) and not self.body.complete:
            return _BodyPending(self.body)
        return READY

    def result(self, ctx: RequestContext) -> Ok[Any] | Err[Variant] | None:
        if self.outcome is None:
            if isinstance(self.body, RequestBodyBuffer) and not self.body.complete:
                return None
            self.outcome = self._perform(ctx)
        return self.outcome

    def _perform(self, ctx: RequestContext) -> Ok[Any] | Err[Variant]:
        request = self.request
        body = b""
        if isinstance(self.body, RequestBodyBuffer):
            if self.body.aborted is not None:
                return Err(Variant("internal-error", f"request body: {self.body.aborted}"))
            body = b"".join(self.body.chunks)
        scheme = scheme_name(request.scheme) if request.scheme is not None else "https"
        host, port = _split_authority(request.authority or "", 443 if scheme == "https" else 80)
        connect_timeout = _seconds(self.options.connect_timeout, ctx)
        try:
            if scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=connect_timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
            ctx.cleanups.append(conn.close)
            headers = request.fields.header_list()
            names = {name for name, _ in headers}
            conn.putrequest(
                method_name(request.method), request.path_with_query or "/",
                skip_host=b"host" in names, skip_accept_encoding=True,
            )
            for name, value in headers:
                conn.putheader(name, value)
            if b"content-length" not in names and (body or request.method.tag in ("post", "put", "patch")):
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body or None)
            if conn.sock is not None:
                conn.sock.settimeout(_seconds(self.options.first_byte_timeout, ctx))
            response = conn.getresponse()
        except DeadlineExceeded:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error-code for the guest
            return Err(_error_code(exc, connected=False))
        headers_out = [(name.lower(), value.encode("latin-1")) for name, value in response.getheaders()]
        source = ResponseBodySource(response, conn, self.options)
        return Ok(IncomingResponse(response.status, headers_out, source))


class ResponseBodySource(InputSource):
    def __init__(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection, options: RequestOptions):
        self.response = response
        self.conn = conn
        self.options = options

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        if self.conn.sock is not None:
            self.conn.sock.settimeout(_seconds(self.options.between_bytes_timeout, ctx))
        try:
            data = self.response.read1(max_bytes)
        except DeadlineExceeded:
            raise
        except BaseException as exc:  # noqa: BLE001
            raise StreamFailure(f"reading the response of an outbound request: {exc}", _error_code(exc, True)) from None
        if not data:
            self.conn.close()
        return data


def _seconds(nanoseconds: int | None, ctx: RequestContext) -> float:
    """A socket timeout: the guest's option, never past the request's deadline."""
    remaining = ctx.remaining()
    if remaining <= 0:
        raise DeadlineExceeded("request deadline passed during an outbound request")
    if nanoseconds is None:
        return remaining
    return max(0.001, min(remaining, nanoseconds / 1e9))


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[1:end]
        if authority[end + 1 : end + 2] == ":":
            port = int(authority[end + 2 :])
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
        port = int(port_text)
    return host, port


def _error_code(exc: BaseException, connected: bool) -> Variant:
    if isinstance(exc, socket.gaierror):
        return Variant("DNS-error", {"rcode": exc.strerror or str(exc), "info-code": None})
    if isinstance(exc, ConnectionRefusedError):
        return Variant("connection-refused")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Variant("connection-read-timeout" if connected else "connection-timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Variant("TLS-certificate-error")
    if isinstance(exc, ssl.SSLError):
        return Variant("TLS-protocol-error")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return Variant("connection-terminated")
    if isinstance(exc, http.client.IncompleteRead):
        return Variant("HTTP-response-incomplete")
    if isinstance(exc, http.client.HTTPException):
        return Variant("HTTP-protocol-error")
    if isinstance(exc, OSError) and exc.errno is not None:
        return Variant("destination-unavailable")
    return Variant("internal-error", f"{type(exc).__name__}: {exc}")


DENIED = Err(Variant("HTTP-request-denied"))


@outgoing_handler.func("handle")
def _handle(ctx: RequestContext, request_rep: int, options_rep: int | None) -> Any:
    from runtime.spin.outbound import OutboundDenied

    request = ctx.table.take(request_rep, OutgoingRequest)
    options = ctx.table.take(options_rep, RequestOptions) if options_rep is not None else None
    if not request.authority:
        ctx.notes.append("outbound request without an authority (to the app itself): not supported, denied")
        return DENIED
    scheme = scheme_name(request.scheme) if request.scheme is not None else "https"
    if scheme not in ("http", "https"):
        return Err(Variant("HTTP-protocol-error"))
    url = f"{scheme}://{request.authority}{request.path_with_query or '/'}"
    try:
        host, _ = _split_authority(request.authority, 0)
    except ValueError:
        return Err(Variant("HTTP-request-URI-invalid"))
    if host.endswith(SERVICE_CHAINING_SUFFIX):
        ctx.notes.append(f"outbound request to {url}: service chaining is not supported, denied")
        return DENIED
    try:
        outbound_policy(ctx).check(url)
    except OutboundDenied as denied:
        ctx.notes.append(str(denied))
        return DENIED
    return Ok(ctx.new(FUTURE_INCOMING_RESPONSE, FutureIncomingResponse(OutboundExchange(request, options, url))))
