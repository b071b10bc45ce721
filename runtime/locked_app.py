"""A Spin *locked app* (the ``spin.lock`` JSON that ``spin registry push`` ships) read into the same Manifest model
as spin.toml, so triggers, variables, files and precompilation work the same whichever way the app arrived.

The runtime knows nothing about registries or containerd: it is given an *app directory* laid out as::

    <app_dir>/spin.lock              the locked app, content refs by digest (reference/shim-v2-protocol.md §5.6)
    <app_dir>/blobs/sha256/<hex>     every piece of content the lock refers to by digest (wasm and files)

(the shim's oci/ package builds it from containerd's content store). Content given inline (small files) is written
into ``blobs/`` too, so from then on every ref is a blob. Each component's files are then laid out under
``<app_dir>/files/<component id>/`` at their guest paths (hard links to the blobs, no copies), which becomes one
``files`` mapping to ``/``: the guest sees exactly what Spin's OCI loader gives it (spin crates/oci/src/loader.rs).

``parse_locked_app`` is pure (text in, model out); ``load_locked_app`` adds the filesystem half. Every error is a
ManifestError naming the lock (as the caller wants it called, e.g. "the locked app of image x") and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from runtime.errors import ManifestError
from runtime.manifest import Application, Component, LocalSource, Manifest, MappedFiles, Trigger, Variable

LOCK_FILE_NAME = "spin.lock"
BLOBS_DIR = "blobs/sha256"
FILES_DIR = "files"

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
    except (ValueError, UnicodeDecodeError) as exc:
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

    Raises ManifestError for a lock that names content the app dir does not hold (a digest missing from the image).
    """
    lock_path = app_dir / LOCK_FILE_NAME
    lock = _Lock(name or str(lock_path))
    try:
        text = lock_path.read_bytes()
    except OSError as exc:
        raise lock.error(f"cannot read: {exc.strerror}") from None
    locked = parse_locked_app(text, lock_path, name)
    for component_id, source in locked.sources.items():
        _blob(app_dir, lock, source, f"component {component_id!r} source")
    for component_id, component_files in locked.files.items():
        root = app_dir / FILES_DIR / component_id
        for locked_file in component_files:
            blob = _blob(app_dir, lock, locked_file.content,
                         f"component {component_id!r} file {locked_file.guest_path!r}")
            target = root / locked_file.guest_path
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()  # a previous load of the same directory
            os.link(blob, target)
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
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise lock.error("every component needs an `id`")
    component_id = raw["id"]
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
    path = PurePosixPath(raw) if isinstance(raw, str) and raw else None
    if path is None or path.is_absolute() or any(part in ("..", ".") for part in path.parts) or "\\" in raw:
        raise lock.error(f"{where}: file path {raw!r} must be a relative path without '..'")
    return path.as_posix()


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


# ---------------------------------------------------------------------------------------------------- blobs


def _blob(app_dir: Path, lock: _Lock, content: ContentRef, where: str) -> Path:
    """The blob file for a ref; inline content is written as a blob first (its digest checked if it has one)."""
    if content.inline is not None:
        actual = hashlib.sha256(content.inline).hexdigest()
        if content.digest_hex is not None and content.digest_hex != actual:
            raise lock.error(f"{where}: inline content does not match its digest sha256:{content.digest_hex}")
        path = blob_path(app_dir, actual)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{actual}.{os.getpid()}.tmp")
            tmp.write_bytes(content.inline)
            os.replace(tmp, path)
        return path
    assert content.digest_hex is not None
    path = blob_path(app_dir, content.digest_hex)
    if not path.is_file():
        raise lock.error(f"{where}: content sha256:{content.digest_hex} is not in the image")
    return path
