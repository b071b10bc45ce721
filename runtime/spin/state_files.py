"""The app's state files (key-value stores, SQLite databases), as both services place and guard them.

In-memory stores: Spin keeps a ``type = "spin"`` key-value store or SQLite database configured without ``path``
in memory, so its data lives as long as the app's process and is gone at the next start. Here several worker
processes serve one app, and a per-process memory database would give each its own data; so such a store is a
SQLite file under ``<work_dir>/.spin/memory/`` that the app's load empties (``reset_memory_file``) before the
workers fork: shared by every worker of this task, and gone at the task's next start, as Spin's is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import AppError

#: Relative to the work dir: where the in-memory stores' files live while the task runs.
MEMORY_DIR_RELATIVE_PATH = Path(".spin") / "memory"
#: SQLite's files beside a database in WAL mode: all removed when an in-memory store is emptied.
_SQLITE_SIDE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def refuse_private_paths(paths: Mapping[str, Path], private_dir: Path | None, noun: str,
                         error: type[AppError]) -> None:
    """Raise ``error`` if a store's file resolves into ``private_dir`` (the runtime's cache dir, which inside the
    sandbox is in the container's root and holds the node's precompiled blobs while the app loads)."""
    if private_dir is None:
        return
    private = os.path.realpath(private_dir)
    for label, path in paths.items():
        real = os.path.realpath(path)
        if real == private or real.startswith(private + "/"):
            raise error(f"{noun} {label!r}: {path} is in the runtime's own directory, not the app's")


def file_safe(label: str) -> str:
    """A label as part of a file name. Labels are Spin identifiers, but the config is not trusted to say so: any
    other character is replaced, and a hash of the label keeps two such labels from sharing a file."""
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in label)[:64]
    if safe == label:
        return label
    return f"{safe}-{hashlib.sha256(label.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def memory_file(work_dir: Path, kind: str, label: str) -> Path:
    """The file that stands in for the in-memory store ``label`` of ``kind`` (``key_value``, ``sqlite_db``)."""
    return work_dir / MEMORY_DIR_RELATIVE_PATH / f"{kind}.{file_safe(label)}.db"


def reset_memory_file(path: Path) -> None:
    """Empty an in-memory store at load: remove its database and SQLite's side files from an earlier start."""
    for suffix in _SQLITE_SIDE_SUFFIXES:
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
