"""A Spin *locked app* (the ``spin.lock`` JSON that ``spin registry push`` ships) read into the same Manifest model
as spin.toml, so triggers, variables, files and precompilation work the same whichever way the app arrived.

The runtime knows nothing about registries or containerd: it is given an *app directory* laid out as::

    <app_dir>/spin.lock              the locked app, content refs by digest (spin crates/locked-app/src/locked.rs)
    <app_dir>/blobs/sha256/<hex>     every piece of content the lock refers to by digest (wasm and files)

(the shim's oci/ package builds it from containerd's content store). Content given inline (small files) is written
into ``blobs/`` too, so from then on every ref is a blob. Each component's files are then laid out under
``<app_dir>/files/<component id>/`` at their guest paths (hard links to the blobs, no copies), which becomes one
``files`` mapping to ``/``: the guest sees exactly what Spin's OCI loader gives it (spin crates/oci/src/loader.rs).

``parse_locked_app`` is pure (text in, model out); ``load_locked_app`` adds the filesystem half. Every error is a
ManifestError naming the lock (as the caller wants it called, e.g. "the locked app of image x") and what is wrong.

The lock is image content (README, "Security model"): its component ids name directories and its file
paths name files, so ids must be Spin's kebab ids (runtime.ids) and paths relative without '..', and the filesystem
half walks the app dir one name at a time through directory fds opened with O_NOFOLLOW, so that nothing it creates,
replaces or links can land outside ``app_dir`` even when the directory holds symlinks it did not make.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

from runtime.capped_read import CappedReadError, read_capped
from runtime.errors import ManifestError
from runtime.ids import is_kebab_id
from runtime.manifest import Application, Component, LocalSource, Manifest, MappedFiles, Trigger, Variable

LOCK_FILE_NAME = "spin.lock"
BLOBS_DIR = "blobs/sha256"
FILES_DIR = "files"
#: The most a spin.lock may be. Spin inlines only small files into it and a lock of hundreds of components is
#: well under 1 MiB; the lock is read whole into memory (here and by oci.source), so it is capped.
LOCK_MAX_BYTES = 16 << 20
#: A guest file path longer than Linux's PATH_MAX could not be opened by the guest anyway; it also bounds how deep
#: the directory walk goes (one fd per level).
_MAX_GUEST_PATH = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_T = TypeVar("_T")

#: Spin writes 0, or 1 when the lock has `must_understand` entries (spin crates/locked-app/src/locked.rs).
SUPPORTED_LOCK_VERSIONS = (0, 1)
#: `must_understand` features this runtime honours; any other is refused, as Spin does.
_UNDERSTOOD = frozenset({"host_requirements", "component_host_requirements"})
_DIGEST = re.compile(r"^sha256:(?P<hex>[0-9a-f]{64})$")


@dataclass(frozen=True)
class ContentRef:
    """One piece of content: by digest, inline bytes, or both (Spin keeps the digest of inlined files)."""

    digest_hex: str | None
    inline: bytes | None


@dataclass(frozen=True)
class LockedFile:
    guest_path: str  # relative, normal components only (Spin's is_safe_to_join)
    content: ContentRef


@dataclass(frozen=True)
class LockedApp:
    manifest: Manifest
    #: component id -> its wasm
    sources: Mapping[str, ContentRef]
    #: component id -> its files
    files: Mapping[str, tuple[LockedFile, ...]]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


class _Lock:
    """The lock's display name, to prefix every error."""

    def __init__(self, name: str) -> None:
        self.name = name

    def error(self, message: str) -> ManifestError:
        return ManifestError(f"{self.name}: {message}")


