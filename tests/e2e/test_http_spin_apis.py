"""Spin's host APIs from a Spin Python SDK 3.4.1 app through containerd: variables, key-value, SQLite, Redis,
outbound HTTP (a real redis-server from Debian on loopback).

py-spin's spin.toml declares `greeting` (default "hello") and `api_token` (required, secret) and maps them into
the component as `greeting`, `token` and a literal; the default key-value store and SQLite database; and
`allowed_outbound_hosts = ["http://127.0.0.1:*", "redis://127.0.0.1:*"]`.
"""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.redis_support import running_redis
from tests.upstream_support import answering_upstream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A plain HTTP server for the app's outbound requests, on every address; yields its port as text."""
    with answering_upstream(host="0.0.0.0") as server:
        yield str(server.port)


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "spin-apis", {"SPIN_VARIABLE_API_TOKEN": "s3cret",
                                                             "GREETING": "hi from env"}) as task:
        yield task


def test_variables_resolve_from_env_defaults_and_literals(app):
    values = app.get("/vars?names=greeting,token,literal,undeclared").json()
    assert values["greeting"] == "hi from env"  # plain <NAME> env overrides the default
    assert values["token"] == "s3cret"  # SPIN_VARIABLE_<NAME>
    assert values["literal"] == "fixed-value"
    assert values["undeclared"].startswith("ERROR")


def test_key_value_works_across_requests_and_survives_a_task_restart(app):
    assert app.get("/kv/colour", "-X", "PUT", data=b"green").status == 200
    assert app.get("/kv/colour").body == b"green"
    first = int(app.get("/counter").text)
    second = int(app.get("/counter").text)
    assert second == first + 1
    app.stop_task()
    app.start_again()
    assert app.get("/kv/colour").body == b"green"
    assert int(app.get("/counter").text) == second + 1
    assert app.get("/kv/colour", "-X", "DELETE").status == 200
    assert app.get("/kv/colour").status == 404


def _sql(app: HttpTask, statements: list, query: str = "") -> tuple[int, object]:
    response = app.get(f"/sqlite{query}", "-X", "POST", data=json.dumps(statements).encode())
    return response.status, (response.json() if response.status == 200 else response.text)


def test_sqlite_default_database_serves_queries_and_survives_a_task_restart(app):
    status, results = _sql(app, [
        ["CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT, score REAL, raw BLOB)", []],
        ["INSERT INTO notes (body, score, raw) VALUES (?, ?, ?)", ["first", 0.5, {"blob": "cafe"}]],
    ])
    assert status == 200 and results[1]["changes"] == 1
    row_id = results[1]["last_insert_rowid"]
    app.stop_task()
    app.start_again()
    status, results = _sql(app, [["SELECT body, score, raw FROM notes WHERE id = ?", [row_id]]], "?v=2")
    assert (status, results) == (200, [{"columns": ["body", "score", "raw"],
                                        "rows": [["first", 0.5, {"blob": "cafe"}]]}])


def test_sqlite_errors_reach_the_guest_and_the_app_keeps_serving(app):
    assert _sql(app, [], "?db=analytics") == (500, "ERROR: Error_AccessDenied()")  # not in sqlite_databases
    status, text = _sql(app, [["INSERT INTO no_such_table VALUES (1)", []]])
    assert status == 500 and text.startswith("ERROR: Error_Io(value='no such table: no_such_table")
    assert app.get("/hello").text == "Hello from Python!"


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


def _redis(app: HttpTask, address: str, calls: list) -> tuple[int, object]:
    response = app.get(f"/redis?address={address}", "-X", "POST", data=json.dumps(calls).encode())
    return response.status, (response.json() if response.status == 200 else response.text)


def test_redis_outbound_against_a_real_server(app, redis_port):
    address = f"redis://127.0.0.1:{redis_port}"
    status, results = _redis(app, address, [["set", "colour", "blue"], ["get", "colour"], ["incr", "n"],
                                            ["incr", "n"], ["sadd", "s", ["a", "b"]], ["smembers", "s"],
                                            ["srem", "s", ["a"]], ["del", ["colour", "n"]], ["get", "colour"],
                                            ["publish", "news", "hi"]])
    assert status == 200, (results, app.log_path.read_text()[-3000:])
    assert results[:5] == [None, "blue", 1, 2, 2] and sorted(results[5]) == ["a", "b"]
    assert results[6:] == [1, 2, None, None]


def test_redis_address_not_allowed_or_server_down_is_an_error_to_the_guest(app, redis_port, tmp_path):
    assert _redis(app, f"redis://localhost:{redis_port}", []) == (500, "ERROR: Error_InvalidAddress()")
    with running_redis(tmp_path / "stopped") as port:
        pass  # stopped: nothing listens there now
    status, text = _redis(app, f"redis://127.0.0.1:{port}", [["get", "x"]])
    assert status == 500 and text.startswith("ERROR: Error_Other(value=") and "Connection refused" in text
    assert app.get("/hello").text == "Hello from Python!"


def test_outbound_http_to_an_allowed_host(app, upstream):
    response = app.get(f"/outbound?url=http://127.0.0.1:{upstream}/ping")
    assert response.status == 200, response.text
    assert "203" in response.text and "upstream saw /ping" in response.text


def test_outbound_http_to_a_host_not_allowed_is_refused(app, upstream):
    response = app.get(f"/outbound?url=http://127.0.0.2:{upstream}/ping")  # loopback, but not in the allow list
    assert response.status == 502, response.text
    assert "not allowed" in response.text.lower() or "denied" in response.text.lower(), response.text

