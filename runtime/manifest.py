"""spin.toml (manifest version 2, or version 1 converted to it) parsed into typed, frozen dataclasses, and validated.

Pure: no wasmtime, no filesystem access in ``parse_manifest`` (text in, model out), so every validation rule is
unit-tested from strings. ``load_manifest`` adds the two checks that need the app directory (sources exist,
nothing points outside it). Field names and rules follow Spin's v2 schema (spin crates/manifest/src/schema/v2.rs);
a version 1 manifest (``spin_manifest_version = "1"``) is first converted as Spin's loader converts it
(runtime.manifest_v1), then validated as version 2. Later issues (http routes, variables, KV) read ``Trigger.config``,
``Manifest.variables`` and ``Component.key_value_stores`` from here; type-specific trigger validation lives with
each trigger, not in this module.

Every error is a ManifestError whose message starts with the manifest's path (and line when tomllib or a
header search can tell it), then says what is wrong and, where it helps, what to write instead.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.errors import ManifestError
from runtime.ids import KEBAB_ID as _KEBAB_ID
from runtime.ids import SNAKE_ID as _SNAKE_ID
from runtime.unknown_keys import unknown_keys_phrase

MANIFEST_FILE_NAME = "spin.toml"


_APPLICATION_KEYS = frozenset({"name", "version", "description", "authors", "targets", "trigger", "tool"})
_VARIABLE_KEYS = frozenset({"description", "required", "default", "secret"})
_TOP_LEVEL_KEYS = frozenset({"spin_manifest_version", "application", "variables", "trigger", "component"})
_COMPONENT_KEYS = frozenset({
    "source", "description", "variables", "environment", "files", "exclude_files", "allowed_outbound_hosts",
    "allowed_http_hosts", "key_value_stores", "sqlite_databases", "ai_models", "targets", "build", "tool",
    "dependencies_inherit_configuration", "dependencies",
})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


# ---------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LocalSource:
    """``source = "path/to/app.wasm"``: relative to the directory holding spin.toml."""

    path: str


@dataclass(frozen=True)
class RemoteSource:
    """``source = { url = "...", digest = "sha256:..." }``: parsed so the error can name it; not runnable here."""

    url: str
    digest: str


@dataclass(frozen=True)
class RegistrySource:
    """``source = { registry = "...", package = "...", version = "..." }``: parsed; not runnable here."""

    package: str
    version: str
    registry: str | None = None


ComponentSource = LocalSource | RemoteSource | RegistrySource


@dataclass(frozen=True)
class GlobFiles:
    """``files = ["static/**/*"]``: every matching *file*, placed at the same relative path under ``/``."""

    pattern: str


@dataclass(frozen=True)
class MappedFiles:
    """``files = [{ source = "assets", destination = "/assets" }]``: a file or directory placed at ``destination``."""

    source: str
    destination: str


FileMount = GlobFiles | MappedFiles


@dataclass(frozen=True)
class Variable:
    """An application variable (``[variables.<name>]``); resolved by a later issue's variables provider."""

    name: str
    description: str | None = None
    default: str | None = None
    required: bool = False
    secret: bool = False


@dataclass(frozen=True)
class Application:
    name: str
    version: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ()
    #: ``[application.trigger.<type>]`` global trigger options, kept raw for the trigger that understands them.
    trigger_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class Component:
    id: str
    source: ComponentSource
    description: str | None = None
    environment: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    files: tuple[FileMount, ...] = ()
    exclude_files: tuple[str, ...] = ()
    #: Includes the deprecated ``allowed_http_hosts`` entries (Spin normalises them the same way).
    allowed_outbound_hosts: tuple[str, ...] = ()
    key_value_stores: tuple[str, ...] = ()
    sqlite_databases: tuple[str, ...] = ()
    ai_models: tuple[str, ...] = ()
    #: Component config: name -> value or ``{{ app_variable }}`` template, expanded by a later issue.
    variables: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    #: Raw ``dependencies`` table (component composition): not supported by this runtime yet, kept to reject it
    #: with a clear message at load time rather than to drop it silently.
    dependencies: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class Trigger:
    type: str
    id: str
    #: The component this trigger runs (an inline component table is hoisted into Manifest.components and
    #: referenced by its id here). None when the trigger names none (e.g. an http ``static_response``).
    component: str | None
    #: Everything else in the ``[[trigger.<type>]]`` table (route, executor, channel, ...), raw.
    config: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


