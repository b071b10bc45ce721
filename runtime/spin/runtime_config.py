"""Spin's runtime config file (``/runtime-config.toml`` in the container), the parts this shim backs.

containerd-shim-spin reads ``/runtime-config.toml`` from the container's root: SpinKube's spin-operator mounts
the app's runtime-config Secret there (``internal/controller/deployment.go``, ``MountPath: "/runtime-config.toml"``
with ``SubPath``); an image may also carry one. The caller passes the root the file is read from (the
container's root as this shim sees it) and everything the file names by path is resolved inside that same root
with ``runtime.paths.resolve_in_root``, never outside it: the config and its dotenv files are image content or
volumes, and an absolute symlink in them means "from the container's root", not the node's.

Backed tables:

* ``[key_value_store.<label>]`` with ``type = "spin"`` (a SQLite file). ``path`` is relative to the config file's
  directory, as in Spin (``crates/key-value-spin``: ``resolve_relative_path``); an absolute path is absolute in
  the container, i.e. inside the container's root, and may be on a volume mounted there (``/data/kv.db``):
  resolving walks names, not mounts, so a mount point on the way is just a directory. Without ``path`` a
  ``spin`` store is in memory, as in Spin: empty at each start of the task, shared by its worker processes
  (runtime.spin.state_files says how).
* ``[sqlite_database.<label>]`` with ``type = "spin"``: the same keys and path rules (Spin's
  ``crates/factor-sqlite`` runtime config); without ``path`` the database is in memory the same way.
* ``[key_value_store.<label>]`` with ``type = "redis"`` and ``url`` (``redis://`` / ``rediss://``): a store on
  that Redis server (runtime.spin.key_value_redis), as spin-operator renders ``keyValueStores`` of type redis.
* ``[[variables_provider]]`` (Spin's current name) or ``[[config_provider]]`` (the older one, which spin-operator
  renders) with ``type = "env"``: optional ``prefix`` and ``dotenv_path`` (``crates/variables-env``). As in Spin
  (``crates/runtime-config/src/variables.rs``) ``variables_provider`` wins when both are present, the providers
  are tried in file order, and Spin's default env provider (prefix ``SPIN_VARIABLE``) is always tried after
  them. The dotenv file is read here, at load (at most 1 MiB); a missing one provides nothing, as in Spin
  (dotenvy's ``from_path_iter`` fails to open it and Spin flattens that away); one that exists but cannot be
  read fails the load (Spin would silently ignore an unopenable file; here that hides a broken volume).
  Spin opens ``dotenv_path`` relative to its working directory; under containerd-shim-spin that is the
  container's cwd, ``/`` for Spin apps, which is also the directory of ``/runtime-config.toml``: it is resolved
  relative to the config file's directory here, the same place, without depending on a cwd.

* ``[[client_tls]]`` (Spin's keys: component_ids, hosts, ca_use_platform_roots, ca_use_webpki_roots, ca_roots_file,
  client_cert_file, client_private_key_file): TLS settings of outbound HTTPS (runtime.spin.client_tls); its files
  are relative to the config file's directory as in Spin and resolved inside the root, read and checked at load.

Every other store, database or provider type (``azure_cosmos``, ``libsql``, ``vault``, ...), and every other table that
changes what an app can reach (LLMs), fails the load with a message naming the file and what it asked
for, because silently ignoring it would run the app against something it did not ask for.

``parse_runtime_config`` parses text already read; ``load_runtime_config`` reads the file (opened once, at most
1 MiB). Both read the dotenv files the config names.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from runtime.capped_read import CappedReadError, read_capped
from runtime.errors import AppError
from runtime.paths import PathEscapeError, resolve_in_root
from runtime.spin.redis_url import masked, parse_redis_url
from runtime.unknown_keys import unknown_keys_phrase

log = logging.getLogger(__name__)

RUNTIME_CONFIG_FILE_NAME = "runtime-config.toml"
#: A runtime config is a few hundred bytes; a bigger file is a mistake (or an attempt to make the shim read a
#: volume's worth of data before the app even starts).
MAX_RUNTIME_CONFIG_BYTES = 1 << 20
#: Same bound for a dotenv file a variables provider names.
MAX_DOTENV_BYTES = 1 << 20

#: Spin's other runtime-config tables: recognised so the message can say "not supported" instead of "unknown".
_UNSUPPORTED_TABLES = {
    "llm_compute": "LLM inferencing (ai_models) is not provided by this shim",
}
#: Tables that only tune performance in Spin (connection pooling, telemetry): accepted and ignored.
_IGNORED_TABLES = frozenset({"outbound_http", "otel"})
#: Spin reads ``variables_provider`` and falls back to ``config_provider`` (the pre-factors name).
_PROVIDER_TABLES = ("variables_provider", "config_provider")
_SPIN_STORE_KEYS = frozenset({"type", "path"})
#: The tables of labelled state files this shim backs with a ``type = "spin"`` SQLite file: table -> what it is.
_STATE_FILE_TABLES = {"key_value_store": "key-value store", "sqlite_database": "SQLite database"}
#: Spin's remote backends, named in the refusal.
_REMOTE_BACKENDS = {
    "key_value_store": {"azure_cosmos": "Azure Cosmos DB", "aws_dynamo": "AWS DynamoDB"},
    "sqlite_database": {"libsql": "a remote libSQL / Turso database"},
}
#: ``EnvVariablesConfig`` is ``deny_unknown_fields`` in Spin: any other key is an error there too.
_ENV_PROVIDER_KEYS = frozenset({"type", "prefix", "dotenv_path"})
#: Spin's other provider types (``VariableProviderConfiguration``), named in the refusal.
_OTHER_PROVIDER_TYPES = {
    "vault": "HashiCorp Vault",
    "azure_key_vault": "Azure Key Vault",
    "static": "static values",
}


class RuntimeConfigError(AppError):
    """A runtime-config.toml this shim cannot honour; the message names the file and the table/key."""


@dataclass(frozen=True)
class StateFileSpec:
    """Where one key-value store or SQLite database label keeps its data: a SQLite file inside the container's
    root."""

    label: str
    #: None = no ``path``: the service's own default (runtime.spin.key_value, runtime.spin.sqlite).
    db_path: Path | None = None
    #: A key-value store of ``type = "redis"``: the server's URL (then ``db_path`` is None).
    redis_url: str | None = None


KeyValueStoreSpec = StateFileSpec


@dataclass(frozen=True)
class EnvVariablesProviderSpec:
    """One ``type = "env"`` variables provider as configured, its dotenv file already read (not yet parsed:
    parsing substitutes ``$VAR`` from the task env, which runtime.spin.variables has)."""

    #: For messages: ``<config file>: [[config_provider]] #1``.
    where: str
    #: None = Spin's default prefix (``SPIN_VARIABLE``); Spin joins prefix and name with ``_`` even when the
    #: prefix already ends in one, so this is kept exactly as written.
    prefix: str | None = None
    #: ``dotenv_path`` as written, for messages; None when the provider names none.
    dotenv_path: str | None = None
    #: The file it names, resolved inside the container's root.
    dotenv_file: Path | None = None
    #: The file's text; None when there is no ``dotenv_path`` or the file does not exist. Kept out of repr: a
    #: dotenv file holds secrets.
    dotenv_text: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RuntimeConfig:
    #: The file read, None when the container has none.
    path: Path | None = None
    #: Store labels the config defines (``default`` is added by the caller unless defined here).
    key_value_stores: Mapping[str, StateFileSpec] = field(default_factory=lambda: MappingProxyType({}))
    #: Database labels the config defines (``default`` is added by the caller unless defined here).
    sqlite_databases: Mapping[str, StateFileSpec] = field(default_factory=lambda: MappingProxyType({}))
    #: The configured env providers in the order Spin tries them (empty = none configured; Spin's default env
    #: provider is tried after these either way, see runtime.spin.variables).
    variables_providers: tuple[EnvVariablesProviderSpec, ...] = ()
    #: ``[[client_tls]]`` tables in file order (runtime.spin.client_tls; typed loosely so that module, which
    #: imports ssl, is imported only when a config has one).
    client_tls: tuple[Any, ...] = ()


def load_runtime_config(root_dir: Path) -> RuntimeConfig:
    """Read ``<root_dir>/runtime-config.toml`` if the container has one (no file = Spin's defaults).

    ``root_dir`` is the container's root as this shim sees it; the file (which may be a symlink, e.g. into a
    Secret volume's ``..data``) and everything it names are resolved inside it.
    """
    path = root_dir / RUNTIME_CONFIG_FILE_NAME
    try:
        host_path = resolve_in_root(root_dir, RUNTIME_CONFIG_FILE_NAME)
    except PathEscapeError as exc:
        raise RuntimeConfigError(f"{path}: {exc}") from None
    data = _read_capped(host_path, MAX_RUNTIME_CONFIG_BYTES, str(path))
    if data is None:
        return RuntimeConfig()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuntimeConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_runtime_config(text, path, root_dir)


def parse_runtime_config(text: str, path: Path, root_dir: Path) -> RuntimeConfig:
    """Parse runtime-config text read from ``path`` (inside ``root_dir``); the paths it names (store files,
    dotenv files) resolve inside ``root_dir``, and dotenv files are read now."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuntimeConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise RuntimeConfigError(f"{path}: invalid TOML: arrays or inline tables nested too deeply") from None
    state_files: dict[str, dict[str, StateFileSpec]] = {}
    client_tls: tuple[Any, ...] = ()
    for table, value in doc.items():
        if table in _STATE_FILE_TABLES:
            state_files[table] = _parse_state_files(value, table, path, root_dir)
        elif table == "client_tls":
            client_tls = _parse_client_tls(value, path, root_dir)
        elif table in _PROVIDER_TABLES:
            continue  # below, once it is known whether both names are present
        elif table in _UNSUPPORTED_TABLES:
            raise RuntimeConfigError(f"{path}: [{table}]: {_UNSUPPORTED_TABLES[table]}; remove the table")
        elif table not in _IGNORED_TABLES:
            known = ", ".join(sorted({*_STATE_FILE_TABLES, *_PROVIDER_TABLES, *_UNSUPPORTED_TABLES, *_IGNORED_TABLES,
                                      "client_tls"}))
            raise RuntimeConfigError(f"{path}: unknown table or key {table!r} (Spin runtime config tables: {known})")
    providers: tuple[EnvVariablesProviderSpec, ...] = ()
    used = next((name for name in _PROVIDER_TABLES if name in doc), None)
    if used is not None:
        if used == "variables_provider" and "config_provider" in doc:
            log.warning("%s: both [[variables_provider]] and [[config_provider]] are present; as in Spin, only "
                        "[[variables_provider]] is used and [[config_provider]] is ignored", path)
        providers = _parse_variables_providers(doc[used], used, path, root_dir)
    return RuntimeConfig(path=path, key_value_stores=MappingProxyType(state_files.get("key_value_store", {})),
                         sqlite_databases=MappingProxyType(state_files.get("sqlite_database", {})),
                         variables_providers=providers, client_tls=client_tls)


def _parse_client_tls(raw: Any, path: Path, root_dir: Path) -> tuple[Any, ...]:
    """``[[client_tls]]`` (runtime.spin.client_tls): its files resolved inside the root, like every path here."""
    from runtime.spin.client_tls import ClientTlsError, parse_client_tls

    try:
        return parse_client_tls(raw, str(path), lambda written: _resolve_named_path(root_dir, path, written))
    except ClientTlsError as exc:
        raise RuntimeConfigError(str(exc)) from None


def _parse_state_files(raw: Any, table: str, path: Path, root_dir: Path) -> dict[str, StateFileSpec]:
    """``[key_value_store.<label>]`` or ``[sqlite_database.<label>]`` tables: ``type = "spin"`` with an optional
    ``path`` (relative to the config file's directory, or absolute in the container), resolved inside the root."""
    noun = _STATE_FILE_TABLES[table]
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise RuntimeConfigError(f"{path}: {table} must be written as [{table}.<label>] tables")
    specs: dict[str, StateFileSpec] = {}
    for label, spec in raw.items():
        where = f"{path}: [{table}.{label}]"
        backend = spec.get("type")
        if backend is None:
            raise RuntimeConfigError(f"{where}: `type` is required (this shim supports type = \"spin\")")
        if backend == "redis" and table == "key_value_store":
            specs[label] = _redis_store(label, spec, where)
            continue
        if backend != "spin":
            named = _REMOTE_BACKENDS[table].get(backend) if isinstance(backend, str) else None
            raise RuntimeConfigError(
                f"{where}: type = {backend!r}{f' ({named})' if named else ''} is not supported by this shim; only "
                f"type = \"spin\" is: a {noun} in a SQLite file in the container (its `path` may be on a volume)"
            )
        unknown = sorted(set(spec) - _SPIN_STORE_KEYS)
        if unknown:
            raise RuntimeConfigError(f"{where}: {unknown_keys_phrase(unknown, _SPIN_STORE_KEYS)} for type \"spin\"")
        db_path = spec.get("path")
        if db_path is None:
            specs[label] = StateFileSpec(label)
            continue
        if not isinstance(db_path, str) or not db_path:
            raise RuntimeConfigError(f"{where}: `path` must be a non-empty string")
        try:
            resolved = _resolve_named_path(root_dir, path, db_path)
        except PathEscapeError as exc:
            raise RuntimeConfigError(f"{where}: path {db_path!r}: {exc}") from None
        if resolved.is_dir():
            raise RuntimeConfigError(f"{where}: path {db_path!r} is a directory; name the SQLite file")
        specs[label] = StateFileSpec(label, resolved)
    return specs


def _redis_store(label: str, spec: dict[str, Any], where: str) -> StateFileSpec:
    """``type = "redis"`` with its ``url`` (Spin's ``key-value-redis`` runtime config takes nothing else)."""
    unknown = sorted(set(spec) - {"type", "url"})
    if unknown:
        raise RuntimeConfigError(f"{where}: {unknown_keys_phrase(unknown, ('type', 'url'))} for type \"redis\" "
                                 "(it takes url)")
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise RuntimeConfigError(f"{where}: type = \"redis\" needs `url`, e.g. url = \"redis://host:6379\"")
    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise RuntimeConfigError(f"{where}: url {masked(url)!r}: {exc}") from None
    return StateFileSpec(label, redis_url=url)


def _parse_variables_providers(
    raw: Any, table: str, path: Path, root_dir: Path
) -> tuple[EnvVariablesProviderSpec, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise RuntimeConfigError(f"{path}: {table} must be written as [[{table}]] tables (an array of tables)")
    providers: list[EnvVariablesProviderSpec] = []
    for index, spec in enumerate(raw, start=1):
        where = f"{path}: [[{table}]] #{index}"
        provider_type = spec.get("type")
        if provider_type is None:
            raise RuntimeConfigError(f"{where}: `type` is required (this shim supports type = \"env\")")
        if provider_type != "env":
            if isinstance(provider_type, str) and provider_type in _OTHER_PROVIDER_TYPES:
                what = f"type = {provider_type!r} ({_OTHER_PROVIDER_TYPES[provider_type]})"
            else:
                what = f"unknown provider type {provider_type!r} (Spin's: env, {', '.join(_OTHER_PROVIDER_TYPES)})"
            raise RuntimeConfigError(
                f"{where}: {what} is not supported by this shim; only type = \"env\" (the container's environment, "
                "optionally a dotenv file) is: set the variables as SPIN_VARIABLE_<NAME> in the container's "
                "environment instead"
            )
        unknown = sorted(set(spec) - _ENV_PROVIDER_KEYS)
        if unknown:
            raise RuntimeConfigError(
                f"{where}: {unknown_keys_phrase(unknown, _ENV_PROVIDER_KEYS)} for type \"env\" (it takes prefix and "
                "dotenv_path)"
            )
        prefix = spec.get("prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise RuntimeConfigError(f"{where}: `prefix` must be a string")
        written = spec.get("dotenv_path")
        if written is None:
            providers.append(EnvVariablesProviderSpec(where, prefix))
            continue
        if not isinstance(written, str) or not written:
            raise RuntimeConfigError(f"{where}: `dotenv_path` must be a non-empty string")
        try:
            dotenv_file = _resolve_named_path(root_dir, path, written)
        except PathEscapeError as exc:
            raise RuntimeConfigError(f"{where}: dotenv_path {written!r}: {exc}") from None
        shown = f"{where}: dotenv_path {written!r} ({dotenv_file})"
        data = _read_capped(dotenv_file, MAX_DOTENV_BYTES, shown)
        text: str | None = None
        if data is None:
            log.warning("%s: no such file; as in Spin, a missing dotenv file provides no variables", shown)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RuntimeConfigError(
                    f"{shown}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
        providers.append(EnvVariablesProviderSpec(where, prefix, written, dotenv_file, text))
    return tuple(providers)


def _resolve_named_path(root_dir: Path, config_path: Path, written: str) -> Path:
    """A path the runtime config names, on the node: relative to the config file's directory as in Spin, or
    absolute in the container, both inside ``root_dir`` (the container's root). Raises PathEscapeError."""
    if written.startswith("/"):
        in_root = written
    else:
        in_root = str(PurePosixPath(config_path.parent.relative_to(root_dir).as_posix()) / written)
    return resolve_in_root(root_dir, in_root)


def _read_capped(host_path: Path, cap: int, shown: str) -> bytes | None:
    """The regular file's bytes (at most ``cap``), None when it does not exist; RuntimeConfigError otherwise
    (runtime.capped_read: opened once, no final symlink, no blocking on a FIFO, never read whole)."""
    try:
        return read_capped(host_path, cap)
    except CappedReadError as exc:
        raise RuntimeConfigError(f"{shown}: {exc}") from None
