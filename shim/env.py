"""Settings an operator gives the shim through containerd's environment (which `start` and the daemons inherit)."""

from __future__ import annotations

import os


def positive_seconds(name: str, default: float) -> float:
    """``name`` as a positive number of seconds; ``default`` when unset, unreadable or not positive."""
    try:
        seconds = float(os.environ.get(name, default))
    except ValueError:
        return default
    return seconds if seconds > 0 else default
