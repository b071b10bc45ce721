"""Taking install's runtime tables back out of a config.toml the operator may have edited since: the pure part of
`uninstall` (text in, text out; shim.install.uninstall does the I/O).

First choice: reverse install's own hunks, as `patch -R` does, each found by its exact lines and the unchanged lines
around it; whatever the operator changed elsewhere stays byte for byte. When a hunk is no longer there as written
(the operator edited inside our table), a table install created is deleted with tomlkit instead (comments inside
it go with it). Either way the result is checked with tomllib: it must say what the current file says, except that
each of our runtime tables says what it said before install (or is gone). Anything else is refused, naming the
table to remove by hand.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from shim.install.containerd_config import ConfigError
from shim.install.install_record import Hunk, RuntimeEntry

CONTEXT_LINES = 3


def hunks_of(before: str, after: str) -> list[Hunk]:
    """The edit from `before` to `after`; context lines are taken only from unchanged lines, so that reversing
    the hunks last to first always finds the context of each as it was written."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    changed = [op for op in SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if op[0] != "equal"]
    hunks = []
    for index, (_, i1, i2, j1, j2) in enumerate(changed):
        previous_end = changed[index - 1][4] if index else 0
        next_start = changed[index + 1][3] if index + 1 < len(changed) else len(new)
        hunks.append(Hunk(old[i1:i2], new[j1:j2], new[max(previous_end, j1 - CONTEXT_LINES):j1],
                          new[j2:min(next_start, j2 + CONTEXT_LINES)]))
    return hunks


def reverse_hunks(text: str, edits: Sequence[Sequence[Hunk]]) -> str | None:
    """The text with every edit undone (newest edit first, last hunk first), or None if one is not found once."""
    lines = text.splitlines(keepends=True)
    for edit in reversed(edits):
        for hunk in reversed(edit):
            start = _find_once(lines, hunk.context_before + hunk.after + hunk.context_after)
            if start is not None:
                start += len(hunk.context_before)
            elif hunk.after:
                start = _find_once(lines, hunk.after)
            if start is None:
                return None
            lines[start:start + len(hunk.after)] = hunk.before
    return "".join(lines)


def _find_once(lines: list[str], pattern: list[str]) -> int | None:
    if not pattern:
        return None
    found = [i for i in range(len(lines) - len(pattern) + 1) if lines[i:i + len(pattern)] == pattern]
    return found[0] if len(found) == 1 else None


def remove_runtimes(text: str, entries: Sequence[RuntimeEntry], edits: Sequence[Sequence[Hunk]],
                    added_version: bool) -> tuple[str, str]:
    """(the reverted text, how: "reversed install's own lines" or "deleted the tables"); raises ConfigError."""
    try:
        current = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML ({error}): remove {_tables(entries)} by hand") from None
    reversed_text = reverse_hunks(text, edits)
    if reversed_text is not None and _says_current_minus_ours(current, reversed_text, entries, added_version):
        return reversed_text, "reversed install's own lines"
    deleted = _delete_created_tables(text, entries)
    if deleted is not None and _says_current_minus_ours(current, deleted, entries, added_version=False):
        return deleted, "deleted the tables install added (their lines had changed)"
    raise ConfigError(f"the config changed inside {_tables(entries)} since install; remove or restore "
                      + "; ".join(_restore_hint(entry) for entry in entries) + " by hand")


def _tables(entries: Sequence[RuntimeEntry]) -> str:
    return ", ".join(entry.table for entry in entries)


def _restore_hint(entry: RuntimeEntry) -> str:
    if entry.previous is None:
        return f"{entry.table} (install added it)"
    return f"{entry.table} (before install it was {json.dumps(entry.previous, sort_keys=True)})"


def _delete_created_tables(text: str, entries: Sequence[RuntimeEntry]) -> str | None:
    if any(entry.previous is not None for entry in entries):
        return None  # a table install only changed cannot be put back by deleting it
    try:
        document = tomlkit.parse(text)
        for entry in entries:
            container: Any = document
            for key in entry.path[:-1]:
                container = container[key]
            if entry.path[-1] in container:
                del container[entry.path[-1]]
        return tomlkit.dumps(document)
    except (TOMLKitError, KeyError, TypeError):
        return None


def _says_current_minus_ours(current: dict[str, Any], new_text: str, entries: Sequence[RuntimeEntry],
                             added_version: bool) -> bool:
    try:
        new = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        return False
    expected = copy.deepcopy(current)
    for entry in entries:
        _set_path(expected, entry.path, _normalized(entry.previous))
    if added_version and "version" not in new:
        expected.pop("version", None)  # install gave an empty file its `version`; the revert takes it back
    return _pruned(_normalized(new)) == _pruned(_normalized(expected))


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        child = tree.get(key)
        if not isinstance(child, dict):
            if value is None:
                return
            child = tree[key] = {}
        tree = child
    if value is None:
        tree.pop(path[-1], None)
    else:
        tree[path[-1]] = value


def _normalized(tree: Any) -> Any:
    """As the record stores a table: JSON, with TOML dates as strings."""
    return json.loads(json.dumps(tree, default=str))


def _pruned(tree: Any) -> Any:
    """Empty tables say nothing to containerd; the tomlkit deletion may leave (or drop) their headers."""
    if not isinstance(tree, dict):
        return tree
    pruned = {key: _pruned(value) for key, value in tree.items()}
    return {key: value for key, value in pruned.items() if value != {}}
