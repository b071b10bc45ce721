"""The spans of one incoming HTTP request, as Spin's trigger-http makes them (instrument.rs, server.rs, wasi.rs).

- the server span, ``spin_trigger_http.handle_http_request`` exported under its ``otel.name`` ``"{method}
  {route}"`` (the matched route as written in spin.toml, e.g. ``/kv/...``); kind server; its parent is the
  request's ``traceparent``/``tracestate`` (``extract_trace_context``); attributes ``http.request.method``,
  ``network.peer.address``, ``network.peer.port``, ``network.protocol.name`` (``http``), ``url.path``,
  ``url.query`` (``""`` when there is none, as Spin records it), ``url.scheme``, ``client.address`` (the
  ``x-forwarded-for`` header, when sent), ``http.route`` and ``http.response.status_code``;
- its child ``spin_trigger_http.execute_wasm``, exported as ``execute_wasm_component {component id}``, current in
  the guest's thread while the guest runs: the host calls' client spans (runtime.telemetry.spans) are its children.

Differences: Spin ends the server span when the handler returns the response head; here both spans end when the
guest's job returns (its body written), so they include the body. ``url.scheme`` is the server's scheme (Spin's is
the request URI's, empty for an origin-form HTTP/1.1 target). A 5xx, or a response aborted after it started, marks
the server span as an error (``error.type``: the status code, or ``aborted``); Spin records ``error.type`` only for
a handler error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from runtime.telemetry.propagation import extract


def _split_addr(addr: str) -> tuple[str, int | None]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return addr, None
    return host.strip("[]"), int(port)


def server_attributes(head: Any) -> dict[str, Any]:
    path, _, query = head.target.partition("?")
    peer, peer_port = _split_addr(head.client_addr)
    attrs: dict[str, Any] = {
        "http.request.method": head.method,
        "network.peer.address": peer,
        "network.protocol.name": "http",
        "url.path": path,
        "url.query": query,
        "url.scheme": head.scheme,
        "http.route": head.route.raw_route,
    }
    if peer_port is not None:
        attrs["network.peer.port"] = peer_port
    forwarded = next((value for name, value in head.headers if name == b"x-forwarded-for"), None)
    if forwarded is not None:
        attrs["client.address"] = forwarded.decode("latin-1")
    return attrs


class RequestTrace:
    """Started on the guest thread before the executor runs; ``end`` on the same thread after it returned.

    ``server_span`` False is a ``<component>.spin.internal`` request run in-process (runtime.http.chaining): Spin's
    OutboundHttpInterceptor hands it to ``handle_trigger_route``, below the server span that only a request from
    the network gets (``instrumented_service_fn``), so its ``execute_wasm_component`` span is a direct child of the
    caller's outbound client span, current where the interceptor runs; here that span comes as the
    ``traceparent`` the caller's request carries (runtime.telemetry.outbound_http injects it first)."""

    def __init__(self, tracer: trace.Tracer, head: Any, channel: Any, on_end: Callable[[], None], *,
                 server_span: bool = True) -> None:
        self._on_end = on_end
        parent = extract(head.headers)
        self.server: trace.Span | None = None
        execute_parent = parent
        if server_span:
            self.server = tracer.start_span(f"{head.method} {head.route.raw_route}", context=parent,
                                            kind=SpanKind.SERVER, attributes=server_attributes(head))
            execute_parent = trace.set_span_in_context(self.server, parent)
        self.execute = tracer.start_span(f"execute_wasm_component {head.component_id}", context=execute_parent)
        self._token = otel_context.attach(trace.set_span_in_context(self.execute, execute_parent))
        self.status: int | None = None
        self.aborted = False
        self.sink = TracedSink(channel, self)

    def end(self) -> None:
        try:
            otel_context.detach(self._token)
            server = self.server
            if self.status is not None and server is not None:
                server.set_attribute("http.response.status_code", self.status)
            if self.aborted or (self.status is not None and self.status >= 500):
                error = "aborted" if self.aborted else str(self.status)
                if server is not None:
                    server.set_attribute("error.type", error)
                    server.set_status(Status(StatusCode.ERROR))
                self.execute.set_status(Status(StatusCode.ERROR))
            self.execute.end()
            if server is not None:
                server.end()
        finally:
            self._on_end()


class TracedSink:
    """The request's ResponseChannel as the executor and ``_run_guest`` use it, noting the status it answers."""

    __slots__ = ("channel", "trace")

    def __init__(self, channel: Any, request_trace: RequestTrace) -> None:
        self.channel = channel
        self.trace = request_trace

    @property
    def started(self) -> bool:
        return self.channel.started  # type: ignore[no-any-return]

    @property
    def finished(self) -> bool:
        return self.channel.finished  # type: ignore[no-any-return]

    def start(self, status: int, headers: Any) -> None:
        self.channel.start(status, headers)
        self.trace.status = status

    def write(self, data: bytes) -> None:
        self.channel.write(data)

    def finish(self, trailers: Any = None) -> None:
        self.channel.finish(trailers)

    def fail(self, status: int, text: str) -> None:
        self.trace.status = status
        self.channel.fail(status, text)

    def abort(self) -> None:
        self.trace.aborted = True
        self.channel.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)
