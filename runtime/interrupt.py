"""Stopping a running guest from another thread: epoch interruption with a per-Store deadline callback.

interrupt() sets a flag and bumps the Engine's epoch (an atomic increment: safe from any thread). Every Store we
run has a deadline of "current epoch + 1" and a callback that wasmtime calls when the deadline passes: if *this*
app's flag is set it fails the guest with INTERRUPT_MESSAGE, otherwise it extends the deadline by one tick and
the guest continues. So an epoch bump meant for another app sharing the process-wide Engine (tests; later, HTTP
workers with per-request deadlines) never kills this one. wasmtime-py 50 has no wrapper for the callback, so we
call the C API (``wasmtime_store_epoch_deadline_callback``) through its generated ctypes bindings.

Wasm checks the epoch only at function entries and loop back-edges: a guest blocked inside a host call (e.g. a
one-hour ``poll_oneoff``) stops only when that call returns; the shim then needs SIGKILL, as for a process that
ignores SIGTERM.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.exits import INTERRUPT_MESSAGE

if TYPE_CHECKING:
    import wasmtime


class EpochCallback:
    """A Store epoch-deadline callback as a ctypes thunk: the one place that speaks this part of the C API.

    ``on_deadline(data, delta_out, kind_out) -> error message or None`` runs when a Store's deadline passes:
    a message fails the guest with it (a trap whose text is the message); None means "continue", after the
    handler set the next deadline in ``delta_out[0]`` (ticks from now). ``data`` is the integer given to
    ``install``, so one callback serves many Stores.
    """

    def __init__(self, on_deadline: Callable[[int, Any], str | None]) -> None:
        from wasmtime import _ffi as ffi

        self._ffi = ffi
        self._on_deadline = on_deadline
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_size_t,
            ctypes.POINTER(ffi.wasmtime_context_t),
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_uint8),
        )
        # Kept on self: ctypes frees a callback thunk when its Python object dies, and wasmtime would then call
        # freed memory from inside the guest.
        self._thunk = callback_type(self._call)
        # No finalizer: Stores may be dropped during interpreter teardown, when calling into Python would crash.
        self._no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()

    def install(self, store: wasmtime.Store, data: int = 0) -> None:
        self._ffi.wasmtime_store_epoch_deadline_callback(
            store.ptr(), self._thunk, ctypes.c_void_p(data) if data else None, self._no_finalizer)

    def _call(self, _context, data, delta_out, kind_out) -> int:  # type: ignore[no-untyped-def]
        message = self._on_deadline(data or 0, delta_out)
        if message is not None:
            error = self._ffi.wasmtime_error_new(message.encode())
            return ctypes.cast(error, ctypes.c_void_p).value or 0  # wasmtime takes ownership
        kind_out[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
        return 0


class Interrupter:
    """One per LoadedApp: the flag, and the C callback installed on each Store the app runs in."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._requested = threading.Event()
        self._callback = EpochCallback(self._on_deadline)

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self) -> None:
        """Thread-safe; idempotent. The guest traps at its next epoch check."""
        self._requested.set()
        try:
            self._engine.increment_epoch()
        except ValueError:
            pass  # the Engine handle was closed at interpreter exit: nothing is running any more

    def arm(self, store: wasmtime.Store) -> None:
        """Install the callback and a one-tick deadline. Call before instantiating (instantiation checks it)."""
        self._callback.install(store)
        store.set_epoch_deadline(1)

    def _on_deadline(self, _data: int, delta_out: Any) -> str | None:
        if self._requested.is_set():
            return INTERRUPT_MESSAGE
        delta_out[0] = 1
        return None
