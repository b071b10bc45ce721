"""Reading a file the image names, bounded: one open, no blocking, regular files only, never more than a cap.

Everything here may be image content (spin.toml, runtime-config.toml, dotenv files, wasm). A FIFO would hang the
load, a device node read whole would be a host device's contents, and a huge file read whole would be memory the
load spends outside the pod's limit (README, "Security model"). Paths are resolved by the caller (inside the
sandbox's root, or with runtime.paths); a final symlink appearing after that is a race, not content, so it is
refused unless the caller names an unresolved path on purpose (`follow_symlinks`: the manifest, in the sandbox,
where the kernel resolves it inside the container's root).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_CHUNK = 1 << 20


class CappedReadError(Exception):
    """Why the file cannot be read, as a phrase to follow its name ("cannot read: a directory")."""


def describe_cap(cap: int) -> str:
    return f"{cap >> 20} MiB" if cap % (1 << 20) == 0 else f"{cap} bytes"


def open_regular(path: Path, *, follow_symlinks: bool = False) -> int | None:
    """An fd of the regular file at `path`, None if it does not exist; CappedReadError for anything else."""
    try:
        fd = os.open(path, _OPEN_FLAGS & ~os.O_NOFOLLOW if follow_symlinks else _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise CappedReadError(f"cannot read: {reason}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CappedReadError(f"cannot read: {'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}")
    return fd


def read_chunks(fd: int, cap: int) -> Iterator[bytes]:
    """The file's bytes in chunks; CappedReadError once more than `cap` bytes came."""
    size = 0
    while True:
        try:
            chunk = os.read(fd, min(_CHUNK, cap + 1 - size) or 1)
        except OSError as exc:
            raise CappedReadError(f"cannot read: {exc.strerror or exc}") from None
        if not chunk:
            return
        size += len(chunk)
        if size > cap:
            raise CappedReadError(f"larger than {describe_cap(cap)}, the most this shim reads; refusing it")
        yield chunk


def read_capped(path: Path, cap: int, *, follow_symlinks: bool = False) -> bytes | None:
    """The whole regular file (at most `cap` bytes), None when it does not exist. Raises CappedReadError."""
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    if fd is None:
        return None
    try:
        return b"".join(read_chunks(fd, cap))
    finally:
        os.close(fd)
