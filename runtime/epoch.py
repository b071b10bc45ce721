"""The epoch ticker: what makes request deadlines fire, and only while a guest runs.

wasmtime stops a guest when its Store's epoch deadline is reached, and the epoch only moves when somebody calls
``Engine.increment_epoch``. A thread per worker process does that every ``interval`` seconds, but only while at
least one guest call is in flight: an idle worker must cost nothing. Before, the ticker woke every 10 ms for the
life of the worker once it had served one request; the density benchmark (scripts/bench_density.py) measured that
at 5-8 millicores per worker, a whole core for 100 idle pods on a 2-core node. Parked, the thread waits on a
condition without a timeout.

Deadlines are counted in ticks from the moment a call sets them (``ticks_for``), and no Store with a deadline
exists while the ticker is parked, so parking never makes a deadline late.

One ticker per engine per process: ``EpochTicker.shared(engine)``. A forked child inherits the object but not its
thread, nor a usable lock if the parent's thread held it at the fork: ``running()`` notices the new pid and starts
afresh. Two tickers on one engine would advance its epoch twice as fast and halve every deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import wasmtime

#: Seconds between two epoch increments while a guest runs: a deadline fires at most about this late.
TICK_SECONDS = 0.010

#: Called by every ticker thread after each tick (runtime.http.streams sends response bytes a guest left waiting
#: for its finish). Each must be quick and must not raise; one that does is ignored, the ticker goes on.
_tick_hooks: tuple[Callable[[], None], ...] = ()


def add_tick_hook(hook: Callable[[], None]) -> None:
    global _tick_hooks
    if hook not in _tick_hooks:
        _tick_hooks = (*_tick_hooks, hook)


class EpochTicker:
    _shared: dict[int, EpochTicker] = {}
    _shared_lock = threading.Lock()

    def __init__(self, engine: wasmtime.Engine, interval: float = TICK_SECONDS) -> None:
        self.engine = engine
        self.interval = interval
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Condition()
        self._in_flight = 0
        #: The thread waits for a call (not for the end of a tick): only then does ``enter`` notify it.
        self._parked = False

    @classmethod
    def shared(cls, engine: wasmtime.Engine) -> EpochTicker:
        key = id(engine)  # the ticker holds the engine, so the id cannot be reused while it is in the dict
        with cls._shared_lock:
            ticker = cls._shared.get(key)
            if ticker is None:
                ticker = cls._shared[key] = cls(engine)
            return ticker

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Hold the ticker awake for one guest call (nested and concurrent calls count)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        self._ensure_thread()
        with self._wake:
            self._in_flight += 1
            if self._parked:
                # Only a parked thread is woken: a notify during a tick would end that tick early, and at one
                # request at a time (in_flight 0 -> 1 at every request) it cost a thread wakeup per request.
                self._parked = False
                self._wake.notify()

    def leave(self) -> None:
        with self._wake:
            self._in_flight = max(0, self._in_flight - 1)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def ticks_for(self, seconds: float) -> int:
        """Epoch ticks covering ``seconds`` (rounded up, +1 because the current tick may be nearly over)."""
        return max(1, math.ceil(seconds / self.interval)) + 1

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._shared_lock:
            if self._pid == pid:
                return
            # A fresh condition: the inherited one may be held by a thread that does not exist in this process.
            self._wake = threading.Condition()
            self._in_flight = 0
            self._parked = False
            self._thread = threading.Thread(target=self._run, args=(self._wake,), name="epoch-ticker", daemon=True)
            self._thread.start()
            self._pid = pid

    def _run(self, wake: threading.Condition) -> None:
        while True:
            with wake:
                while self._in_flight == 0:
                    self._parked = True
                    wake.wait()
                self._parked = False
                # Sleeping on the condition (not time.sleep) keeps the tick period while calls come and go.
                wake.wait(self.interval)
            self.engine.increment_epoch()
            for hook in _tick_hooks:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - a hook's failure must not stop the deadlines of every guest
                    pass
