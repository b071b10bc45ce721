"""SHA-256 for the `start` path (socket names, the fork server's build key): CPython's own implementation, which
imports in microseconds, where hashlib loads OpenSSL (~4 ms of every `start`, measured with -X importtime)."""

from __future__ import annotations

try:
    from _sha256 import sha256  # CPython 3.11 (3.12+: _sha2)
except ImportError:  # pragma: no cover - another interpreter
    try:
        from _sha2 import sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256  # type: ignore[no-redef]

__all__ = ["sha256"]
