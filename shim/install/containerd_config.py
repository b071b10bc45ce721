"""containerd's config.toml, edited to register this shim as a CRI runtime: the pure part of the node installer.

containerd finds a runtime's shim on its PATH by a name derived from the runtime type (`io.containerd.spin.v2` ->
`containerd-shim-spin-v2`: pkg/shim/util.go BinaryName, core/runtime/v2/shim_manager.go resolveRuntimePath), and CRI
reaches it through a runtime whose name is the RuntimeClass handler:

    [<CRI runtime plugin>.containerd.runtimes.spin]
      runtime_type = "io.containerd.spin.v2"

Which plugin holds CRI runtimes depends on the file's schema, not on the daemon: `version = 2` files (containerd
1.6/1.7, and 2.x, which migrates them when it loads them) use `plugins."io.containerd.grpc.v1.cri"`; `version = 3`
files (2.x only) use `plugins."io.containerd.cri.v1.runtime"`. Files without `version` are schema 1 (`plugins.cri`,
1.x only) and are refused, as are versions this module does not know.

The file is the operator's, so the edit is surgical: tomlkit keeps comments, order, indentation and quoting; only
the runtime table and its `options` subtable may change; the result is re-parsed and compared with the original
before anything is written. A second run finds nothing to do and leaves the file byte-identical.

`edit_config` takes text and returns text and the list of changes; no I/O here (shim.install.command does it).
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit import items
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError

SPIN_RUNTIME_TYPE = "io.containerd.spin.v2"
DEFAULT_RUNTIME_NAME = "spin"

# Config schema version -> the plugin that owns CRI runtimes in that schema.
CRI_RUNTIME_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
# containerd major version -> the schema its own `containerd config default` writes (for a new file).
SCHEMA_FOR_CONTAINERD = {1: 2, 2: 3}
# The ids under which `disabled_plugins` turns CRI off, per schema (1.x also accepts the short id "cri").
CRI_PLUGIN_IDS = {2: ("io.containerd.grpc.v1.cri", "cri"),
                  3: ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")}
# Kubernetes validates a RuntimeClass handler as a DNS label, so no other runtime name can ever be reached.
RUNTIME_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(Exception):
    """The config cannot be edited safely; the file must stay as it is."""


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtime table must say.

    systemd_cgroup None means: the node's cgroup driver, as runc's options in the same file say, if they say it.
    containerd_major None means unknown; it is needed only to choose the schema of an empty file.
    replace_runtime_type (`install --force`): a runtime of that name with another runtime_type is the operator's
    (another shim, often the Rust containerd-shim-spin's "io.containerd.spin.v1"), so it is refused unless forced.
    """

    runtime_name: str = DEFAULT_RUNTIME_NAME
    systemd_cgroup: bool | None = None
    containerd_major: int | None = None
    replace_runtime_type: bool = False


@dataclass
class ConfigEdit:
    """The edited text, the runtime's table header and key path, one line per change (none: `text` is the input)
    and warnings."""

    text: str
    runtime_table: str
    runtime_path: tuple[str, ...] = ()
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- pure part: config text -> edited text ---------------------------------------------------------------------

def is_empty_config(text: str) -> bool:
    """Only comments and blank lines: containerd runs on defaults, so the installer must choose the schema."""
    try:
        return not tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def containerd_major_from_version_output(output: str) -> int:
    """`containerd --version` prints `containerd <module> <version> <revision>`; upstream versions start with `v`."""
    fields = output.split()
    match = re.match(r"v?(\d+)\.", fields[2]) if len(fields) >= 3 else None
    if match is None:
        raise ConfigError(f"cannot read a version in `containerd --version` output {output.strip()!r}")
    return int(match.group(1))


