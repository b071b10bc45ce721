"""Spin key-value stores on SQLite, shared by every worker process that serves the app.

The data layout is Spin's own (spin crates/key-value-spin): one table ``spin_key_value(store, key, value)`` with
``(store, key)`` as primary key, so a database written by ``spin up`` reads here and the other way round. The
``default`` store lives in ``<work_dir>/.spin/sqlite_key_value.db`` (the task's rootfs, so it outlives a restart
of the task on the same container); other labels come from runtime-config.toml, a ``type = "spin"`` label
without ``path`` being an in-memory store (runtime.spin.state_files).

Concurrency: several worker processes (and several guest threads in each) use one file. Hence WAL journaling
(readers never block the writer), a busy timeout instead of immediate SQLITE_BUSY, one-statement autocommit
writes, and ``BEGIN IMMEDIATE`` for the read-modify-write of ``increment`` (so two processes incrementing the
same key never lose an update). Connections are opened lazily in the process and thread that use them, never
inherited through fork (SQLite forbids using a connection across fork); ``prepare`` at load creates the
file and schema with a connection it closes before the workers fork.

Access rules (Spin's ``open``): a label the component does not list in ``key_value_stores`` is
``access-denied``; a listed label with no backing store is ``no-such-store`` (the load check in
runtime.spin.services normally rules that out).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from runtime.errors import AppError
from runtime.spin.key_value_errors import KeyValueError, KeyValueErrorKind
from runtime.spin.key_value_redis import RedisBackend, RedisStore
from runtime.spin.state_files import memory_file, refuse_private_paths, reset_memory_file

__all__ = ["KeyValueError", "KeyValueErrorKind", "KeyValueSetupError", "KeyValueStores", "Store"]


_T = TypeVar("_T")

DEFAULT_STORE_LABEL = "default"
#: Relative to the work dir, as ``spin up`` places it relative to the app dir.
DEFAULT_DB_RELATIVE_PATH = Path(".spin") / "sqlite_key_value.db"
#: Spin's per-instance limit of open stores (key-value factor ``DEFAULT_STORE_TABLE_CAPACITY``), for the bindings.
MAX_OPEN_STORES_PER_INSTANCE = 256
#: How long a statement waits for another process's write lock before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (store, key)
)
"""


#: Connections a forked child inherited (see _Database.connection): referenced so they are never closed.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class KeyValueSetupError(AppError):
    """A store's file cannot be created or opened at load; the message names the store and the file."""


class _Database:
    """One SQLite file, with a connection per (process, thread) opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def prepare(self) -> None:
        """Create the directory, the file, WAL mode and the table, then close: safe to call before fork."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            # journal_mode=WAL is stored in the file, so every later connection (any process) uses it.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
        finally:
            connection.close()

    def connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", None) != pid:
            if connection is not None:
                # Inherited through fork: never used nor closed here (closing runs SQLite's last-connection
                # checkpoint/WAL cleanup in the wrong process), only kept from the garbage collector.
                _INHERITED_CONNECTIONS.append(connection)
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=True
            )
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # In WAL mode NORMAL loses no committed data on a process crash, only on power loss; FULL costs an
            # fsync per write.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            self._local.connection, self._local.pid = connection, pid
        return connection


