"""Spin variables: application variables resolved from the task's environment, component variables from templates.

What a guest reads through ``fermyon:spin/variables`` and ``wasi:config/store`` is a *component* variable (the
component's ``variables = { key = "text {{ app_var }} text" }`` table); its template names *application*
variables (``[variables]``), whose values come from providers, first match wins, as containerd-shim-spin
configures them:

1. ``SPIN_VARIABLE_<NAME>`` in the task's environment (the name upper-cased; Spin's env provider prefix);
2. ``<NAME>`` in the task's environment (upper-cased; the shim's unprefixed env provider);
3. the variable's ``default`` from spin.toml.

A variable with neither a value nor a default is missing; ``check_required`` fails the load for it (Spin's
startup validation resolves every variable), naming the env vars that would set it. Values are never part of a
message, a log line or a repr, because ``secret = true`` variables hold secrets (and only the app knows which
non-secret ones do too).

Pure: manifest model and an env mapping in, strings out. Values are resolved per call (two dict lookups and a
join; nothing to cache), and the env cannot change while the task lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from runtime.errors import AppError, ManifestError
from runtime.manifest import Manifest, Variable
from runtime.spin.template import Reference, Template, TemplateError, check_variable_name

#: The case names of Spin's ``fermyon:spin/variables@2.0.0`` ``error`` variant.
VariableErrorKind = Literal["invalid-name", "undefined", "provider", "other"]

ENV_PREFIX = "SPIN_VARIABLE_"


class VariableError(Exception):
    """A guest's request for a variable failed; ``kind`` is the WIT error case, ``str()`` its payload."""

    def __init__(self, kind: VariableErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: VariableErrorKind = kind
        self.message = message


class MissingVariablesError(AppError):
    """Variables without a value or a default at load; the message names them and the env vars that set them."""


def env_names(name: str) -> tuple[str, str]:
    """The task env vars that set application variable ``name``, in the order they are tried."""
    upper = name.upper()
    return (f"{ENV_PREFIX}{upper}", upper)


@dataclass(frozen=True)
class VariableResolver:
    """Resolves an app's variables for its components. Built once per app at load; safe to share across threads."""

    app_variables: Mapping[str, Variable]
    #: component id -> component variable key -> parsed template.
    component_templates: Mapping[str, Mapping[str, Template]]
    #: The task's environment. Kept out of repr: it holds the secret values.
    env: Mapping[str, str] = field(repr=False)
    #: For messages, e.g. the manifest path.
    where: str = "spin.toml"

    @classmethod
    def from_manifest(cls, manifest: Manifest, env: Mapping[str, str]) -> VariableResolver:
        """Parse every component's variable templates now; raises ManifestError for a bad key or template."""
        where = str(manifest.path)
        templates: dict[str, dict[str, Template]] = {}
        for component in manifest.components.values():
            parsed: dict[str, Template] = {}
            for key, text in component.variables.items():
                prefix = f"{where}: component {component.id!r}: variable {key!r}"
                try:
                    check_variable_name(key)
                    template = Template.parse(text)
                except TemplateError as exc:
                    raise ManifestError(f"{prefix}: {exc}") from None
                for name in template.references:
                    if name not in manifest.variables:
                        declared = ", ".join(sorted(manifest.variables)) or "none"
                        raise ManifestError(
                            f"{prefix} = {text!r} refers to application variable {name!r}, which is not declared "
                            f"(add [variables] {name} = {{ default = \"...\" }} or {{ required = true }}; "
                            f"declared: {declared})"
                        )
                parsed[key] = template
            templates[component.id] = parsed
        return cls(app_variables=dict(manifest.variables), component_templates=templates, env=dict(env), where=where)

    # ------------------------------------------------------------------------------------------------ load checks

    def missing(self) -> tuple[str, ...]:
        """Application variables with no provider value and no default, in declaration order."""
        return tuple(name for name in self.app_variables if self._lookup(name) is None)

    def check_required(self) -> None:
        """Raise MissingVariablesError naming every variable that has no value (and how to set each)."""
        missing = self.missing()
        if not missing:
            return
        if len(missing) == 1:
            how = f"set {' or '.join(env_names(missing[0]))} in the container's environment"
        else:
            how = "set in the container's environment: " + "; ".join(
                f"{name}: {' or '.join(env_names(name))}" for name in missing
            )
        plural = "s" if len(missing) > 1 else ""
        raise MissingVariablesError(
            f"{self.where}: required variable{plural} without a value: {', '.join(missing)} ({how})"
        )

    # ------------------------------------------------------------------------------------------------ guest calls

    def app_value(self, name: str) -> str:
        """An application variable's value; VariableError("provider") when nothing provides one."""
        value = self._lookup(name)
        if value is None:
            if name not in self.app_variables:
                raise VariableError("undefined", f"no application variable {name!r}")
            raise VariableError(
                "provider",
                f"no provider resolved required variable {name!r} (set {' or '.join(env_names(name))})",
            )
        return value

    def get(self, component_id: str, key: str) -> str:
        """The component's variable ``key``, as ``fermyon:spin/variables.get`` returns it."""
        try:
            check_variable_name(key)
        except TemplateError as exc:
            raise VariableError("invalid-name", str(exc)) from None
        template = self.component_templates.get(component_id, {}).get(key)
        if template is None:
            raise VariableError(
                "undefined",
                f"no variable for {component_id!r}.{key!r} (declare it in [component.{component_id}] variables)",
            )
        return self._render(template)

    def get_all(self, component_id: str) -> list[tuple[str, str]]:
        """Every variable of the component, resolved, in declaration order (``wasi:config/store.get-all``)."""
        return [(key, self._render(t)) for key, t in self.component_templates.get(component_id, {}).items()]

    def keys(self, component_id: str) -> tuple[str, ...]:
        return tuple(self.component_templates.get(component_id, {}))

    def _render(self, template: Template) -> str:
        return "".join(p.text if not isinstance(p, Reference) else self.app_value(p.name) for p in template.parts)

    def _lookup(self, name: str) -> str | None:
        variable = self.app_variables.get(name)
        if variable is None:
            return None
        for env_name in env_names(name):
            value = self.env.get(env_name)
            if value is not None:
                return value
        return variable.default
