"""Spin's ``static_response`` routes: an ``[[trigger.http]]`` that answers with a fixed response, no component.

As Spin's HTTP trigger (crates/http config.rs ``StaticResponse``, trigger-http ``respond_static_response``): a
trigger names either ``component`` or ``static_response``, never both nor neither; ``status_code`` defaults to
200, ``headers`` are sent as written, ``body`` (a string) is the whole body, none means empty. Spin reads the
table without ``deny_unknown_fields``, so an unknown key is ignored there; here it is ignored too, with a warning
in the log, so an app that runs under Spin runs here.

The response is served by a ``StaticResponder``: an executor (runtime.http.contract's one-method contract) under
a destination key that can never be a component id, so the router, the server and in-process chaining treat a
static route like any other and need no case of their own. Values are checked at load (a header that cannot be
sent fails Create with its name), because the manifest is image content and a bad one must not become a
per-request error. Framing headers (Content-Length, Transfer-Encoding) are the server's: the body's real length
is sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import ManifestError
from runtime.http.contract import Headers, RequestBody, RequestHead, ResponseSink

log = logging.getLogger(__name__)

#: A router destination that is a static response, not a component: ``:`` never appears in a Spin component id.
STATIC_DESTINATION_PREFIX = "static-response:"
_KEYS = frozenset({"status_code", "headers", "body"})
#: RFC 9110 field names (tokens) and values (visible characters, spaces and tabs, no CR/LF/NUL).
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_FRAMING = frozenset({"content-length", "transfer-encoding"})
#: The most body a static response may carry (it is held in every worker's memory).
MAX_STATIC_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class StaticResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def static_destination(trigger_id: str) -> str:
    return STATIC_DESTINATION_PREFIX + trigger_id


def is_static_destination(destination: str) -> bool:
    return destination.startswith(STATIC_DESTINATION_PREFIX)


def parse_static_response(raw: Any, where: str) -> StaticResponse:
    """The trigger's ``static_response`` table, validated; ManifestError naming ``where`` and the key."""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: `static_response` must be a table (status_code, headers, body); got {raw!r}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        log.warning("%s: static_response: ignoring unknown key(s) %s (it takes status_code, headers, body)", where,
                    ", ".join(map(repr, unknown)))
    status = raw.get("status_code", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ManifestError(f"{where}: static_response.status_code must be an HTTP status (100-999); got {status!r}")
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ManifestError(f"{where}: static_response.headers must be a table of name = \"value\"; got {headers!r}")
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        if not isinstance(value, str):
            raise ManifestError(f"{where}: static_response.headers.{name}: the value must be a string; got {value!r}")
        if not _FIELD_NAME.fullmatch(name):
            raise ManifestError(f"{where}: static_response.headers: {name!r} is not a valid HTTP header name")
        encoded = value.encode("utf-8")
        if not _FIELD_VALUE.fullmatch(encoded.decode("latin-1")):
            raise ManifestError(f"{where}: static_response.headers.{name}: the value has a control character "
                                "(CR, LF, NUL, ...)")
        if name.lower() not in _FRAMING:
            fields.append((name.encode("ascii"), encoded))
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        raise ManifestError(f"{where}: static_response.body must be a string; got {type(body).__name__}")
    data = (body or "").encode("utf-8")
    if len(data) > MAX_STATIC_BODY_BYTES:
        raise ManifestError(f"{where}: static_response.body is {len(data)} bytes; at most {MAX_STATIC_BODY_BYTES}")
    return StaticResponse(status, tuple(fields), data)


class StaticResponder:
    """Serves one static route: the executor contract without a guest."""

    def __init__(self, destination: str, response: StaticResponse) -> None:
        self.component_id = destination
        self._response = response

    def handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        response = self._response
        headers: Headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        sink.start(response.status, headers)
        if response.body:
            sink.write(response.body)
        sink.finish()
