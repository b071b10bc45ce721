"""Idle keep-alive connections of outbound HTTP, per worker process: bookkeeping only, no protocol.

Spin's outbound HTTP keeps connections alive through hyper's pool (spin crates/factor-outbound-http ``HttpClients``,
``pool_max_idle_per_host`` unlimited, 90 s idle timeout): 100 requests to one origin use one connection, not 100
TCP (and TLS) handshakes. This pool does the same, bounded:

- A connection is keyed by ``(scheme, host, port, tls profile)``: the TLS profile is part of the key so that a
  connection made with one component's ``[[client_tls]]`` client certificate never serves another component (hyper
  keys by scheme and authority only).
- At most ``max_per_key`` idle connections per key and ``max_total`` in all; past either, the oldest idle one is
  closed. Connections in use are not counted: each belongs to one exchange, which closes it at request end if it
  was not handed back.
- An idle connection is dropped after ``idle_timeout`` seconds (checked whenever the pool is used), or sooner when the server said
  ``Keep-Alive: timeout=N`` (less one second, so we close before it does), and when it turns readable while idle
  (the server closed it, or sent bytes nobody asked for): ``take`` checks that before handing one out.
- Only a connection whose exchange finished cleanly (whole request sent, whole response read, both sides willing
  to go on) is ever handed back; the client module (runtime.host.wasi.outgoing) decides that.

The pool belongs to one process: a forked child starts with an empty one (``os.register_at_fork``), since a
connection inherited through fork is shared with the parent's copy.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

#: Seconds an idle connection is kept (hyper's default is 90; 30 is below the idle timeout of most servers and
#: proxies in front of them: nginx 75, Apache 5 is the exception the readable check covers).
IDLE_TIMEOUT = 30.0
MAX_IDLE_PER_KEY = 8
MAX_IDLE_TOTAL = 64


class PooledConnection(Protocol):
    def fileno(self) -> int: ...

    def close(self) -> None: ...


def is_stale(conn: PooledConnection) -> bool:
    """An idle connection that is readable has been closed by the server (EOF) or is out of step: unusable."""
    try:
        fd = conn.fileno()
    except (OSError, ValueError):
        return True
    if fd < 0:
        return True
    try:
        readable, _, errored = select.select([fd], [], [fd], 0)
    except (OSError, ValueError):
        return True
    return bool(readable or errored)


class ConnectionPool:
    """Thread-safe: guest threads of one worker share it."""

    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT, max_per_key: int = MAX_IDLE_PER_KEY,
                 max_total: int = MAX_IDLE_TOTAL) -> None:
        self.idle_timeout = idle_timeout
        self.max_per_key = max_per_key
        self.max_total = max_total
        self._lock = threading.Lock()
        #: key -> [(expires_at, conn)], oldest first.
        self._idle: dict[Hashable, list[tuple[float, PooledConnection]]] = {}
        #: Every idle connection in the order it was handed back, for the total bound: id -> key.
        self._order: OrderedDict[int, Hashable] = OrderedDict()
        #: Connections handed out again (for tests and measurements).
        self.reused = 0
        self._last_prune = -1e9

    def take(self, key: Hashable, now: float | None = None) -> PooledConnection | None:
        """The most recently returned live idle connection for ``key``, or None; stale ones are closed."""
        now = time.monotonic() if now is None else now
        self._prune_now_and_then(now)
        doomed: list[PooledConnection] = []
        found: PooledConnection | None = None
        with self._lock:
            entries = self._idle.get(key, [])
            while entries:
                expires_at, conn = entries.pop()
                self._order.pop(id(conn), None)
                if expires_at <= now or is_stale(conn):
                    doomed.append(conn)
                    continue
                found = conn
                self.reused += 1
                break
            if not entries:
                self._idle.pop(key, None)
        for conn in doomed:
            _close_quietly(conn)
        return found

    def give(self, key: Hashable, conn: PooledConnection, keep_for: float | None = None,
             now: float | None = None) -> None:
        """Keep ``conn`` idle for at most ``keep_for`` seconds (default and upper bound: ``idle_timeout``)."""
        now = time.monotonic() if now is None else now
        self._prune_now_and_then(now)
        seconds = self.idle_timeout if keep_for is None else min(keep_for, self.idle_timeout)
        if seconds <= 0:
            _close_quietly(conn)
            return
        doomed: list[PooledConnection] = []
        with self._lock:
            entries = self._idle.setdefault(key, [])
            entries.append((now + seconds, conn))
            self._order[id(conn)] = key
            while len(entries) > self.max_per_key:
                _, old = entries.pop(0)
                self._order.pop(id(old), None)
                doomed.append(old)
            while len(self._order) > self.max_total:
                old_id, old_key = self._order.popitem(last=False)
                old_entries = self._idle.get(old_key, [])
                for index, (_, candidate) in enumerate(old_entries):
                    if id(candidate) == old_id:
                        doomed.append(old_entries.pop(index)[1])
                        break
                if not old_entries:
                    self._idle.pop(old_key, None)
        for old in doomed:
            _close_quietly(old)

    def _prune_now_and_then(self, now: float) -> None:
        """Expired connections of every key are closed on the pool's next use, at most once a second: there is no
        timer thread, so a worker that stops making requests keeps at most ``max_total`` idle sockets open."""
        if now - self._last_prune >= 1.0:
            self._last_prune = now
            self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Close every idle connection past its time."""
        now = time.monotonic() if now is None else now
        doomed: list[PooledConnection] = []
        with self._lock:
            for key in list(self._idle):
                entries = self._idle[key]
                keep = [(t, c) for t, c in entries if t > now]
                for expires_at, conn in entries:
                    if expires_at <= now:
                        doomed.append(conn)
                        self._order.pop(id(conn), None)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for conn in doomed:
            _close_quietly(conn)

    def idle_count(self, key: Hashable | None = None) -> int:
        with self._lock:
            if key is None:
                return len(self._order)
            return len(self._idle.get(key, []))

    def clear(self) -> None:
        with self._lock:
            doomed = [conn for entries in self._idle.values() for _, conn in entries]
            self._idle.clear()
            self._order.clear()
        for conn in doomed:
            _close_quietly(conn)

    def forget_after_fork(self) -> None:
        """In a forked child: drop (close our copies of) the parent's idle connections, with a fresh lock."""
        self._lock = threading.Lock()
        doomed = [conn for entries in self._idle.values() for _, conn in entries]
        self._idle = {}
        self._order = OrderedDict()
        for conn in doomed:
            _close_quietly(conn)


def _close_quietly(conn: PooledConnection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection that fails to close is gone all the same
        pass


#: This process's pool.
POOL = ConnectionPool()
os.register_at_fork(after_in_child=POOL.forget_after_fork)
