"""The outbound connection pool's bookkeeping, with real sockets (socketpairs): what is kept, for how long, and
what is dropped."""

from __future__ import annotations

import os
import socket

import pytest

from runtime.host.wasi.outgoing_pool import ConnectionPool, is_stale


class Conn:
    """A pooled connection's surface over one end of a real socketpair (the other end plays the server)."""

    def __init__(self) -> None:
        self.sock, self.server = socket.socketpair()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.server.close()


KEY = ("http", "127.0.0.1", 80, None)
OTHER = ("https", "127.0.0.1", 443, "client_tls#1")


def test_the_most_recently_returned_connection_is_handed_out_first() -> None:
    pool = ConnectionPool()
    first, second = Conn(), Conn()
    pool.give(KEY, first, now=0)
    pool.give(KEY, second, now=1)
    assert pool.take(KEY, now=2) is second
    assert pool.take(KEY, now=2) is first
    assert pool.take(KEY, now=2) is None
    assert pool.reused == 2


def test_keys_do_not_mix_so_a_tls_profile_never_serves_another() -> None:
    pool = ConnectionPool()
    conn = Conn()
    pool.give(OTHER, conn, now=0)
    assert pool.take(KEY, now=0) is None
    assert pool.take(("https", "127.0.0.1", 443, "default"), now=0) is None
    assert pool.take(OTHER, now=0) is conn


def test_idle_connections_expire_and_a_server_hint_shortens_their_life() -> None:
    pool = ConnectionPool(idle_timeout=30)
    long, short = Conn(), Conn()
    pool.give(KEY, long, now=0)
    pool.give(OTHER, short, keep_for=4, now=0)
    assert pool.take(OTHER, now=5) is None and short.closed
    assert pool.take(KEY, now=29) is long
    pool.give(KEY, long, keep_for=100, now=0)  # never past the pool's own timeout
    pool.prune(now=31)
    assert long.closed and pool.idle_count() == 0


def test_a_connection_the_server_closed_while_idle_is_dropped_not_handed_out() -> None:
    pool = ConnectionPool()
    dead, alive = Conn(), Conn()
    pool.give(KEY, alive, now=0)
    pool.give(KEY, dead, now=1)
    dead.server.close()  # EOF: readable
    assert is_stale(dead) and not is_stale(alive)
    assert pool.take(KEY, now=2) is alive
    assert dead.closed


def test_unexpected_bytes_on_an_idle_connection_make_it_stale() -> None:
    conn = Conn()
    conn.server.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert is_stale(conn)


def test_per_key_and_total_bounds_close_the_oldest() -> None:
    pool = ConnectionPool(max_per_key=2, max_total=3)
    conns = [Conn() for _ in range(3)]
    for index, conn in enumerate(conns):
        pool.give(KEY, conn, now=index)
    assert conns[0].closed and pool.idle_count(KEY) == 2
    others = [Conn() for _ in range(2)]
    for conn in others:
        pool.give(OTHER, conn, now=10)
    assert pool.idle_count() == 3
    assert conns[1].closed  # the oldest overall went
    assert not conns[2].closed and not any(c.closed for c in others)
    pool.clear()
    assert all(c.closed for c in conns + others)


def test_a_forked_child_starts_with_an_empty_pool() -> None:
    from runtime.host.wasi.outgoing_pool import POOL

    conn = Conn()
    POOL.give(KEY, conn)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, str(POOL.idle_count()).encode())
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 16) == b"0"
    os.close(read_end)
    os.waitpid(pid, 0)
    assert POOL.take(KEY) is conn  # the parent's is untouched
    conn.close()


@pytest.mark.parametrize("count", [100])
def test_many_returns_of_one_connection_keep_one(count: int) -> None:
    pool = ConnectionPool()
    conn = Conn()
    for tick in range(count):
        pool.give(KEY, conn, now=tick)
        assert pool.take(KEY, now=tick) is conn
    assert pool.idle_count() == 0 and not conn.closed
    conn.close()


def test_expired_connections_of_other_keys_are_closed_when_the_pool_is_next_used() -> None:
    pool = ConnectionPool(idle_timeout=30)
    old = Conn()
    pool.give(OTHER, old, now=0)
    assert pool.take(KEY, now=40) is None  # a different key, yet the expired one is gone
    assert old.closed and pool.idle_count() == 0
