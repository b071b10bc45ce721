"""The per-request table of host resources: the guest holds integer handles (reps), Python keeps the objects.

wasmtime-py has no ``store.data()`` in host callbacks (their ``StoreContext`` lacks it: wasmtime-py
wasmtime/_store.py), so a host resource is a ``ResourceHost(rep, type)`` whose rep indexes this table. One table per
request: reps start at 1 for each request and nothing outlives it (``clear`` runs when the request ends, whatever
the guest forgot to drop).
"""

from __future__ import annotations

from typing import Any, TypeVar

from runtime.host.traps import HostTrap

T = TypeVar("T")


class ResourceTable:
    __slots__ = ("_objects", "_next")

    def __init__(self) -> None:
        self._objects: dict[int, Any] = {}
        self._next = 1

    def push(self, obj: Any) -> int:
        rep = self._next
        self._next = rep + 1
        self._objects[rep] = obj
        return rep

    def get(self, rep: int, kind: type[T]) -> T:
        """The object behind ``rep``; HostTrap when it is gone or of another type (a guest or host bug)."""
        obj = self._objects.get(rep)
        if not isinstance(obj, kind):
            raise HostTrap(self._bad(rep, kind, obj))
        return obj

    def take(self, rep: int, kind: type[T]) -> T:
        """Remove and return the object: for ``own<...>`` parameters, whose ownership moves to the host."""
        obj = self._objects.pop(rep, None)
        if not isinstance(obj, kind):
            if obj is not None:
                self._objects[rep] = obj
            raise HostTrap(self._bad(rep, kind, obj))
        return obj

    def pop(self, rep: int) -> Any:
        """Remove whatever ``rep`` holds (None if nothing): resource destructors."""
        return self._objects.pop(rep, None)

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, rep: int) -> bool:
        return rep in self._objects

    def clear(self) -> list[Any]:
        """Empty the table and return what was left in it (for closing, e.g. outbound connections)."""
        left = list(self._objects.values())
        self._objects.clear()
        return left

    @staticmethod
    def _bad(rep: int, kind: type, obj: Any) -> str:
        if obj is None:
            return f"unknown {kind.__name__} handle {rep}"
        return f"handle {rep} is a {type(obj).__name__}, not a {kind.__name__}"
