"""Paths inside a container root, resolved by the kernel with that root as `/` (openat2 RESOLVE_IN_ROOT).

Before pivot_root the sandbox still sees the host, and the spec's mount destinations, like everything else in the
image, may pass through the image's symlinks (`/data -> /etc`). runc resolves them with securejoin and mounts
through `/proc/self/fd/N`; openat2 gives the same guarantee in one syscall and without a race: an absolute
symlink means "from the container root", `..` stops at it, and the fd we mount onto is the very inode that was
resolved. Missing directories on the way are made inside the root, as runc makes mount points.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from shim.kernel import linux

_IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
#: Linux's MAXSYMLINKS: a longer chain is a loop.
_MAX_SYMLINKS = 40


class MountPointError(OSError):
    """A destination that cannot be a mount point (a file where a directory is wanted, or the reverse)."""


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH, *, follow_symlinks: bool = True) -> int:
    """An fd of `path` resolved inside the root `root_fd` names. `follow_symlinks=False` refuses any symlink on
    the way (for the shim's own reserved paths, which the image has no business redirecting)."""
    resolve = _IN_ROOT if follow_symlinks else _IN_ROOT | linux.RESOLVE_NO_SYMLINKS
    return linux.openat2(root_fd, path.lstrip("/") or ".", flags, resolve)


def make_mount_point(root_fd: int, path: str, *, directory: bool, follow_symlinks: bool = True) -> int:
    """An O_PATH fd of the directory (or regular file) `path` inside the root, created with its missing parents
    (mode 0755, files 0644 and empty) when absent; the caller mounts onto `/proc/self/fd/<fd>` and closes it.

    Walked one component at a time from fds, as securejoin's MkdirAll does: a symlink on the way is followed
    inside the root (absolute from the root, `..` stopping at it), and a missing target of it is made there.
    """
    pending = _components(path)
    stack = [os.dup(root_fd)]  # stack[-1]: the directory reached so far; stack[0]: the root
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not pending
            wants_dir = directory or not last
            fd = _open_or_make(stack[-1], name, wants_dir)
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink(name, dir_fd=stack[-1])
                os.close(fd)
                links += 1
                if not follow_symlinks or links > _MAX_SYMLINKS:
                    raise MountPointError(errno.ELOOP, f"{path}: symlink {name!r} -> {target!r} on the way to "
                                          "a mount point the shim reserves" if not follow_symlinks
                                          else f"{path}: too many levels of symbolic links")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending = _components(target, keep_dotdot=True) + pending
                continue
            if wants_dir and not stat.S_ISDIR(mode):
                os.close(fd)
                raise MountPointError(errno.ENOTDIR, f"{path}: {name!r} is not a directory in the container's root")
            if not wants_dir and stat.S_ISDIR(mode):
                os.close(fd)
                raise MountPointError(errno.EISDIR, f"{path} is a directory in the container's root, "
                                                    "but a file is mounted there")
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _components(path: str, *, keep_dotdot: bool = False) -> list[str]:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not keep_dotdot and ".." in parts:
        raise MountPointError(errno.EINVAL, f"mount destination {path!r} must not contain '..'")
    return parts


def _open_or_make(parent_fd: int, name: str, directory: bool) -> int:
    """O_PATH|O_NOFOLLOW fd of `name` in the directory `parent_fd` (a symlink itself, not its target), made
    first when missing: mkdirat/openat take an O_PATH directory fd as it is."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    if directory:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            pass
    else:
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=parent_fd))
        except FileExistsError:
            pass
    return os.open(name, flags, dir_fd=parent_fd)


def fd_path(fd: int) -> str:
    """The magic link a mount call can take as its target: the inode `fd` holds, wherever it is."""
    return posixpath.join("/proc/self/fd", str(fd))
