"""Spin's PostgreSQL interfaces as the guest calls them, against a real PostgreSQL 15: every value type both ways
in each version (v4, v3, v2), Spin's errors, the allowed_outbound_hosts check, masking, connections closed at
drop / request end and bounded, and every result lowered into the SDK's real WIT types."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.host.values import Err, Ok, Variant
from runtime.manifest import parse_manifest
from runtime.spin.services import SpinServices
from tests.postgres_support import PostgresServer, running_postgres
from tests.unit.test_spin_bindings import _func_types, _lowers, call, context, rep_of, sdk_imports  # noqa: F401

V4, V3, V2 = "spin:postgres/postgres@4.0.0", "spin:postgres/postgres@3.0.0", "fermyon:spin/postgres@2.0.0"

MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["postgres://127.0.0.1:*"]
[component.other]
source = "other.wasm"
allowed_outbound_hosts = ["redis://127.0.0.1:*"]
"""

ALL_TYPES = """CREATE TABLE everything (
    b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, t text, vc varchar(20), bp char(3), by bytea,
    d date, tm time, ts timestamp, tstz timestamptz, u uuid, j jsonb, n numeric(12,3), r4 int4range,
    r8 int8range, rn numrange, a4 int4[], a8 int8[], an numeric[], at text[], iv interval, js json, nm name)"""

V4_PARAMS = [
    Variant("boolean", True), Variant("int16", -2), Variant("int32", 2_000_000_000), Variant("int64", -(1 << 62)),
    Variant("floating32", 1.5), Variant("floating64", math.pi), Variant("str", "héllo ✓"),
    Variant("str", "varchar"), Variant("str", "ab"), Variant("binary", b"\x00\xff\x10"),
    Variant("date", (2024, 2, 29)), Variant("time", (23, 59, 58, 123_456_000)),
    Variant("datetime", (1999, 12, 31, 23, 59, 59, 999_999_000)), Variant("timestamp", 1_700_000_000),
    Variant("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), Variant("jsonb", b'{"b": [1, 2], "a": null}'),
    Variant("decimal", "-12345.5"), Variant("range-int32", ((1, "exclusive"), (5, "inclusive"))),
    Variant("range-int64", (None, (1 << 40, "exclusive"))),
    Variant("range-decimal", (("1.5", "inclusive"), ("2.25", "exclusive"))),
    Variant("array-int32", [1, None, -3]), Variant("array-int64", [1 << 50]),
    Variant("array-decimal", ["1.10", None]), Variant("array-str", ["a", None, "c,\"d\""]),
    Variant("interval", {"micros": 3_000_001, "days": -2, "months": 14}), Variant("str", '{"k": 1}'),
    Variant("str", "somename"),
]

V4_VALUES = [
    ("b", "boolean", True), ("i2", "int16", -2), ("i4", "int32", 2_000_000_000), ("i8", "int64", -(1 << 62)),
    ("f4", "floating32", 1.5), ("f8", "floating64", math.pi), ("t", "str", "héllo ✓"), ("vc", "str", "varchar"),
    ("bp", "str", "ab "), ("by", "binary", b"\x00\xff\x10"), ("d", "date", (2024, 2, 29)),
    ("tm", "time", (23, 59, 58, 123_456_000)), ("ts", "datetime", (1999, 12, 31, 23, 59, 59, 999_999_000)),
    ("tstz", "datetime", (2023, 11, 14, 22, 13, 20, 0)), ("u", "uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("j", "jsonb", b'{"a":null,"b":[1,2]}'), ("n", "decimal", "-12345.500"),
    ("r4", "range-int32", ((2, "inclusive"), (6, "exclusive"))),
    ("r8", "range-int64", (None, (1 << 40, "exclusive"))),
    ("rn", "range-decimal", (("1.5", "inclusive"), ("2.25", "exclusive"))),
    ("a4", "array-int32", [1, None, -3]), ("a8", "array-int64", [1 << 50]), ("an", "array-decimal", ["1.10", None]),
    ("at", "array-str", ["a", None, 'c,"d"']), ("iv", "interval", {"micros": 3_000_001, "days": -2, "months": 14}),
]


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with running_postgres() as running:
        yield running


@pytest.fixture
def services(tmp_path: Path) -> SpinServices:
    return SpinServices.build(parse_manifest(MANIFEST, tmp_path / "spin.toml"), {}, work_dir=tmp_path)


def _open(iface: str, ctx, address: str) -> int:
    return rep_of(call(iface, "[static]connection.open", ctx, address))


def _query(iface: str, ctx, rep: int, statement: str, params: list | None = None):
    return call(iface, "[method]connection.query", ctx, rep, statement, params or [])


def _execute(iface: str, ctx, rep: int, statement: str, params: list | None = None):
    return call(iface, "[method]connection.execute", ctx, rep, statement, params or [])


def _end(ctx) -> None:
    for cleanup in ctx.cleanups:
        cleanup()


@pytest.fixture
def filled(services: SpinServices, server: PostgresServer):
    """A connection (v4) to a fresh table holding one row of every type, written with v4 parameters."""
    ctx = context(services)
    rep = _open(V4, ctx, server.url())
    _execute(V4, ctx, rep, "DROP TABLE IF EXISTS everything")
    assert _execute(V4, ctx, rep, ALL_TYPES) == Ok(0)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(V4_PARAMS)))
    assert _execute(V4, ctx, rep, f"INSERT INTO everything VALUES ({placeholders})", V4_PARAMS) == Ok(1)
    yield ctx, rep
    _end(ctx)