def edit_config(text: str, settings: RuntimeSettings) -> ConfigEdit:
    """Add or update the runtime table; raise ConfigError rather than return a text that says anything else new."""
    original = _parse(text)
    document = tomlkit.parse(text)
    changes: list[str] = []
    if original:
        schema = _schema_of(original, settings)
    else:
        schema = _schema_for_new_file(settings)
        document = _with_version_first(document, schema)
        changes.append(f"set version = {schema} (empty config, containerd {settings.containerd_major}.x)")
    path = ("plugins", CRI_RUNTIME_PLUGIN[schema], "containerd", "runtimes", settings.runtime_name)
    header = _header(path)
    options_header = _header((*path, "options"))
    notes = _cri_disabled_notes(original, schema)
    wanted_systemd, systemd_source = _wanted_systemd_cgroup(original, path, settings)

    current = _lookup(original, path)
    if current is not None and not isinstance(current, dict):
        raise ConfigError(f"{header} exists but is not a table")
    current = current or {}
    current_options = current.get("options", {})
    if not isinstance(current_options, dict):
        raise ConfigError(f"{options_header} exists but is not a table")
    needs_type = current.get("runtime_type") != SPIN_RUNTIME_TYPE
    if needs_type and "runtime_type" in current and not settings.replace_runtime_type:
        raise ConfigError(f"{header} already has runtime_type = {current['runtime_type']!r} (another runtime "
                          "registered under that name): pass --force to replace it, or choose another --runtime-name")
    needs_systemd = wanted_systemd is not None and current_options.get("SystemdCgroup") != wanted_systemd
    if not (needs_type or needs_systemd or changes):
        return ConfigEdit(text, header, path, [], notes)

    style = _Style.of(document, path)
    runtimes, preceding = _runtimes_table(document, path)
    if settings.runtime_name in runtimes:
        runtime = _standard_table(runtimes[settings.runtime_name], header)
        if needs_type:
            runtime["runtime_type"] = _string_like(runtime.get("runtime_type"), SPIN_RUNTIME_TYPE, style)
    else:
        runtime = _append_table(runtimes, settings.runtime_name, style.header_indent,
                                {"runtime_type": style.string(SPIN_RUNTIME_TYPE)}, style.item_indent,
                                style.blank_lines, preceding)
    if needs_type:
        was = f" (was {current['runtime_type']!r})" if "runtime_type" in current else ""
        changes.append(f'{"updated" if "runtime_type" in current else "added"} {header} runtime_type = "{SPIN_RUNTIME_TYPE}"{was}')
    if needs_systemd:
        if "options" in runtime:
            _standard_table(runtime["options"], options_header)["SystemdCgroup"] = wanted_systemd
        else:
            indent, item_indent = style.options_indents(runtime if current else None)
            _append_table(runtime, "options", indent, {"SystemdCgroup": wanted_systemd}, item_indent,
                          style.blank_lines)
        changes.append(f"set {options_header} SystemdCgroup = {str(wanted_systemd).lower()} ({systemd_source})")

    new_text = tomlkit.dumps(document)
    if new_text.endswith("\n\n") and not text.endswith("\n\n"):
        new_text = new_text.rstrip("\n") + "\n"  # a table appended at the very end keeps no trailing blank line
    _verify(original, new_text, path, wanted_systemd, added_version=None if original else schema)
    return ConfigEdit(new_text, header, path, changes, notes)


def _parse(text: str) -> dict[str, Any]:
    """tomlkit must read the file to edit it, and tomllib (the spec's strict reader) to check the edit."""
    try:
        tomlkit.parse(text)
        return tomllib.loads(text)
    except (TOMLKitError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"not valid TOML: {error}") from None


def _schema_for_new_file(settings: RuntimeSettings) -> int:
    if settings.containerd_major is None:
        raise ConfigError("the config is empty and the containerd version unknown: pass --containerd-version 1|2")
    if settings.containerd_major not in SCHEMA_FOR_CONTAINERD:
        raise ConfigError(f"containerd {settings.containerd_major}.x is not supported (1.x and 2.x are)")
    return SCHEMA_FOR_CONTAINERD[settings.containerd_major]


