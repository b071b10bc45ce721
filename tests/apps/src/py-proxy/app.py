"""py-proxy: a plain wasi:http/proxy@0.2.0 component from componentize-py 0.25.1, with no Spin SDK.

It proves the host serves a component that imports nothing Spin-specific (and `wasmtime serve` can run it, which
makes it the cross-check for the host's wasi:http). It uses the raw generated bindings, so reading and writing
bodies through wasi:io streams is spelled out here rather than hidden in an SDK.
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

#: wasi:io's blocking-write-and-flush accepts at most 4096 bytes per call.
MAX_WRITE = 4096


def _read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(64 * 1024)
        except Err as err:
            if isinstance(err.value, StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)  # the stream is a child of the body: drop it before finishing the body
    IncomingBody.finish(body)
    return bytes(data)


def _respond(out: ResponseOutparam, status: int, headers: list[tuple[str, bytes]], body: bytes) -> None:
    headers = [*headers, ("content-length", str(len(body)).encode())]
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    response_body = response.body()
    ResponseOutparam.set(out, Ok(response))
    stream = response_body.write()
    for offset in range(0, len(body), MAX_WRITE):
        stream.blocking_write_and_flush(body[offset:offset + MAX_WRITE])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(response_body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?")[0]
        text = [("content-type", b"text/plain")]
        if path == "/hello":
            _respond(response_out, 200, text, b"Hello from Python (proxy world)!")
        elif path == "/echo":
            body = _read_body(request)
            _respond(response_out, 200, [("content-type", b"application/octet-stream"),
                                         ("x-body-length", str(len(body)).encode())], body)
        else:
            _respond(response_out, 404, text, b"not found")
