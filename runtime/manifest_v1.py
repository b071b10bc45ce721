"""spin.toml version 1 (``spin_manifest_version = "1"``, older ``spin_version = "1"``) converted to version 2.

Spin's loader still runs version 1 manifests by converting them (spin crates/manifest/src/compat.rs,
``v1_to_v2_app``); this module does the same conversion on the parsed TOML, so runtime.manifest validates one
shape and an app gets the same component ids, triggers and permissions it gets under Spin:

- the app's ``name``, ``version``, ``description``, ``authors`` become ``[application]``; the v1
  ``trigger = { type = "<t>", ... }`` options become ``[application.trigger.<t>]``;
- each ``[[component]]`` becomes ``[component.<id>]`` plus one ``[[trigger.<t>]]`` with id ``trigger-<id>``
  holding its ``[component.trigger]`` table; its ``config`` becomes the component's ``variables``;
- a component id that is not kebab-case is fixed as Spin fixes it (``_`` -> ``-``, lower-cased:
  ``snake_case`` -> ``snake-case``, ``mixedCase`` -> ``mixedcase``), and SPIN_COMPONENTS_TO_RETAIN names it so;
- ``allowed_http_hosts`` entries become ``allowed_outbound_hosts`` (``host[:port]`` -> ``http://`` and
  ``https://``, ``self`` -> ``http://self``, ``insecure:allow-all`` -> all http/https and self), and a
  component without ``allowed_outbound_hosts`` also gets ``redis://*:*``, ``mysql://*:*`` and
  ``postgres://*:*``: version 1 apps could reach any database before that field existed.

What Spin refuses is refused with Spin's reason ("invalid ID ...", "One or more allowed_http_hosts entries was
invalid", an unknown key: its v1 tables deny unknown fields). One deliberate difference: two components with the
same id are refused ("cannot have duplicate component IDs", Spin 1's message); Spin 3 silently keeps the last.

Pure: a TOML document in, a version 2 document out, or a V1Error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from runtime.unknown_keys import unknown_keys_phrase

#: spin crates/manifest/src/schema/v1.rs ``AppManifestV1`` and ``ComponentV1`` (both deny unknown fields).
_APP_KEYS = ("spin_manifest_version", "spin_version", "name", "version", "description", "authors", "trigger",
             "variables", "component")
_COMPONENT_KEYS = ("id", "source", "trigger", "description", "config", "environment", "files", "exclude_files",
                   "allowed_http_hosts", "allowed_outbound_hosts", "key_value_stores", "sqlite_databases",
                   "ai_models", "build")
#: Copied to the version 2 component as they are (runtime.manifest validates them there).
_COPIED_COMPONENT_KEYS = ("source", "description", "environment", "files", "exclude_files", "key_value_stores",
                          "sqlite_databases", "ai_models", "build")
#: What a version 1 component could reach before ``allowed_outbound_hosts`` existed (compat.rs).
_DATABASE_HOSTS = ("redis://*:*", "mysql://*:*", "postgres://*:*")
_ALLOW_ALL_HOSTS = "insecure:allow-all"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class V1Error(Exception):
    """A version 1 manifest Spin would refuse. ``near``: text the offending line starts with, to name the line."""

    def __init__(self, message: str, *near: str) -> None:
        super().__init__(message)
        self.message = message
        self.near = near


def is_version_1(version: object) -> bool:
    """Spin's ``ManifestVersion::detect``: version 1 is the *string* "1" (an integer 1 is an invalid version)."""
    return version == "1" and isinstance(version, str)