def _schema_of(original: dict[str, Any], settings: RuntimeSettings) -> int:
    version = original.get("version")
    if version is None:
        raise ConfigError("no `version` key: this is a schema 1 config (`plugins.cri`, containerd 1.x only), "
                          "which the installer does not edit; start from `containerd config default` instead")
    if type(version) is not int or version not in CRI_RUNTIME_PLUGIN:
        raise ConfigError(f"unknown config `version = {version!r}` (the installer knows 2 and 3)")
    if version == 3 and settings.containerd_major == 1:
        raise ConfigError("`version = 3` is a containerd 2.x config, which containerd 1.x cannot read")
    return version


def _with_version_first(document: tomlkit.TOMLDocument, schema: int) -> tomlkit.TOMLDocument:
    """containerd's own files start with `version`; an empty file's comments follow it."""
    fresh = tomlkit.document()
    fresh.add("version", schema)
    if not document.body:
        fresh.add(tomlkit.nl())
    for key, item in document.body:
        fresh.append(key, item)
    return fresh


def _cri_disabled_notes(original: dict[str, Any], schema: int) -> list[str]:
    disabled = original.get("disabled_plugins", [])
    off = [name for name in CRI_PLUGIN_IDS[schema] if isinstance(disabled, list) and name in disabled]
    if not off:
        return []
    return [f"warning: disabled_plugins turns CRI off ({', '.join(off)}), so Kubernetes cannot use the runtime "
            "until CRI is enabled; left as it is"]


def _wanted_systemd_cgroup(original: dict[str, Any], path: tuple[str, ...],
                           settings: RuntimeSettings) -> tuple[bool | None, str]:
    """The shim's pods must use the node's cgroup driver, which runc's options already state for kubelet's."""
    if settings.systemd_cgroup is not None:
        return settings.systemd_cgroup, "--systemd-cgroup"
    runc_value = _lookup(original, (*path[:-1], "runc", "options", "SystemdCgroup"))
    if isinstance(runc_value, bool):
        return runc_value, "as runc's options say"
    return None, ""