@dataclass(frozen=True)
class Manifest:
    #: The file this was read from (as given), used in every error message.
    path: Path
    application: Application
    variables: Mapping[str, Variable]
    #: In file order, all types mixed.
    triggers: tuple[Trigger, ...]
    #: In file order (inline components after declared ones).
    components: Mapping[str, Component]

    @property
    def app_dir(self) -> Path:
        return self.path.parent

    @property
    def trigger_types(self) -> tuple[str, ...]:
        """Distinct trigger types, in order of first appearance."""
        return tuple(dict.fromkeys(t.type for t in self.triggers))

    def triggers_of_type(self, trigger_type: str) -> tuple[Trigger, ...]:
        return tuple(t for t in self.triggers if t.type == trigger_type)


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Near:
    """The line of a table, found only if an error names it: finding it scans the file, and doing that for each
    component and variable of a valid manifest made parsing quadratic (8 000 components, 287 kB: 47 s, before
    the instance process joins the pod's cgroup)."""

    headers: tuple[str, ...]


#: Where an error points: a line number, a line still to find, or the file as a whole.
_Line = int | _Near | None
#: Texts one search looks for (each costs a pass over the lines); more are dropped, the error is still right.
_MAX_HEADERS = 16


class _Ctx:
    """The manifest path and text, to prefix errors and find the line a table header is on."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, *headers: str) -> int | None:
        wanted = tuple(h.replace(" ", "") for h in headers[:_MAX_HEADERS])
        for number, line in enumerate(self.lines, start=1):
            if line.strip().replace(" ", "").startswith(wanted):
                return number
        return None

    def error(self, message: str, *, line: _Line = None) -> ManifestError:
        if isinstance(line, _Near):
            line = self.line_of(*line.headers)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        return ManifestError(f"{where}: {message}")


def parse_manifest(text: str, path: Path | str = MANIFEST_FILE_NAME) -> Manifest:
    """Parse and validate spin.toml text. Raises ManifestError with the file, the line if known, and the problem."""
    ctx = _Ctx(Path(path), text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ctx.error(f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ctx.error("invalid TOML: arrays or inline tables nested too deeply") from None

    labels: Mapping[str, tuple[str, tuple[str, ...]]] = {}
    if _check_version(ctx, doc) == 1:
        from runtime.manifest_v1 import V1Error, convert_v1

        try:
            doc, labels = convert_v1(doc)
        except V1Error as exc:
            raise ctx.error(exc.message, line=ctx.line_of(*exc.near) if exc.near else None) from None
    unknown = set(doc) - _TOP_LEVEL_KEYS
    if unknown:
        raise ctx.error(f"{unknown_keys_phrase(unknown, _TOP_LEVEL_KEYS)} at the top level",
                        line=_Near((*(f"[{key}" for key in sorted(unknown)[:4]), *sorted(unknown)[:4])))
    application = _parse_application(ctx, doc.get("application"))
    variables = _parse_variables(ctx, doc.get("variables", {}))
    components = _parse_components(ctx, doc.get("component", {}), labels)
    triggers = _parse_triggers(ctx, doc.get("trigger", {}), components)

    return Manifest(
        path=ctx.path,
        application=application,
        variables=_frozen(variables),
        triggers=tuple(triggers),
        components=_frozen(components),
    )


def _check_version(ctx: _Ctx, doc: Mapping[str, Any]) -> int:
    """1 or 2, as Spin's ``ManifestVersion::detect`` reads it: the string "1" (``spin_version`` is its old
    name) or the integer 2; anything else is refused, as Spin refuses it ("invalid manifest version")."""
    from runtime.manifest_v1 import is_version_1

    version = doc.get("spin_manifest_version", doc.get("spin_version"))
    line = ctx.line_of("spin_manifest_version", "spin_version")
    if version is None:
        raise ctx.error("missing `spin_manifest_version = 2` (this runtime reads Spin manifest versions 2 and \"1\")")
    if is_version_1(version):
        return 1
    if version == 2 and not isinstance(version, bool) and "spin_manifest_version" in doc:
        return 2
    if version == 2:
        raise ctx.error("`spin_version` is the version 1 name of the key; write `spin_manifest_version = 2`",
                        line=line)
    if version == 1 and not isinstance(version, bool):
        raise ctx.error("invalid manifest version 1 (an integer): version 1 is written as a string, "
                        "`spin_manifest_version = \"1\"`, as Spin reads it", line=line)
    raise ctx.error(
        f"invalid manifest version {version!r}; this runtime reads version 2 (`spin_manifest_version = 2`) and "
        "version 1 (`spin_manifest_version = \"1\"`)",
        line=line,
    )


def _parse_application(ctx: _Ctx, raw: Any) -> Application:
    line = ctx.line_of("[application]")
    if raw is None:
        raise ctx.error("missing [application] table (it needs at least `name = \"...\"`)")
    if not isinstance(raw, dict):
        raise ctx.error("`application` must be a table", line=line)
    unknown = set(raw) - _APPLICATION_KEYS
    if unknown:
        raise ctx.error(f"[application]: {unknown_keys_phrase(unknown, _APPLICATION_KEYS)}", line=line)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error("[application]: `name` is required and must be a non-empty string", line=line)
    trigger_options = raw.get("trigger", {})
    if not isinstance(trigger_options, dict) or not all(isinstance(v, dict) for v in trigger_options.values()):
        raise ctx.error("[application.trigger.<type>] entries must be tables", line=line)
    return Application(
        name=name,
        version=_opt_str(ctx, raw, "version", "[application]", line),
        description=_opt_str(ctx, raw, "description", "[application]", line),
        authors=_str_list(ctx, raw, "authors", "[application]", line),
        trigger_options=_frozen({k: _frozen(v) for k, v in trigger_options.items()}),
    )


def _parse_variables(ctx: _Ctx, raw: Any) -> dict[str, Variable]:
    if not isinstance(raw, dict):
        raise ctx.error("`variables` must be a table of [variables.<name>] tables")
    variables: dict[str, Variable] = {}
    for name, spec in raw.items():
        where = f"[variables.{name}]"
        line = _Near((where, "[variables]"))
        if not _SNAKE_ID.match(name):
            raise ctx.error(f"{where}: variable names must be lower_snake_case (letters, digits, '_')", line=line)
        if not isinstance(spec, dict):
            raise ctx.error(f"{where}: must be a table like {{ default = \"...\" }} or {{ required = true }}", line=line)
        unknown = set(spec) - _VARIABLE_KEYS
        if unknown:
            raise ctx.error(f"{where}: {unknown_keys_phrase(unknown, _VARIABLE_KEYS)}", line=line)
        required = spec.get("required", False)
        secret = spec.get("secret", False)
        if not isinstance(required, bool) or not isinstance(secret, bool):
            raise ctx.error(f"{where}: `required` and `secret` must be true or false", line=line)
        default = _opt_str(ctx, spec, "default", where, line)
        if required and default is not None:
            raise ctx.error(f"{where}: a variable cannot be both `required` and have a `default`", line=line)
        if not required and default is None:
            # Spin's loader: "must be `required` OR have a `default`" (crates/loader/src/local.rs).
            raise ctx.error(f"{where}: a variable must be `required = true` or have a `default`", line=line)
        variables[name] = Variable(
            name=name,
            description=_opt_str(ctx, spec, "description", where, line),
            default=default,
            required=required,
            secret=secret,
        )
    return variables


def _parse_components(ctx: _Ctx, raw: Any, labels: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, Component]:
    """``labels``: for a converted version 1 manifest, how its file names each component and where."""
    if not isinstance(raw, dict):
        raise ctx.error("`component` must be a table of [component.<id>] tables")
    components: dict[str, Component] = {}
    for component_id, spec in raw.items():
        if component_id in labels:
            where, near = labels[component_id]
            line: _Line = _Near(near)
        else:
            where = f"[component.{component_id}]"
            line = _Near((f"[component.{component_id}]", f'[component."{component_id}"]'))
        _check_kebab(ctx, component_id, "component id", where, line)
        components[component_id] = _parse_component(ctx, component_id, spec, where, line)
    return components


def _parse_component(ctx: _Ctx, component_id: str, spec: Any, where: str, line: _Line) -> Component:
    if not isinstance(spec, dict):
        raise ctx.error(f"{where}: must be a table", line=line)
    unknown = set(spec) - _COMPONENT_KEYS
    if unknown:
        raise ctx.error(
            f"{where}: {unknown_keys_phrase(unknown, _COMPONENT_KEYS)} (known: {', '.join(sorted(_COMPONENT_KEYS))})",
            line=line,
        )
    environment = spec.get("environment", {})
    if not isinstance(environment, dict) or not all(isinstance(v, str) for v in environment.values()):
        raise ctx.error(f"{where}: `environment` must be a table of string values", line=line)
    config_vars = spec.get("variables", {})
    if not isinstance(config_vars, dict) or not all(isinstance(v, str) for v in config_vars.values()):
        raise ctx.error(f"{where}: `variables` must be a table of string values", line=line)
    dependencies = spec.get("dependencies", {})
    if not isinstance(dependencies, dict):
        raise ctx.error(f"{where}: `dependencies` must be a table", line=line)
    outbound = _str_list(ctx, spec, "allowed_outbound_hosts", where, line)
    outbound += _str_list(ctx, spec, "allowed_http_hosts", where, line)
    return Component(
        id=component_id,
        source=_parse_source(ctx, spec.get("source"), where, line),
        description=_opt_str(ctx, spec, "description", where, line),
        environment=_frozen(environment),
        files=_parse_files(ctx, spec.get("files", []), where, line),
        exclude_files=_str_list(ctx, spec, "exclude_files", where, line),
        allowed_outbound_hosts=outbound,
        key_value_stores=_str_list(ctx, spec, "key_value_stores", where, line),
        sqlite_databases=_str_list(ctx, spec, "sqlite_databases", where, line),
        ai_models=_str_list(ctx, spec, "ai_models", where, line),
        variables=_frozen(config_vars),
        dependencies=_frozen(dependencies),
    )


def _parse_source(ctx: _Ctx, raw: Any, where: str, line: _Line) -> ComponentSource:
    if isinstance(raw, str):
        if not raw:
            raise ctx.error(f"{where}: `source` must not be empty", line=line)
        return LocalSource(raw)
    if isinstance(raw, dict):
        if set(raw) == {"url", "digest"} and all(isinstance(v, str) for v in raw.values()):
            return RemoteSource(url=raw["url"], digest=raw["digest"])
        if {"package", "version"} <= set(raw) <= {"registry", "package", "version"} and all(
            isinstance(v, str) for v in raw.values()
        ):
            return RegistrySource(package=raw["package"], version=raw["version"], registry=raw.get("registry"))
    if raw is None:
        raise ctx.error(f"{where}: `source` is required (a path to the .wasm file, relative to spin.toml)", line=line)
    raise ctx.error(
        f"{where}: `source` must be a path string, {{ url = \"...\", digest = \"sha256:...\" }} or "
        f"{{ registry = \"...\", package = \"...\", version = \"...\" }}; got {raw!r}",
        line=line,
    )


def _parse_files(ctx: _Ctx, raw: Any, where: str, line: _Line) -> tuple[FileMount, ...]:
    if not isinstance(raw, list):
        raise ctx.error(f"{where}: `files` must be a list of glob strings or {{ source, destination }} tables", line=line)
    mounts: list[FileMount] = []
    for entry in raw:
        if isinstance(entry, str) and entry:
            mounts.append(GlobFiles(entry))
        elif isinstance(entry, dict) and set(entry) == {"source", "destination"} and all(
            isinstance(v, str) and v for v in entry.values()
        ):
            if not entry["destination"].startswith("/"):
                raise ctx.error(
                    f"{where}: files destination {entry['destination']!r} must be an absolute guest path "
                    "(start with '/')",
                    line=line,
                )
            mounts.append(MappedFiles(source=entry["source"], destination=entry["destination"]))
        else:
            raise ctx.error(
                f"{where}: each `files` entry must be a glob string or {{ source = \"...\", destination = \"/...\" }}; "
                f"got {entry!r}",
                line=line,
            )
    return tuple(mounts)


def _parse_triggers(ctx: _Ctx, raw: Any, components: dict[str, Component]) -> list[Trigger]:
    if not isinstance(raw, dict):
        raise ctx.error("`trigger` must be written as [[trigger.<type>]] tables")
    triggers: list[Trigger] = []
    seen_ids: dict[str, str] = {}
    inline_counter = 0
    for trigger_type, entries in raw.items():
        header = f"[[trigger.{trigger_type}]]"
        line = ctx.line_of(header)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ctx.error(f"triggers must be written as {header} (an array of tables)", line=line)
        for index, entry in enumerate(entries):
            trigger_id = entry.get("id", f"{trigger_type}-trigger-{index + 1}")
            if not isinstance(trigger_id, str) or not trigger_id:
                raise ctx.error(f"{header}: `id` must be a non-empty string", line=line)
            if trigger_id in seen_ids:
                raise ctx.error(f"duplicate trigger id {trigger_id!r} (trigger ids must be unique)", line=line)
            seen_ids[trigger_id] = trigger_type
            if "components" in entry:
                raise ctx.error(
                    f"{header} {trigger_id!r}: `components` (trigger-level component maps) is not supported yet; "
                    "use `component = \"<id>\"`",
                    line=line,
                )
            ref = entry.get("component")
            component_id: str | None
            if ref is None:
                component_id = None
            elif isinstance(ref, str):
                if ref not in components:
                    known = ", ".join(sorted(components)) or "none declared"
                    raise ctx.error(
                        f"{header} {trigger_id!r} references component {ref!r}, which is not declared "
                        f"(declared components: {known})",
                        line=line,
                    )
                component_id = ref
            elif isinstance(ref, dict):
                # Inline component: hoisted under the trigger's id when that is a free kebab id, else a counter
                # name. (Spin does the same hoisting; the exact fallback name is this runtime's choice.)
                if "id" in entry and _KEBAB_ID.match(trigger_id) and trigger_id not in components:
                    component_id = trigger_id
                else:
                    inline_counter += 1
                    component_id = f"inline-component-{inline_counter}"
                    while component_id in components:
                        inline_counter += 1
                        component_id = f"inline-component-{inline_counter}"
                where = f"{header} {trigger_id!r} inline component"
                components[component_id] = _parse_component(ctx, component_id, ref, where, line)
            else:
                raise ctx.error(
                    f"{header} {trigger_id!r}: `component` must be a component id string or an inline table",
                    line=line,
                )
            config = {k: v for k, v in entry.items() if k not in ("id", "component")}
            triggers.append(Trigger(type=trigger_type, id=trigger_id, component=component_id, config=_frozen(config)))
    return triggers


# ---------------------------------------------------------------------------------------------------- helpers


def _check_kebab(ctx: _Ctx, value: str, what: str, where: str, line: _Line) -> None:
    if not _KEBAB_ID.match(value):
        raise ctx.error(
            f"{where}: {what} {value!r} must be lower-kebab-case (letters and digits, words joined by '-')",
            line=line,
        )


def _opt_str(ctx: _Ctx, table: Mapping[str, Any], key: str, where: str, line: _Line) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ctx.error(f"{where}: `{key}` must be a string", line=line)
    return value


def _str_list(ctx: _Ctx, table: Mapping[str, Any], key: str, where: str, line: _Line) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(f"{where}: `{key}` must be a list of strings", line=line)
    return tuple(value)


# ---------------------------------------------------------------------------------------------------- loading


#: The most of a spin.toml this runtime reads (a real one is a few KiB); a bigger one is refused, not parsed.
MAX_MANIFEST_BYTES = 1 << 20


def load_manifest(path: Path) -> Manifest:
    """Read spin.toml and check what needs the app directory: local sources exist and stay inside it.

    ``files`` entries are checked when the component's mounts are resolved (runtime.files), because globs are
    expanded there; an app whose component has a non-local source fails here with a clear message.
    """
    from runtime.paths import PathEscapeError, quoted_path, resolve_in_root  # fs helpers; kept out of parse_manifest

    from runtime.capped_read import CappedReadError, read_capped

    try:
        data = read_capped(path, MAX_MANIFEST_BYTES, follow_symlinks=True)
        if data is None:
            raise CappedReadError("cannot read: No such file or directory")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except CappedReadError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    manifest = parse_manifest(text, path)
    app_dir = manifest.app_dir
    for component in manifest.components.values():
        source = component.source
        if isinstance(source, RemoteSource):
            raise ManifestError(
                f"{path}: component {component.id!r}: source {{ url = {source.url!r} }} is not supported by this "
                "runtime yet (it never downloads at run time); put the .wasm file in the image and use a local path, "
                "or push the app with `spin registry push`"
            )
        if isinstance(source, RegistrySource):
            raise ManifestError(
                f"{path}: component {component.id!r}: registry source {source.package}@{source.version} is not "
                "supported by this runtime; put the .wasm file in the image and use a local path"
            )
        try:
            resolved = resolve_in_root(app_dir, source.path)
        except PathEscapeError as exc:
            raise ManifestError(f"{path}: component {component.id!r}: source: {exc}") from None
        if not resolved.is_file():
            raise ManifestError(
                f"{path}: component {component.id!r}: source file {quoted_path(source.path)} not found "
                f"(looked for {resolved})"
            )
        if component.dependencies:
            raise ManifestError(
                f"{path}: component {component.id!r}: `dependencies` (component composition) is not supported by "
                "this runtime yet; compose the component before building the image (`spin registry push` does)"
            )
    return manifest
