"""The request body and the response as guest threads see them: the server's half of the contract.

``BodyPipe`` is the contract's RequestBody and ``ResponseChannel`` its ResponseSink. Both live between two
threads: a guest thread calls them and blocks in them; the event loop (runtime.http.server) feeds the body and
sends the response. Flow control blocks the guest thread, never the loop:

- request body: the loop stops reading the socket while more than ``body_buffer_high`` bytes wait for the guest,
  and the guest's ``read`` resumes it once it has taken half of that;
- response body: ``write`` blocks while the socket's send buffer is over ``write_buffer_high`` (asyncio's
  pause_writing) or that many bytes are queued for the loop; when the client acknowledges nothing for
  ``body_timeout`` seconds, ClientGone.

A response's events (start, data, end, 100-continue, "guest done") queue in the channel and the loop takes them in
one batch (``take``), so a small response costs the guest thread one ``call_soon_threadsafe``, not three: a
Content-Length head waits for its body, and the write that completes a Content-Length body waits for the finish
that follows it (``ResponseChannel.write``), bounded by the next epoch tick.

While a guest waits on the client it tells the dispatcher (``Ticket.block``), so another request may run.
"""

from __future__ import annotations

import email.utils
import http
import threading
import time
from collections import deque
from typing import Any, Protocol

import h11

from runtime import epoch
from runtime.http.contract import ClientGone, Headers
from runtime.http.dispatch import Ticket


