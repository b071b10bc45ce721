"""One error for every step of entering the sandbox, naming the step: the message is the Create error a user reads
(`sandbox: cannot mount /data (bind /srv/x): No such file or directory`), so it says what was tried, not where
in the code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SandboxError(OSError):
    """Building the root or becoming the spec's user failed; the message names the step and the path."""


def step(what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, ValueError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SandboxError(getattr(exc, "errno", 0) or 0, f"sandbox: cannot {what}: {message}") from None