def _lookup(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _header(path: Sequence[str]) -> str:
    return "[" + ".".join(key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"' for key in path) + "]"


# ---- tomlkit surgery: where the new table goes and how it looks ------------------------------------------------

@dataclass(frozen=True)
class _Style:
    """How this file writes a runtime table: copied from a sibling runtime (runc) if any, else guessed."""

    header_indent: str
    item_indent: str
    options_indent: str
    options_item_indent: str
    literal_strings: bool
    blank_lines: bool  # tables end with a blank line (containerd's `config default` does)

    def string(self, value: str) -> items.String:
        return tomlkit.string(value, literal=self.literal_strings)

    def options_indents(self, existing_runtime: items.Table | None) -> tuple[str, str]:
        """An options table added to an operator's runtime table is indented like that table's values."""
        if existing_runtime is None:
            return self.options_indent, self.options_item_indent
        header = _indent_of(existing_runtime)
        values = _first_value_indent(existing_runtime) or self.item_indent
        return values, (values + values[len(header):] if values.startswith(header) else values)

    @classmethod
    def of(cls, document: tomlkit.TOMLDocument, path: tuple[str, ...]) -> _Style:
        text = document.as_string()
        step = "  " if re.search(r"(?m)^[ \t]+\S", text) else ""
        depth = len(path) - 1
        literal = _first_string_is_literal(document)
        blank_lines = bool(re.search(r"\n[ \t]*\n[ \t]*\[", text))
        sibling = _sibling_runtime(document, path)
        if sibling is None:
            return cls(step * depth, step * (depth + 1), step * (depth + 1), step * (depth + 2), literal, blank_lines)
        header = _indent_of(sibling)
        item = _first_value_indent(sibling) or header + step
        options = sibling.get("options")
        has_options = isinstance(options, items.Table) and not options.is_super_table()
        options_indent = _indent_of(options) if has_options else item
        options_item = (_first_value_indent(options) if has_options else None) or options_indent + item[len(header):]
        runtime_type = sibling.get("runtime_type")
        if isinstance(runtime_type, items.String):
            literal = _is_literal(runtime_type)
        _, trailing = _trailing_run(_last_leaf(sibling))
        blank_lines = any(isinstance(entry, items.Whitespace) and "\n" in entry.s for entry in trailing)
        return cls(header, item, options_indent, options_item, literal, blank_lines)


def _is_literal(value: items.String) -> bool:
    return value.type in (items.StringType.SLL, items.StringType.MLL)


def _string_like(existing: Any, value: str, style: _Style) -> items.String:
    if isinstance(existing, items.String):
        return tomlkit.string(value, literal=_is_literal(existing))
    return style.string(value)


def _indent_of(table: items.Table) -> str:
    return table.trivia.indent.rpartition("\n")[2]


def _first_string_is_literal(document: tomlkit.TOMLDocument) -> bool:
    def walk(body: list[tuple[Any, Any]]) -> bool | None:
        for _, item in body:
            if isinstance(item, items.String):
                return _is_literal(item)
            if isinstance(item, items.Table):
                found = walk(item.value.body)
                if found is not None:
                    return found
        return None

    return bool(walk(document.body))


def _sibling_runtime(document: tomlkit.TOMLDocument, path: tuple[str, ...]) -> items.Table | None:
    """runc's table if present (every containerd config has it), else any other runtime beside ours."""
    runtimes: Any = document
    for key in path[:-1]:
        runtimes = runtimes.get(key) if isinstance(runtimes, (tomlkit.TOMLDocument, items.Table,
                                                              OutOfOrderTableProxy)) else None
    if not isinstance(runtimes, items.Table):
        return None
    for name in ["runc", *runtimes]:
        candidate = runtimes.get(name)
        if name != path[-1] and isinstance(candidate, items.Table) and not candidate.is_super_table():
            return candidate
    return None


def _first_value_indent(table: items.Table) -> str | None:
    for key, item in table.value.body:
        if key is not None and not isinstance(item, (items.Table, items.AoT, items.Whitespace, items.Comment)):
            return item.trivia.indent
    return None


def _runtimes_table(document: tomlkit.TOMLDocument, path: tuple[str, ...]) -> tuple[items.Table, Any]:
    """The `runtimes` table, created as header-less (super) tables along the path where missing, and the deepest
    container that existed before (whose text precedes a table appended to `runtimes`).

    tomlkit cannot append a [table] under a dotted key (`runtimes.runc.runtime_type = ...` inside
    [...containerd]): it would render it as a top-level [runtimes.spin]. Such files are refused.
    """
    container: Any = document
    existed: Any = None
    for depth, key in enumerate(path[:-1]):
        if key not in container:
            existed = container if existed is None else existed
            container[key] = tomlkit.table(is_super_table=True)
            container[key].trivia.indent = ""  # tomlkit gives a new table a blank line, which a header-less one keeps
        # An OutOfOrderTableProxy (a table split by other tables) holds no body of its own; verify() still checks.
        body = container.body if isinstance(container, tomlkit.TOMLDocument) else \
            container.value.body if isinstance(container, items.Table) else []
        if any(k is not None and k.key == key and k.is_dotted() for k, _ in body):
            raise ConfigError(f"{_header(path[:depth + 1])} is written with dotted keys; the installer edits only "
                              f"[table] headers: add {_header(path)} by hand")
        container = container[key]
        if isinstance(container, items.InlineTable) or not isinstance(container, (items.Table, OutOfOrderTableProxy)):
            raise ConfigError(f"{_header(path[:depth + 1])} is not a [table]; the installer edits only [tables]")
    if not isinstance(container, items.Table):
        raise ConfigError(f"{_header(path[:-1])} is split over several places; add {_header(path)} by hand")
    return container, container if existed is None else existed


def _standard_table(item: Any, header: str) -> items.Table:
    if not isinstance(item, items.Table) or isinstance(item, items.InlineTable):
        raise ConfigError(f"{header} is not a [table] (inline?); write it as a [table] and run again")
    return item


def _last_leaf(table: items.Table) -> items.Table:
    """The table whose body is rendered last inside `table` (its last subtable's last subtable, ...)."""
    while table.value.body and isinstance(table.value.body[-1][1], items.Table) \
            and not isinstance(table.value.body[-1][1], items.InlineTable):
        table = table.value.body[-1][1]
    return table


def _trailing_run(table: items.Table) -> tuple[int, list[Any]]:
    """The blank lines and comments after a table's last value: (their index in the body, the items)."""
    body = table.value.body
    start = len(body)
    while start > 0 and body[start - 1][0] is None and isinstance(body[start - 1][1], (items.Whitespace,
                                                                                      items.Comment)):
        start -= 1
    return start, [item for _, item in body[start:]]


def _detach_comments_before_next_table(parent: items.Table) -> list[Any]:
    """Comments at the end of the last table in `parent` introduce whatever follows it, so they must stay above
    the next table, not end up above ours: cut them off here, to be put back after our table."""
    leaf = _last_leaf(parent)
    start, run = _trailing_run(leaf)
    first_comment = next((i for i, item in enumerate(run) if isinstance(item, items.Comment)), None)
    if first_comment is None:
        return []
    moved = run[first_comment:]
    del leaf.value.body[start + first_comment:]  # keyless items: the container's key index is unaffected
    return moved


def _ends_with_blank_line(container: Any) -> bool:
    """True also for nothing at all: a table right below its parent's header or the file's start needs no gap."""
    if isinstance(container, OutOfOrderTableProxy):
        return True  # no text of its own; a missing blank line is only cosmetic
    text = container.as_string()
    return not text.strip() or bool(re.search(r"\n[ \t]*\n[ \t]*$", text))


def _append_table(parent: items.Table, key: str, header_indent: str, values: dict[str, Any], item_indent: str,
                  blank_lines: bool, preceding: Any = None) -> items.Table:
    """A new [table] at the end of `parent`, laid out like the file's tables; `preceding` is the container whose
    text comes right before it (parent, unless parent is a header-less table just created).

    Indents are set after appending because tomlkit's Table.append prefixes a child's indent with its parent's.
    """
    moved_comments = _detach_comments_before_next_table(parent)
    blank_before = blank_lines and not _ends_with_blank_line(parent if preceding is None else preceding)
    parent.append(key, tomlkit.table())
    table = parent[key]
    table.trivia.indent = ("\n" if blank_before else "") + header_indent
    for name, value in values.items():
        table.append(name, value)
        table.value.item(name).trivia.indent = item_indent
    if blank_lines:
        table.add(tomlkit.nl())
    for comment in moved_comments:
        table.value.append(None, comment)
    return table


def _verify(original: dict[str, Any], new_text: str, path: tuple[str, ...], wanted_systemd: bool | None,
            added_version: int | None) -> None:
    """Refuse to write unless the new text parses, holds what we want, and says everything else as before."""
    try:
        edited = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"the edited config would not be valid TOML ({error}); nothing written") from None
    runtime = _lookup(edited, path)
    if not isinstance(runtime, dict) or runtime.get("runtime_type") != SPIN_RUNTIME_TYPE or \
            (wanted_systemd is not None and _lookup(runtime, ("options", "SystemdCgroup")) != wanted_systemd):
        raise ConfigError(f"the edit would not land in {_header(path)} (a layout tomlkit cannot edit); "
                          "nothing written: add the table by hand")
    before = copy.deepcopy(original)
    if added_version is not None:
        before["version"] = added_version
    before_runtime = _pop_runtime(before, path)
    after_runtime = _pop_runtime(edited, path)
    for table in (before_runtime, after_runtime):
        table.pop("runtime_type", None)
        options = table.get("options")
        if isinstance(options, dict):
            options.pop("SystemdCgroup", None)
            if not options:
                del table["options"]
    if before != edited or before_runtime != after_runtime:
        raise ConfigError("the edit would change more than the runtime table (a layout tomlkit cannot edit); "
                          f"nothing written: add {_header(path)} by hand")


def _pop_runtime(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """Remove the runtime table, and the parents that held nothing else (the edit may have created them)."""
    parents = [tree]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return {}
        parents.append(child)
    runtime = parents[-1].pop(path[-1], {})
    for depth in range(len(path) - 1, 0, -1):
        if parents[depth]:
            break
        del parents[depth - 1][path[depth - 1]]
    return runtime if isinstance(runtime, dict) else {}
