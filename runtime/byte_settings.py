"""Byte counts an operator sets in the shim's environment (containerd's): the memory caps of a cold compile
(runtime.compile_process) and of an app's load (shim.wasm.load_memory). Node settings, never the task's env: an
image author must not raise a cap that protects the node."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

log = logging.getLogger(__name__)

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def parse_bytes(text: str) -> int | None:
    """``"2147483648"``, ``"512Mi"``, ``"2G"`` -> bytes (Kubernetes' quantity suffixes); None if it is not one."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]i?)?", text.strip())
    if match is None:
        return None
    return int(match[1]) * _UNITS[(match[2] or "").lower()]


def byte_setting(name: str, default: int, minimum: int, environ: Mapping[str, str] | None = None) -> int:
    """``name``'s value in bytes; unset or empty: ``default``; not a byte count, or under ``minimum``: ``default``
    with a warning in the shim's log (a typo must not turn a cap off, nor fail every task of the node)."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    value = parse_bytes(raw)
    if value is None or value < minimum:
        log.warning("%s=%r is not a byte count of at least %d; using %d", name, raw, minimum, default)
        return default
    return value
