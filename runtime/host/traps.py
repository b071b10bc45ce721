"""Exceptions a host function raises to stop the guest; the executor turns them into the request's outcome."""

from __future__ import annotations


class HostTrap(Exception):
    """Trap the guest with this message (a bad handle, a broken invariant, a host API used out of order).

    The guest cannot catch it; the executor logs ``spin: <component>: error: <message>`` and answers 500 when no
    response was started.
    """


class GuestExit(Exception):
    """The guest called ``wasi:cli/exit``: the wasm call unwinds like a trap, with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"guest exited with status {status}")
        self.status = status