def test_v4_every_type_round_trips_with_spins_cases(filled, sdk_imports):
    ctx, rep = filled
    result = _query(V4, ctx, rep, "SELECT * FROM everything")
    assert isinstance(result, Ok), result
    columns = {c["name"]: c["data-type"] for c in result.value["columns"]}
    values = dict(zip(columns, result.value["rows"][0], strict=True))
    for name, case, expected in V4_VALUES:
        assert columns[name] == Variant(case, None), name
        assert values[name] == Variant(case, expected), name
    # Types Spin has no case for: other(<type name>), unsupported(<binary form>).
    assert columns["js"] == Variant("other", "json") and values["js"] == Variant("unsupported", b'{"k": 1}')
    assert columns["nm"] == Variant("other", "name") and values["nm"] == Variant("unsupported", b"somename")
    engine, component = sdk_imports
    _lowers(engine, _func_types(engine, component, V4)["[method]connection.query"], result)


def test_v4_nulls_of_every_type_and_untyped_null_parameters(filled):
    ctx, rep = filled
    nulls = [Variant("db-null", None)] * len(V4_PARAMS)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(nulls)))
    assert _execute(V4, ctx, rep, f"INSERT INTO everything VALUES ({placeholders})", nulls) == Ok(1)
    result = _query(V4, ctx, rep, "SELECT * FROM everything WHERE b IS NULL")
    assert result.value["rows"] == [[Variant("db-null", None)] * len(V4_PARAMS)]
    assert result.value["columns"][1]["data-type"] == Variant("int16", None)  # the column's type, not the value's


def test_v4_ranges_arrays_and_special_values(filled):
    ctx, rep = filled
    result = _query(V4, ctx, rep, "SELECT 'empty'::int4range, '(,)'::int8range, '{}'::int4[], 'NaN'::float8, "
                                  "'-infinity'::float4, 'NaN'::numeric, 0.000::numeric, '24:00'::time, "
                                  "'0001-01-01 BC'::date, $1::numrange", [Variant("range-decimal", (None, None))])
    row = result.value["rows"][0]
    assert row[0] == Variant("range-int32", (None, None)) and row[1] == Variant("range-int64", (None, None))
    assert row[2] == Variant("array-int32", [])
    assert math.isnan(row[3].payload) and row[4] == Variant("floating32", -math.inf)
    assert row[5] == Variant("decimal", "NaN") and row[6] == Variant("decimal", "0.000")
    assert row[7] == Variant("time", (0, 0, 0, 0))  # 24:00 wraps as chrono's NaiveTime does
    assert row[8] == Variant("date", (0, 1, 1))  # astronomical year numbering, as chrono
    assert row[9] == Variant("range-decimal", (None, None))
    # Spin's postgres_range: lower > upper is the empty range, not an error.
    empty = _query(V4, ctx, rep, "SELECT $1::int4range", [Variant("range-int32", ((5, "inclusive"), (2, "inclusive")))])
    assert empty.value["rows"] == [[Variant("range-int32", (None, None))]]
    nested = _query(V4, ctx, rep, "SELECT '{{1,2},{3,4}}'::int4[]")
    assert isinstance(nested, Err)
    assert nested.value.tag == "query-failed" and "too many dimensions" in nested.value.payload.payload


