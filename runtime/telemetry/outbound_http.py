"""The client span of an outbound HTTP request and the ``traceparent`` it carries, as Spin's
factor-outbound-http (wasi.rs ``send_request`` and ``RequestSender::send``) makes them.

Spin's span: ``spin_outbound_http.send_request`` exported under its ``otel.name``, the method (``GET``); kind
client; ``http.request.method``, ``url.full``, ``server.address``, ``server.port``, ``http.response.status_code``,
and ``http.request.header.content-length`` when the guest set one. It lasts until the response head is there
(the spawned future runs ``in_current_span``), and the trace context injected into the request is this span's,
so the upstream's server span is its child.

Here ``outgoing-handler.handle`` (runtime.host.wasi.outgoing) is wrapped at link time: the span starts and the
headers are injected before ``handle`` runs (self requests and ``*.spin.internal`` calls carry them too, as in
Spin, where the interceptor sees the injected request); the future it returns is given a ``TracedPending`` that
ends the span when the guest gets the response (or the error); a request whose response is never awaited ends
its span at the request's end (ctx.cleanups).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import runtime.telemetry as state
from runtime.host.values import Err, Ok
from runtime.host.wasi.http import FutureIncomingResponse, IncomingResponse, OutgoingRequest, method_name, scheme_name
from runtime.telemetry.propagation import inject
from runtime.telemetry.marks import HostFunc, mark_error


class TracedPending:
    """A future-incoming-response's pending side that ends the request's span when its outcome is known."""

    __slots__ = ("inner", "span", "ended")

    def __init__(self, inner: Any, span: trace.Span) -> None:
        self.inner = inner
        self.span = span
        self.ended = False

    def pollable(self) -> Any:
        return self.inner.pollable()

    def result(self, ctx: Any) -> Any:
        outcome = self.inner.result(ctx)
        if outcome is not None and not self.ended:
            if isinstance(outcome, Ok) and isinstance(outcome.value, IncomingResponse):
                self.span.set_attribute("http.response.status_code", outcome.value.status)
            elif isinstance(outcome, Err):
                mark_error(self.span, outcome.value)
            self.end()
        return outcome

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.span.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def request_attributes(request: OutgoingRequest) -> dict[str, Any]:
    method = method_name(request.method)
    scheme = scheme_name(request.scheme) if request.scheme is not None else "https"
    authority = request.authority or ""
    path = request.path_with_query or "/"
    attrs: dict[str, Any] = {"http.request.method": method, "url.full": f"{scheme}://{authority}{path}"}
    host, _, port = authority.rpartition(":") if authority.rsplit(":", 1)[-1].isdigit() else (authority, "", "")
    if host:
        attrs["server.address"] = host.strip("[]")
    if port:
        attrs["server.port"] = int(port)
    for name, value in request.fields.entries:
        if name.lower() == "content-length":
            attrs["http.request.header.content-length"] = value.decode("latin-1")
    return attrs


def traced_handle(impl: HostFunc) -> HostFunc:
    def handle(ctx: Any, request_rep: int, options_rep: int | None) -> Any:
        telemetry = state.active
        if telemetry is None:
            return impl(ctx, request_rep, options_rep)
        try:
            request = ctx.table.get(request_rep, OutgoingRequest)
        except Exception:  # noqa: BLE001 - a bad handle is impl's to report, as it would without telemetry
            return impl(ctx, request_rep, options_rep)
        attrs = request_attributes(request)
        span = telemetry.tracer.start_span(attrs["http.request.method"], kind=SpanKind.CLIENT, attributes=attrs)
        inject(request.fields.entries, trace.set_span_in_context(span))
        try:
            outcome = impl(ctx, request_rep, options_rep)
        except BaseException as exc:
            span.record_exception(exc)
            mark_error(span, exc)
            span.end()
            raise
        if isinstance(outcome, Ok) and hasattr(outcome.value, "rep"):
            future = ctx.table.get(outcome.value.rep, FutureIncomingResponse)
            pending = TracedPending(future.pending, span)
            future.pending = pending
            ctx.cleanups.append(pending.end)
        else:
            if isinstance(outcome, Err):
                mark_error(span, outcome.value)
            span.end()
        return outcome

    handle.__wrapped__ = impl  # type: ignore[attr-defined]
    return handle