def convert_v1(doc: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[str, ...]]]]:
    """The version 2 document Spin makes of a version 1 one, and for each component id a label naming the
    component as the v1 file writes it (``[[component]] id = "snake_case"``) with the text its line starts with."""
    if "spin_manifest_version" in doc and "spin_version" in doc:
        raise V1Error("both `spin_manifest_version` and `spin_version` are set; keep `spin_manifest_version = \"1\"`",
                      "spin_version")
    unknown = set(doc) - set(_APP_KEYS)
    if unknown:
        raise V1Error(f"{unknown_keys_phrase(unknown, _APP_KEYS)} in a version 1 manifest (its top-level keys: "
                      "name, version, description, authors, trigger, variables, [[component]])",
                      *(near for key in sorted(unknown)[:4] for near in (key, f"[{key}")))
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise V1Error("`name` is required and must be a non-empty string (a version 1 manifest names the app at "
                      "the top level)")
    application: dict[str, Any] = {"name": name}
    for key in ("version", "description"):
        if key in doc:
            application[key] = _string(doc[key], f"`{key}`", key)
    if "authors" in doc:
        application["authors"] = _string_list(doc["authors"], "`authors`", "authors")

    trigger_type, trigger_options = _app_trigger(doc.get("trigger"))
    application["trigger"] = {trigger_type: trigger_options}

    variables = doc.get("variables", {})
    if not isinstance(variables, dict):
        raise V1Error("`variables` must be a table of `name = { default = \"...\" }` entries", "[variables]")
    for variable in variables:
        _check_id(variable, "_", lower=True, near=("[variables]",))

    raw_components = doc.get("component", [])
    if not isinstance(raw_components, list) or not all(isinstance(c, dict) for c in raw_components):
        raise V1Error("components of a version 1 manifest are written as [[component]] tables (with `id = ...`)",
                      "[component", "component")
    components: dict[str, Any] = {}
    triggers: list[dict[str, Any]] = []
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    for index, raw in enumerate(raw_components, start=1):
        component_id, component, trigger_config, label = _component(raw, index)
        if component_id in components:
            raise V1Error(f"cannot have duplicate component IDs: {component_id}", *label[1])
        components[component_id] = component
        labels[component_id] = label
        triggers.append({"id": f"trigger-{component_id}", "component": component_id, **trigger_config})

    converted: dict[str, Any] = {"spin_manifest_version": 2, "application": application, "variables": variables}
    converted["trigger"] = {trigger_type: triggers} if triggers else {}
    converted["component"] = components
    return converted, labels


def _app_trigger(raw: Any) -> tuple[str, dict[str, Any]]:
    if raw is None:
        raise V1Error("`trigger` is required in a version 1 manifest: write e.g. `trigger = { type = \"http\" }`")
    if not isinstance(raw, dict):
        raise V1Error("`trigger` must be a table such as `trigger = { type = \"http\" }`", "trigger")
    trigger_type = raw.get("type")
    if not isinstance(trigger_type, str) or not trigger_type:
        raise V1Error("`trigger` needs a `type` string, e.g. `trigger = { type = \"http\" }`", "trigger", "[trigger]")
    return trigger_type, {key: value for key, value in raw.items() if key != "type"}


def _component(raw: dict[str, Any], index: int) -> tuple[str, dict[str, Any], dict[str, Any],
                                                         tuple[str, tuple[str, ...]]]:
    original_id = raw.get("id")
    if not isinstance(original_id, str):
        raise V1Error(f"[[component]] number {index}: `id` is required and must be a string", "[[component]]")
    near = (f'id="{original_id}"', f"id='{original_id}'")
    where = f"[[component]] id = {_quoted(original_id)}"
    unknown = set(raw) - set(_COMPONENT_KEYS)
    if unknown:
        raise V1Error(f"{where}: {unknown_keys_phrase(unknown, _COMPONENT_KEYS)}", *near)
    component_id = _component_id(original_id, near)
    if "source" not in raw:
        raise V1Error(f"{where}: `source` is required (a path to the .wasm file, relative to spin.toml)", *near)
    trigger_config = raw.get("trigger")
    if not isinstance(trigger_config, dict):
        raise V1Error(f"{where}: `[component.trigger]` is required in a version 1 manifest (its route, channel, "
                      "...; write `trigger = {}` for none)", *near)
    for reserved in ("id", "component"):
        if reserved in trigger_config:
            raise V1Error(f"{where}: [component.trigger] cannot set `{reserved}` (the trigger runs the component it "
                          "belongs to)", *near)

    component = {key: raw[key] for key in _COPIED_COMPONENT_KEYS if key in raw}
    config = raw.get("config", {})
    if not isinstance(config, dict):
        raise V1Error(f"{where}: `config` must be a table of string values", *near)
    for key in config:
        _check_id(key, "_", lower=True, near=near)
    if config:
        component["variables"] = config

    http_hosts = _string_list(raw.get("allowed_http_hosts", []), f"{where}: `allowed_http_hosts`", *near)
    outbound = raw.get("allowed_outbound_hosts")
    converted_http = convert_allowed_http_hosts(http_hosts, allow_database_access=outbound is None)
    if outbound is not None:
        outbound = [*_string_list(outbound, f"{where}: `allowed_outbound_hosts`", *near), *converted_http]
    else:
        outbound = converted_http
    if outbound:
        component["allowed_outbound_hosts"] = outbound
    return component_id, component, trigger_config, (where, near)


def _component_id(original: str, near: tuple[str, ...]) -> str:
    """Spin's ``component_id_from_string``: kept when it is a KebabId, else ``_`` -> ``-`` and lower-cased."""
    if _id_problem(original, "-", lower=False) is None:
        return original
    fixed = original.replace("_", "-").lower()
    problem = _id_problem(fixed, "-", lower=False)
    if problem is not None:
        raise V1Error(f"invalid ID `{fixed}`: {problem}", *near)
    return fixed


