"""``wasi:filesystem/{types,preopens}@0.2.x``, read-only, over the component's ``files`` (ComponentConfig.preopens).

Spin mounts a component's files read-only, as wasmtime does for ``preopen_dir(..., fs_mutable=False)``; so does
this: every mutation (opening for write, create, truncate, unlink, rename, mkdir, set-size, set-times ...) answers
``error-code.not-permitted``, which is what wasmtime's read-only permissions answer.

Confinement: a guest path is joined to its descriptor's path inside the preopen and normalised lexically (an
absolute path, or ``..`` above the preopen root, is ``not-permitted``), then resolved with realpath and required
to stay inside the preopen's real root, so neither ``..`` nor a symlink in the image can reach anything outside.
The app's files are an image layer that cannot change while the task runs, so checking the resolved path and
then opening it is not racy in any way a guest could use.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat as stat_module
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok
from runtime.host.wasi.io import INPUT_STREAM, InputSource, InputStream, IoError, StreamFailure

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

VERSIONS = ("0.2.*",)

types = REGISTRY.interface("wasi:filesystem/types", VERSIONS)
preopens = REGISTRY.interface("wasi:filesystem/preopens", VERSIONS)


class FsError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_ERRNO_CODES = {
    errno.ENOENT: "no-entry", errno.ENOTDIR: "not-directory", errno.EISDIR: "is-directory", errno.EACCES: "access",
    errno.EPERM: "not-permitted", errno.ELOOP: "loop", errno.ENAMETOOLONG: "name-too-long", errno.EINVAL: "invalid",
    errno.EROFS: "read-only", errno.EEXIST: "exist", errno.ENOTEMPTY: "not-empty", errno.EBADF: "bad-descriptor",
    errno.EMFILE: "insufficient-memory", errno.ENFILE: "insufficient-memory",
}


def _os_error(exc: OSError) -> FsError:
    return FsError(_ERRNO_CODES.get(exc.errno or 0, "io"))


NOT_PERMITTED = Err("not-permitted")


class Descriptor:
    """An open file or directory inside one preopen. ``rel`` is its normalised path below the preopen root."""

    __slots__ = ("root", "rel", "path", "is_dir", "fd")

    def __init__(self, root: str, rel: str, path: str, is_dir: bool) -> None:
        self.root = root
        self.rel = rel
        self.path = path
        self.is_dir = is_dir
        self.fd: int | None = None

    def resolve(self, path: str, follow: bool = True) -> tuple[str, str]:
        """(host path, rel) of ``path`` relative to this directory; FsError if it would leave the preopen."""
        if not self.is_dir:
            raise FsError("not-directory")
        if path.startswith("/"):
            raise FsError("not-permitted")
        joined = posixpath.normpath(posixpath.join(self.rel, path)) if path else self.rel
        if joined in (".", ""):
            joined = ""
        if joined == ".." or joined.startswith("../"):
            raise FsError("not-permitted")
        host = os.path.join(self.root, joined) if joined else self.root
        if follow:
            real = os.path.realpath(host)
        else:
            real = os.path.join(os.path.realpath(os.path.dirname(host)), os.path.basename(host)) if joined else self.root
        if real != self.root and not real.startswith(self.root + os.sep):
            raise FsError("not-permitted")
        return real, joined

    def open_fd(self, ctx: RequestContext) -> int:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise _os_error(exc) from None
            fd = self.fd
            ctx.cleanups.append(lambda: os.close(fd))
        return self.fd


class FileSource(InputSource):
    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        try:
            data = os.pread(self.fd, max_bytes, self.offset)
        except OSError as exc:
            raise StreamFailure(f"reading a file: {exc.strerror}") from None
        self.offset += len(data)
        return data


class DirectoryEntries:
    __slots__ = ("entries",)

    def __init__(self, entries: list[dict[str, str]]) -> None:
        self.entries = entries


DESCRIPTOR = types.resource("descriptor")
DIRECTORY_ENTRY_STREAM = types.resource("directory-entry-stream")


def _descriptor_type(mode: int) -> str:
    if stat_module.S_ISDIR(mode):
        return "directory"
    if stat_module.S_ISREG(mode):
        return "regular-file"
    if stat_module.S_ISLNK(mode):
        return "symbolic-link"
    if stat_module.S_ISCHR(mode):
        return "character-device"
    if stat_module.S_ISBLK(mode):
        return "block-device"
    if stat_module.S_ISFIFO(mode):
        return "fifo"
    if stat_module.S_ISSOCK(mode):
        return "socket"
    return "unknown"


def _timestamp(ns: int) -> dict[str, int]:
    seconds, nanoseconds = divmod(ns, 1_000_000_000)
    return {"seconds": seconds, "nanoseconds": nanoseconds}


def _stat_record(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": _descriptor_type(st.st_mode),
        "link-count": st.st_nlink,
        "size": st.st_size,
        "data-access-timestamp": _timestamp(st.st_atime_ns),
        "data-modification-timestamp": _timestamp(st.st_mtime_ns),
        "status-change-timestamp": _timestamp(st.st_ctime_ns),
    }


def _metadata_hash(st: os.stat_result) -> dict[str, int]:
    digest = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), digest_size=16).digest()
    return {"lower": int.from_bytes(digest[:8], "little"), "upper": int.from_bytes(digest[8:], "little")}


def _fs(call: Any) -> Any:
    """Run ``call``; OSError/FsError become ``Err(error-code)``."""
    try:
        return call()
    except FsError as exc:
        return Err(exc.code)
    except OSError as exc:
        return Err(_os_error(exc).code)


def _desc(ctx: RequestContext, rep: int) -> Descriptor:
    return ctx.table.get(rep, Descriptor)


# --- preopens --------------------------------------------------------------------------------------------------


@preopens.func("get-directories")
def _get_directories(ctx: RequestContext) -> list[tuple[Any, str]]:
    roots: list[tuple[str, str]] = ctx.component.memo("wasi:filesystem/roots", lambda: _roots(ctx.config.preopens))
    return [(ctx.new(DESCRIPTOR, Descriptor(root, "", root, True)), guest) for root, guest in roots]


def _roots(preopen_list: Any) -> list[tuple[str, str]]:
    return [(os.path.realpath(p.host_path), p.guest_path) for p in preopen_list]


# --- reading ---------------------------------------------------------------------------------------------------


@types.func("[method]descriptor.read-via-stream")
def _read_via_stream(ctx: RequestContext, rep: int, offset: int) -> Any:
    desc = _desc(ctx, rep)
    if desc.is_dir:
        return Err("is-directory")
    return _fs(lambda: Ok(ctx.new(INPUT_STREAM, InputStream(FileSource(desc.open_fd(ctx), offset)))))


@types.func("[method]descriptor.read")
def _read(ctx: RequestContext, rep: int, length: int, offset: int) -> Any:
    desc = _desc(ctx, rep)
    if desc.is_dir:
        return Err("is-directory")

    def read() -> Any:
        data = os.pread(desc.open_fd(ctx), min(length, 1 << 20), offset)
        return Ok((data, len(data) < min(length, 1 << 20)))  # a short pread of a regular file is its end

    return _fs(read)


@types.func("[method]descriptor.get-flags")
def _get_flags(ctx: RequestContext, rep: int) -> Any:
    _desc(ctx, rep)
    return Ok({"read"})


@types.func("[method]descriptor.get-type")
def _get_type(ctx: RequestContext, rep: int) -> Any:
    desc = _desc(ctx, rep)
    return _fs(lambda: Ok(_descriptor_type(os.stat(desc.path).st_mode)))


@types.func("[method]descriptor.stat")
def _stat(ctx: RequestContext, rep: int) -> Any:
    desc = _desc(ctx, rep)
    return _fs(lambda: Ok(_stat_record(os.stat(desc.path))))


@types.func("[method]descriptor.stat-at")
def _stat_at(ctx: RequestContext, rep: int, path_flags: set[str], path: str) -> Any:
    desc = _desc(ctx, rep)
    return _fs(lambda: Ok(_stat_record(_stat_under(desc, path, path_flags))))


@types.func("[method]descriptor.open-at")
def _open_at(ctx: RequestContext, rep: int, path_flags: set[str], path: str, open_flags: set[str], flags: set[str]) -> Any:
    desc = _desc(ctx, rep)
    if open_flags & {"create", "exclusive", "truncate"} or flags & {"write", "mutate-directory"}:
        return NOT_PERMITTED

    def open_at() -> Any:
        real, rel = desc.resolve(path, "symlink-follow" in path_flags)
        st = os.stat(real, follow_symlinks="symlink-follow" in path_flags)
        if stat_module.S_ISLNK(st.st_mode):
            raise FsError("loop")  # O_NOFOLLOW on a symlink
        is_dir = stat_module.S_ISDIR(st.st_mode)
        if "directory" in open_flags and not is_dir:
            raise FsError("not-directory")
        return Ok(ctx.new(DESCRIPTOR, Descriptor(desc.root, rel, real, is_dir)))

    return _fs(open_at)


@types.func("[method]descriptor.readlink-at")
def _readlink_at(ctx: RequestContext, rep: int, path: str) -> Any:
    desc = _desc(ctx, rep)

    def readlink() -> Any:
        real, _ = desc.resolve(path, follow=False)
        return Ok(os.readlink(real))

    return _fs(readlink)


@types.func("[method]descriptor.read-directory")
def _read_directory(ctx: RequestContext, rep: int) -> Any:
    desc = _desc(ctx, rep)
    if not desc.is_dir:
        return Err("not-directory")

    def listing() -> Any:
        entries = []
        with os.scandir(desc.path) as scan:
            for entry in scan:
                entries.append({"type": _descriptor_type(entry.stat(follow_symlinks=False).st_mode), "name": entry.name})
        entries.sort(key=lambda e: e["name"], reverse=True)  # popped from the end: ascending order
        return Ok(ctx.new(DIRECTORY_ENTRY_STREAM, DirectoryEntries(entries)))

    return _fs(listing)


@types.func("[method]directory-entry-stream.read-directory-entry")
def _read_directory_entry(ctx: RequestContext, rep: int) -> Any:
    entries = ctx.table.get(rep, DirectoryEntries).entries
    return Ok(entries.pop() if entries else None)


@types.func("[method]descriptor.is-same-object")
def _is_same_object(ctx: RequestContext, rep: int, other: int) -> bool:
    try:
        return os.path.samefile(_desc(ctx, rep).path, _desc(ctx, other).path)
    except OSError:
        return False


@types.func("[method]descriptor.metadata-hash")
def _metadata_hash_of(ctx: RequestContext, rep: int) -> Any:
    desc = _desc(ctx, rep)
    return _fs(lambda: Ok(_metadata_hash(os.stat(desc.path))))


@types.func("[method]descriptor.metadata-hash-at")
def _metadata_hash_at(ctx: RequestContext, rep: int, path_flags: set[str], path: str) -> Any:
    desc = _desc(ctx, rep)
    return _fs(lambda: Ok(_metadata_hash(_stat_under(desc, path, path_flags))))


def _stat_under(desc: Descriptor, path: str, path_flags: set[str]) -> os.stat_result:
    """stat of ``path`` resolved inside ``desc`` (never outside its preopen), following links only if asked."""
    follow = "symlink-follow" in path_flags
    real, _ = desc.resolve(path, follow)
    return os.stat(real, follow_symlinks=follow)


types.define("[method]descriptor.advise", lambda ctx, rep, offset, length, advice: OK_EMPTY)
types.define("[method]descriptor.sync-data", lambda ctx, rep: OK_EMPTY)
types.define("[method]descriptor.sync", lambda ctx, rep: OK_EMPTY)


@types.func("filesystem-error-code")
def _filesystem_error_code(ctx: RequestContext, error: int) -> str | None:
    ctx.table.get(error, IoError)
    return None  # our stream errors never come from a filesystem error the guest should decode


# --- every mutation is refused -----------------------------------------------------------------------------------

for _name in (
    "write-via-stream", "append-via-stream", "set-size", "set-times", "write", "create-directory-at",
    "set-times-at", "link-at", "remove-directory-at", "rename-at", "symlink-at", "unlink-file-at",
):
    types.define(f"[method]descriptor.{_name}", lambda ctx, rep, *args: NOT_PERMITTED)
