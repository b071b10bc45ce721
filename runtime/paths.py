"""Resolve a path inside an image root the way the image means it, and never outside that root.

An image's rootfs is seen by the shim as an ordinary host directory, but its absolute symlinks mean "from the
image's root" (``/app.wasm -> /bin/app.wasm``), not from the host's. os.path.realpath would follow them onto
the host, so we walk the path one component at a time (like runc's securejoin) with the image root as ``/``.
Unlike securejoin we do not clamp ``..`` at the root: a path or relative symlink that climbs above it is an
error, because in an app manifest or a task's args it is a mistake (or an attack) the user should see.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime.errors import quoted

#: Same bound as Linux's MAXSYMLINKS: a longer chain is a loop.
_MAX_SYMLINKS = 40
#: Linux's PATH_MAX less the terminating NUL: no longer path names a file, so one is refused before any lookup
#: (and before a message quotes it).
_MAX_PATH_BYTES = 4095


def quoted_path(path: str | os.PathLike[str], limit: int = 160) -> str:
    """``path`` quoted for a message (runtime.errors.quoted): an image's path of up to PATH_MAX, cut."""
    return quoted(str(path), limit)


class PathEscapeError(ValueError):
    """The path cannot be resolved inside the root: it (or a symlink on the way) points outside, or the kernel
    refuses a lookup on the way (a name over 255 bytes, a path over PATH_MAX, a directory it may not search). The
    message says which part. The path is image content either way: the user's error to fix, not the shim's."""


def resolve_in_root(root: Path, path: str | os.PathLike[str]) -> Path:
    """Return the host path that ``path`` names inside ``root``, with every symlink resolved inside ``root``.

    ``path`` may be absolute (from the image root) or relative (to the image root). Components that do not
    exist are kept as written, so callers test existence themselves and can say what was looked for.
    """
    size = len(os.fsencode(str(path)))
    if size > _MAX_PATH_BYTES:
        raise PathEscapeError(f"a path of {size} bytes is longer than Linux allows ({_MAX_PATH_BYTES})")
    base = Path(os.path.realpath(root))
    pending = [p for p in str(path).split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: pending[-1] is the next component
    resolved: list[str] = []
    symlinks = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if not resolved:
                raise PathEscapeError(f"{quoted_path(path)} leads outside the app root ('..' above it)")
            resolved.pop()
            continue
        candidate = base.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            resolved.append(part)
            continue
        except NotADirectoryError:
            resolved.append(part)
            continue
        except OSError as exc:  # ENAMETOOLONG (a name over 255 bytes), EACCES, ELOOP: the image's path, not ours
            looked_up = "/".join([*resolved, part])
            where = "" if looked_up == str(path).strip("/") else f" (looking up {quoted_path(looked_up)})"
            raise PathEscapeError(f"{quoted_path(path)}{where}: {exc.strerror or exc}") from None
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        symlinks += 1
        if symlinks > _MAX_SYMLINKS:
            raise PathEscapeError(f"{quoted_path(path)}: too many levels of symbolic links")
        try:
            target = os.readlink(candidate)
        except OSError as exc:  # replaced meanwhile: the image changes under a running shim only in an attack
            link = quoted_path("/".join([*resolved, part]))
            raise PathEscapeError(f"{quoted_path(path)}: cannot read symlink {link}: {exc.strerror or exc}") from None
        if target.startswith("/"):
            resolved = []  # absolute symlinks are relative to the image root
        elif _climbs_above(resolved, target):
            raise PathEscapeError(
                f"{quoted_path(path)}: symlink {quoted_path('/'.join([*resolved, part]))} -> {quoted_path(target)} "
                "leads outside the app root"
            )
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return base.joinpath(*resolved)


def _climbs_above(resolved: list[str], target: str) -> bool:
    depth = len(resolved)
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def relative_inside(root: Path, host_path: Path) -> str:
    """``host_path`` (already resolved under ``root``) as a root-relative POSIX path, for messages and mounts."""
    return host_path.relative_to(Path(os.path.realpath(root))).as_posix()
