"""Task events, published to containerd in the order they happened.

containerd requires create -> start -> exit -> delete per task (containerd
docs/runtime-v2.md "Events"), and ctr and Docker learn about exits from /tasks/exit.
Events go through one queue and one sender, so their order on the wire is the order
`publish` was called in, and a slow or restarting containerd never blocks a Task RPC. The
channel is ttrpc `Events/Forward` on TTRPC_ADDRESS, like the Go shims; a failed send is
retried a few times (containerd may be restarting) and then dropped with a log line, as
the Go publisher does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from proto.containerd.services.events.ttrpc.v1 import events_pb2
from shim.ttrpc.client import TtrpcClient

log = logging.getLogger("shim.service.events")

FORWARD_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_SEND_TIMEOUT = 5.0
_MAX_ATTEMPTS = 5


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class EventPublisher:
    def __init__(self, ttrpc_address: str | None, namespace: str) -> None:
        self._address = ttrpc_address.removeprefix("unix://") if ttrpc_address else None
        self._namespace = namespace
        self._queue: asyncio.Queue[events_pb2.ForwardRequest | None] = asyncio.Queue()
        self._client: TtrpcClient | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    def publish(self, topic: str, event: Any) -> None:
        payload = any_pb2.Any(type_url=event.DESCRIPTOR.full_name,
                              value=event.SerializeToString())
        request = events_pb2.ForwardRequest()
        envelope = request.envelope
        envelope.timestamp.CopyFrom(timestamp_from_ns(time.time_ns()))
        envelope.namespace = self._namespace
        envelope.topic = topic
        envelope.event.CopyFrom(payload)
        log.debug("publish %s", topic)
        self._queue.put_nowait(request)

    async def close(self, timeout: float = 3.0) -> None:
        """Send what is queued (bounded), then stop."""
        if self._worker is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._worker.cancel()
        if self._client is not None:
            self._client.close()

    async def _run(self) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            await self._send(request)

    async def _send(self, request: events_pb2.ForwardRequest) -> None:
        if self._address is None:
            return
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                if self._client is None:
                    self._client = await TtrpcClient.connect(self._address)
                await self._client.call(FORWARD_SERVICE, "Forward", request,
                                        empty_pb2.Empty, timeout=_SEND_TIMEOUT)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect and retry
                log.warning("publish %s failed (attempt %d): %s",
                            request.envelope.topic, attempt, exc)
                if self._client is not None:
                    self._client.close()
                    self._client = None
                await asyncio.sleep(0.1 * attempt)
        log.error("dropped event %s after %d attempts", request.envelope.topic, _MAX_ATTEMPTS)
