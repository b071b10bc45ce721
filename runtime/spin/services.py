"""One app's Spin services (variables, key-value, outbound policy), built and validated once at load.

Everything a user can get wrong is checked here, before the workers fork, so it fails task Create with a message
(an AppError) instead of surfacing as a guest error on the first request: variables without a value, component
variable templates naming undeclared variables, key-value store labels nothing backs, malformed
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
        key_value = KeyValueStores.for_app(
            work_dir, {label: spec.db_path for label, spec in runtime_config.key_value_stores.items()},
            private_dir=private_dir,
        )

        ids = [c for c in manifest.components if component_ids is None or c in component_ids]
        policies: dict[str, OutboundPolicy] = {}
        labels: dict[str, tuple[str, ...]] = {}
        used_labels: set[str] = set()
        for component_id in ids:
            component = manifest.components[component_id]
            where = f"{manifest.path}: component {component_id!r}"
            for label in component.key_value_stores:
                if label not in key_value.labels:
                    defined = ", ".join(sorted(key_value.labels))
                    raise ManifestError(
                        f"{where}: key_value_stores names store {label!r}, which is not defined (defined: {defined}); "
                        f"define it in /{RUNTIME_CONFIG_FILE_NAME} as [key_value_store.{label}] type = \"spin\""
                    )
            policies[component_id] = OutboundPolicy.parse(
                component.allowed_outbound_hosts,
                where=where,
                resolve_variable=_value_for_outbound(variables),
                is_secret=lambda name: name in manifest.variables and manifest.variables[name].secret,
            )
            labels[component_id] = tuple(component.key_value_stores)
            used_labels.update(component.key_value_stores)
            unsupported = [name for name, used in (("sqlite_databases", component.sqlite_databases),
                                                    ("ai_models", component.ai_models)) if used]
            if unsupported:
                log.warning("%s: %s not provided by this shim; opening them returns an error to the guest",
                            where, " and ".join(unsupported))
        key_value.prepare(used_labels)
        return cls(
            app_name=manifest.application.name,
            variables=variables,
            key_value=key_value,
            runtime_config=runtime_config,
            outbound_policies=policies,
            key_value_labels=labels,
        )

    def outbound_policy(self, component_id: str) -> OutboundPolicy:
        """The component's allowed destinations (an unknown component may reach nothing)."""
        return self.outbound_policies.get(component_id, OutboundPolicy())

    def open_store(self, component_id: str, label: str) -> Store:
        """Spin's ``store.open`` for a component; raises KeyValueError (access-denied / no-such-store)."""
        return self.key_value.open(label, self.key_value_labels.get(component_id, ()))


def _value_for_outbound(variables: VariableResolver) -> Callable[[str], str]:
    """allowed_outbound_hosts templates name application variables (Spin resolves them with the app resolver)."""

    def value_of(name: str) -> str:
        try:
            return variables.app_value(name)
        except VariableError as exc:
            raise LookupError(exc.message) from None

    return value_of
