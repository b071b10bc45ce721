"""One app's Spin services (variables, key-value, SQLite, outbound policy), built and validated once at load.

Everything a user can get wrong is checked here, before the workers fork, so it fails task Create with a message
(an AppError) instead of surfacing as a guest error on the first request: variables without a value, component
variable templates naming undeclared variables, key-value store and database labels nothing backs, malformed
``allowed_outbound_hosts`` entries, an unsupported runtime-config.toml, an unwritable store location.

The object is shared by every component executor of the app and inherited by the worker processes through fork
(it holds no open connection until a store is used; see runtime.spin.key_value).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ManifestError
from runtime.manifest import Manifest
from runtime.spin.key_value import KeyValueStores, Store
from runtime.spin.outbound import OutboundPolicy
from runtime.spin.runtime_config import RUNTIME_CONFIG_FILE_NAME, RuntimeConfig, load_runtime_config
from runtime.spin.sqlite import Connection, SqliteDatabases
from runtime.spin.variables import VariableError, VariableResolver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpinServices:
    app_name: str
    variables: VariableResolver
    key_value: KeyValueStores
    runtime_config: RuntimeConfig
    #: component id -> its parsed allowed_outbound_hosts.
    outbound_policies: Mapping[str, OutboundPolicy] = field(default_factory=dict)
    #: component id -> the store labels it may open (its ``key_value_stores``).
    key_value_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sqlite: SqliteDatabases = field(default_factory=lambda: SqliteDatabases({}))
    #: component id -> the database labels it may open (its ``sqlite_databases``).
    sqlite_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        manifest: Manifest,
        env: Mapping[str, str],
        work_dir: Path,
        *,
        image_root: Path | None = None,
        runtime_config: RuntimeConfig | None = None,
        component_ids: Collection[str] | None = None,
        private_dir: Path | None = None,
    ) -> SpinServices:
        """Resolve and validate the app's services; raises AppError subclasses with user-facing messages.

        ``work_dir`` holds the default key-value store (``.spin/sqlite_key_value.db``); ``image_root`` (default:
        ``work_dir``) is the container's root: ``runtime-config.toml`` is looked for there, and the paths it names
        (store files, dotenv files) resolve inside it; its env variables providers feed the variable resolver.
        ``component_ids`` limits the per-component checks to the components that will run (default: all).
        ``private_dir`` (the runtime's cache dir) may hold no store: inside the shim's sandbox it is in the
        container's root and holds the node's precompiled blobs while the app loads.
        """
        if runtime_config is None:
            runtime_config = load_runtime_config(image_root if image_root is not None else work_dir)
        variables = VariableResolver.from_manifest(manifest, env, runtime_config.variables_providers)
        variables.check_required()
        stores = runtime_config.key_value_stores
        key_value = KeyValueStores.for_app(
            work_dir, {label: spec.db_path for label, spec in stores.items() if spec.redis_url is None},
            redis_urls={label: spec.redis_url for label, spec in stores.items() if spec.redis_url is not None},
            private_dir=private_dir,
        )
        sqlite = SqliteDatabases.for_app(
            work_dir, {label: spec.db_path for label, spec in runtime_config.sqlite_databases.items()},
            private_dir=private_dir,
        )

        ids = [c for c in manifest.components if component_ids is None or c in component_ids]
        policies: dict[str, OutboundPolicy] = {}
        labels: dict[str, tuple[str, ...]] = {}
        used_labels: set[str] = set()
        sqlite_labels: dict[str, tuple[str, ...]] = {}
        used_databases: set[str] = set()
        for component_id in ids:
            component = manifest.components[component_id]
            where = f"{manifest.path}: component {component_id!r}"
            _check_defined(where, "key_value_stores", component.key_value_stores, key_value.labels, "store",
                           "key_value_store")
            _check_defined(where, "sqlite_databases", component.sqlite_databases, sqlite.labels, "database",
                           "sqlite_database")
            policies[component_id] = OutboundPolicy.parse(
                component.allowed_outbound_hosts,
                where=where,
                resolve_variable=_value_for_outbound(variables),
                is_secret=lambda name: name in manifest.variables and manifest.variables[name].secret,
            )
            labels[component_id] = tuple(component.key_value_stores)
            used_labels.update(component.key_value_stores)
            sqlite_labels[component_id] = tuple(component.sqlite_databases)
            used_databases.update(component.sqlite_databases)
            if component.ai_models:
                log.warning("%s: ai_models not provided by this shim; inferencing returns an error to the guest",
                            where)
        key_value.prepare(used_labels)
        sqlite.prepare(used_databases)
        return cls(
            app_name=manifest.application.name,
            variables=variables,
            key_value=key_value,
            runtime_config=runtime_config,
            outbound_policies=policies,
            key_value_labels=labels,
            sqlite=sqlite,
            sqlite_labels=sqlite_labels,
        )

    def outbound_policy(self, component_id: str) -> OutboundPolicy:
        """The component's allowed destinations (an unknown component may reach nothing)."""
        return self.outbound_policies.get(component_id, OutboundPolicy())

    def open_store(self, component_id: str, label: str) -> Store:
        """Spin's ``store.open`` for a component; raises KeyValueError (access-denied / no-such-store)."""
        return self.key_value.open(label, self.key_value_labels.get(component_id, ()))


    def open_database(self, component_id: str, label: str) -> Connection:
        """Spin's sqlite ``connection.open`` for a component; raises SqliteError (access-denied / no-such-database)."""
        return self.sqlite.open(label, self.sqlite_labels.get(component_id, ()))


def _check_defined(where: str, key: str, wanted: tuple[str, ...], defined: frozenset[str], noun: str,
                   table: str) -> None:
    """A label a component lists must be backed: Spin refuses to start otherwise, and so does this load."""
    for label in wanted:
        if label not in defined:
            raise ManifestError(
                f"{where}: {key} names {noun} {label!r}, which is not defined (defined: {', '.join(sorted(defined))});"
                f" define it in /{RUNTIME_CONFIG_FILE_NAME} as [{table}.{label}] type = \"spin\""
            )


def _value_for_outbound(variables: VariableResolver) -> Callable[[str], str]:
    """allowed_outbound_hosts templates name application variables (Spin resolves them with the app resolver)."""

    def value_of(name: str) -> str:
        try:
            return variables.app_value(name)
        except VariableError as exc:
            raise LookupError(exc.message) from None

    return value_of
