"""The key-value error every store backend raises (SQLite in runtime.spin.key_value, Redis in .key_value_redis)."""

from __future__ import annotations

from typing import Literal

#: The case names of ``fermyon:spin/key-value@2.0.0``'s ``error`` variant (wasi:keyvalue's are a subset).
KeyValueErrorKind = Literal["store-table-full", "no-such-store", "access-denied", "other"]


class KeyValueError(Exception):
    """A store operation failed; ``kind`` is the WIT error case, ``str()`` the ``other`` payload / a description."""

    def __init__(self, kind: KeyValueErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: KeyValueErrorKind = kind
        self.message = message
