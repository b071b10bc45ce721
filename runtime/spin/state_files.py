"""Where the app's state files (key-value stores, SQLite databases) may not be: shared by both services."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import AppError


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