def test_v4_infinite_timestamps_are_query_failed_as_in_spin(filled):
    ctx, rep = filled
    result = _query(V4, ctx, rep, "SELECT 'infinity'::timestamp")
    assert isinstance(result, Err) and result.value.tag == "query-failed"
    assert result.value.payload.tag == "text" and "value too large to decode" in result.value.payload.payload


def test_v4_execute_counts_and_columns_of_an_empty_result(filled):
    ctx, rep = filled
    assert _execute(V4, ctx, rep, "CREATE TEMP TABLE n (x int4)") == Ok(0)
    assert _execute(V4, ctx, rep, "INSERT INTO n SELECT generate_series(1, 7)") == Ok(7)
    assert _execute(V4, ctx, rep, "UPDATE n SET x = x + 1 WHERE x > $1", [Variant("int32", 4)]) == Ok(3)
    assert _execute(V4, ctx, rep, "SELECT * FROM n") == Ok(7)
    # Spin infers a result's columns from its first row: none for an empty result.
    assert _query(V4, ctx, rep, "SELECT x FROM n WHERE x < 0") == Ok({"columns": [], "rows": []})


def test_v4_transactions_live_on_the_connection(filled):
    ctx, rep = filled
    for statement in ("BEGIN", "CREATE TEMP TABLE tx (x int4)", "INSERT INTO tx VALUES (1)", "ROLLBACK"):
        assert isinstance(_execute(V4, ctx, rep, statement), Ok)
    assert _query(V4, ctx, rep, "SELECT * FROM tx").value.tag == "query-failed"
    # A failed transaction: COMMIT is answered with ROLLBACK, which Spin reports as success.
    assert isinstance(_execute(V4, ctx, rep, "BEGIN"), Ok)
    assert isinstance(_execute(V4, ctx, rep, "SELECT 1/0"), Err)
    assert _execute(V4, ctx, rep, "COMMIT") == Ok(0)
    assert _query(V4, ctx, rep, "SELECT 2").value["rows"] == [[Variant("int32", 2)]]


def test_v4_server_errors_are_structured_db_errors(filled, sdk_imports):
    ctx, rep = filled
    _execute(V4, ctx, rep, "CREATE TEMP TABLE uniq (id int4 PRIMARY KEY)")
    _execute(V4, ctx, rep, "INSERT INTO uniq VALUES (1)")
    result = _execute(V4, ctx, rep, "INSERT INTO uniq VALUES (1)")
    assert isinstance(result, Err) and result.value.tag == "query-failed"
    error = result.value.payload
    assert error.tag == "db-error"
    assert error.payload["code"] == "23505" and error.payload["severity"] == "ERROR"
    assert "duplicate key" in error.payload["message"] and error.payload["detail"] == "Key (id)=(1) already exists."
    extras = dict(error.payload["extras"])
    assert extras["constraint"] == "uniq_pkey" and extras["table"] == "uniq" and "file" in extras
    assert "duplicate key" in error.payload["as-text"]
    engine, component = sdk_imports
    _lowers(engine, _func_types(engine, component, V4)["[method]connection.execute"], result)
    several = _execute(V4, ctx, rep, "SELECT 1; SELECT 2")
    assert "cannot insert multiple commands" in several.value.payload.payload["message"]