def _check_id(value: str, delimiter: str, *, lower: bool, near: tuple[str, ...]) -> None:
    problem = _id_problem(value, delimiter, lower=lower)
    if problem is not None:
        raise V1Error(f"invalid ID `{value}`: {problem}", *near)


def _id_problem(text: str, delimiter: str, *, lower: bool) -> str | None:
    """Why ``text`` is not a Spin id (spin crates/serde/src/id.rs ``Id::try_from``, same wording), or None."""
    if not text:
        return "empty"
    wrong = {"-": "_", "_": "-"}[delimiter]
    if wrong in text:
        return f"words must be separated with {delimiter!r}, not {wrong!r}"
    for word in text.split(delimiter):
        if not word:
            return f"{delimiter!r}-separated words must not be empty"
        first = word[0]
        if not (first.isascii() and first.isalpha()):
            return f"{delimiter!r}-separated words must start with an ASCII letter; got {first!r}"
        upper = first.isupper()
        for char in word[1:]:
            if char.isascii() and char.isdigit():
                continue
            if not (char.isascii() and char.isalnum()):
                return f"{delimiter!r}-separated words may only contain alphanumeric ASCII; got {char!r}"
            if char.isupper() != upper:
                return f"{delimiter!r}-separated words must be all lowercase or all UPPERCASE; got {_quoted(word)}"
        if lower and upper:
            return f"Lower-case identifiers must be all lowercase; got {_quoted(text)}"
    return None


# ---------------------------------------------------------------------------------------------------- allowed hosts


def convert_allowed_http_hosts(entries: list[str], *, allow_database_access: bool) -> list[str]:
    """Spin's ``convert_allowed_http_to_allowed_hosts``: the ``allowed_outbound_hosts`` the entries stand for."""
    outbound = list(_DATABASE_HOSTS) if allow_database_access else []
    if _ALLOW_ALL_HOSTS in entries:  # Spin looks no further: the other entries are not even parsed
        return [*outbound, "http://*:*", "https://*:*", "http://self"]
    hosts, errors = [], []
    for entry in entries:
        try:
            hosts.append(_parse_http_host(entry))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise V1Error(f"One or more allowed_http_hosts entries was invalid: {'; '.join(errors)}",
                      "allowed_http_hosts")
    for host, port in hosts:
        if host == "self":
            outbound.append("http://self")
        else:
            suffix = f":{port}" if port is not None else ""
            outbound += [f"http://{host}{suffix}", f"https://{host}{suffix}"]
    return outbound


def _parse_http_host(text: str) -> tuple[str, int | None]:
    """(host, port or None) of an ``allowed_http_hosts`` entry, as Spin's parser reads it (the url crate: the host
    lower-cased, a scheme's default port dropped); ValueError with Spin's sentence otherwise."""
    schemed = "//" in text  # Spin's own crude test: "localhost:3001" would otherwise parse as scheme "localhost"
    try:
        parts = urlsplit(text if schemed else f"http://{text}")
        port = parts.port
    except ValueError as exc:
        if schemed:
            raise ValueError(f"{text} isn't a valid HTTP host URL: {exc}") from None
        raise ValueError(f"{text} isn't a valid host or host:port string") from None
    if schemed and parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text} isn't a valid host or host:port string")
    host = parts.hostname
    if not host:
        raise ValueError(f"{text} doesn't contain a host name")
    if any(char.isspace() or char in "<>\\^`{|}%" for char in host):
        raise ValueError(f"{text} isn't a valid host or host:port string")
    if len(parts.path) > 1:
        raise ValueError(f"{text} contains a path, should be host and optional port only")
    if ":" in host:  # an IPv6 literal, written back in brackets as the url crate's host_str() gives it
        host = f"[{host}]"
    if port == _DEFAULT_PORTS[parts.scheme]:
        port = None
    return host, port


# ---------------------------------------------------------------------------------------------------- helpers


def _string(value: Any, what: str, *near: str) -> str:
    if not isinstance(value, str):
        raise V1Error(f"{what} must be a string", *near)
    return value


def _string_list(value: Any, what: str, *near: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise V1Error(f"{what} must be a list of strings", *near)
    return list(value)


def _quoted(text: str) -> str:
    """Rust's ``{:?}`` of a string, as Spin's messages show it: double quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["V1Error", "convert_allowed_http_hosts", "convert_v1", "is_version_1"]
