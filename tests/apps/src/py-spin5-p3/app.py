"""py-spin5-p3: the Spin Python SDK 5.0.0 built for its default world, spin:up/http-trigger@4.1.0 (WASIp3).

Written against the SDK's own async API (``spin_sdk.http.Handler``, ``spin_sdk.key_value``,
``spin_sdk.variables``), as `spin new http-py` writes it today. This shim runs WASIp2 only, so the app exists
to be refused at Create, before its compile, with a message that says how to rebuild it (see py-spin5).
"""

from spin_sdk import http, key_value, variables
from spin_sdk.http import Request, Response


class HttpHandler(http.Handler):
    async def handle_request(self, request: Request) -> Response:
        if request.uri.startswith("/kv/"):
            store = await key_value.open_default()
            value = await store.get(request.uri[len("/kv/"):])
            return Response(200 if value is not None else 404, {"content-type": "text/plain"}, value or b"")
        if request.uri == "/greeting":
            return Response(200, {"content-type": "text/plain"}, (await variables.get("greeting")).encode())
        return Response(200, {"content-type": "text/plain"}, b"Hello from Python SDK 5 (p3 world)!")