class ConnectionPort(Protocol):
    """What the streams need from their connection (runtime.http.server's ``_Connection``)."""

    #: True while asyncio has paused writing (the socket's send buffer is over its high-water mark).
    writing_paused: bool

    @property
    def body_buffer_high(self) -> int: ...

    @property
    def write_buffer_high(self) -> int: ...

    @property
    def body_timeout(self) -> float: ...

    def threadsafe(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the loop."""

    def flush(self, channel: ResponseChannel) -> None:
        """(On the loop) send what ``channel.take()`` returns."""

    def close_after_response(self) -> None: ...

    def unsent_bytes(self) -> int:
        """Response bytes not yet acknowledged by the client (asyncio's buffer plus the kernel's send queue)."""

    def resume_reading_for_body(self) -> None: ...


_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_DATE_CACHE: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    global _DATE_CACHE
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _DATE_CACHE[1]


def build_response(status: int, headers: Headers) -> h11.Response:
    """An h11 Response with a reason phrase and a Date (as hyper sends); raises h11.LocalProtocolError if bad."""
    if not any(name.lower() == b"date" for name, _ in headers):
        headers = [*headers, (b"date", date_header())]
    return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))


# Events a guest thread queues for the loop, in order (``ResponseChannel.take``).
START, DATA, END, CONTINUE, FAIL, ABORT, DONE, FAIL_STARTED = range(8)


class BodyPipe:
    """The request body between the loop (feeds it) and the guest thread (reads it): the contract's RequestBody."""

    def __init__(self, conn: ConnectionPort, channel: ResponseChannel, deadline: float,
                 expect_continue: bool) -> None:
        self._conn = conn
        self._channel = channel
        self._deadline = deadline
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: str | None = None
        self._reading_paused = False
        self._expect_continue = expect_continue
        self.ticket: Ticket | None = None

    # loop side ------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Queue body bytes; True when the loop should stop reading the socket until the guest catches up."""
        data = bytes(data)  # h11 hands out bytearrays; the contract (and ctypes callers) promise bytes
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify()
            if self._buffered > self._conn.body_buffer_high and not self._reading_paused:
                self._reading_paused = True
                return True
            return False

    def end(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify()

    def fail(self, reason: str) -> None:
        with self._cond:
            if not self._eof and self._error is None:
                self._error = reason
            self._cond.notify()

    def drop(self) -> bool:
        """The guest is done: forget what it did not read; True if the socket was paused for it."""
        with self._cond:
            self._chunks.clear()
            self._buffered = 0
            paused, self._reading_paused = self._reading_paused, False
            return paused

    # guest side -----------------------------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes:
        if self._expect_continue:
            # The client holds its body back until we say so; say it only when the guest actually wants it.
            self._expect_continue = False
            self._channel.queue_continue()
        with self._cond:
            if not self._chunks and not self._eof and self._error is None:
                self._wait_locked()
            if self._chunks:
                return self._take_locked(max(1, max_bytes))
            if self._error is not None:
                raise ClientGone(self._error)
            return b""

    def _wait_locked(self) -> None:
        ticket = self.ticket
        if ticket is not None:
            ticket.block()
        try:
            stall_at = time.monotonic() + self._conn.body_timeout
            while not self._chunks and not self._eof and self._error is None:
                now = time.monotonic()
                if now >= self._deadline:
                    self._error = "the request deadline passed while waiting for the request body"
                elif now >= stall_at:
                    self._error = f"no request body received for {self._conn.body_timeout:g} s"
                else:
                    self._cond.wait(min(stall_at, self._deadline) - now)
                    continue
                self._conn.threadsafe(self._conn.close_after_response)
        finally:
            if ticket is not None:
                ticket.unblock()

    def _take_locked(self, max_bytes: int) -> bytes:
        first = self._chunks[0]
        if len(first) <= max_bytes:
            self._chunks.popleft()
            data = first
            # Coalesce small chunks (chunked uploads arrive in pieces) so the guest makes fewer host calls.
            while self._chunks and len(data) + len(self._chunks[0]) <= max_bytes:
                data += self._chunks.popleft()
        else:
            data, self._chunks[0] = first[:max_bytes], first[max_bytes:]
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= self._conn.body_buffer_high // 2:
            self._reading_paused = False
            self._conn.threadsafe(self._conn.resume_reading_for_body)
        return data


class ResponseChannel:
    """The response from the guest thread to the loop: the contract's ResponseSink, plus the server's own ends."""

    def __init__(self, conn: ConnectionPort, head_only: bool) -> None:
        self._conn = conn
        self._head_only = head_only
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[Any, ...]] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._started = False
        self._finished = False
        #: Body bytes a Content-Length head still promises; None for a response without one.
        self._unwritten: int | None = None
        #: Queued bytes wait for the guest's finish without a wakeup of the loop (``write``); the epoch tick
        #: sends them if the finish does not come first (``_wake_deferred_channels``).
        self._deferred = False
        self._gone: str | None = None
        #: The connection has moved on to its next request (the response was complete): what the job still
        #: queues (its DONE, an abort of a finished response) is dropped here instead of waking the loop for it.
        self._detached = False
        self.ticket: Ticket | None = None
        #: The status the guest started (or the server failed with); None before either.
        self.status: int | None = None
        #: ``fail_started`` was called: the loop answers the failure instead of a head it has not sent yet.
        self.failed_late = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def gone(self) -> str | None:
        """Why the response can no longer reach the client, or None."""
        return self._gone

    def start(self, status: int, headers: Headers) -> None:
        if self._started:
            raise RuntimeError("the response was already started")
        response = build_response(status, headers)  # validates names and values before anything is committed
        self._started = True
        self.status = status
        # A head with a Content-Length waits for the body's first bytes (or finish, failure, the job's end): one
        # loop wakeup per small response instead of two, and no loop thread contending for the GIL while the guest
        # writes its body (measured at one connection: the separate head flush cost ~150-250 us of a 2.3-4 ms
        # request). A fixed-length response is of no use to the client before its body anyway; a streamed one
        # (chunked, no Content-Length) still sends its head at once.
        length = next((value for name, value in response.headers if name.lower() == b"content-length"), None)
        self._unwritten = int(length) if length is not None and length.isdigit() else None
        self._queue((START, response), 0, wake=self._unwritten is None)

    def write(self, data: bytes) -> None:
        if not self._started or self._finished:
            raise RuntimeError("write outside a started, unfinished response")
        if not data or self._head_only:
            if self._gone is not None:
                raise ClientGone(self._gone)
            return
        # In pieces of the high-water mark, so a large write does not sit whole in asyncio's buffer.
        step = max(1, self._conn.write_buffer_high)
        view = memoryview(data)
        for offset in range(0, len(view), step):
            piece = bytes(view[offset:offset + step])
            # The piece that completes a Content-Length body is followed by the guest's finish (every SDK writes,
            # flushes and finishes in a row), whose wakeup takes both: one loop wakeup per small response instead
            # of two, measured as 7 % of a worker's CPU per request at one connection (js-echo, 2.20 -> 2.04 ms).
            # A guest that keeps running instead (work after its answer) has the bytes sent at the next epoch
            # tick, within runtime.epoch.TICK_SECONDS, or when it blocks.
            completes = False
            if self._unwritten is not None:
                completes = self._unwritten == len(piece)
                self._unwritten -= len(piece)
            self._queue((DATA, piece), len(piece), wake=not completes, defer=completes)
            self._wait_writable()

    def finish(self, trailers: Headers | None = None) -> None:
        if not self._started or self._finished:
            raise RuntimeError("finish outside a started, unfinished response")
        self._finished = True
        self._queue((END, trailers or []), 0)

    # the server's side (guest thread) -------------------------------------------------------------------

    def queue_continue(self) -> None:
        try:
            self._queue((CONTINUE,), 0)
        except ClientGone:
            pass

    def fail(self, status: int, text: str) -> None:
        """Answer with an error the guest did not write (nothing was started)."""
        self._started = self._finished = True
        self.status = status
        self._queue((FAIL, status, text), 0, force=True)

    def fail_started(self, status: int, text: str) -> None:
        """The guest failed after ``start``: end the exchange as cleanly as what already reached the client
        allows (runtime.http.server ``_Connection._fail_started``): the failure's own answer when nothing of the
        response was sent yet, else the end of a body-less 5xx, else a close after what was sent."""
        self.failed_late = True
        self._finished = True
        self._queue((FAIL_STARTED, status, text), 0, force=True)

    def abort(self) -> None:
        self._queue((ABORT,), 0, force=True)

    def done(self) -> None:
        """The guest's job returned: the loop may move the connection on."""
        self._queue((DONE,), 0, force=True)

    def _queue(self, item: tuple[Any, ...], nbytes: int, force: bool = False, wake: bool = True,
               defer: bool = False) -> None:
        """Queue ``item`` for the loop; ``wake=False`` leaves it for the next item that wakes the loop, and
        ``defer`` also for the next epoch tick (``_wake_deferred_channels``)."""
        with self._cond:
            if self._gone is not None and not force:
                raise ClientGone(self._gone)
            if self._detached:
                return
            self._pending.append(item)
            self._pending_bytes += nbytes
            schedule = wake and not self._flush_scheduled
            self._flush_scheduled = self._flush_scheduled or wake
            was_deferred = self._deferred
            deferred = self._deferred = (was_deferred or defer) and not self._flush_scheduled
        if deferred != was_deferred:
            _note_deferred(self, deferred)
        if schedule:
            self._conn.threadsafe(self._conn.flush, self)

    def _wake_deferred(self) -> None:
        """Send what waited for a finish that has not come (the epoch tick, or a guest about to block)."""
        with self._cond:
            was_deferred, self._deferred = self._deferred, False
            schedule = was_deferred and not self._flush_scheduled and not self._detached
            self._flush_scheduled = self._flush_scheduled or schedule
        if was_deferred:
            _note_deferred(self, False)
        if schedule:
            self._conn.threadsafe(self._conn.flush, self)

    def _wait_writable(self) -> None:
        conn = self._conn
        high = conn.write_buffer_high
        with self._cond:
            if self._pending_bytes <= high and not conn.writing_paused:
                return
        self._wake_deferred()  # never wait for the loop with bytes it was not told about
        ticket = self.ticket
        if ticket is not None:
            ticket.block()
        try:
            with self._cond:
                stall_at = time.monotonic() + conn.body_timeout
                unsent = self._pending_bytes + conn.unsent_bytes()
                while (self._pending_bytes > high or conn.writing_paused) and self._gone is None:
                    now = time.monotonic()
                    if now >= stall_at:
                        # asyncio resumes writing only once the kernel has room for a third of its send buffer
                        # (megabytes), which a slow but steady client can take longer than the timeout to free:
                        # stalled means nothing acknowledged at all, measured at the kernel's send queue.
                        still_unsent = self._pending_bytes + conn.unsent_bytes()
                        if 0 <= still_unsent < unsent:
                            unsent, stall_at = still_unsent, now + conn.body_timeout
                            continue
                        self._gone = f"the client read nothing for {conn.body_timeout:g} s"
                        self._pending.append((ABORT,))
                        conn.threadsafe(conn.flush, self)
                        break
                    self._cond.wait(stall_at - now)
                if self._gone is not None:
                    raise ClientGone(self._gone)
        finally:
            if ticket is not None:
                ticket.unblock()

    # loop side ------------------------------------------------------------------------------------------

    def take(self) -> list[tuple[Any, ...]]:
        with self._cond:
            items, self._pending = self._pending, []
            self._pending_bytes = 0
            self._flush_scheduled = False
            was_deferred, self._deferred = self._deferred, False
            self._cond.notify_all()
        if was_deferred:
            _note_deferred(self, False)
        return items

    def detach(self) -> None:
        """(Loop) The connection no longer reads this channel; see ``_detached``."""
        with self._cond:
            self._detached = True
            self._pending.clear()
            was_deferred, self._deferred = self._deferred, False
        if was_deferred:
            _note_deferred(self, False)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def set_gone(self, reason: str) -> None:
        with self._cond:
            if self._gone is None:
                self._gone = reason
            self._cond.notify_all()


# Channels whose queued bytes wait for the guest's finish (``ResponseChannel.write``). The epoch ticker of the
# worker runs while any guest call is in flight, so a tick sends what a guest left waiting, at most a tick late.
_deferred_lock = threading.Lock()
_deferred: set[ResponseChannel] = set()


def _note_deferred(channel: ResponseChannel, deferred: bool) -> None:
    with _deferred_lock:
        if deferred:
            _deferred.add(channel)
        else:
            _deferred.discard(channel)


def _wake_deferred_channels() -> None:
    if not _deferred:  # read without the lock: a channel added meanwhile is seen at the next tick
        return
    with _deferred_lock:
        channels = list(_deferred)
        _deferred.clear()
    for channel in channels:
        channel._wake_deferred()


epoch.add_tick_hook(_wake_deferred_channels)
