"""Spin's outbound PostgreSQL from a Spin Python SDK 3.4.1 app through containerd, against a real PostgreSQL 15
from Debian on loopback: spin:postgres/postgres@4.0.0 and @3.0.0 through the generated bindings, and
fermyon:spin/postgres@2.0.0 through the SDK's own `spin_sdk.postgres`.

py-spin's `POST /pg?address=<url>&v=4|3|2` runs a JSON list of statements on one connection (tests/apps/README.md);
its spin.toml allows `postgres://127.0.0.1:*`.
"""

from __future__ import annotations

import json
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.postgres_support import PostgresServer, running_postgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "spin-postgres", {"SPIN_VARIABLE_API_TOKEN": "s3cret"}) as task:
        yield task


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with running_postgres() as running:
        yield running


def _pg(app: HttpTask, address: str, version: str, statements: list) -> tuple[int, object]:
    response = app.get(f"/pg?v={version}&address={quote(address, safe='')}", "-X", "POST",
                       data=json.dumps(statements).encode())
    return response.status, (response.json() if response.status == 200 else response.text)


def _p(case: str, value: object = None) -> dict:
    return {"type": case} if case == "db-null" else {"type": case, "value": value}


def test_v4_every_value_type_through_the_guest(app, server):
    params = [_p("int32", 1), _p("str", "héllo"), _p("jsonb", b'{"b":1,"a":[true]}'.hex()), _p("decimal", "12.5"),
              _p("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), _p("date", [2024, 2, 29]),
              _p("time", [12, 30, 0, 500000000]), _p("datetime", [2001, 2, 3, 4, 5, 6, 0]),
              _p("timestamp", 86400), _p("range-int32", [[1, "inclusive"], [10, "exclusive"]]),
              _p("range-decimal", [None, ["9.5", "inclusive"]]), _p("array-int64", [1, None]),
              _p("array-str", ["x", None]), _p("array-decimal", ["0.5"]),
              _p("interval", {"micros": 1, "days": 2, "months": 3}), _p("binary", "00ff"), _p("boolean", True),
              _p("floating64", 2.5), _p("int64", 1 << 40), _p("db-null")]
    columns = ("id int4, s text, j jsonb, n numeric, u uuid, d date, t time, dt timestamp, ts timestamptz, "
               "r int4range, rn numrange, a8 int8[], at text[], an numeric[], iv interval, by bytea, b bool, "
               "f8 float8, i8 int8, nothing text")
    placeholders = ", ".join(f"${i + 1}" for i in range(len(params)))
    status, results = _pg(app, server.url(), "4", [
        ["execute", "DROP TABLE IF EXISTS v4", []],
        ["execute", f"CREATE TABLE v4 ({columns})", []],
        ["execute", f"INSERT INTO v4 VALUES ({placeholders})", params],
        ["query", "SELECT *, current_user AS who FROM v4", []],
    ])
    assert status == 200, results
    assert results[2] == {"count": 1}
    query = results[3]
    assert [c[1] for c in query["columns"]] == [
        "int32", "str", "jsonb", "decimal", "uuid", "date", "time", "datetime", "datetime", "range-int32",
        "range-decimal", "array-int64", "array-str", "array-decimal", "interval", "binary", "boolean", "floating64",
        "int64", "str", "other(name)"]
    assert query["rows"] == [[
        _p("int32", 1), _p("str", "héllo"), _p("jsonb", b'{"a":[true],"b":1}'.hex()), _p("decimal", "12.5"),
        _p("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), _p("date", [2024, 2, 29]),
        _p("time", [12, 30, 0, 500000000]), _p("datetime", [2001, 2, 3, 4, 5, 6, 0]),
        _p("datetime", [1970, 1, 2, 0, 0, 0, 0]), _p("range-int32", [[1, "inclusive"], [10, "exclusive"]]),
        _p("range-decimal", [None, ["9.5", "inclusive"]]), _p("array-int64", [1, None]),
        _p("array-str", ["x", None]), _p("array-decimal", ["0.5"]),
        _p("interval", {"micros": 1, "days": 2, "months": 3}), _p("binary", "00ff"), _p("boolean", True),
        _p("floating64", 2.5), _p("int64", 1 << 40), _p("db-null"), _p("unsupported", b"spin".hex())]]


def test_each_version_goes_through_its_sdk_module(app, server):
    apis = {}
    for version in ("4", "3", "2"):
        response = app.get(f"/pg?v={version}&address={quote(server.url(), safe='')}", "-X", "POST",
                           data=json.dumps([["query", "SELECT 1", []]]).encode())
        assert response.status == 200, response.text
        apis[version] = response.headers.get("x-pg-api")
    assert apis == {"4": "spin_sdk.wit.imports.spin_postgres_postgres_4_0_0",
                    "3": "spin_sdk.wit.imports.spin_postgres_postgres_3_0_0", "2": "spin_sdk.postgres"}


def test_v3_and_v2_read_what_v4_wrote_narrowed_as_spin_narrows(app, server):
    _pg(app, server.url(), "4", [["execute", "CREATE TABLE IF NOT EXISTS narrow (d date, u uuid, i int2)", []],
                                 ["execute", "INSERT INTO narrow VALUES ('2020-01-02', gen_random_uuid(), 7)", []]])
    status, v3 = _pg(app, server.url(), "3", [
        ["query", "SELECT d, u, i FROM narrow LIMIT 1", []],
        ["query", "SELECT $1::date, $2::timestamp", [_p("date", [1999, 1, 1]), _p("datetime", [1, 1, 1, 0, 0, 0, 0])]],
    ])
    assert status == 200, v3
    assert v3[0] == {"columns": [["d", "date"], ["u", "other"], ["i", "int16"]],
                     "rows": [[_p("date", [2020, 1, 2]), {"type": "unsupported"}, _p("int16", 7)]]}
    assert v3[1]["rows"] == [[_p("date", [1999, 1, 1]), _p("datetime", [1, 1, 1, 0, 0, 0, 0])]]
    status, v2 = _pg(app, server.url(), "2", [
        ["query", "SELECT d, i, $1::int8 + 1 AS n, $2 AS s FROM narrow LIMIT 1", [_p("int64", 41), _p("str", "v2")]],
        ["execute", "UPDATE narrow SET i = $1", [_p("int16", 8)]],
    ])
    assert status == 200, v2
    assert v2[0] == {"columns": [["d", "other"], ["i", "int16"], ["n", "int64"], ["s", "str"]],
                     "rows": [[{"type": "unsupported"}, _p("int16", 7), _p("int64", 42), _p("str", "v2")]]}
    assert v2[1]["count"] >= 1
    status, text = _pg(app, server.url(), "2", [["query", "SELECT $1", [_p("uint8", 1)]]])
    assert status == 500 and "Postgres does not support unsigned integers" in text


def test_server_errors_reach_the_guest_as_spins_errors(app, server):
    status, text = _pg(app, server.url(), "4", [["query", "SELECT * FROM no_such_table", []]])
    assert status == 500 and text.startswith("ERROR: Error_QueryFailed(value=QueryError_DbError(")
    assert "code='42P01'" in text
    status, text = _pg(app, server.url(), "3", [["query", "SELECT * FROM no_such_table", []]])
    assert status == 500 and text.startswith("ERROR: Error_QueryFailed(value='db error: ERROR: relation")
    status, text = _pg(app, server.url(password="wrong-password"), "2", [])
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value=")
    assert "password authentication failed" in text and "wrong-password" not in text


def test_a_host_not_in_allowed_outbound_hosts_is_connection_failed(app, server):
    for version in ("4", "3", "2"):
        status, text = _pg(app, server.url().replace("127.0.0.1", "localhost"), version, [])
        assert (status, text) == (500, f"ERROR: Error_ConnectionFailed(value='address "
                                       f"postgres://localhost:{server.port} is not permitted')")


def test_a_server_that_is_down_is_a_clear_error_and_other_routes_still_answer(app):
    with running_postgres() as gone:
        pass  # stopped again: nothing listens on its port now
    status, text = _pg(app, gone.url(), "4", [["query", "SELECT 1", []]])
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value='error connecting to server")
    assert "Connection refused" in text and gone.password not in text
    assert app.get("/hello").text == "Hello from Python!"


def test_data_survives_a_task_restart(app, server):
    status, _ = _pg(app, server.url(), "4", [
        ["execute", "CREATE TABLE IF NOT EXISTS kept (k text PRIMARY KEY, v int8)", []],
        ["execute", "INSERT INTO kept VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
         [_p("str", "answer"), _p("int64", 42)]],
    ])
    assert status == 200
    app.stop_task()
    app.start_again()
    status, results = _pg(app, server.url(), "4", [["query", "SELECT v FROM kept WHERE k = $1", [_p("str", "answer")]]])
    assert (status, results) == (200, [{"columns": [["v", "int64"]], "rows": [[_p("int64", 42)]]}])
