"""Which guest call runs when, on which thread of a worker process.

A wasm call is synchronous, so it cannot run on the event loop; but threads of one process share the GIL, and a
Spin guest spends most of a request in Python host calls (wasi:io, wasi:http, marshalling), not in wasm. Two
guest threads of one worker therefore mostly take turns on the GIL: running them together makes each slower
(convoys on the GIL, cache misses) without finishing more work, and it starves the event loop, which needs the
GIL to accept, parse and write (measured with wrk on 2 vCPUs while evaluating wasmtime-py: a ThreadPoolExecutor(2)
cost the JS guest 20 %, 568 -> 452 req/s). Parallelism comes from worker *processes* (runtime.http.workers).

Yet a guest that takes long must not hold up the others: one spinning until its deadline, one waiting for a slow
client's upload, one streaming a long response. So the rule here ("adaptive"):

- A job is *fresh* during its first ``spill_after`` seconds on a thread (default 5 ms: several times a typical
  request, far below a human-visible delay), unless it is blocked on the client (``Ticket.blocked``).
- At most ``fresh_limit`` (default 1) fresh jobs run at once; further requests queue.
- When the running job goes stale (passes ``spill_after``) or blocks on I/O, the next queued request starts on
  another thread at once (a timer on the loop catches the moment it goes stale). A thread that finishes a job
  takes the next queued one itself, without a round trip through the loop.

So in the common case exactly one guest runs per worker, in arrival order, and a stuck or slow guest costs the
others ``spill_after`` once, not its whole duration. ``PoolDispatcher`` is the plain alternative (a fixed
thread pool, every request starts at once up to its size), kept for measurement and as an escape hatch.

Measured (2 vCPUs shared with wrk -t1 and other jobs, real components on runtime.host's ComponentExecutor,
medians of 3 runs of 6 s, 16 keep-alive connections unless noted)::

    guest, policy, 1 worker       req/s   p99 ms   CPU ms/request   req/s at c=1
    JS, adaptive                    349       62              3.0            358
    JS, pool(8)                     209      134              7.0            358
    JS, adaptive fresh_limit=2      196      140              7.5            359
    py-proxy, adaptive              319       68              3.5            272
    py-proxy, pool(8)               161      164             10.5            230

Two guests at once in one process cost 2.5-3x the CPU per request (every host call then hands the GIL over
between threads), so running them together lost 40-50 % of the throughput and doubled p99. With 2 workers the
two policies were within run-to-run noise on throughput (JS 998/909 vs 1044/731 req/s, py-proxy 389/370 vs
438/322) and adaptive kept the lower p99 (JS 27/36 vs 50/69 ms, py-proxy 86/106 vs 102/127 ms).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol


class Ticket:
    """One job's standing with the dispatcher; the server marks it blocked while the guest waits on the client."""

    __slots__ = ("started", "blocked", "_dispatcher")

    def __init__(self, dispatcher: AdaptiveDispatcher | None) -> None:
        self.started = math.inf
        self.blocked = False
        self._dispatcher = dispatcher

    def block(self) -> None:
        """The guest is about to wait for the client (request body, response backpressure): let others run."""
        if self._dispatcher is not None and not self.blocked:
            self._dispatcher._set_blocked(self, True)

    def unblock(self) -> None:
        if self._dispatcher is not None and self.blocked:
            self._dispatcher._set_blocked(self, False)


Job = Callable[[Ticket], None]


class Dispatcher(Protocol):
    def submit(self, job: Job) -> None:
        """Run ``job`` on a guest thread (called on the event loop's thread)."""
        ...

    def close(self) -> None:
        """Let idle threads end; running jobs finish on their own."""
        ...


@dataclass(frozen=True)
class DispatchPolicy:
    #: "adaptive" (the rule in the module docstring) or "pool" (a plain pool of ``max_threads`` threads).
    kind: Literal["adaptive", "pool"] = "adaptive"
    #: Seconds a job counts as fresh.
    spill_after: float = 0.005
    #: Fresh jobs allowed to run at once.
    fresh_limit: int = 1
    #: Threads at most; with "adaptive", jobs beyond this many stuck guests wait.
    max_threads: int = 64


def make_dispatcher(loop: asyncio.AbstractEventLoop, policy: DispatchPolicy) -> Dispatcher:
    if policy.kind == "pool":
        return PoolDispatcher(policy.max_threads)
    if policy.kind == "adaptive":
        return AdaptiveDispatcher(loop, spill_after=policy.spill_after, fresh_limit=policy.fresh_limit,
                                  max_threads=policy.max_threads)
    raise ValueError(f"unknown dispatch policy {policy.kind!r} (expected 'adaptive' or 'pool')")