def parse_locked_app(text: str | bytes, lock_path: Path, name: str | None = None) -> LockedApp:
    """Parse and validate a locked app. Component sources point into ``<lock dir>/blobs``; files into ``files/``."""
    lock = _Lock(name or str(lock_path))
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise lock.error(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise lock.error("must be a JSON object")
    _check_version(lock, doc)
    metadata = _table(lock, doc, "metadata", "the app's metadata")
    application = _application(lock, metadata)
    variables = _variables(lock, _table(lock, doc, "variables", "variables"))
    _check_host_requirements(lock, _table(lock, doc, "host_requirements", "host_requirements"), "the app")

    raw_components = doc.get("components", [])
    if not isinstance(raw_components, list):
        raise lock.error("`components` must be a list")
    components: dict[str, Component] = {}
    sources: dict[str, ContentRef] = {}
    files: dict[str, tuple[LockedFile, ...]] = {}
    for raw in raw_components:
        component, source, component_files = _component(lock, raw)
        if component.id in components:
            raise lock.error(f"component {component.id!r} is listed twice")
        components[component.id] = component
        sources[component.id] = source
        files[component.id] = component_files

    triggers = _triggers(lock, doc.get("triggers", []), components)
    manifest = Manifest(
        path=lock_path,
        application=application,
        variables=_frozen(variables),
        triggers=tuple(triggers),
        components=_frozen(components),
    )
    return LockedApp(manifest=manifest, sources=_frozen(sources), files=_frozen(files))


def load_locked_app(app_dir: Path, name: str | None = None) -> Manifest:
    """Read ``<app_dir>/spin.lock``, make every ref a blob, lay out each component's files; return the Manifest.

    Raises ManifestError for a lock that names content the app dir does not hold (a digest missing from the image),
    or when the app dir holds something in the way that this function did not make (a symlink, a directory where
    a file goes).
    """
    lock_path = app_dir / LOCK_FILE_NAME
    lock = _Lock(name or str(lock_path))
    try:
        text = read_capped(lock_path, LOCK_MAX_BYTES)
    except CappedReadError as exc:
        raise lock.error(str(exc)) from None
    if text is None:
        raise lock.error("cannot read: it does not exist")
    locked = parse_locked_app(text, lock_path, name)
    root_fd = os.open(app_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the caller's own directory
    try:
        blobs_fd = _open_subdirs(lock, root_fd, BLOBS_DIR.split("/"), "the blob directory")
        try:
            for component_id, source in locked.sources.items():
                _blob(blobs_fd, lock, source, f"component {component_id!r} source")
            for component_id, component_files in locked.files.items():
                if component_files:
                    _lay_out_files(lock, root_fd, blobs_fd, component_id, component_files)
        finally:
            os.close(blobs_fd)
    finally:
        os.close(root_fd)
    return locked.manifest


def blob_path(app_dir: Path, digest_hex: str) -> Path:
    return app_dir / BLOBS_DIR / digest_hex


# ---------------------------------------------------------------------------------------------------- parsing


def _check_version(lock: _Lock, doc: Mapping[str, Any]) -> None:
    version = doc.get("spin_lock_version")
    if version not in SUPPORTED_LOCK_VERSIONS or isinstance(version, bool):
        raise lock.error(
            f"unknown spin_lock_version {version!r}: this shim reads locked apps of version "
            f"{' and '.join(map(str, SUPPORTED_LOCK_VERSIONS))}; push the app with a Spin release this shim supports"
        )
    must_understand = doc.get("must_understand", [])
    if not isinstance(must_understand, list):
        raise lock.error("`must_understand` must be a list")
    unknown = [feature for feature in must_understand if feature not in _UNDERSTOOD]
    if unknown:
        raise lock.error(f"the app needs feature(s) this shim does not understand: {', '.join(map(repr, unknown))}")


def _check_host_requirements(lock: _Lock, requirements: Mapping[str, Any], whose: str) -> None:
    for key, value in requirements.items():
        if key == "local_service_chaining" and value != "required":
            continue
        what = "local service chaining" if key == "local_service_chaining" else repr(key)
        raise lock.error(f"{whose} requires host capability {what}, which this shim does not provide")


def _application(lock: _Lock, metadata: Mapping[str, Any]) -> Application:
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise lock.error("metadata.name is missing")
    triggers = metadata.get("triggers", {})
    if not isinstance(triggers, dict) or not all(isinstance(v, dict) for v in triggers.values()):
        raise lock.error("metadata.triggers must map trigger types to tables")
    authors = metadata.get("authors", [])
    return Application(
        name=name,
        version=_opt_str(lock, metadata, "version", "metadata"),
        description=_opt_str(lock, metadata, "description", "metadata"),
        authors=tuple(authors) if isinstance(authors, list) else (),
        trigger_options=_frozen({k: _frozen(v) for k, v in triggers.items()}),
    )


def _variables(lock: _Lock, raw: Mapping[str, Any]) -> dict[str, Variable]:
    variables = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise lock.error(f"variable {name!r} must be an object")
        default = _opt_str(lock, spec, "default", f"variable {name!r}")
        variables[name] = Variable(
            name=name,
            description=_opt_str(lock, spec, "description", f"variable {name!r}"),
            default=default,
            required=default is None,  # the lock has no `required`: a variable without a default is required
            secret=spec.get("secret") is True,
        )
    return variables


def _component(lock: _Lock, raw: Any) -> tuple[Component, ContentRef, tuple[LockedFile, ...]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise lock.error("every component needs an `id`")
    component_id = raw["id"]
    if not is_kebab_id(component_id):
        # Spin refuses it too (its ids are KebabId); here it also names the directory of the component's files.
        raise lock.error(
            f"component id {component_id!r} must be lower-kebab-case (letters and digits, words joined by '-'), "
            "as Spin requires"
        )
    where = f"component {component_id!r}"
    source_raw = raw.get("source")
    if not isinstance(source_raw, dict):
        raise lock.error(f"{where}: `source` is missing")
    source = _content_ref(lock, source_raw, f"{where} source")
    if raw.get("dependencies"):
        raise lock.error(
            f"{where}: unresolved component `dependencies`; push the app composed (`spin registry push` composes "
            "by default)"
        )
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise lock.error(f"{where}: `metadata` must be an object")
    _check_host_requirements(lock, raw.get("host_requirements") or {}, where)
    files: dict[str, LockedFile] = {}
    for entry in raw.get("files") or []:
        if not isinstance(entry, dict):
            raise lock.error(f"{where}: every `files` entry must be an object")
        guest_path = _guest_path(lock, entry.get("path"), where)
        if guest_path in files:
            raise lock.error(f"{where}: file {guest_path!r} is listed twice")
        files[guest_path] = LockedFile(guest_path, _content_ref(lock, entry, f"{where} file {guest_path!r}"))
    environment = raw.get("env") or {}
    config = raw.get("config") or {}
    for field_name, table in (("env", environment), ("config", config)):
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise lock.error(f"{where}: `{field_name}` must map names to strings")
    digest_hex = source.digest_hex or hashlib.sha256(source.inline or b"").hexdigest()
    component = Component(
        id=component_id,
        source=LocalSource(f"{BLOBS_DIR}/{digest_hex}"),
        description=_opt_str(lock, metadata, "description", where),
        environment=_frozen(environment),
        files=(MappedFiles(source=f"{FILES_DIR}/{component_id}", destination="/"),) if files else (),
        allowed_outbound_hosts=_str_tuple(lock, metadata, "allowed_outbound_hosts", where),
        key_value_stores=_str_tuple(lock, metadata, "key_value_stores", where),
        sqlite_databases=_str_tuple(lock, metadata, "databases", where),
        ai_models=_str_tuple(lock, metadata, "ai_models", where),
        variables=_frozen(config),
    )
    return component, source, tuple(files.values())


def _triggers(lock: _Lock, raw: Any, components: Mapping[str, Component]) -> list[Trigger]:
    if not isinstance(raw, list):
        raise lock.error("`triggers` must be a list")
    triggers = []
    seen: set[str] = set()
    for entry in raw:
        if not isinstance(entry, dict):
            raise lock.error("every trigger must be an object")
        trigger_id, trigger_type = entry.get("id"), entry.get("trigger_type")
        if not isinstance(trigger_id, str) or not isinstance(trigger_type, str) or not trigger_type:
            raise lock.error("every trigger needs an `id` and a `trigger_type`")
        if not _printable(trigger_id) or not _printable(trigger_type):
            # Spin's trigger ids are free-form strings and no path is made of them (component ids name the
            # directories), but they reach logs and error messages: no empty or control-character ids.
            raise lock.error(f"trigger id {trigger_id!r} ({trigger_type!r}) must be a non-empty printable string")
        if trigger_id in seen:
            raise lock.error(f"trigger id {trigger_id!r} is used twice")
        seen.add(trigger_id)
        config = entry.get("trigger_config") or {}
        if not isinstance(config, dict):
            raise lock.error(f"trigger {trigger_id!r}: `trigger_config` must be an object")
        component = config.get("component")
        if component is not None and component not in components:
            known = ", ".join(sorted(components)) or "none"
            raise lock.error(
                f"trigger {trigger_id!r} ({trigger_type}) runs component {component!r}, which the app does not "
                f"contain (components: {known})"
            )
        rest = {k: v for k, v in config.items() if k != "component"}
        triggers.append(Trigger(type=trigger_type, id=trigger_id, component=component, config=_frozen(rest)))
    return triggers


def _content_ref(lock: _Lock, raw: Mapping[str, Any], where: str) -> ContentRef:
    digest = raw.get("digest")
    inline = raw.get("inline")
    digest_hex = None
    if digest is not None:
        match = _DIGEST.match(digest) if isinstance(digest, str) else None
        if match is None:
            raise lock.error(f"{where}: digest {digest!r} is not sha256:<64 hex digits>")
        digest_hex = match["hex"]
    data = None
    if inline is not None:
        try:
            data = base64.b64decode(inline, validate=True) if isinstance(inline, str) else None
        except binascii.Error:
            data = None
        if data is None:
            raise lock.error(f"{where}: `inline` is not base64")
    if digest_hex is None and data is None:
        source = raw.get("source")
        hint = f" (it names {source!r}, a path on the machine that pushed it)" if source else ""
        raise lock.error(f"{where}: has neither a digest nor inline content{hint}")
    return ContentRef(digest_hex=digest_hex, inline=data)


def _guest_path(lock: _Lock, raw: Any, where: str) -> str:
    path = PurePosixPath(raw) if isinstance(raw, str) and raw and "\0" not in raw else None
    if path is None or path.is_absolute() or any(part in ("..", ".") for part in path.parts) or "\\" in raw:
        raise lock.error(f"{where}: file path {raw!r} must be a relative path without '..'")
    if len(raw.encode(errors="surrogatepass")) > _MAX_GUEST_PATH:
        raise lock.error(f"{where}: file path {raw[:64]!r}... is longer than {_MAX_GUEST_PATH} bytes")
    return path.as_posix()


def _printable(value: str) -> bool:
    return bool(value) and value.isprintable()


def _table(lock: _Lock, doc: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise lock.error(f"{what} must be an object")
    return value


def _opt_str(lock: _Lock, table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise lock.error(f"{where}: `{key}` must be a string")
    return value


def _str_tuple(lock: _Lock, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise lock.error(f"{where}: `{key}` must be a list of strings")
    return tuple(value)


# ---------------------------------------------------------------------------------------------------- blobs and files
#
# Everything below works on directory fds: a name is created, replaced or linked only in a directory reached from
# ``app_dir`` one component at a time with O_NOFOLLOW, so a symlink in the app dir (which this code never makes)
# makes the load fail instead of redirecting a write, and an unlink only ever removes an entry of such a directory.


def _blob(blobs_fd: int, lock: _Lock, content: ContentRef, where: str) -> str:
    """The name in ``blobs/sha256`` of a ref's blob; inline content is written as a blob first (its digest checked
    if it has one). A blob must be a regular file: a symlink there is refused, not followed."""
    if content.inline is not None:
        actual = hashlib.sha256(content.inline).hexdigest()
        if content.digest_hex is not None and content.digest_hex != actual:
            raise lock.error(f"{where}: inline content does not match its digest sha256:{content.digest_hex}")
        if not _is_regular(blobs_fd, actual):
            _guarded(lock, where, lambda: _write_blob(blobs_fd, actual, content.inline or b""))
        return actual
    assert content.digest_hex is not None
    if not _is_regular(blobs_fd, content.digest_hex):
        raise lock.error(f"{where}: content sha256:{content.digest_hex} is not in the image")
    return content.digest_hex


def _write_blob(blobs_fd: int, name: str, data: bytes) -> None:
    """Write a fresh tmp file (O_EXCL: never an existing file or link) and rename it into place."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=blobs_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=blobs_fd, dst_dir_fd=blobs_fd)
    except BaseException:
        os.unlink(tmp, dir_fd=blobs_fd)
        raise


def _lay_out_files(lock: _Lock, root_fd: int, blobs_fd: int, component_id: str,
                   component_files: tuple[LockedFile, ...]) -> None:
    """Hard-link each file's blob at ``files/<component id>/<guest path>``, walking the paths in order with a stack
    of open directory fds (at most one per level of the current path)."""
    where = f"component {component_id!r}"
    component_fd = _open_subdirs(lock, root_fd, [FILES_DIR, component_id], f"{where}: the files directory")
    stack: list[tuple[str, int]] = []  # (name, fd) of each directory below component_fd on the current path
    try:
        for locked_file in sorted(component_files, key=lambda f: f.guest_path.split("/")):
            file_where = f"{where} file {locked_file.guest_path!r}"
            blob = _blob(blobs_fd, lock, locked_file.content, file_where)
            *parents, leaf = locked_file.guest_path.split("/")
            common = 0
            while common < min(len(stack), len(parents)) and stack[common][0] == parents[common]:
                common += 1
            while len(stack) > common:
                os.close(stack.pop()[1])
            for part in parents[common:]:
                parent_fd = stack[-1][1] if stack else component_fd
                stack.append((part, _open_subdirs(lock, parent_fd, [part], file_where)))
            _link_file(lock, blobs_fd, blob, stack[-1][1] if stack else component_fd, leaf, file_where)
    finally:
        for _, fd in stack:
            os.close(fd)
        os.close(component_fd)


def _link_file(lock: _Lock, blobs_fd: int, blob: str, dir_fd: int, leaf: str, where: str) -> None:
    """Link the blob as ``leaf``, replacing a file or link an earlier load of this directory left there (unlink
    removes the entry itself, never what a link points to); a directory in the way is an error."""
    try:
        existing = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise lock.error(f"{where}: another file of the component is laid out below it (it is a directory)")

    def link() -> None:
        if existing is not None:
            os.unlink(leaf, dir_fd=dir_fd)
        os.link(blob, leaf, src_dir_fd=blobs_fd, dst_dir_fd=dir_fd, follow_symlinks=False)

    _guarded(lock, where, link)


def _open_subdirs(lock: _Lock, parent_fd: int, names: list[str], where: str) -> int:
    """An fd of ``parent/names[0]/names[1]/...``, each made if missing and opened without following a symlink."""
    fd = parent_fd
    try:
        for name in names:
            child = _guarded(lock, where, lambda: _open_subdir(fd, name))  # noqa: B023 (called at once)
            if fd != parent_fd:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != parent_fd:
            os.close(fd)
        raise
    return fd


def _open_subdir(parent_fd: int, name: str) -> int:
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except NotADirectoryError:  # O_DIRECTORY answers ENOTDIR for a symlink too; tell the two apart for the message
        if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise


def _guarded(lock: _Lock, where: str, action: Callable[[], _T]) -> _T:
    """Run a filesystem step; an OSError becomes the lock's ManifestError saying what was in the way."""
    try:
        return action()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "a symbolic link is in the way, which this shim did not make; refusing to follow it"
        elif exc.errno == errno.ENOTDIR:
            reason = "a file is in the way where a directory goes"
        else:
            reason = exc.strerror or str(exc)
        raise lock.error(f"{where}: cannot lay it out: {reason}") from None


def _is_regular(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False