def test_invalid_parameters_are_bad_parameter_in_query_and_conversion_failed_in_execute(filled):
    ctx, rep = filled
    for param, message in ((Variant("date", (2023, 2, 29)), "invalid date y=2023, m=2, d=29"),
                           (Variant("time", (24, 0, 0, 0)), "invalid time 24:0:0:0"),
                           (Variant("uuid", "not-a-uuid"), "invalid UUID not-a-uuid"),
                           (Variant("decimal", "1.2.3"), "invalid decimal 1.2.3"),
                           (Variant("jsonb", b"{nope"), "invalid JSON {nope")):
        queried = _query(V4, ctx, rep, "SELECT $1", [param])
        assert queried.value.tag == "bad-parameter" and message in queried.value.payload, param
        executed = _execute(V4, ctx, rep, "SELECT $1", [param])
        assert executed.value.tag == "value-conversion-failed" and message in executed.value.payload, param
    nul = _query(V4, ctx, rep, "SELECT 1\x00; DROP TABLE everything")
    assert nul == Err(Variant("query-failed", Variant("text", "the statement contains a NUL character")))
    many = _query(V4, ctx, rep, "SELECT 1", [Variant("int32", 1)] * 65536)
    assert many.value.tag == "query-failed" and "too many parameters" in many.value.payload.payload
    wide = _query(V4, ctx, rep, "SELECT $1, $40000", [Variant("int32", i) for i in range(40000)])
    assert wide.value["rows"] == [[Variant("int32", 0), Variant("int32", 39999)]]  # a count above 32767 is unsigned
    # The connection is still usable after each refusal.
    assert _query(V4, ctx, rep, "SELECT 1").value["rows"] == [[Variant("int32", 1)]]


def test_v3_every_type_narrowed_as_spin_converts_v4(services: SpinServices, server: PostgresServer, filled,
                                                     sdk_imports):
    ctx = context(services)
    rep = _open(V3, ctx, server.url())
    assert _execute(V3, ctx, rep, "CREATE TEMP TABLE v3 (d date, tm time, ts timestamp, tz timestamptz, i2 int2)") \
        == Ok(0)
    params = [Variant("date", (1, 1, 1)), Variant("time", (0, 0, 1, 5_000)),
              Variant("datetime", (2038, 1, 19, 3, 14, 8, 0)), Variant("timestamp", -1), Variant("int8", -7)]
    assert _execute(V3, ctx, rep, "INSERT INTO v3 VALUES ($1, $2, $3, $4, $5)", params) == Ok(1)
    result = _query(V3, ctx, rep, "SELECT *, NULL::text AS nothing FROM v3")
    assert [c["data-type"] for c in result.value["columns"]] == ["date", "time", "datetime", "datetime", "int16",
                                                                  "str"]
    assert result.value["rows"] == [[Variant("date", (1, 1, 1)), Variant("time", (0, 0, 1, 5_000)),
                                     Variant("datetime", (2038, 1, 19, 3, 14, 8, 0)),
                                     Variant("datetime", (1969, 12, 31, 23, 59, 59, 0)), Variant("int16", -7),
                                     Variant("db-null", None)]]
    everything = _query(V3, ctx, rep, "SELECT u, j, n, r4, a4, iv, js, b FROM everything")
    assert [c["data-type"] for c in everything.value["columns"]] == ["other"] * 7 + ["boolean"]
    assert everything.value["rows"] == [[Variant("unsupported", None)] * 7 + [Variant("boolean", True)]]
    failed = _query(V3, ctx, rep, "SELECT * FROM missing_table")
    assert failed.value.tag == "query-failed" and 'relation "missing_table" does not exist' in failed.value.payload
    engine, component = sdk_imports
    v3 = _func_types(engine, component, V3)
    for value in (result, everything, failed):
        _lowers(engine, v3["[method]connection.query"], value)
    _end(ctx)


