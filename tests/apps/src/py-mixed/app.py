"""py-mixed: one Spin Python SDK 3.4.1 wasm (componentize-py 0.17.2, `-w spin-all`) used by two components of
one app, an HTTP one and a Redis-triggered one, sharing the `default` key-value store.

The Redis handler stores each message under `last` and appends it to `log` (newline-separated); the HTTP handler
serves them (`GET /last`, `GET /log`), so a test sees the Redis trigger's side effect through the HTTP trigger of
the same task. tests/apps/README.md lists the routes and the messages that make the handler fail.
"""

from spin_sdk import http, key_value
from spin_sdk.http import Request, Response
from spin_sdk.wit import exports
from spin_sdk.wit.imports.redis_types import Error
from spin_sdk.wit.types import Err


class InboundRedis(exports.InboundRedis):
    def handle_message(self, message: bytes) -> None:
        if message == b"fail":
            raise Err(Error.ERROR)
        if message == b"trap":
            raise RuntimeError("py-mixed was asked to trap")
        with key_value.open_default() as store:
            store.set("last", message)
            previous = store.get("log") or b""
            store.set("log", previous + message + b"\n")


class IncomingHandler(http.IncomingHandler):
    def handle_request(self, request: Request) -> Response:
        path = request.uri.split("?", 1)[0]
        if path == "/hello":
            return Response(200, {"content-type": "text/plain"}, b"Hello from py-mixed!")
        if path in ("/last", "/log"):
            with key_value.open_default() as store:
                value = store.get(path[1:])
            if value is None:
                return Response(404, {"content-type": "text/plain"}, b"nothing yet")
            return Response(200, {"content-type": "application/octet-stream"}, value)
        return Response(404, {"content-type": "text/plain"}, b"not found")
