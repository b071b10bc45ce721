"""py-spin: one Spin Python SDK 3.4.1 component that exercises what a Spin host must provide.

Built with componentize-py 0.17.2 (`-w spin-http`), so it exports wasi:http/incoming-handler@0.2.0 and imports
the Spin 2 APIs (variables, key-value, SQLite, Redis, MySQL, PostgreSQL, outbound HTTP). Each path probes one host behaviour; tests/apps/README.md
lists them. The guest is kept deliberately plain: a test failure should point at the host, never at this file.
"""

import json
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

from spin_sdk import http, key_value, redis, variables
from spin_sdk.http import Request, Response
from spin_sdk.wit.imports import fermyon_spin_sqlite, spin_sqlite_sqlite
from spin_sdk.wit.types import Err
from spin_sdk.wit.imports.types import IncomingRequest, ResponseOutparam

import mqtt_routes
import mysql_routes
import outbound_routes
import pg_routes

#: The repeating pattern /big returns (tests compare against it).
BIG_PATTERN = b"0123456789abcdef"


def _text(status: int, body: str, content_type: str = "text/plain") -> Response:
    return Response(status, {"content-type": content_type}, body.encode())


def _json(value: object) -> Response:
    return _text(200, json.dumps(value, sort_keys=True), "application/json")


def _error_text(exc: BaseException) -> str:
    """SDK errors are `Err(<dataclass>)`; the dataclass repr names the WIT error case (e.g. Error_Undefined)."""
    value = getattr(exc, "value", None)
    return repr(value) if value is not None else f"{type(exc).__name__}: {exc}"


def _echo(request: Request) -> Response:
    body = request.body or b""
    headers = {
        "content-type": request.headers.get("content-type", "application/octet-stream"),
        "x-method": request.method,
        "x-body-length": str(len(body)),
    }
    headers.update({name: value for name, value in request.headers.items() if name.lower().startswith("x-echo-")})
    return Response(200, headers, body)


def _vars(query: dict[str, list[str]]) -> Response:
    names = [name for name in ",".join(query.get("names", [])).split(",") if name]
    result: dict[str, str] = {}
    for name in names:
        try:
            result[name] = variables.get(name)
        except Exception as exc:  # the SDK raises Err(Error_Undefined | Error_InvalidName | ...)
            result[name] = f"ERROR: {_error_text(exc)}"
    return _json(result)


def _kv(method: str, key: str, body: bytes) -> Response:
    store = key_value.open_default()
    if method == "GET":
        value = store.get(key)
        return _text(404, "no such key") if value is None else Response(
            200, {"content-type": "application/octet-stream"}, value)
    if method in ("PUT", "POST"):
        store.set(key, body)
        return _text(200, "stored")
    if method == "DELETE":
        store.delete(key)
        return _text(200, "deleted")
    return _text(405, "method not allowed")


def _counter() -> Response:
    store = key_value.open_default()
    current = store.get("counter")
    value = (int(current) if current else 0) + 1
    store.set("counter", str(value).encode())
    return _text(200, str(value))


def _outbound(url: str) -> Response:
    try:
        upstream = http.send(Request("GET", url, {}, None))
    except Exception as exc:  # denied by allowed_outbound_hosts, connection refused, ...
        return _text(502, _error_text(exc))
    return Response(200, {"content-type": "text/plain", "x-upstream-status": str(upstream.status)},
                    f"{upstream.status}\n".encode() + (upstream.body or b""))


def _file(path: str) -> Response:
    try:
        with open(path, "rb") as file:
            return Response(200, {"content-type": "application/octet-stream"}, file.read())
    except OSError as exc:
        return _text(404, f"{type(exc).__name__}: {exc}")


def _big(size: int) -> Response:
    repeats = size // len(BIG_PATTERN) + 1
    return Response(200, {"content-type": "application/octet-stream"}, (BIG_PATTERN * repeats)[:size])


def _sql_param(api, value: object):
    if value is None:
        return api.Value_Null()
    if isinstance(value, dict):  # {"blob": "<hex>"}: JSON has no bytes
        return api.Value_Blob(bytes.fromhex(value["blob"]))
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"unsupported parameter {value!r}")
    return {int: api.Value_Integer, float: api.Value_Real, str: api.Value_Text}[type(value)](value)


def _sql_value(value: object) -> object:
    if type(value).__name__ == "Value_Null":
        return None
    if type(value).__name__ == "Value_Blob":
        return {"blob": value.value.hex()}
    return value.value


def _sqlite(database: str, version: str, body: bytes) -> Response:
    """Body: a JSON list of [statement, [params]] run in order on one connection; the results, or the SDK's error.

    The SDK's own `spin_sdk.sqlite` module imports bindings named `sqlite`, which componentize-py 0.17.2 generates
    as `fermyon_spin_sqlite`, so the app calls the generated bindings: spin:sqlite@3.0.0 by default (its results
    also carry last-insert-rowid and changes), fermyon:spin/sqlite@2.0.0 with ?v=2.
    """
    api = fermyon_spin_sqlite if version == "2" else spin_sqlite_sqlite
    try:
        with api.Connection.open(database) as connection:
            results = []
            for statement, params in json.loads(body):
                result = connection.execute(statement, [_sql_param(api, p) for p in params])
                entry = {"columns": list(result.columns),
                         "rows": [[_sql_value(v) for v in row.values] for row in result.rows]}
                if api is spin_sqlite_sqlite:
                    entry.update(last_insert_rowid=connection.last_insert_rowid(), changes=connection.changes())
                results.append(entry)
    except Err as exc:
        return _text(500, f"ERROR: {exc.value!r}")
    return _json(results)