def test_v2_rdbms_types_both_ways(services: SpinServices, server: PostgresServer, filled, sdk_imports):
    ctx = context(services)
    rep = _open(V2, ctx, server.url())
    assert _execute(V2, ctx, rep, "CREATE TEMP TABLE v2 (b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, "
                                  "t text, by bytea, d date)") == Ok(0)
    params = [Variant("boolean", False), Variant("int8", 100), Variant("int32", -5), Variant("int64", 1 << 40),
              Variant("floating32", 0.25), Variant("floating64", -1e300), Variant("str", "v2"),
              Variant("binary", b"\x01"), Variant("db-null", None)]
    assert _execute(V2, ctx, rep, "INSERT INTO v2 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", params) == Ok(1)
    assert _execute(V2, ctx, rep, "INSERT INTO v2 (d) VALUES (CURRENT_DATE)") == Ok(1)
    result = _query(V2, ctx, rep, "SELECT * FROM v2 ORDER BY b")
    assert [c["data-type"] for c in result.value["columns"]] == ["boolean", "int16", "int32", "int64", "floating32",
                                                                  "floating64", "str", "binary", "other"]
    assert result.value["rows"][0] == [Variant("boolean", False), Variant("int16", 100), Variant("int32", -5),
                                       Variant("int64", 1 << 40), Variant("floating32", 0.25),
                                       Variant("floating64", -1e300), Variant("str", "v2"), Variant("binary", b"\x01"),
                                       Variant("db-null", None)]
    assert result.value["rows"][1][8] == Variant("unsupported", None)  # a date: v2 has no case for it
    for unsigned in ("uint8", "uint16", "uint32", "uint64"):
        refused = _query(V2, ctx, rep, "SELECT $1", [Variant(unsigned, 1)])
        assert refused == Err(Variant("value-conversion-failed", "Postgres does not support unsigned integers"))
    out_of_range = _query(V2, ctx, rep, "SELECT $1", [Variant("int8", 1000)])
    assert out_of_range.value.tag == "bad-parameter"
    failed = _execute(V2, ctx, rep, "INSERT INTO v2 (i2) VALUES (99999)")
    assert failed.value.tag == "query-failed" and "smallint out of range" in failed.value.payload
    engine, component = sdk_imports
    v2 = _func_types(engine, component, V2)
    for value in (result, failed):
        _lowers(engine, v2["[method]connection.query"], value)
    _end(ctx)


@pytest.mark.parametrize("iface", [V4, V3, V2])
def test_addresses_not_allowed_are_spins_connection_failed(services: SpinServices, server: PostgresServer,
                                                           iface: str, sdk_imports):
    cases = {
        f"postgres://spin:pw@localhost:{server.port}/spindb": f"address postgres://localhost:{server.port} is not "
                                                              "permitted",
        f"postgresql://spin@127.0.0.2:{server.port}/db": f"address postgres://127.0.0.2:{server.port} is not "
                                                         "permitted",
        "postgres://spin@10.1.2.3/db": "address postgres://10.1.2.3 is not permitted",
        f"host=127.0.0.1,db.example port={server.port},5432 user=spin": "address postgres://db.example:5432 is not "
                                                                         "permitted",
        "postgres://spin@%2Frun%2Fpostgresql/db": "Unix sockets are not supported on WebAssembly",
        "postgres://spin@127.0.0.1:notaport/db": "invalid connection string",
        "mysql://spin@127.0.0.1/db": "invalid connection string",
    }
    engine, component = sdk_imports
    open_type = _func_types(engine, component, iface)["[static]connection.open"]
    for address, message in cases.items():
        ctx = context(services)
        result = call(iface, "[static]connection.open", ctx, address)
        assert isinstance(result, Err) and result.value.tag == "connection-failed", address
        assert message in result.value.payload, (address, result.value.payload)
        _lowers(engine, open_type, result)
    other = call(iface, "[static]connection.open", context(services, "other"), server.url())
    assert other == Err(Variant("connection-failed", f"address postgres://127.0.0.1:{server.port} is not permitted"))


