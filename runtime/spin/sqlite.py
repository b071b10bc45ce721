"""Spin's SQLite databases (``sqlite_databases``): files in the task's root, shared by every worker process.

As in Spin (factor-sqlite, its ``spin`` backend on rusqlite): the ``default`` database is
``<work_dir>/.spin/sqlite_db.db`` (the task's rootfs, so it outlives a restart of the task on the same container,
where ``spin up`` keeps it in the app's ``.spin``); other labels come from runtime-config.toml
(``[sqlite_database.<label>] type = "spin"``, ``path``), and may live on a volume. A component opens only the
labels its ``sqlite_databases`` lists (``access-denied`` otherwise); a listed label nothing defines fails the
load (runtime.spin.services), so ``no-such-database`` is only seen for a name no component lists.

Each guest ``open`` gets a connection of its own, closed when the guest drops it or the request ends: a guest
may run ``BEGIN`` ... ``COMMIT`` itself, and a transaction left open must not leak into the next request of the
same worker. Connections are opened in the worker that uses them, never inherited through fork. Several workers
write one file, hence WAL journaling (set once, at load, by ``prepare``) and a busy timeout.

``execute`` runs one statement with positional parameters (``?``, ``?NNN``) and returns the column names and
every row, as Spin does; SQLite's own errors are ``io(message)``, as Spin returns them. A statement string
holding more than one statement is refused, as rusqlite's ``prepare`` refuses it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import AppError
from runtime.spin.state_files import memory_file, refuse_private_paths, reset_memory_file

#: The case names of ``fermyon:spin/sqlite@2.0.0``'s ``error`` variant (``spin:sqlite@3.0.0``'s are the same).
SqliteErrorKind = Literal["no-such-database", "access-denied", "invalid-connection", "database-full", "io"]
#: What a column value is on either side: SQLite's five storage classes.
SqliteValue = int | float | str | bytes | None

DEFAULT_DATABASE_LABEL = "default"
#: Relative to the work dir, where ``spin up`` puts it relative to the app dir.
DEFAULT_DB_RELATIVE_PATH = Path(".spin") / "sqlite_db.db"
#: How long a statement waits for another worker's write lock before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000
#: Spin's per-instance limit of open connections (factor-sqlite's table capacity), for the bindings.
MAX_OPEN_CONNECTIONS_PER_INSTANCE = 256


class SqliteError(Exception):
    """A database operation failed; ``kind`` is the WIT error case, ``message`` the ``io`` payload / a description."""

    def __init__(self, kind: SqliteErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: SqliteErrorKind = kind
        self.message = message


class SqliteSetupError(AppError):
    """A database's file cannot be created or opened at load; the message names the database and the file."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[SqliteValue]]


class Connection:
    """A guest's open connection to one database."""

    def __init__(self, label: str, path: Path) -> None:
        self.label = label
        try:
            # isolation_level=None: no implicit transactions; the guest's BEGIN/COMMIT are its own, as in Spin.
            self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                               check_same_thread=True)
            self._connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise SqliteError("io", f"sqlite database {label!r}: cannot open {path}: {exc}") from None
        # A TEXT value that is not UTF-8 (written by another client) reaches the guest with U+FFFD, not a trap.
        self._connection.text_factory = lambda data: data.decode("utf-8", "replace")
        self._closed = False

    def execute(self, statement: str, parameters: Sequence[SqliteValue]) -> QueryResult:
        if self._closed:
            raise SqliteError("invalid-connection", f"sqlite database {self.label!r}: the connection is closed")
        try:
            cursor = self._connection.execute(statement, tuple(parameters))
            columns = [description[0] for description in cursor.description or ()]
            rows = [list(row) for row in cursor.fetchall()]
        except sqlite3.ProgrammingError as exc:  # e.g. several statements, wrong number of parameters
            raise SqliteError("io", f"{exc}") from None
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise SqliteError("database-full", f"sqlite database {self.label!r}: {exc}") from None
            raise SqliteError("io", f"{exc}") from None
        return QueryResult(columns, rows)

    def last_insert_rowid(self) -> int:
        return int(self._connection.execute("SELECT last_insert_rowid()").fetchone()[0])

    def changes(self) -> int:
        return int(self._connection.execute("SELECT changes()").fetchone()[0])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # A transaction the guest left open is rolled back by close, as dropping a rusqlite connection does.
            self._connection.close()


class SqliteDatabases:
    """An app's databases: label -> SQLite file. Holds no connection itself; safe to inherit through fork."""

    def __init__(self, db_paths: Mapping[str, Path], in_memory: Collection[str] = ()) -> None:
        self.db_paths = dict(db_paths)
        #: Labels kept "in memory" (emptied by prepare).
        self.in_memory = frozenset(in_memory)

    @classmethod
    def for_app(cls, work_dir: Path, configured: Mapping[str, Path | None], *,
                private_dir: Path | None = None) -> SqliteDatabases:
        """``default`` in ``<work_dir>/.spin/sqlite_db.db`` plus the runtime config's labels. A label configured
        without ``path`` is an in-memory database, as in Spin (runtime.spin.state_files: emptied at each load,
        shared by the workers). A database whose file resolves into ``private_dir`` is refused (SqliteSetupError)."""
        paths = {DEFAULT_DATABASE_LABEL: work_dir / DEFAULT_DB_RELATIVE_PATH}
        in_memory = set()
        for label, path in configured.items():
            if path is None:
                path = memory_file(work_dir, "sqlite_db", label)
                in_memory.add(label)
            paths[label] = path
        refuse_private_paths(paths, private_dir, "sqlite database", SqliteSetupError)
        return cls(paths, in_memory)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(self.db_paths)

    def prepare(self, labels: Iterable[str]) -> None:
        """Create the files of ``labels`` now (at load), in WAL mode, so an unwritable location fails task Create."""
        for label in sorted(set(labels) & self.labels):
            path = self.db_paths[label]
            try:
                if label in self.in_memory:
                    reset_memory_file(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                try:
                    connection.execute("PRAGMA journal_mode=WAL")  # stored in the file: every later connection
                finally:
                    connection.close()
            except (OSError, sqlite3.Error) as exc:
                raise SqliteSetupError(
                    f"sqlite database {label!r}: cannot create or open its file {path}: {exc}"
                ) from None

    def open(self, label: str, allowed: Collection[str]) -> Connection:
        """Spin's ``connection.open``: ``allowed`` is the component's ``sqlite_databases``."""
        if label not in allowed:
            raise SqliteError(
                "access-denied", f"the component may not open sqlite database {label!r} (not in sqlite_databases)"
            )
        path = self.db_paths.get(label)
        if path is None:
            raise SqliteError("no-such-database", f"no sqlite database {label!r} is configured")
        return Connection(label, path)