class PoolDispatcher:
    """Every request starts at once on a fixed pool of threads (what a ThreadPoolExecutor gives)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="guest")

    def submit(self, job: Job) -> None:
        self._pool.submit(job, Ticket(None))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class AdaptiveDispatcher:
    """See the module docstring. Thread-safe: ``submit`` on the loop, the rest from guest threads too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, spill_after: float = 0.005, fresh_limit: int = 1,
                 max_threads: int = 64) -> None:
        self._loop = loop
        self._spill_after = spill_after
        self._fresh_limit = fresh_limit
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queued: deque[Job] = deque()
        self._ready: deque[tuple[Job, Ticket]] = deque()
        self._admitted: set[Ticket] = set()
        self._threads = 0
        # Threads waiting for work and not yet notified (the notifier decrements, so one wakeup is never counted
        # twice while the woken thread waits for the lock).
        self._idle = 0
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        #: Jobs started because the running ones were stale or blocked (for tests and measurements).
        self.spilled = 0

    # ------------------------------------------------------------------------------------------- loop side

    def submit(self, job: Job) -> None:
        with self._lock:
            self._queued.append(job)
        self._admit_from_loop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._idle = 0
            self._wakeup.notify_all()
        if self._timer is not None:
            self._timer.cancel()

    def _arm(self, at: float) -> None:
        """Run admission again at ``at`` unless it runs earlier anyway (loop thread only)."""
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        # The watchdog: armed by ``submit`` whenever requests wait, it re-arms itself until none do. Guest threads
        # admit work themselves when they finish or block; this catches the one moment they cannot see, a
        # running job going stale. Being loop-only, it costs guest threads no cross-thread call.
        self._timer, self._timer_at = None, math.inf
        self._admit_from_loop()

    def _admit_from_loop(self) -> None:
        """Start what may start now; while requests wait, keep the watchdog armed (loop thread only)."""
        with self._lock:
            now = time.monotonic()
            spawn, next_at = self._admit_locked(now, own_thread=False)
            waiting = bool(self._queued)
        self._spawn(spawn)
        if waiting:
            self._arm(next_at if next_at is not None else now + self._spill_after / 2)

    # ------------------------------------------------------------------------------------------- admission

    def _admit_locked(self, now: float, *, own_thread: bool) -> tuple[int, float | None]:
        """Move queued jobs to ready while the fresh limit allows; returns (threads to spawn, next check time).

        ``own_thread``: the caller is a guest thread that will take the first ready job itself.
        """
        next_at: float | None = None
        while self._queued:
            fresh = [t.started for t in self._admitted if not t.blocked and now - t.started < self._spill_after]
            if len(fresh) >= self._fresh_limit:
                # Tickets admitted but not yet picked up have started = inf: fresh until a thread takes them.
                soonest = min(fresh) + self._spill_after
                next_at = soonest if math.isfinite(soonest) else None
                break
            if self._admitted and len(fresh) < len(self._admitted) and not own_thread:
                self.spilled += 1
            ticket = Ticket(self)
            self._admitted.add(ticket)
            self._ready.append((self._queued.popleft(), ticket))
        needed = max(0, len(self._ready) - (1 if own_thread else 0))
        woken = min(needed, self._idle)
        for _ in range(woken):
            self._idle -= 1
            self._wakeup.notify()
        spawn = max(0, min(needed - woken, self._max_threads - self._threads))
        self._threads += spawn
        return spawn, next_at

    def _set_blocked(self, ticket: Ticket, blocked: bool) -> None:
        with self._lock:
            ticket.blocked = blocked
            if not blocked:
                return
            spawn, _ = self._admit_locked(time.monotonic(), own_thread=False)
        self._spawn(spawn)

    def _spawn(self, count: int) -> None:
        for _ in range(count):
            threading.Thread(target=self._thread_main, name="guest", daemon=True).start()

    # ------------------------------------------------------------------------------------------- guest threads

    def _thread_main(self) -> None:
        while True:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._wakeup.wait()
                job, ticket = self._ready.popleft()
                ticket.started = time.monotonic()
            try:
                job(ticket)
            except BaseException:  # noqa: BLE001 - the job reports its own failures; the thread must survive
                pass
            with self._lock:
                self._admitted.discard(ticket)
                spawn, _ = self._admit_locked(time.monotonic(), own_thread=True)
            self._spawn(spawn)