@dataclass
class Store:
    """An open store: what a guest's ``store`` / ``bucket`` resource stands for."""

    label: str
    _db: _Database = field(repr=False)

    def get(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM spin_key_value WHERE store = ? AND key = ?", (self.label, key))
        return None if row is None else _as_bytes(row[0])

    def set(self, key: str, value: bytes) -> None:
        self._run(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            (self.label, key, bytes(value)),
        )

    def delete(self, key: str) -> None:
        self._run("DELETE FROM spin_key_value WHERE store = ? AND key = ?", (self.label, key))

    def exists(self, key: str) -> bool:
        return self._one("SELECT 1 FROM spin_key_value WHERE store = ? AND key = ?", (self.label, key)) is not None

    def get_keys(self) -> list[str]:
        return [row[0] for row in self._all("SELECT key FROM spin_key_value WHERE store = ?", (self.label,))]

    # --------------------------------------------------------------------------- wasi:keyvalue batch and atomics

    def get_many(self, keys: Sequence[str]) -> list[tuple[str, bytes | None]]:
        """``(key, value)`` in the order of ``keys``, value None for a missing key (wasi:keyvalue/batch.get-many)."""
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit is 999 in old builds
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, value in self._all(
                f"SELECT key, value FROM spin_key_value WHERE store = ? AND key IN ({marks})", (self.label, *chunk)
            ):
                found[key] = _as_bytes(value)
        return [(key, found.get(key)) for key in keys]

    def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        rows = [(self.label, key, bytes(value)) for key, value in items]
        self._transaction(
            lambda c: c.executemany(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                rows,
            )
        )

    def delete_many(self, keys: Iterable[str]) -> None:
        rows = [(self.label, key) for key in keys]
        self._transaction(lambda c: c.executemany("DELETE FROM spin_key_value WHERE store = ? AND key = ?", rows))

    def increment(self, key: str, delta: int) -> int:
        """Add ``delta`` to the number stored at ``key`` (missing = 0) and return the new value, atomically.

        Stored as an SQLite INTEGER, as Spin's sqlite store does; ``get`` returns it as decimal ASCII bytes. A
        value that is not a number is an ``other`` error (Spin's store fails the same way).
        """

        def add(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "SELECT value FROM spin_key_value WHERE store = ? AND key = ?", (self.label, key)
            ).fetchone()
            current = 0 if row is None else _as_int(row[0], key)
            new_value = current + delta
            if not -(2**63) <= new_value < 2**63:
                raise KeyValueError("other", f"increment of {key!r} overflows a signed 64-bit integer")
            connection.execute(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                (self.label, key, new_value),
            )
            return new_value

        return self._transaction(add)

    def compare_and_swap(self, key: str, expected: bytes | None, value: bytes) -> bool:
        """Set ``key`` to ``value`` only if it still holds ``expected`` (None = absent); False if it changed.

        wasi:keyvalue/atomics ``swap``: ``expected`` is what ``cas.current`` saw when the cas was made.
        """

        def swap(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT value FROM spin_key_value WHERE store = ? AND key = ?", (self.label, key)
            ).fetchone()
            if (None if row is None else _as_bytes(row[0])) != expected:
                return False
            connection.execute(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                (self.label, key, bytes(value)),
            )
            return True

        return self._transaction(swap)

    # ------------------------------------------------------------------------------------------------ plumbing

    def _one(self, sql: str, params: tuple[object, ...]) -> tuple | None:
        try:
            return self._db.connection().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None

    def _all(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        try:
            return self._db.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None

    def _run(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            self._db.connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            connection = self._db.connection()
            connection.execute("BEGIN IMMEDIATE")  # take the write lock now: no lost updates between processes
        except sqlite3.Error as exc:
            raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None
        try:
            result = body(connection)
        except BaseException as exc:
            connection.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            connection.execute("ROLLBACK")
            raise KeyValueError("other", f"key-value store {self.label!r}: {exc}") from None
        return result


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):  # written by increment
        return str(value).encode()
    if isinstance(value, str):  # a TEXT value from another writer of the same table
        return value.encode()
    return str(value).encode()


def _as_int(value: object, key: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(_as_bytes(value).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise KeyValueError("other", f"the value of {key!r} is not an integer, so it cannot be incremented") from None


class KeyValueStores:
    """An app's key-value stores: label -> SQLite file, or a Redis server (runtime.spin.key_value_redis). One per
    app per process; cheap until a store is used."""

    def __init__(self, db_paths: Mapping[str, Path], redis_urls: Mapping[str, str] | None = None,
                 in_memory: Collection[str] = ()) -> None:
        #: label -> file. Several labels may share a file (rows are keyed by label).
        self.db_paths = dict(db_paths)
        #: Labels kept "in memory" (a file of their own, emptied by prepare).
        self.in_memory = frozenset(in_memory)
        #: label -> Redis URL (labels here are not in db_paths).
        self.redis_urls = dict(redis_urls or {})
        by_path: dict[Path, _Database] = {}
        self._databases = {label: by_path.setdefault(path, _Database(path)) for label, path in self.db_paths.items()}
        self._redis = {label: RedisBackend(url) for label, url in self.redis_urls.items()}  # no I/O until used

    @classmethod
    def for_app(cls, work_dir: Path, configured: Mapping[str, Path | None], *,
                redis_urls: Mapping[str, str] | None = None, private_dir: Path | None = None) -> KeyValueStores:
        """``default`` in ``<work_dir>/.spin/sqlite_key_value.db`` plus the runtime config's labels (None = an
        in-memory store, as in Spin: runtime.spin.state_files; ``redis_urls``: labels on a Redis server,
        ``default`` too if it is one of them). A store whose file resolves into ``private_dir`` is refused
        (KeyValueSetupError)."""
        redis_urls = dict(redis_urls or {})
        paths = {} if DEFAULT_STORE_LABEL in redis_urls else {DEFAULT_STORE_LABEL: work_dir / DEFAULT_DB_RELATIVE_PATH}
        in_memory = set()
        for label, path in configured.items():
            if path is None:
                path = memory_file(work_dir, "key_value", label)
                in_memory.add(label)
            paths[label] = path
        refuse_private_paths(paths, private_dir, "key-value store", KeyValueSetupError)
        return cls(paths, redis_urls, in_memory)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(self.db_paths) | frozenset(self.redis_urls)

    def prepare(self, labels: Iterable[str]) -> None:
        """Create the SQLite files of ``labels`` now (at load), so an unwritable location fails task Create. Redis
        stores connect on first use, as Spin's do."""
        for label in sorted(set(labels) & frozenset(self.db_paths)):
            database = self._databases[label]
            try:
                if label in self.in_memory:
                    reset_memory_file(database.path)
                database.prepare()
            except (OSError, sqlite3.Error) as exc:
                raise KeyValueSetupError(
                    f"key-value store {label!r}: cannot create or open its SQLite file {database.path}: {exc}"
                ) from None

    def open(self, label: str, allowed: Collection[str]) -> Store | RedisStore:
        """Spin's ``store.open``: ``allowed`` is the component's ``key_value_stores``."""
        if label not in allowed:
            raise KeyValueError(
                "access-denied", f"the component may not open key-value store {label!r} (not in key_value_stores)"
            )
        backend = self._redis.get(label)
        if backend is not None:
            return RedisStore(label, backend)
        database = self._databases.get(label)
        if database is None:
            raise KeyValueError("no-such-store", f"no key-value store {label!r} is configured")
        return Store(label, database)