def test_login_failures_and_a_server_that_is_down_never_show_the_password(services: SpinServices,
                                                                          server: PostgresServer):
    ctx = context(services)
    wrong = call(V4, "[static]connection.open", ctx, server.url(password="hunter2-wrong"))
    assert wrong.value.tag == "connection-failed"
    assert "password authentication failed" in wrong.value.payload and "hunter2" not in wrong.value.payload
    assert "***" in wrong.value.payload
    no_password = call(V4, "[static]connection.open", ctx, server.url(password=""))
    assert "asks for a password" in no_password.value.payload
    no_db = call(V4, "[static]connection.open", ctx, server.url(database="nope"))
    assert 'database "nope" does not exist' in no_db.value.payload
    with running_postgres() as gone:
        pass  # stopped again: nothing listens on its port now
    started = time.monotonic()
    down = call(V4, "[static]connection.open", ctx, gone.url(password="hunter2"))
    assert down.value.tag == "connection-failed" and "Connection refused" in down.value.payload
    assert "hunter2" not in down.value.payload and time.monotonic() - started < 5
    assert not ctx.cleanups or all(cleanup() is None for cleanup in ctx.cleanups)


def test_notes_about_denied_addresses_mask_the_password(services: SpinServices, server: PostgresServer):
    ctx = context(services)
    call(V4, "[static]connection.open", ctx, f"postgres://spin:hunter2@localhost:{server.port}/spindb")
    assert ctx.notes and "not permitted" in ctx.notes[0] and "hunter2" not in " ".join(ctx.notes)


def _backends(server: PostgresServer, services: SpinServices) -> int:
    watcher = context(services)
    rep = _open(V4, watcher, server.url())
    count = _query(V4, watcher, rep, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'spin' "
                                     "AND pid <> pg_backend_pid()").value["rows"][0][0].payload
    _end(watcher)
    return count


def test_connections_close_at_drop_and_at_request_end(services: SpinServices, server: PostgresServer):
    from runtime.spin.bindings import postgres as bindings

    before = _backends(server, services)
    ctx = context(services)
    reps = [_open(iface, ctx, server.url()) for iface in (V4, V3, V2)]
    assert _backends(server, services) == before + 3
    bindings._released(ctx, ctx.table.take(reps[0], bindings.GuestPostgres))
    _wait_for(lambda: _backends(server, services) == before + 2)
    _end(ctx)
    _wait_for(lambda: _backends(server, services) == before)


def test_open_connections_are_bounded_per_request(services: SpinServices, server: PostgresServer, monkeypatch):
    from runtime.spin.bindings import postgres as bindings

    monkeypatch.setattr(bindings, "MAX_OPEN_CONNECTIONS_PER_INSTANCE", 3)
    ctx = context(services)
    for _ in range(3):
        _open(V4, ctx, server.url())
    assert call(V4, "[static]connection.open", ctx, server.url()) == Err(
        Variant("connection-failed", "too many connections"))
    _end(ctx)


def test_a_query_past_the_deadline_is_cancelled_and_the_connection_closed(services: SpinServices,
                                                                        server: PostgresServer):
    ctx = context(services)
    rep = _open(V4, ctx, server.url())
    ctx.deadline = time.monotonic() + 0.5
    started = time.monotonic()
    result = _query(V4, ctx, rep, "SELECT pg_sleep(30)")
    assert time.monotonic() - started < 3
    assert result.value.tag == "query-failed" and "timed out" in result.value.payload.payload
    again = _query(V4, ctx, rep, "SELECT 1")
    assert again == Err(Variant("query-failed", Variant("text", "connection closed (a previous call failed or "
                                                                "timed out)")))
    ctx.deadline = time.monotonic() + 30
    _wait_for(lambda: _sleepers(server, services) == 0)  # the server stopped the query (CancelRequest)
    _end(ctx)


def _sleepers(server: PostgresServer, services: SpinServices) -> int:
    watcher = context(services)
    rep = _open(V4, watcher, server.url())
    count = _query(V4, watcher, rep, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                                     "AND state = 'active'").value["rows"][0][0].payload
    _end(watcher)
    return count


def test_a_result_over_the_byte_budget_is_query_failed_and_the_connection_stays_usable(filled, monkeypatch):
    from runtime.spin.postgres import client

    ctx, rep = filled
    monkeypatch.setattr(client, "MAX_RESULT_BYTES", 10_000)
    result = _query(V4, ctx, rep, "SELECT repeat('x', 1000) FROM generate_series(1, 50)")
    assert result == Err(Variant("query-failed", Variant("text", "query result exceeds limit of 10000 bytes")))
    assert _query(V4, ctx, rep, "SELECT 3").value["rows"] == [[Variant("int32", 3)]]