def _redis(address: str, body: bytes) -> Response:
    """Body: a JSON list of [method, args...] run in order on one connection (spin_sdk.redis); bytes travel as
    latin-1 text. The results, or the SDK's error."""
    try:
        with redis.open(address) as connection:
            results = []
            for method, *args in json.loads(body):
                if method in ("set", "publish"):
                    args[1] = args[1].encode("latin-1")
                result = getattr(connection, "del_" if method == "del" else method)(*args)  # `del` is a keyword
                results.append(result.decode("latin-1") if isinstance(result, bytes) else result)
    except Err as exc:
        return _text(500, f"ERROR: {exc.value!r}")
    return _json(results)


def _data_bench(address: str) -> Response:
    """One Redis GET of key `bench` and one SQLite query of the default database's `bench` table per request:
    what scripts/bench_data.py loads, so the host's cost per data call is measured against a plain client."""
    try:
        with redis.open(address) as connection:
            cached = connection.get("bench")
        with spin_sqlite_sqlite.Connection.open("default") as database:
            rows = database.execute("SELECT v FROM bench WHERE k = ?", [spin_sqlite_sqlite.Value_Integer(1)]).rows
    except Err as exc:
        return _text(500, f"ERROR: {exc.value!r}")
    return _text(200, f"{(cached or b'').decode('latin-1')} {rows[0].values[0].value if rows else ''}")


def _alloc() -> Response:
    hoard = []
    while True:  # until the host's memory limit stops us
        hoard.append(bytearray(1 << 20))


def route(request: Request) -> Response:
    url = urlsplit(request.uri)
    path, query = url.path, parse_qs(url.query)
    arg = query.get

    if path == "/hello":
        return _text(200, "Hello from Python!")
    if path == "/echo":
        return _echo(request)
    if path == "/spin-headers":
        return _json({k: v for k, v in request.headers.items() if k.lower().startswith("spin-")})
    if path.startswith("/status/"):
        try:
            status = int(path.removeprefix("/status/"))
        except ValueError:
            return _text(400, "bad status")
        return _text(status, f"status {status}")
    if path == "/vars":
        return _vars(query)
    if path.startswith("/kv/"):
        return _kv(request.method, path.removeprefix("/kv/"), request.body or b"")
    if path == "/counter":
        return _counter()
    if path == "/redis":
        return _redis(arg("address", [""])[0], request.body or b"[]")
    if path == "/data-bench":
        return _data_bench(arg("address", [""])[0])
    if path == "/mqtt":
        return mqtt_routes.route(query, request.body or b"")
    if path == "/mysql":
        return mysql_routes.route(arg("address", [""])[0], request.body or b"[]")
    if path == "/pg":
        return pg_routes.route(arg("v", ["4"])[0], arg("address", [""])[0], request.body or b"[]")
    if path == "/sqlite":
        return _sqlite(arg("db", ["default"])[0], arg("v", ["3"])[0], request.body or b"[]")
    if path == "/outbound":
        return _outbound(arg("url", [""])[0])
    if path.startswith("/outbound-"):
        return outbound_routes.route(path, query) or _text(404, "not found")
    if path == "/env":
        value = os.environ.get(arg("name", [""])[0])
        return _text(404, "unset") if value is None else _text(200, value)
    if path == "/file":
        return _file(arg("path", [""])[0])
    if path == "/big":
        return _big(int(arg("bytes", ["0"])[0]))
    if path == "/log":
        print("py-spin stdout marker", flush=True)
        print("py-spin stderr marker", file=sys.stderr, flush=True)
        return _text(200, "logged")
    if path == "/sleep":  # a slow request that finishes: graceful-stop tests keep one in flight
        milliseconds = int(arg("ms", ["1000"])[0])
        time.sleep(milliseconds / 1000)
        return _text(200, f"slept {milliseconds} ms")
    if path == "/loop":
        while True:
            pass
    if path == "/alloc":
        return _alloc()
    if path == "/sdk-error":
        raise RuntimeError("py-spin raised inside handle_request")  # the SDK turns this into a 500
    return _text(404, "not found")


class IncomingHandler(http.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        # Raised here, outside the SDK's handle_request wrapper, the exception escapes the export: componentize-py
        # prints the traceback and the call traps, with no response set. That is what /raise is for.
        if (request.path_with_query() or "").split("?")[0] == "/raise":
            raise RuntimeError("py-spin raised an uncaught exception")
        super().handle(request, response_out)

    def handle_request(self, request: Request) -> Response:
        return route(request)
