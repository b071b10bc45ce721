"""py-spin5: the Spin Python SDK 5.0.0 built for its WASIp2 world, spin:up/http-trigger@3.4.0.

spin-sdk 5's high-level modules (``spin_sdk.http.Handler``, ``spin_sdk.key_value``, ``spin_sdk.variables``) are
async and bound to its WASIp3 world (wasi:http/handler@0.3.0, spin:key-value@3.0.0, spin:variables@3.0.0), so
an app that targets the p2 world uses the bindings the same SDK ships for that world: the
``WasiHttpIncomingHandler020`` export protocol over ``wasi_http_types_0_2_0``, and ``fermyon:spin/key-value``
and ``fermyon:spin/variables`` 2.0.0. Routes are in tests/apps/README.md. Kept plain on purpose: a failure
should point at the host, never at this file.
"""

import json
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from spin_sdk.wit import exports
from spin_sdk.wit.imports import fermyon_spin_key_value_2_0_0 as key_value
from spin_sdk.wit.imports import fermyon_spin_variables_2_0_0 as variables
from spin_sdk.wit.imports import wasi_http_types_0_2_0 as http_types
from spin_sdk.wit.imports import wasi_io_streams_0_2_0 as streams

#: wasi:io/streams' blocking-write-and-flush takes at most 4096 bytes per call.
WRITE_CHUNK = 4096


def _method(method: object) -> str:
    if isinstance(method, http_types.Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


def _read_body(request: http_types.IncomingRequest) -> bytes:
    body = bytearray()
    incoming = request.consume()
    with incoming.stream() as stream:
        while True:
            try:
                body += stream.blocking_read(65536)
            except Err as exc:
                if isinstance(exc.value, streams.StreamError_Closed):
                    break
                raise
    http_types.IncomingBody.finish(incoming)
    return bytes(body)


def _respond(response_out: http_types.ResponseOutparam, status: int, body: bytes,
             content_type: str = "text/plain") -> None:
    headers = http_types.Fields.from_list([("content-type", content_type.encode()),
                                           ("content-length", str(len(body)).encode())])
    response = http_types.OutgoingResponse(headers)
    response.set_status_code(status)
    outgoing = response.body()
    http_types.ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(body), WRITE_CHUNK):
            stream.blocking_write_and_flush(body[start:start + WRITE_CHUNK])
    http_types.OutgoingBody.finish(outgoing, None)


def _error_text(exc: BaseException) -> str:
    """Binding errors are `Err(<dataclass>)`; the dataclass repr names the WIT error case (e.g. Error_Undefined)."""
    value = getattr(exc, "value", None)
    return repr(value) if value is not None else f"{type(exc).__name__}: {exc}"


def _vars(query: dict[str, list[str]]) -> tuple[int, bytes, str]:
    result: dict[str, str] = {}
    for name in [name for name in ",".join(query.get("names", [])).split(",") if name]:
        try:
            result[name] = variables.get(name)
        except Err as exc:
            result[name] = f"ERROR: {_error_text(exc)}"
    return 200, json.dumps(result, sort_keys=True).encode(), "application/json"


def _kv(method: str, key: str, body: bytes) -> tuple[int, bytes, str]:
    with key_value.Store.open("default") as store:
        if method == "GET":
            value = store.get(key)
            if value is None:
                return 404, b"no such key", "text/plain"
            return 200, value, "application/octet-stream"
        if method in ("PUT", "POST"):
            store.set(key, body)
            return 200, b"stored", "text/plain"
        if method == "DELETE":
            store.delete(key)
            return 200, b"deleted", "text/plain"
    return 405, b"method not allowed", "text/plain"


class WasiHttpIncomingHandler020(exports.WasiHttpIncomingHandler020):
    def handle(self, request: http_types.IncomingRequest, response_out: http_types.ResponseOutparam) -> None:
        method = _method(request.method())
        url = urlsplit(request.path_with_query() or "/")
        body = _read_body(request)
        if url.path == "/hello":
            status, payload, content_type = 200, b"Hello from Python SDK 5 (p2 world)!", "text/plain"
        elif url.path == "/echo":
            status, payload, content_type = 200, body, "application/octet-stream"
        elif url.path == "/vars":
            status, payload, content_type = _vars(parse_qs(url.query))
        elif url.path.startswith("/kv/"):
            status, payload, content_type = _kv(method, url.path[len("/kv/"):], body)
        else:
            status, payload, content_type = 404, b"not found", "text/plain"
        _respond(response_out, status, payload, content_type)
