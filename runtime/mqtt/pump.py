"""One step of a paho-mqtt client's network I/O, driven by the caller instead of paho's own thread or ``loop()``.

Why not ``Client.loop()``: it opens a socketpair per client (two more descriptors for each guest connection) and
waits in ``select()``, which fails outright for a descriptor number >= 1024 (FD_SETSIZE): a worker that holds
many connections reaches such numbers. ``poll()`` has no such limit, and paho documents ``loop_read``,
``loop_write`` and ``loop_misc`` for callers that run their own loop. The caller owns the client from one thread
(the request's, or the subscriber's), so no lock is needed and no callback runs on another thread.
"""

from __future__ import annotations

import select
from typing import Any

#: paho's MQTT_ERR_SUCCESS / MQTT_ERR_NO_CONN, by value (importing paho's enums here would import paho).
SUCCESS = 0
NO_CONNECTION = 4


def pump_once(client: Any, timeout: float) -> int:
    """Wait up to ``timeout`` s for the client's socket, then read, write and do paho's housekeeping (keep-alive
    pings, retries). Returns paho's error code: SUCCESS, or why the connection is gone."""
    sock = client.socket()
    if sock is None:
        return NO_CONNECTION
    poller = select.poll()
    events = select.POLLIN | (select.POLLOUT if client.want_write() else 0)
    poller.register(sock, events)
    ready = poller.poll(max(0, int(timeout * 1000)))
    revents = ready[0][1] if ready else 0
    if revents & (select.POLLIN | select.POLLERR | select.POLLHUP):
        rc = int(client.loop_read())
        if rc != SUCCESS:
            return rc
    if revents & select.POLLOUT and client.socket() is not None:
        rc = int(client.loop_write())
        if rc != SUCCESS:
            return rc
    if client.socket() is None:
        return NO_CONNECTION
    return int(client.loop_misc())
