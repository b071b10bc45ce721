"""Spin's SQLite databases on files: where they live, Spin's access rules, and many worker processes on one file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from runtime.errors import AppError, ManifestError
from runtime.manifest import parse_manifest
from runtime.spin.services import SpinServices
from runtime.spin.sqlite import DEFAULT_DB_RELATIVE_PATH, SqliteDatabases, SqliteError, SqliteSetupError


@pytest.fixture
def databases(tmp_path: Path) -> SqliteDatabases:
    dbs = SqliteDatabases.for_app(tmp_path, {"analytics": tmp_path / "data" / "analytics.db", "scratch": None})
    dbs.prepare(["default", "analytics", "scratch"])
    return dbs


def error_of(call) -> SqliteError:
    with pytest.raises(SqliteError) as info:
        call()
    return info.value


def test_default_database_lives_under_dot_spin_and_each_label_has_its_own_file(tmp_path: Path,
                                                                              databases: SqliteDatabases):
    assert databases.db_paths["default"] == tmp_path / DEFAULT_DB_RELATIVE_PATH == tmp_path / ".spin/sqlite_db.db"
    assert databases.db_paths["scratch"] == tmp_path / ".spin" / "memory" / "sqlite_db.scratch.db"
    assert all(path.is_file() for path in databases.db_paths.values())
    connection = databases.open("default", ["default"])
    connection.execute("CREATE TABLE t (x)", [])
    connection.execute("INSERT INTO t VALUES (?)", [1])
    assert databases.open("scratch", ["scratch"]).execute("SELECT name FROM sqlite_master", []).rows == []


def test_labels_that_are_not_file_names_cannot_share_a_file(tmp_path: Path):
    dbs = SqliteDatabases.for_app(tmp_path, {"a/b": None, "a_b": None, "../up": None})
    paths = [dbs.db_paths[label] for label in ("a/b", "a_b", "../up")]
    assert len(set(paths)) == 3 and all(path.parent == tmp_path / ".spin" / "memory" for path in paths)


def test_a_database_without_path_is_in_memory_emptied_at_each_load_shared_within_one(tmp_path: Path):
    """Spin keeps a path-less database in memory: its data is gone at the next start. Within one load, every
    connection (every worker process after fork) sees the same data; the default database keeps its data."""
    first = SqliteDatabases.for_app(tmp_path, {"scratch": None})
    first.prepare(["default", "scratch"])
    for label in ("default", "scratch"):
        first.open(label, [label]).execute("CREATE TABLE t (x)", [])
        first.open(label, [label]).execute("INSERT INTO t VALUES (?)", [label])
    assert first.open("scratch", ["scratch"]).execute("SELECT x FROM t", []).rows == [["scratch"]]

    again = SqliteDatabases.for_app(tmp_path, {"scratch": None})
    again.prepare(["default", "scratch"])
    assert again.open("default", ["default"]).execute("SELECT x FROM t", []).rows == [["default"]]
    assert again.open("scratch", ["scratch"]).execute("SELECT name FROM sqlite_master", []).rows == []


def test_access_rules_are_spins(databases: SqliteDatabases):
    assert error_of(lambda: databases.open("analytics", ["default"])).kind == "access-denied"
    assert error_of(lambda: databases.open("nowhere", ["nowhere"])).kind == "no-such-database"


def test_data_survives_a_new_databases_object_on_the_same_work_dir(tmp_path: Path, databases: SqliteDatabases):
    databases.open("default", ["default"]).execute("CREATE TABLE kept (v TEXT)", [])
    databases.open("default", ["default"]).execute("INSERT INTO kept VALUES ('yes')", [])
    again = SqliteDatabases.for_app(tmp_path, {})
    again.prepare(["default"])
    assert again.open("default", ["default"]).execute("SELECT v FROM kept", []).rows == [["yes"]]


def test_a_full_database_is_database_full(databases: SqliteDatabases):
    connection = databases.open("scratch", ["scratch"])
    connection.execute("CREATE TABLE big (b BLOB)", [])
    connection.execute("PRAGMA max_page_count = 8", [])
    failure = error_of(lambda: [connection.execute("INSERT INTO big VALUES (?)", [b"x" * 4096]) for _ in range(64)])
    assert failure.kind == "database-full"


def test_a_closed_connection_is_invalid(databases: SqliteDatabases):
    connection = databases.open("default", ["default"])
    connection.close()
    assert error_of(lambda: connection.execute("SELECT 1", [])).kind == "invalid-connection"


def test_a_database_in_the_runtimes_private_dir_is_refused(tmp_path: Path):
    private = tmp_path / "cache"
    with pytest.raises(SqliteSetupError, match="runtime's own directory"):
        SqliteDatabases.for_app(tmp_path, {"x": private / "precompiled.db"}, private_dir=private)


def test_unwritable_location_fails_at_prepare_with_an_app_error(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    dbs = SqliteDatabases({"default": tmp_path / "file" / "db.db"})
    with pytest.raises(SqliteSetupError) as info:
        dbs.prepare(["default"])
    assert isinstance(info.value, AppError) and "'default'" in str(info.value)


def _writer(databases: SqliteDatabases, rounds: int, barrier) -> None:  # runs in a forked child
    barrier.wait()
    for _ in range(rounds):
        connection = databases.open("default", ["default"])
        connection.execute("BEGIN IMMEDIATE", [])
        [[count]] = connection.execute("SELECT n FROM counter", []).rows
        connection.execute("UPDATE counter SET n = ?", [count + 1])
        connection.execute("COMMIT", [])
        connection.close()


def test_concurrent_processes_with_their_own_transactions_lose_no_updates(databases: SqliteDatabases):
    setup = databases.open("default", ["default"])
    setup.execute("CREATE TABLE counter (n INTEGER)", [])
    setup.execute("INSERT INTO counter VALUES (0)", [])
    context = multiprocessing.get_context("fork")
    workers, rounds = 4, 50
    barrier = context.Barrier(workers)
    processes = [context.Process(target=_writer, args=(databases, rounds, barrier)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert setup.execute("SELECT n FROM counter", []).rows == [[workers * rounds]]


MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
sqlite_databases = ["default", "analytics"]
"""


def test_a_database_label_nothing_defines_fails_the_load(tmp_path: Path):
    manifest = parse_manifest(MANIFEST, tmp_path / "spin.toml")
    with pytest.raises(ManifestError) as info:
        SpinServices.build(manifest, {}, work_dir=tmp_path)
    message = str(info.value)
    assert "sqlite_databases names database 'analytics', which is not defined (defined: default)" in message
    assert '[sqlite_database.analytics] type = "spin"' in message


def test_a_database_from_the_runtime_config_serves_the_component(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text('[sqlite_database.analytics]\ntype = "spin"\npath = "a.db"\n')
    services = SpinServices.build(parse_manifest(MANIFEST, tmp_path / "spin.toml"), {}, work_dir=tmp_path)
    services.open_database("web", "analytics").execute("CREATE TABLE t (x)", [])
    assert (tmp_path / "a.db").is_file() and (tmp_path / ".spin" / "sqlite_db.db").is_file()
    assert error_of(lambda: services.open_database("other", "default")).kind == "access-denied"
