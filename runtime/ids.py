"""Spin's id syntax, shared by spin.toml (runtime.manifest) and the locked app (runtime.locked_app).

One place, because a component id is more than a name: the locked app lays each component's files out in a
directory named after it, so the same rule that makes ``spin.toml`` ids tidy is what keeps an image's lock from
naming ``/etc`` or ``../..`` there. Pure (no imports beyond ``re``), so neither module imports the other for it.
"""

from __future__ import annotations

import re

#: Spin's KebabId (spin crates/serde/src/id.rs): lower-case words of ASCII letters and digits, the first starting
#: with a letter, joined by single '-' (component ids, trigger ids). Never empty, never holds '/', '.' or '\0'.
#: ``\Z``, not ``$``: ``$`` also matches before a final newline, so ``match`` would let "x\n" through.
KEBAB_ID = re.compile(r"\A[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")
#: Spin's SnakeId: the same words joined by '_' (variable names).
SNAKE_ID = re.compile(r"\A[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z")


def is_kebab_id(value: object) -> bool:
    """Whether ``value`` is a string in Spin's lower-kebab-case (``fullmatch``: a trailing newline does not pass)."""
    return isinstance(value, str) and KEBAB_ID.fullmatch(value) is not None
