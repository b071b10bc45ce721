"""The "unknown key" phrase of manifest and trigger errors, with a "did you mean" for a likely typo.

Spin refuses unknown keys in its manifest tables (serde ``deny_unknown_fields``: "unknown field `enviroment`,
expected one of ..."); this runtime does the same and names the closest known key when there is one, because a
misspelt key is the usual cause (``enviroment``, ``allowed_outbound_host``, ``key_value_store``). Pure; difflib
is imported only when there is an unknown key (1-2 ms of import every spin.toml parse would otherwise pay).

The keys come from the image, so the phrase is bounded: at most ``MAX_KEYS_SHOWN`` keys, each cut to
``MAX_KEY_CHARS``, and only those are matched. A 1 MiB spin.toml of 100 000 unknown keys otherwise made a 1 MB
Create error (beyond what ``kubectl describe`` shows, near ttrpc's 4 MiB message limit once escaped) in 4 s of
difflib.
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.errors import quoted

#: difflib's similarity ratio a known key needs to be offered. 0.6 (difflib's default) also offers ``version``
#: for ``description``-like noise; 0.7 keeps the single-typo and missing-plural cases, which are what users write.
_CUTOFF = 0.7
#: Unknown keys named in one message; the rest are counted. A typo or two is the case worth naming in full.
MAX_KEYS_SHOWN = 10
#: Characters of one key shown (a longer key is cut, with its length said).
MAX_KEY_CHARS = 64


def closest_key(unknown: str, known: Iterable[str]) -> str | None:
    """The known key ``unknown`` is most likely a misspelling of, or None when none is close."""
    import difflib

    candidates = sorted(set(known))
    matches = difflib.get_close_matches(unknown, candidates, n=1, cutoff=_CUTOFF)
    if not matches:
        # A case slip (``Route``) or a dash for an underscore (``key-value-stores``) is a typo difflib can miss.
        folded = {key.lower().replace("-", "_"): key for key in candidates}
        return folded.get(unknown.lower().replace("-", "_"))
    return matches[0]


def keys_with_suggestions(unknown: Iterable[str], known: Iterable[str]) -> str:
    """``'enviroment' (did you mean `environment`?), 'x'``: the unknown keys, sorted, each with its likely fix;
    past ``MAX_KEYS_SHOWN``, ``... and N more``."""
    known_keys = tuple(known)
    keys = sorted(unknown)
    parts = []
    for key in keys[:MAX_KEYS_SHOWN]:
        if len(key) > MAX_KEY_CHARS:
            parts.append(quoted(key, MAX_KEY_CHARS))
            continue
        match = closest_key(key, known_keys)
        parts.append(f"{key!r} (did you mean `{match}`?)" if match else repr(key))
    if len(keys) > MAX_KEYS_SHOWN:
        parts.append(f"... and {len(keys) - MAX_KEYS_SHOWN} more")
    return ", ".join(parts)


def unknown_keys_phrase(unknown: Iterable[str], known: Iterable[str]) -> str:
    """``unknown key(s) 'enviroment' (did you mean `environment`?), 'x'``: the start of an error message."""
    return f"unknown key(s) {keys_with_suggestions(unknown, known)}"


__all__ = ["closest_key", "keys_with_suggestions", "unknown_keys_phrase"]
