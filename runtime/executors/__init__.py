"""Spin's two legacy HTTP executors for WASI p1 core modules, and the request lifecycle they share.

* WAGI (``executor = { type = "wagi" }``, runtime.executors.wagi): a CGI program run once per request, request
  in environment variables and stdin, response on stdout (pure mapping in runtime.executors.cgi).
* Spin 1 (runtime.executors.spin1): a core module exporting ``handle-http-request`` with wit-bindgen 0.2's
  canonical ABI, which Spin 2+ still runs (it componentizes such modules; we call them directly).

The trigger (runtime.http.trigger) calls ``load_wagi`` / ``load_spin1`` at task Create: every check a user could
fail (imports, exports, signatures, memory minimum) happens there, so a bad module fails ``ctr run`` with a
message instead of answering 500s. ``handle`` then runs on a guest thread with a fresh Store per request.

What both share lives here because it is one policy, not two: the request-body cap (413), the Store a request
runs in (epoch deadline from ``RequestHead.deadline``, memory limit), and how a guest's end becomes a
GuestFailure (trap or non-zero exit -> 500, deadline -> 504, always with one ``spin: <component>: ...`` line for
the container log).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.epoch import TICK_SECONDS, EpochTicker
from runtime.exits import error_reason, failure_line
from runtime.http.contract import ComponentConfig, Executor, GuestFailure, RequestBody, RequestHead

if TYPE_CHECKING:
    import wasmtime

#: Seconds between two increments of the Engine's epoch by the worker's epoch ticker thread (runtime.epoch,
#: awake while a request's guest runs). A request's remaining time is converted to ticks with it; the guest stops
#: within about one tick after ``RequestHead.deadline`` (RequestClock re-checks the real time, so a different
#: period only makes the stop later or earlier-checked, never wrong).
EPOCH_TICK_SECONDS = TICK_SECONDS

#: The largest request body either executor accepts (both hold it in memory and copy it into the guest once);
#: beyond it the client gets 413. Spin has no cap; Spin 1 modules commonly receive uploads of a few MiB.
MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024

#: What the epoch callback fails a guest with at its deadline.
DEADLINE_MESSAGE = "request deadline exceeded"

_READ_CHUNK = 256 * 1024
_FAR_TICKS = 2**62
_FAR_SECONDS = 10 * 365 * 86400.0


def load_wagi(config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine, *,
              stdout_dir: Path | None = None) -> Executor:
    from runtime.executors.wagi import load_wagi as load

    return load(config, module, engine, stdout_dir=stdout_dir)


def load_spin1(config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine) -> Executor:
    from runtime.executors.spin1 import load_spin1 as load

    return load(config, module, engine)


def is_spin1_module(module: wasmtime.Module) -> bool:
    from runtime.executors.spin1 import is_spin1_module as check

    return check(module)


# ---------------------------------------------------------------------------------------------------- shared


def read_request_body(head: RequestHead, body: RequestBody, limit: int, component_id: str) -> bytes:
    """The whole request body, or GuestFailure(413) as soon as it is known to exceed ``limit`` bytes.

    Both legacy ABIs take the body as one buffer (stdin bytes; a ``list<u8>``), so it is read fully first.
    """
    if head.content_length is not None and head.content_length > limit:
        raise _too_large(component_id, limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = body.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise _too_large(component_id, limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(component_id: str, limit: int) -> GuestFailure:
    return GuestFailure(413, "Payload Too Large",
                        log_line=f"spin: {component_id}: request body larger than {limit} bytes: answered 413")


def deadline_ticks(deadline: float, now: float | None = None) -> int:
    """Epoch ticks from now until ``deadline`` (monotonic seconds), rounded up, at least 1; ``math.inf`` (the
    server's "no timeout") and other far deadlines give a count the epoch never reaches."""
    remaining = deadline - (time.monotonic() if now is None else now)
    if remaining >= _FAR_SECONDS:
        return _FAR_TICKS
    return max(1, math.ceil(remaining / EPOCH_TICK_SECONDS))


@dataclass
class Watch:
    """One request's deadline (and optional extra check) as seen by its Store's epoch callback."""

    key: int
    deadline: float
    #: Called about every tick while the guest runs; a non-None result stops the guest with that reason.
    check: Callable[[], str | None] | None = None
    #: Set by the callback when it stopped the guest: the deadline passed / ``check`` said why.
    expired: bool = False
    stopped: str | None = None
    #: Kept awake from arm to disarm: without epoch ticks the callback never runs.
    ticker: EpochTicker | None = None


class RequestClock:
    """Stops a request's guest at its deadline, driven by the worker's epoch ticks.

    Each request Store gets an epoch-deadline *callback* rather than a bare tick count: when the ticks run out
    the callback compares ``time.monotonic()`` with the real deadline and either stops the guest or sets the next
    deadline. So a tick period that differs from EPOCH_TICK_SECONDS, or epoch bumps from elsewhere (the task
    interrupter, tests sharing an Engine), only change when we look, never the outcome; and WAGI can check its
    stdout size on the way. wasmtime-py has no wrapper for the callback; the C API is called through its ctypes
    bindings, as runtime.interrupt does. One per executor; ``arm``/``disarm`` are thread-safe (dict operations).
    """

    def __init__(self) -> None:
        from runtime.interrupt import EpochCallback

        self._callback = EpochCallback(self._on_deadline)
        self._watches: dict[int, Watch] = {}
        self._keys = itertools.count(1)

    def arm(self, store: wasmtime.Store, deadline: float, check: Callable[[], str | None] | None = None, *,
            ticker: EpochTicker | None = None) -> Watch:
        """Install the callback and the first deadline on ``store``; call before instantiating. ``ticker`` (the
        engine's) runs until ``disarm``."""
        watch = Watch(next(self._keys), deadline, check, ticker=ticker)
        if ticker is not None:
            ticker.enter()
        self._watches[watch.key] = watch
        self._callback.install(store, watch.key)
        store.set_epoch_deadline(self._ticks(watch, time.monotonic()))
        return watch

    def disarm(self, watch: Watch) -> None:
        if self._watches.pop(watch.key, None) is not None and watch.ticker is not None:
            watch.ticker.leave()

    @staticmethod
    def _ticks(watch: Watch, now: float) -> int:
        return 1 if watch.check is not None else deadline_ticks(watch.deadline, now)

    def _on_deadline(self, data: int, delta_out: Any) -> str | None:
        watch = self._watches.get(data)
        if watch is None:
            delta_out[0] = 1  # disarmed while running (cannot happen): keep going, look again next tick
            return None
        now = time.monotonic()
        if now >= watch.deadline:
            watch.expired = True
            return DEADLINE_MESSAGE
        if watch.check is not None:
            watch.stopped = watch.check()
            if watch.stopped is not None:
                return watch.stopped
        delta_out[0] = self._ticks(watch, now)
        return None


def request_store(engine: wasmtime.Engine, head: RequestHead, config: ComponentConfig, clock: RequestClock,
                  check: Callable[[], str | None] | None = None) -> tuple[wasmtime.Store, Watch]:
    """A fresh Store for one request: deadline armed (before instantiation, which checks it), memory capped.

    The caller must ``clock.disarm(watch)`` when the request is done. Raises GuestFailure(504) when the deadline
    has passed already (the request waited too long for a thread).
    """
    import wasmtime

    if time.monotonic() >= head.deadline:
        raise deadline_failure(config.id)
    store = wasmtime.Store(engine)
    watch = clock.arm(store, head.deadline, check, ticker=EpochTicker.shared(engine))
    if config.max_instance_memory is not None:
        store.set_limits(memory_size=config.max_instance_memory)
    return store, watch


def deadline_failure(component_id: str) -> GuestFailure:
    return GuestFailure(504, "Gateway Timeout",
                        log_line=f"spin: {component_id}: request deadline exceeded: guest stopped, answered 504")


def guest_failure(config: ComponentConfig, exc: BaseException, watch: Watch) -> GuestFailure:
    """The GuestFailure for an exception out of instantiation or the guest call (not for ``proc_exit(0)``)."""
    import wasmtime

    component_id = config.id
    if watch.expired:
        return deadline_failure(component_id)
    if watch.stopped is not None:
        return GuestFailure(500, "Internal Server Error", log_line=f"spin: {component_id}: error: {watch.stopped}")
    if isinstance(exc, wasmtime.ExitTrap):
        return GuestFailure(500, "Internal Server Error",
                            log_line=f"spin: {component_id}: guest exited with code {exc.code}")
    message = str(exc)
    if "exceeds memory limits" in message and config.max_instance_memory is not None:
        return GuestFailure(500, "Internal Server Error", log_line=(
            f"spin: {component_id}: error: needs more linear memory than the per-instance limit of "
            f"{config.max_instance_memory} bytes (SPIN_MAX_INSTANCE_MEMORY): {error_reason(message)}"))
    return GuestFailure(500, "Internal Server Error", log_line=failure_line(component_id, message))


def check_memory_minimum(config: ComponentConfig, module: wasmtime.Module, what: str) -> None:
    """Load-time: a module whose declared minimum memory exceeds the per-instance limit can never run."""
    import wasmtime

    from runtime.errors import WasmLoadError

    if config.max_instance_memory is None:
        return
    for item in [*module.imports, *module.exports]:
        if isinstance(item.type, wasmtime.MemoryType):
            needed = item.type.limits.min * 65536
            if needed > config.max_instance_memory:
                raise WasmLoadError(
                    f"{what}: needs at least {needed} bytes of linear memory, more than the per-instance limit "
                    f"of {config.max_instance_memory} bytes (SPIN_MAX_INSTANCE_MEMORY)")


def content_length_header(length: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(length).encode())


__all__ = [
    "DEADLINE_MESSAGE", "EPOCH_TICK_SECONDS", "MAX_REQUEST_BODY_BYTES", "RequestClock", "Watch",
    "check_memory_minimum", "content_length_header", "deadline_failure", "deadline_ticks", "guest_failure",
    "is_spin1_module", "load_spin1", "load_wagi", "read_request_body", "request_store",
]
