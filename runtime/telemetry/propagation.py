"""W3C Trace Context over this host's header forms, as Spin's propagation.rs does over hyper's HeaderMap.

Spin extracts ``traceparent``/``tracestate`` of each incoming request as the parent of its server span
(trigger-http server.rs ``extract_trace_context``) and injects the current span's into every outbound HTTP request
(factor-outbound-http ``inject_trace_context``, which replaces headers of the same name). The propagator is the
API's TraceContextTextMapPropagator; only these two adapters are ours. Imported only when telemetry is on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
#: The header names the propagator reads and writes (lower-case, as h11 and the wasi:http fields keep them).
FIELDS = frozenset(PROPAGATOR.fields)


class _HeaderGetter(Getter[dict[str, list[str]]]):
    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key.lower())

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def extract(headers: Iterable[tuple[bytes, bytes]]) -> Context:
    """The parent context ``traceparent``/``tracestate`` of raw request headers name (an empty one when absent or
    invalid: the server span then starts a new trace). Only those two headers are decoded."""
    carrier: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        if key in FIELDS:
            carrier.setdefault(key, []).append(value.decode("latin-1"))
    if not carrier:
        return Context()
    return PROPAGATOR.extract(carrier, context=Context(), getter=_GETTER)


def inject(entries: list[tuple[str, bytes]], context: Context | Any) -> None:
    """Write the trace context of ``context`` into wasi:http field entries (name, value), replacing any the guest
    set under the same names, as Spin's HeaderInjector ``insert`` does."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    if not carrier:
        return
    names = {name.lower() for name in carrier}
    entries[:] = [(name, value) for name, value in entries if name.lower() not in names]
    entries.extend((name, value.encode("latin-1")) for name, value in carrier.items())
