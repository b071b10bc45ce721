"""How a failed host call shows on its span, shared by runtime.telemetry.spans and .outbound_http."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from wasmtime.component import Variant

HostFunc = Callable[..., Any]


def mark_error(span: trace.Span, error: Any) -> None:
    """Spin's ``err`` on the instrument: the span is an error, ``error.type`` the WIT error case (or the exception's
    class for a trap)."""
    if isinstance(error, Variant):
        kind = error.tag
        detail = error.payload if isinstance(error.payload, str) else None
    else:
        kind, detail = type(error).__name__, str(error) if error is not None else None
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, detail or kind))
