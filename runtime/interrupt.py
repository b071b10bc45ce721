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
from typing import TYPE_CHECKING

from runtime.exits import INTERRUPT_MESSAGE

if TYPE_CHECKING:
    import wasmtime


class Interrupter:
    """One per LoadedApp: the flag, and the C callback installed on each Store the app runs in."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        from wasmtime import _ffi as ffi

        self._engine = engine
        self._requested = threading.Event()
        self._ffi = ffi
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_size_t,
            ctypes.POINTER(ffi.wasmtime_context_t),
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_uint8),
        )
        # Kept on self: ctypes frees a callback thunk when its Python object dies, and wasmtime would then call
        # freed memory from inside the guest.
        self._callback = callback_type(self._on_deadline)
        self._no_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()

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
        self._ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._callback, None, self._no_finalizer)
        store.set_epoch_deadline(1)

    def _on_deadline(self, _context, _data, delta_out, kind_out) -> int:  # type: ignore[no-untyped-def]
        if self._requested.is_set():
            error = self._ffi.wasmtime_error_new(INTERRUPT_MESSAGE.encode())
            return ctypes.cast(error, ctypes.c_void_p).value or 0  # wasmtime takes ownership
        delta_out[0] = 1
        kind_out[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
        return 0
