"""Spin's runtime config file (``/runtime-config.toml`` in the app image), the parts this shim backs.

containerd-shim-spin reads ``runtime-config.toml`` from the image root (SpinKube mounts it there; ``spin
registry push --runtime-config`` is not involved). Of Spin's tables only ``[key_value_store.<label>]`` with
``type = "spin"`` (a sqlite file) is backed here; every other store type, and every other table that changes
what an app can reach (sqlite databases, LLMs, variable providers such as Vault, client TLS), fails the load
with a message saying so, because silently ignoring it would run the app against something it did not ask for.

``path`` is relative to the config file's directory, as in Spin, and always stays inside the image root (an
absolute path means "from the image root"). Without ``path`` a ``spin`` store shares the default store's file
(Spin would keep such a store in memory; several worker processes serve an app here, and a per-process memory
store would give each its own data).

Pure parsing (``parse_runtime_config``) plus the one function that looks at the filesystem.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.errors import AppError
from runtime.paths import PathEscapeError, resolve_in_root

RUNTIME_CONFIG_FILE_NAME = "runtime-config.toml"

#: Spin's other runtime-config tables: recognised so the message can say "not supported" instead of "unknown".
_UNSUPPORTED_TABLES = {
    "sqlite_database": "SQLite databases (sqlite_databases) are not provided by this shim",
    "llm_compute": "LLM inferencing (ai_models) is not provided by this shim",
    "variables_provider": "variable providers other than the container's environment are not supported by this shim "
    "(set SPIN_VARIABLE_<NAME> in the container's environment instead)",
    "config_provider": "variable providers other than the container's environment are not supported by this shim "
    "(set SPIN_VARIABLE_<NAME> in the container's environment instead)",
    "client_tls": "client TLS settings for outbound connections are not supported by this shim",
}
#: Tables that only tune performance in Spin (connection pooling, telemetry): accepted and ignored.
_IGNORED_TABLES = frozenset({"outbound_http", "otel"})
_SPIN_STORE_KEYS = frozenset({"type", "path"})


class RuntimeConfigError(AppError):
    """A runtime-config.toml this shim cannot honour; the message names the file and the table/key."""


@dataclass(frozen=True)
class KeyValueStoreSpec:
    """Where one key-value store label keeps its data: a sqlite file on the node (inside the rootfs)."""

    label: str
    #: None = the default store file (``<work_dir>/.spin/sqlite_key_value.db``).
    db_path: Path | None = None


@dataclass(frozen=True)
class RuntimeConfig:
    #: The file read, None when the image has none.
    path: Path | None = None
    #: Store labels the config defines (``default`` is added by the caller unless defined here).
    key_value_stores: Mapping[str, KeyValueStoreSpec] = field(default_factory=lambda: MappingProxyType({}))


def load_runtime_config(root_dir: Path) -> RuntimeConfig:
    """Read ``<root_dir>/runtime-config.toml`` if the image has one (no file = Spin's defaults)."""
    path = root_dir / RUNTIME_CONFIG_FILE_NAME
    if not path.is_file():
        return RuntimeConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeConfigError(f"{path}: cannot read: {exc}") from None
    return parse_runtime_config(text, path, root_dir)


def parse_runtime_config(text: str, path: Path, root_dir: Path) -> RuntimeConfig:
    """Parse runtime-config text read from ``path`` (inside ``root_dir``); store paths resolve inside root_dir."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuntimeConfigError(f"{path}: invalid TOML: {exc}") from None
    stores: dict[str, KeyValueStoreSpec] = {}
    for table, value in doc.items():
        if table == "key_value_store":
            stores = _parse_key_value_stores(value, path, root_dir)
        elif table in _UNSUPPORTED_TABLES:
            raise RuntimeConfigError(f"{path}: [{table}]: {_UNSUPPORTED_TABLES[table]}; remove the table")
        elif table not in _IGNORED_TABLES:
            known = ", ".join(sorted({"key_value_store", *_UNSUPPORTED_TABLES, *_IGNORED_TABLES}))
            raise RuntimeConfigError(f"{path}: unknown table or key {table!r} (Spin runtime config tables: {known})")
    return RuntimeConfig(path=path, key_value_stores=MappingProxyType(stores))


def _parse_key_value_stores(raw: Any, path: Path, root_dir: Path) -> dict[str, KeyValueStoreSpec]:
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise RuntimeConfigError(f"{path}: key_value_store must be written as [key_value_store.<label>] tables")
    stores: dict[str, KeyValueStoreSpec] = {}
    for label, spec in raw.items():
        where = f"{path}: [key_value_store.{label}]"
        store_type = spec.get("type")
        if store_type is None:
            raise RuntimeConfigError(f"{where}: `type` is required (this shim supports type = \"spin\")")
        if store_type != "spin":
            raise RuntimeConfigError(
                f"{where}: type = {store_type!r} is not supported by this shim (only type = \"spin\", a SQLite "
                "file in the container, is)"
            )
        unknown = sorted(set(spec) - _SPIN_STORE_KEYS)
        if unknown:
            raise RuntimeConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for type \"spin\"")
        db_path = spec.get("path")
        if db_path is None:
            stores[label] = KeyValueStoreSpec(label)
            continue
        if not isinstance(db_path, str) or not db_path:
            raise RuntimeConfigError(f"{where}: `path` must be a non-empty string")
        in_image = db_path if db_path.startswith("/") else str(path.parent.relative_to(root_dir) / db_path)
        try:
            resolved = resolve_in_root(root_dir, in_image)
        except PathEscapeError as exc:
            raise RuntimeConfigError(f"{where}: path {db_path!r}: {exc}") from None
        if resolved.is_dir():
            raise RuntimeConfigError(f"{where}: path {db_path!r} is a directory; name the SQLite file")
        stores[label] = KeyValueStoreSpec(label, resolved)
    return stores
