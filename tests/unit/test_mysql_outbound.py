"""fermyon:spin/mysql@2.0.0 as the guest calls it, against a real MariaDB server (Debian's): every parameter and
column type both ways, the types Spin returns no value for, Spin's errors, the allowed_outbound_hosts check,
the password kept out of every message, and connections closed at drop and at the end of the request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.host.context import ComponentHost, RequestContext
from runtime.host.values import Err, Ok, Variant
from runtime.http.contract import ComponentConfig
from runtime.manifest import parse_manifest
from runtime.spin import mysql_outbound
from runtime.spin.bindings import mysql as bindings
from runtime.spin.services import SpinServices
from tests.mysql_support import MariaDb, running_mariadb
from tests.unit.test_spin_bindings import _func_types, _lowers, call, context, rep_of, sdk_imports  # noqa: F401

MYSQL = "fermyon:spin/mysql@2.0.0"

MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["mysql://127.0.0.1:*"]
[component.other]
source = "other.wasm"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDb]:
    with running_mariadb(tmp_path_factory.mktemp("mariadb"), options=("--max-connections=300",)) as db:
        yield db


@pytest.fixture
def services(tmp_path: Path) -> SpinServices:
    return SpinServices.build(parse_manifest(MANIFEST, tmp_path / "spin.toml"), {}, work_dir=tmp_path)


def open_(ctx: RequestContext, address: str) -> Any:
    return call(MYSQL, "[static]connection.open", ctx, address)


def connect(services: SpinServices, server: MariaDb) -> tuple[RequestContext, int]:
    ctx = context(services)
    return ctx, rep_of(open_(ctx, server.url()))


def query(ctx: RequestContext, conn: int, statement: str, *params: Variant) -> Any:
    return call(MYSQL, "[method]connection.query", ctx, conn, statement, list(params))


def execute(ctx: RequestContext, conn: int, statement: str, *params: Variant) -> Any:
    return call(MYSQL, "[method]connection.execute", ctx, conn, statement, list(params))


def end_request(ctx: RequestContext) -> None:
    for cleanup in ctx.cleanups:
        cleanup()


def spin_connections(server: MariaDb) -> int:
    return int(server.admin(f"SELECT COUNT(*) FROM information_schema.processlist WHERE user = '{server.user}'"))


INTEGER_COLUMNS = [  # (SQL type, Spin's case, min, max)
    ("TINYINT", "int8", -128, 127), ("TINYINT UNSIGNED", "uint8", 0, 255),
    ("SMALLINT", "int16", -32768, 32767), ("SMALLINT UNSIGNED", "uint16", 0, 65535),
    ("MEDIUMINT", "int32", -(1 << 23), (1 << 23) - 1), ("MEDIUMINT UNSIGNED", "uint32", 0, (1 << 24) - 1),
    ("INT", "int32", -(1 << 31), (1 << 31) - 1), ("INT UNSIGNED", "uint32", 0, (1 << 32) - 1),
    ("BIGINT", "int64", -(1 << 63), (1 << 63) - 1), ("BIGINT UNSIGNED", "uint64", 0, (1 << 64) - 1),
]


def test_every_integer_width_both_ways_at_its_limits(services, server):
    ctx, conn = connect(services, server)
    names = [f"c{i}" for i in range(len(INTEGER_COLUMNS))]
    columns = ", ".join(f"{name} {sql}" for name, (sql, *_rest) in zip(names, INTEGER_COLUMNS))
    assert execute(ctx, conn, f"CREATE TABLE ints (id INT PRIMARY KEY, {columns})") == Ok(None)
    marks = ", ".join("?" for _ in names)
    for row_id, pick in ((1, 2), (2, 3)):  # the minimum, then the maximum of each width, bound as that width
        params = [Variant(case, limits[pick - 2]) for _sql, case, *limits in INTEGER_COLUMNS]
        inserted = execute(ctx, conn, f"INSERT INTO ints VALUES (?, {marks})", Variant("int32", row_id), *params)
        assert inserted == Ok(None)
    result = query(ctx, conn, f"SELECT {', '.join(names)} FROM ints ORDER BY id").value
    assert [c["data-type"] for c in result["columns"]] == [case for _sql, case, *_ in INTEGER_COLUMNS]
    assert [c["name"] for c in result["columns"]] == names
    assert result["rows"] == [[Variant(case, low) for _sql, case, low, _high in INTEGER_COLUMNS],
                              [Variant(case, high) for _sql, case, _low, high in INTEGER_COLUMNS]]


def test_floats_strings_binary_and_null_both_ways(services, server):
    ctx, conn = connect(services, server)
    execute(ctx, conn, "CREATE TABLE mixed (f FLOAT, d DOUBLE, c CHAR(5), v VARCHAR(20), t TEXT, "
                       "e ENUM('red', 'blue'), s SET('x', 'y'), bn BINARY(3), vb VARBINARY(8), b BLOB, flag BOOLEAN, "
                       "n INT)")
    params = [Variant("floating32", 1.2345678), Variant("floating64", 0.1), Variant("str", "abc"),
              Variant("str", "héllo wörld"), Variant("str", "a ' \" \\ ? ;"), Variant("str", "blue"),
              Variant("str", "x,y"), Variant("binary", b"\x00\x01\x02"), Variant("binary", b"\xff\x00"),
              Variant("binary", bytes(range(256))), Variant("boolean", True), Variant("db-null", None)]
    assert execute(ctx, conn, f"INSERT INTO mixed VALUES ({', '.join('?' * len(params))})", *params) == Ok(None)
    result = query(ctx, conn, "SELECT * FROM mixed").value
    assert [c["data-type"] for c in result["columns"]] == [
        "floating32", "floating64", "str", "str", "str", "str", "str", "binary", "binary", "binary", "int8", "int32"]
    (row,) = result["rows"]
    assert row[0].tag == "floating32" and row[0].payload == pytest.approx(1.2345678, rel=1e-7)
    assert row[0].payload == mysql_outbound.rt.to_f32(1.2345678)  # the exact f32, not a 6-digit rendering
    assert row[1:] == [Variant("floating64", 0.1), Variant("str", "abc"), Variant("str", "héllo wörld"),
                       Variant("str", "a ' \" \\ ? ;"), Variant("str", "blue"), Variant("str", "x,y"),
                       Variant("binary", b"\x00\x01\x02"), Variant("binary", b"\xff\x00"),
                       Variant("binary", bytes(range(256))), Variant("int8", 1), Variant("db-null", None)]


def test_parameters_are_bound_with_their_width_and_placeholders_in_literals_are_text(services, server):
    ctx, conn = connect(services, server)
    result = query(ctx, conn, "SELECT ?, ?, ?, ?, '?' AS q, ? AS b", Variant("int8", -1),
                   Variant("uint64", (1 << 64) - 1), Variant("floating64", 2.5), Variant("str", "s"),
                   Variant("binary", b"\x01")).value
    # mysql_async sends binary as VAR_STRING like text, so the server echoes it as a string of the connection's
    # charset: `SELECT ?` of bytes is a str column under Spin too (a BLOB column keeps it binary, above).
    assert [c["data-type"] for c in result["columns"]] == ["int64", "uint64", "floating64", "str", "str", "str"]
    assert result["rows"] == [[Variant("int64", -1), Variant("uint64", (1 << 64) - 1), Variant("floating64", 2.5),
                               Variant("str", "s"), Variant("str", "?"), Variant("str", "\x01")]]


@pytest.mark.parametrize(("expression", "mysql_type"), [
    ("CAST('2024-01-02' AS DATE)", "DATE"), ("CAST('2024-01-02 03:04:05' AS DATETIME)", "DATETIME"),
    ("CAST('03:04:05' AS TIME)", "TIME"), ("CAST(12.5 AS DECIMAL(5, 2))", "NEWDECIMAL"),
    ("CAST(2024 AS YEAR)", "YEAR"), ("b'1010'", "VAR_STRING"), ("CURRENT_TIMESTAMP()", "DATETIME"),
    ("REPEAT('x', 16384)", "MEDIUM_BLOB"),  # a string expression longer than 64 KiB: mysql_common's types skip it
])
def test_types_spin_returns_no_value_for_are_value_conversion_failed(services, server, expression, mysql_type):
    ctx, conn = connect(services, server)
    if mysql_type == "YEAR":
        execute(ctx, conn, "CREATE TABLE IF NOT EXISTS years (y YEAR)")
        execute(ctx, conn, "INSERT INTO years VALUES (2024)")
        expression = "(SELECT y FROM years LIMIT 1)"
    failed = query(ctx, conn, f"SELECT {expression} AS v")
    if mysql_type == "VAR_STRING":  # a bit literal is a binary string: Spin hands it over as binary
        assert failed == Ok({"columns": [{"name": "v", "data-type": "binary"}], "rows": [[Variant("binary", b"\n")]]})
        return
    assert isinstance(failed, Err) and failed.value.tag == "value-conversion-failed", failed
    assert failed.value.payload.startswith("Cannot convert value ")
    assert "in column v data type Other" in failed.value.payload
    assert failed.value.payload.endswith(f"(MySQL type {mysql_type})")
    if mysql_type == "MEDIUM_BLOB":
        return
    # the connection is still usable, and the value can be had as text
    assert query(ctx, conn, f"SELECT CAST({expression} AS CHAR) AS v").value["columns"] == [
        {"name": "v", "data-type": "str"}]


def test_other_columns_report_other_and_their_nulls_are_db_null(services, server):
    ctx, conn = connect(services, server)
    result = query(ctx, conn, "SELECT CAST(NULL AS DATE) AS d, NULL AS n, CAST(NULL AS DECIMAL) AS x").value
    assert [c["data-type"] for c in result["columns"]] == ["other", "other", "other"]
    assert result["rows"] == [[Variant("db-null", None)] * 3]


def test_mariadb_json_and_bin_collations_are_binary_as_spin_reads_the_binary_flag(services, server):
    ctx, conn = connect(services, server)
    execute(ctx, conn, "CREATE TABLE docs (j JSON, t TEXT COLLATE utf8mb4_bin)")
    execute(ctx, conn, "INSERT INTO docs VALUES (?, ?)", Variant("str", '{"a": 1}'), Variant("str", "exact"))
    result = query(ctx, conn, "SELECT j, t FROM docs").value
    assert result == {"columns": [{"name": "j", "data-type": "binary"}, {"name": "t", "data-type": "binary"}],
                      "rows": [[Variant("binary", b'{"a": 1}'), Variant("binary", b"exact")]]}


def test_query_of_a_statement_without_rows_is_an_empty_row_set(services, server):
    ctx, conn = connect(services, server)
    execute(ctx, conn, "CREATE TABLE plain (x INT)")
    assert query(ctx, conn, "INSERT INTO plain VALUES (?)", Variant("int32", 1)) == Ok({"columns": [], "rows": []})
    assert execute(ctx, conn, "SELECT x FROM plain") == Ok(None)  # rows discarded
    assert query(ctx, conn, "SELECT x FROM plain WHERE x > 5").value == {
        "columns": [{"name": "x", "data-type": "int32"}], "rows": []}


def test_statement_errors_are_query_failed_with_the_servers_message(services, server):
    ctx, conn = connect(services, server)
    syntax = query(ctx, conn, "SELEC 1")
    assert syntax.value.tag == "query-failed" and syntax.value.payload.startswith("ERROR 1064: ")
    missing = execute(ctx, conn, "INSERT INTO no_such_table VALUES (1)")
    assert missing.value.tag == "query-failed" and "1146" in missing.value.payload
    assert "no_such_table" in missing.value.payload
    execute(ctx, conn, "CREATE TABLE uniq (id INT PRIMARY KEY)")
    execute(ctx, conn, "INSERT INTO uniq VALUES (1)")
    duplicate = execute(ctx, conn, "INSERT INTO uniq VALUES (?)", Variant("int32", 1))
    assert duplicate.value.tag == "query-failed" and "Duplicate entry" in duplicate.value.payload
    count = query(ctx, conn, "SELECT ?, ?", Variant("int8", 1))
    assert count == Err(Variant("query-failed", "the statement takes 2 parameters but 1 were supplied"))
    assert query(ctx, conn, "SELECT 7").value["rows"] == [[Variant("int32", 7)]]  # still usable


def test_a_parameter_outside_its_case_is_bad_parameter_before_the_server_sees_it(services, server):
    ctx, conn = connect(services, server)
    result = execute(ctx, conn, "SELECT ?", Variant("int8", 300))
    assert isinstance(result, Err) and result.value.tag == "bad-parameter" and "int8" in result.value.payload


def test_disallowed_hosts_are_connection_failed_not_permitted_and_masked(services, server):
    for address in (server.url(host="localhost"), server.url(host="127.0.0.2"),
                    f"postgres://spin:{server.password}@127.0.0.1:{server.port}/x", "not a url", "mysql://",
                    f"mysql://spin:{server.password}@127.0.0.1:notaport/x"):
        ctx = context(services)
        result = open_(ctx, address)
        assert isinstance(result, Err) and result.value.tag == "connection-failed", address
        assert "is not permitted" in result.value.payload
        for fragment in ("s3cr", "p/ss", "w%rd", "w%25rd"):  # the raw password in some, encoded in others
            assert fragment not in result.value.payload and all(fragment not in note for note in ctx.notes)
    unencoded = open_(context(services), "mysql://spin:abc@secretpart/more@127.0.0.1:3306/db")
    assert "secretpart" not in unencoded.value.payload and "is not permitted" in unencoded.value.payload
    hinted = open_(context(services), server.url(host="localhost"))
    assert f'add "mysql://localhost:{server.port}"' in hinted.value.payload
    other = open_(context(services, "other"), server.url())  # a component without allowed_outbound_hosts
    assert other.value.tag == "connection-failed" and "is not permitted" in other.value.payload
    assert "***" in other.value.payload and "s3cr" not in other.value.payload


def test_a_wrong_password_or_database_is_connection_failed_without_the_password(services, server):
    wrong = open_(context(services), server.url(password="hunter2-wrong"))
    assert wrong.value.tag == "connection-failed" and "1045" in wrong.value.payload
    assert "Access denied" in wrong.value.payload and "hunter2" not in wrong.value.payload
    assert "***" in wrong.value.payload
    no_db = open_(context(services), server.url(database="nope"))
    assert no_db.value.tag == "connection-failed" and "nope" in no_db.value.payload
    assert server.password not in no_db.value.payload
    no_user = open_(context(services), f"mysql://127.0.0.1:{server.port}/x")
    assert no_user.value.tag == "connection-failed" and "names no user" in no_user.value.payload


def test_tls_asked_of_a_server_without_it_is_connection_failed(services, server):
    result = open_(context(services), server.url() + "?ssl-mode=REQUIRED")
    assert result.value.tag == "connection-failed", result
    assert server.password not in result.value.payload
    assert rep_of(open_(context(services), server.url() + "?sslmode=disabled"))


def test_a_server_that_is_down_is_connection_failed(services, tmp_path):
    with running_mariadb(tmp_path / "gone") as gone:
        pass  # stopped again: nothing listens on its port now
    ctx = context(services)
    result = open_(ctx, gone.url())
    assert result.value.tag == "connection-failed"
    assert "Can't connect" in result.value.payload and "111" in result.value.payload
    assert "s3cr" not in result.value.payload and "***" in result.value.payload


def test_a_server_that_stops_mid_connection_gives_query_failed_then_closed(services, tmp_path):
    with running_mariadb(tmp_path / "stopping") as stopping:
        ctx = context(services)
        conn = rep_of(open_(ctx, stopping.url()))
        assert query(ctx, conn, "SELECT 1").value["rows"] == [[Variant("int32", 1)]]
    lost = query(ctx, conn, "SELECT 1")
    assert lost.value.tag == "query-failed"
    assert "Lost connection" in lost.value.payload or "gone away" in lost.value.payload, lost
    again = execute(ctx, conn, "SELECT 1")
    assert again.value.tag == "query-failed" and "closed" in again.value.payload
    end_request(ctx)  # closing a dead connection is quiet


def test_data_is_committed_at_once_and_a_transaction_left_open_is_rolled_back(services, server):
    ctx, conn = connect(services, server)
    execute(ctx, conn, "CREATE TABLE ledger (n INT)")
    execute(ctx, conn, "INSERT INTO ledger VALUES (1)")  # autocommit, as the server's default is
    execute(ctx, conn, "START TRANSACTION")
    execute(ctx, conn, "INSERT INTO ledger VALUES (2)")
    end_request(ctx)
    other_ctx, other = connect(services, server)
    assert query(other_ctx, other, "SELECT n FROM ledger").value["rows"] == [[Variant("int32", 1)]]


def test_connections_are_closed_when_dropped_or_when_the_request_ends(services, server):
    base = spin_connections(server)
    ctx = context(services)
    conns = [rep_of(open_(ctx, server.url())) for _ in range(3)]
    assert spin_connections(server) == base + 3
    bindings._released(ctx, ctx.table.take(conns[0], bindings.GuestMysql))  # the guest dropped one
    assert _eventually(lambda: spin_connections(server) == base + 2)
    end_request(ctx)
    assert _eventually(lambda: spin_connections(server) == base)


def test_a_request_holds_at_most_the_limit_of_connections(services, server):
    before = _settled_connections(server)  # other tests' connections, once the garbage collector closed its share
    ctx = context(services)
    for _ in range(mysql_outbound.MAX_OPEN_CONNECTIONS_PER_INSTANCE):
        rep_of(open_(ctx, server.url()))
    assert spin_connections(server) >= before + mysql_outbound.MAX_OPEN_CONNECTIONS_PER_INSTANCE
    assert open_(ctx, server.url()) == Err(Variant("connection-failed", "too many connections"))
    end_request(ctx)
    assert _eventually(lambda: spin_connections(server) <= before, timeout=15)


def test_socket_operations_end_at_the_requests_deadline(services, server):
    config = ComponentConfig(id="web", wasm_path=Path("/dev/null"), executor="component", environment={},
                             services=services)
    ctx = RequestContext(ComponentHost(config), deadline=time.monotonic() + 1.0)
    conn = rep_of(open_(ctx, server.url()))
    started = time.monotonic()
    result = query(ctx, conn, "SELECT SLEEP(10)")
    assert time.monotonic() - started < 3
    assert result.value.tag == "query-failed" and "timed out" in result.value.payload, result
    end_request(ctx)


def test_a_result_over_spins_limit_is_other_and_the_connection_stays_usable(services, server):
    ctx, conn = connect(services, server)
    # 9000 rows of 16000 characters: 144 MB, over Spin's 128 MiB (MariaDB's SEQUENCE engine makes the rows; a
    # longer REPEAT would be a MEDIUM_BLOB, a type Spin returns no value for).
    result = query(ctx, conn, "SELECT REPEAT('x', 16000) FROM seq_1_to_9000")
    assert result == Err(Variant("other", f"query result exceeds limit of {128 << 20} bytes"))
    assert query(ctx, conn, "SELECT 1").value["rows"] == [[Variant("int32", 1)]]


def test_results_and_errors_lower_into_the_sdks_types(sdk_imports, services, server):  # noqa: F811
    engine, component = sdk_imports
    types = _func_types(engine, component, MYSQL)
    ctx = context(services)
    opened = open_(ctx, server.url())
    _lowers(engine, types["[static]connection.open"], opened)
    _lowers(engine, types["[static]connection.open"], open_(ctx, server.url(host="localhost")))
    conn = opened.value.rep
    everything = query(ctx, conn, "SELECT CAST(-1 AS SIGNED), CAST(1 AS UNSIGNED), 1.5e0, 'x', x'00', NULL, "
                                  "CAST(2 AS INT), ?, ?", Variant("floating32", 0.5), Variant("boolean", False))
    assert isinstance(everything, Ok)
    _lowers(engine, types["[method]connection.query"], everything)
    _lowers(engine, types["[method]connection.query"], query(ctx, conn, "SELECT CURDATE()"))
    _lowers(engine, types["[method]connection.execute"], execute(ctx, conn, "SELECT 1"))
    _lowers(engine, types["[method]connection.execute"], execute(ctx, conn, "nonsense"))


def test_masked_hides_only_the_password():
    assert mysql_outbound.masked("mysql://u:p%40ss@h:1/db") == "mysql://u:***@h:1/db"
    assert mysql_outbound.masked("mysql://u@h/db") == "mysql://u@h/db"
    assert mysql_outbound.masked("mysql://u:p@[::1]:3306/db") == "mysql://u:***@[::1]:3306/db"
    # a password its guest did not percent-encode is hidden whole, up to the last "@"
    assert mysql_outbound.masked("mysql://u:a/b@c#d@h:1/db") == "mysql://u:***@h:1/db"
    assert mysql_outbound.masked("mysql://h:1/db") == "mysql://h:1/db"
    parsed = mysql_outbound.parse_mysql_url("mysql://sp%20in:p%40ss%2Fw@db.example:3307/my%20db?sslmode=REQUIRED")
    assert (parsed.user, parsed.password, parsed.host, parsed.port, parsed.database, parsed.tls) == (
        "sp in", "p@ss/w", "db.example", 3307, "my db", True)
    assert mysql_outbound.parse_mysql_url("mysql://u@h").port == 3306


def _settled_connections(server: MariaDb, timeout: float = 5.0) -> int:
    """The server's count of our connections once it stops falling: earlier tests' dropped connections close when
    the garbage collector finds them, which may be during the test that counts (a clean-run flake)."""
    import gc

    gc.collect()
    count, deadline = spin_connections(server), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = spin_connections(server)
        if again == count:
            return count
        count = again
    return count


def _eventually(condition, timeout: float = 5.0) -> bool:
    """The server notices a closed connection a moment after the client closes it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