def test_copy_from_stdin_is_refused_without_breaking_the_connection(filled):
    ctx, rep = filled
    _execute(V4, ctx, rep, "CREATE TEMP TABLE c (x int4)")
    refused = _execute(V4, ctx, rep, "COPY c FROM STDIN")
    assert refused.value.tag == "query-failed" and "not supported" in refused.value.payload.payload["message"]
    out = _query(V4, ctx, rep, "COPY (SELECT 1) TO STDOUT")
    assert out.value.tag == "query-failed"
    assert _query(V4, ctx, rep, "SELECT 4").value["rows"] == [[Variant("int32", 4)]]


def test_sslmode_require_against_a_server_without_tls_is_connection_failed(services: SpinServices,
                                                                           server: PostgresServer):
    ctx = context(services)
    refused = call(V4, "[static]connection.open", ctx, server.url(query="sslmode=require"))
    assert refused.value.tag == "connection-failed" and "server does not support TLS" in refused.value.payload
    for mode in ("disable", "prefer"):
        assert isinstance(call(V4, "[static]connection.open", ctx, server.url(query=f"sslmode={mode}")), Ok)
    _end(ctx)


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_tls_is_used_when_the_server_offers_it_and_its_certificate_is_verified(services: SpinServices,
                                                                              monkeypatch):
    with running_postgres(tls=True) as tls_server:
        ctx = context(services)
        untrusted = call(V4, "[static]connection.open", ctx, tls_server.url())  # prefer, and a CA nobody trusts
        assert untrusted.value.tag == "connection-failed" and "certificate verify failed" in untrusted.value.payload
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))  # the trust store the shim points OpenSSL at
        ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        for mode, encrypted in (("prefer", True), ("require", True), ("disable", False)):
            rep = _open(V4, ctx, tls_server.url(query=f"sslmode={mode}"))
            assert _query(V4, ctx, rep, ssl_in_use).value["rows"] == [[Variant("boolean", encrypted)]], mode
        _end(ctx)


def test_importing_the_bindings_does_not_import_the_driver():
    import subprocess
    import sys

    probe = ("import sys, runtime.spin.bindings, runtime.spin.postgres.client; "
             "assert 'pg8000' not in sys.modules and 'scramp' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_connection_the_server_drops_is_query_failed_and_the_next_open_works(services: SpinServices,
                                                                             server: PostgresServer):
    ctx = context(services)
    victim = _open(V4, ctx, server.url())
    pid = _query(V4, ctx, victim, "SELECT pg_backend_pid()").value["rows"][0][0].payload
    killer = _open(V4, ctx, server.url())
    assert _query(V4, ctx, killer, "SELECT pg_terminate_backend($1)", [Variant("int32", pid)]).value["rows"] == [
        [Variant("boolean", True)]]
    lost = _query(V4, ctx, victim, "SELECT 1")
    assert lost.value.tag == "query-failed" and lost.value.payload.tag in ("text", "db-error")
    assert "hunter2" not in str(lost) and server.password not in str(lost)
    assert _query(V4, ctx, victim, "SELECT 1").value.payload == Variant(
        "text", "connection closed (a previous call failed or timed out)")
    fresh = _open(V4, ctx, server.url())
    assert _query(V4, ctx, fresh, "SELECT 5").value["rows"] == [[Variant("int32", 5)]]
    _end(ctx)


def test_a_host_name_that_cannot_be_encoded_is_connection_failed():
    from runtime.spin.outbound import OutboundPolicy
    from runtime.spin.postgres.client import PgConnection
    from runtime.spin.postgres.errors import PgError

    anywhere = OutboundPolicy.parse(["postgres://*:*"])
    with pytest.raises(PgError) as caught:  # a DNS label IDNA refuses: fails before any lookup, never a trap
        PgConnection(f"postgres://spin:hunter2@{'x' * 70}.example:5432/db", anywhere, 2.0)
    assert caught.value.kind == "connection-failed" and "hunter2" not in caught.value.text
