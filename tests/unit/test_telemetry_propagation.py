"""W3C Trace Context in and out: the incoming request's traceparent/tracestate as the parent, and the current
span's injected into outbound wasi:http fields, replacing the guest's own (Spin's HeaderInjector ``insert``)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from runtime.telemetry.propagation import extract, inject

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def test_traceparent_and_tracestate_become_the_remote_parent():
    headers = [(b"host", b"x"), (b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode()),
               (b"tracestate", b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]
    parent = trace.get_current_span(extract(headers)).get_span_context()
    assert parent.is_valid and parent.is_remote
    assert format(parent.trace_id, "032x") == TRACE_ID
    assert format(parent.span_id, "016x") == SPAN_ID
    assert parent.trace_flags.sampled
    assert parent.trace_state.get("congo") == "t61rcWkgMzE"


def test_header_names_are_matched_without_case():
    parent = trace.get_current_span(extract([(b"TraceParent", f"00-{TRACE_ID}-{SPAN_ID}-00".encode())]))
    context = parent.get_span_context()
    assert context.is_valid and not context.trace_flags.sampled


def test_no_or_invalid_traceparent_gives_no_parent():
    assert not trace.get_current_span(extract([(b"host", b"x")])).get_span_context().is_valid
    for bad in (b"garbage", f"00-{'0' * 32}-{SPAN_ID}-01".encode(), f"00-{TRACE_ID}-{SPAN_ID}".encode()):
        assert not trace.get_current_span(extract([(b"traceparent", bad)])).get_span_context().is_valid


def _context(trace_state: TraceState | None = None):
    span = NonRecordingSpan(SpanContext(int(TRACE_ID, 16), int(SPAN_ID, 16), is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=trace_state))
    return trace.set_span_in_context(span)


def test_inject_replaces_a_traceparent_the_guest_set_and_keeps_other_fields():
    entries = [("content-type", b"text/plain"), ("TraceParent", b"00-forged-by-the-guest-01"), ("x-a", b"1")]
    inject(entries, _context())
    assert entries == [("content-type", b"text/plain"), ("x-a", b"1"),
                       ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode())]


def test_inject_carries_tracestate():
    entries: list[tuple[str, bytes]] = []
    inject(entries, _context(TraceState([("vendor", "v1")])))
    assert dict(entries) == {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01".encode(), "tracestate": b"vendor=v1"}


def test_inject_without_a_span_adds_nothing():
    entries = [("x-a", b"1")]
    inject(entries, trace.set_span_in_context(trace.INVALID_SPAN))
    assert entries == [("x-a", b"1")]
