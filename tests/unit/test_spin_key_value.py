"""Key-value stores on SQLite: Spin's access rules, operations, and correctness across worker processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from runtime.errors import AppError
from runtime.spin.key_value import (
    DEFAULT_DB_RELATIVE_PATH,
    KeyValueError,
    KeyValueSetupError,
    KeyValueStores,
)


@pytest.fixture
def stores(tmp_path: Path) -> KeyValueStores:
    kv = KeyValueStores.for_app(tmp_path, {"cache": tmp_path / "data" / "cache.db"})
    kv.prepare(["default", "cache"])
    return kv


def error_of(call) -> KeyValueError:
    with pytest.raises(KeyValueError) as info:
        call()
    return info.value


def test_default_store_lives_under_dot_spin_in_the_work_dir(tmp_path: Path, stores: KeyValueStores):
    assert stores.db_paths["default"] == tmp_path / ".spin" / "sqlite_key_value.db"
    assert (tmp_path / DEFAULT_DB_RELATIVE_PATH).is_file() and (tmp_path / "data" / "cache.db").is_file()


def test_set_get_delete_exists_get_keys(stores: KeyValueStores):
    store = stores.open("default", ["default"])
    assert store.get("missing") is None and not store.exists("missing")
    store.set("a", b"1")
    store.set("b", b"\x00\xff binary")
    store.set("a", b"overwritten")
    assert store.get("a") == b"overwritten" and store.get("b") == b"\x00\xff binary"
    assert store.exists("a") and sorted(store.get_keys()) == ["a", "b"]
    store.delete("a")
    store.delete("never-there")
    assert store.get("a") is None and store.get_keys() == ["b"]


def test_labels_are_separate_even_in_one_file(tmp_path: Path):
    shared = tmp_path / "shared.db"
    kv = KeyValueStores.for_app(tmp_path, {"default": shared, "other": shared})
    kv.prepare(["default", "other"])
    assert kv.db_paths["other"] == kv.db_paths["default"] == shared
    kv.open("default", ["default", "other"]).set("k", b"d")
    kv.open("other", ["default", "other"]).set("k", b"o")
    assert kv.open("default", ["default"]).get("k") == b"d"
    assert kv.open("other", ["other"]).get("k") == b"o"


def test_a_store_without_path_is_in_memory_emptied_at_each_load_shared_within_one(tmp_path: Path):
    """Spin keeps a path-less ``spin`` store in memory: gone at the next start, while the default store keeps
    its data. Within one load the store is one file, so every worker forked after it sees the same data."""
    first = KeyValueStores.for_app(tmp_path, {"cache": None})
    first.prepare(["default", "cache"])
    assert first.db_paths["cache"] == tmp_path / ".spin" / "memory" / "key_value.cache.db"
    first.open("default", ["default"]).set("k", b"kept")
    first.open("cache", ["cache"]).set("k", b"in memory")
    assert KeyValueStores(first.db_paths).open("cache", ["cache"]).get("k") == b"in memory"

    again = KeyValueStores.for_app(tmp_path, {"cache": None})
    again.prepare(["default", "cache"])
    assert again.open("default", ["default"]).get("k") == b"kept"
    assert again.open("cache", ["cache"]).get("k") is None


def test_label_not_in_key_value_stores_is_access_denied(stores: KeyValueStores):
    assert error_of(lambda: stores.open("cache", ["default"])).kind == "access-denied"
    assert error_of(lambda: stores.open("default", [])).kind == "access-denied"


def test_allowed_label_without_backing_is_no_such_store(stores: KeyValueStores):
    assert error_of(lambda: stores.open("nowhere", ["nowhere"])).kind == "no-such-store"


def test_data_survives_a_new_stores_object_on_the_same_work_dir(tmp_path: Path):
    first = KeyValueStores.for_app(tmp_path, {})
    first.prepare(["default"])
    first.open("default", ["default"]).set("persist", b"yes")
    second = KeyValueStores.for_app(tmp_path, {})
    assert second.open("default", ["default"]).get("persist") == b"yes"


def test_the_table_is_spins_so_spin_databases_read_here(tmp_path: Path, stores: KeyValueStores):
    with sqlite3.connect(stores.db_paths["default"]) as connection:
        connection.execute("INSERT INTO spin_key_value (store, key, value) VALUES ('default', 'from-spin', x'01')")
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stores.open("default", ["default"]).get("from-spin") == b"\x01"


def test_batch_operations(stores: KeyValueStores):
    store = stores.open("default", ["default"])
    store.set_many([("x", b"1"), ("y", b"2")])
    assert store.get_many(["x", "nope", "y"]) == [("x", b"1"), ("nope", None), ("y", b"2")]
    store.delete_many(["x", "nope"])
    assert sorted(store.get_keys()) == ["y"]
    assert len(store.get_many([f"k{i}" for i in range(1200)])) == 1200


def test_increment_counts_from_zero_and_reads_back_as_decimal(stores: KeyValueStores):
    store = stores.open("default", ["default"])
    assert store.increment("n", 5) == 5
    assert store.increment("n", -2) == 3
    assert store.get("n") == b"3"
    store.set("text-number", b"41")
    assert store.increment("text-number", 1) == 42
    store.set("word", b"abc")
    error = error_of(lambda: store.increment("word", 1))
    assert error.kind == "other" and "not an integer" in error.message
    assert store.get("word") == b"abc"


def test_compare_and_swap_only_replaces_what_was_seen(stores: KeyValueStores):
    store = stores.open("default", ["default"])
    assert store.compare_and_swap("fresh", None, b"first")
    assert not store.compare_and_swap("fresh", None, b"second")
    assert store.compare_and_swap("fresh", b"first", b"second")
    assert not store.compare_and_swap("fresh", b"first", b"third")
    assert store.get("fresh") == b"second"


def test_unwritable_location_fails_at_prepare_with_an_app_error(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    kv = KeyValueStores({"default": tmp_path / "file" / "kv.db"})
    with pytest.raises(KeyValueSetupError) as info:
        kv.prepare(["default"])
    assert isinstance(info.value, AppError) and "'default'" in str(info.value)


def _worker(stores: KeyValueStores, rounds: int, barrier) -> None:  # runs in a forked child
    store = stores.open("default", ["default"])  # the parent's object, as forked workers inherit SpinServices
    barrier.wait()
    for i in range(rounds):
        store.increment("counter", 1)
        store.set(f"w{i % 5}", b"x" * 100)
        store.get("counter")


def test_concurrent_processes_lose_no_updates(stores: KeyValueStores):
    stores.open("default", ["default"]).get("warm-up-in-parent")  # children inherit this connection: unused there
    context = multiprocessing.get_context("fork")
    workers, rounds = 4, 100
    barrier = context.Barrier(workers)
    processes = [context.Process(target=_worker, args=(stores, rounds, barrier)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert stores.open("default", ["default"]).get("counter") == str(workers * rounds).encode()
    assert stores.open("default", ["default"]).get("warm-up-in-parent") is None  # the parent's connection works


def test_get_set_round_trip_is_fast(stores: KeyValueStores):
    store = stores.open("default", ["default"])
    store.set("warm", b"x")
    rounds = 500
    started = time.perf_counter()
    for i in range(rounds):
        store.set("k", b"value-%d" % i)
        assert store.get("k") == b"value-%d" % i
    per_round_trip = (time.perf_counter() - started) / rounds
    print(f"key-value get+set round trip: {per_round_trip * 1e6:.0f} us")
    assert per_round_trip < 0.01
