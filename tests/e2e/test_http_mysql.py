"""Spin's outbound MySQL from a Spin Python SDK 3.4.1 app (`spin_sdk.mysql`) through containerd, against a real
MariaDB server from Debian on loopback: every parameter and column type, a host not in allowed_outbound_hosts, a
server that is down (an error to the guest while the app keeps serving), and data across a task restart.

py-spin's spin.toml allows `mysql://127.0.0.1:*`; tests/apps/src/py-spin/mysql_routes.py serves `POST /mysql`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.mysql_support import MariaDb, running_mariadb

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDb]:
    with running_mariadb(tmp_path_factory.mktemp("mariadb")) as db:
        yield db


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "mysql-apis", {"SPIN_VARIABLE_API_TOKEN": "unused"}) as task:
        yield task


def _mysql(app: HttpTask, address: str, steps: list) -> tuple[int, object]:
    # quoted whole: the URL's own percent-escapes (of the password) must reach the guest as they are
    response = app.get(f"/mysql?address={quote(address, safe='')}", "-X", "POST", data=json.dumps(steps).encode())
    return response.status, (response.json() if response.status == 200 else response.text)


def test_every_parameter_and_column_type_round_trips(app, server):
    columns = ("ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED, i INT, iu INT UNSIGNED, "
               "bi BIGINT, bu BIGINT UNSIGNED, f FLOAT, d DOUBLE, s VARCHAR(20), t TEXT, b BLOB, flag BOOLEAN, "
               "n INT")
    params = [["int8", -128], ["uint8", 255], ["int16", -32768], ["uint16", 65535], ["int32", -(1 << 31)],
              ["uint32", (1 << 32) - 1], ["int64", -(1 << 63)], ["uint64", (1 << 64) - 1], ["floating32", 0.5],
              ["floating64", 0.1], ["str", "héllo"], ["str", "it's ? fine"], ["binary", "00ff10"],
              ["boolean", True], ["db-null", None]]
    status, results = _mysql(app, server.url(), [
        ["execute", f"CREATE TABLE every_type ({columns})", []],
        ["execute", f"INSERT INTO every_type VALUES ({', '.join('?' * len(params))})", params],
        ["query", "SELECT * FROM every_type", []],
        ["query", "SELECT CAST(NOW() AS CHAR) AS now_text, ? AS echoed", [["uint16", 7]]],
    ])
    assert status == 200, (results, app.log_path.read_text()[-3000:])
    assert results[:2] == [None, None]
    table = results[2]
    assert [c[1] for c in table["columns"]] == ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                                                "uint64", "floating32", "floating64", "str", "str", "binary",
                                                "int8", "int32"]
    assert table["rows"] == [[["int8", -128], ["uint8", 255], ["int16", -32768], ["uint16", 65535],
                              ["int32", -(1 << 31)], ["uint32", (1 << 32) - 1], ["int64", -(1 << 63)],
                              ["uint64", (1 << 64) - 1], ["floating32", 0.5], ["floating64", 0.1],
                              ["str", "héllo"], ["str", "it's ? fine"], ["binary", "00ff10"], ["int8", 1],
                              ["db-null", None]]]
    assert results[3]["columns"] == [["now_text", "str"], ["echoed", "uint64"]]
    assert results[3]["rows"][0][1] == ["uint64", 7]


def test_a_date_column_is_spins_value_conversion_error_and_sql_errors_are_query_failed(app, server):
    status, text = _mysql(app, server.url(), [["query", "SELECT CURDATE() AS today", []]])
    assert status == 500 and text.startswith("ERROR: Error_ValueConversionFailed(value=")
    assert "Cannot convert value Date(" in text and "in column today data type Other" in text
    status, text = _mysql(app, server.url(), [["execute", "INSERT INTO no_such_table VALUES (1)", []]])
    assert status == 500 and text.startswith("ERROR: Error_QueryFailed(value=")
    assert "ERROR 1146: Table 'spintest.no_such_table' doesn't exist" in text


def test_a_host_not_in_allowed_outbound_hosts_is_not_permitted(app, server):
    status, text = _mysql(app, server.url(host="localhost"), [["query", "SELECT 1", []]])
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value=")
    assert "address mysql://spin:***@localhost" in text and "is not permitted" in text
    assert server.password not in text and "s3cr" not in text
    assert "s3cr" not in app.log_path.read_text()


def test_a_server_that_is_down_is_a_clear_error_and_the_app_keeps_serving(app, server, tmp_path: Path):
    with running_mariadb(tmp_path / "stopped") as stopped:
        pass  # stopped: nothing listens on its port now
    status, text = _mysql(app, stopped.url(), [["query", "SELECT 1", []]])
    assert status == 500 and text.startswith("ERROR: Error_ConnectionFailed(value=")
    assert "mysql://spin:***@127.0.0.1" in text and "Can't connect" in text and "s3cr" not in text
    assert app.get("/hello").text == "Hello from Python!"
    status, results = _mysql(app, server.url(), [["query", "SELECT 1 AS one", []]])
    assert (status, results) == (200, [{"columns": [["one", "int32"]], "rows": [[["int32", 1]]]}])


def test_data_survives_a_task_restart(app, server):
    status, results = _mysql(app, server.url(), [
        ["execute", "CREATE TABLE IF NOT EXISTS notes (id INT PRIMARY KEY, body TEXT)", []],
        ["execute", "REPLACE INTO notes VALUES (?, ?)", [["int32", 1], ["str", "kept across restarts"]]],
    ])
    assert status == 200, results
    app.stop_task()
    app.start_again()
    status, results = _mysql(app, server.url(), [["query", "SELECT body FROM notes WHERE id = ?", [["int32", 1]]]])
    assert (status, results) == (200, [{"columns": [["body", "str"]], "rows": [[["str", "kept across restarts"]]]}])
