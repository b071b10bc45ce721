"""py-spin's outbound HTTP probes beyond `/outbound`: many requests in one, and a streamed request body.

`/outbound-stream` uses the raw WIT bindings the SDK generates (`spin_sdk.wit.imports.types` and
`outgoing_handler`), because `spin_sdk.http.send` takes the whole body as bytes: it writes the body in pieces of
at most what `check-write` permits, and after the first MiB asks the upstream (`probe`, a plain GET through the
SDK) how much of the upload it has received so far, so a host that buffered the body before sending it shows 0.
The bytes are `offset % 251`, so the upstream's digest does not depend on how the host split them.
"""

import json

from spin_sdk import http
from spin_sdk.http import Request, Response
from spin_sdk.wit.imports import outgoing_handler
from spin_sdk.wit.imports import types as wit
from spin_sdk.wit.imports.streams import StreamError_Closed
from spin_sdk.wit.types import Err, Ok

_PATTERN = bytes(i % 251 for i in range(65536 + 251))


def _json(status: int, value: object) -> Response:
    return Response(status, {"content-type": "application/json"}, json.dumps(value, sort_keys=True).encode())


def _error_text(exc: BaseException) -> str:
    value = getattr(exc, "value", None)
    return repr(value) if value is not None else f"{type(exc).__name__}: {exc}"


def _many(url: str, count: int) -> Response:
    statuses: dict[str, int] = {}
    for _ in range(count):
        try:
            status = str(http.send(Request("GET", url, {}, None)).status)
        except Exception as exc:  # an error-code from the host
            status = _error_text(exc)
        statuses[status] = statuses.get(status, 0) + 1
    return _json(200, statuses)


def _read_all(response) -> bytes:
    stream = response.consume().stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(65536)
        except Err as exc:
            if isinstance(exc.value, StreamError_Closed):
                return bytes(data)
            raise


def _stream(url: str, probe: str, mib: int, with_length: bool) -> Response:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    total = mib << 20
    headers = [("content-type", b"application/octet-stream")]
    if with_length:
        headers.append(("content-length", str(total).encode()))
    request = wit.OutgoingRequest(wit.Fields.from_list(headers))
    request.set_method(wit.Method_Post())
    request.set_scheme(wit.Scheme_Https() if scheme == "https" else wit.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(slash + path)
    body = request.body()
    future = outgoing_handler.handle(request, None)
    stream = body.write()
    sent, probe_seen = 0, None
    try:
        while sent < total:
            permit = stream.check_write()
            if permit == 0:
                stream.subscribe().block()
                continue
            start = sent % 251
            piece = _PATTERN[start:start + min(permit, total - sent, 65536)]
            stream.write(piece)
            sent += len(piece)
            if probe and probe_seen is None and sent >= 1 << 20:
                probe_seen = int(http.send(Request("GET", probe, {}, None)).body or b"0")
        stream.blocking_flush()
    except Err as exc:
        return _json(502, {"error": _error_text(exc), "sent": sent})
    stream.__exit__(None, None, None)
    wit.OutgoingBody.finish(body, None)
    future.subscribe().block()
    outcome = future.get()
    if not isinstance(outcome, Ok) or not isinstance(outcome.value, Ok):
        return _json(502, {"error": repr(outcome), "sent": sent})
    response = outcome.value.value
    status = response.status()
    upstream = _read_all(response)
    return _json(200, {"sent": sent, "probe_seen": probe_seen, "status": status,
                       "upstream": json.loads(upstream or b"null")})


def route(path: str, query: dict) -> Response | None:
    """The response for one of these paths, None for any other path."""
    arg = query.get
    if path == "/outbound-many":
        return _many(arg("url", [""])[0], int(arg("n", ["100"])[0]))
    if path == "/outbound-stream":
        return _stream(arg("url", [""])[0], arg("probe", [""])[0], int(arg("mib", ["10"])[0]),
                       arg("length", ["0"])[0] == "1")
    return None
