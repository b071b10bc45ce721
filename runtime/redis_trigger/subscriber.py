"""One Redis subscription: connect, SUBSCRIBE to the channels, hand each message to its components, and come back
when the server goes away.

Spin subscribes once per server and runs the handlers of a message before it reads the next one (crates/
trigger-redis ``run_listener``); so does this loop, one thread per server. Where Spin differs: when the connection
drops, Spin's trigger ends with "disconnected from <server>" and the whole app exits; here the loop logs the loss
and reconnects, waiting ``backoff_delay(attempt)`` between attempts (0.5 s doubling to 30 s, back to 0.5 s after a
subscription succeeds), so a Redis restart or failover costs the messages published while it was away (Redis
pub/sub delivers at most once, to whoever is subscribed then) but not the pod. The first connection is made the
same way, at task Start: a server that is not up yet is waited for, not a crash loop.

The guest's failures (an ``error`` result, a trap, a host error) are logged, one line naming the component and
the channel, and the next message is handled as usual, as Spin does.

redis-py is imported by ``run``, so only an app with a Redis trigger pays for it: 57-64 ms of imports on these
machines with asyncio already loaded (``python -X importtime``; redis 6.4 imports redis.asyncio and ssl), spent at
task Start before the first SUBSCRIBE, not at Create. Its own
retries are switched off (``Retry(NoBackoff(), 0)``): this loop decides when to reconnect, and logs it. Reads wait
at most ``POLL_SECONDS`` so a stop request is seen that quickly; redis-py PINGs an idle connection every
``HEALTH_CHECK_SECONDS`` and TCP keepalive is on, so a server that vanished without closing the connection is
noticed too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime.exits import write_stderr_line
from runtime.message_trigger import message_failure_line
from runtime.redis_trigger.config import Subscription
from runtime.redis_trigger.executor import MessageOutcome

POLL_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 5.0
#: A reply (to SUBSCRIBE or a health-check PING) that takes longer than this means the connection is dead.
SOCKET_TIMEOUT_SECONDS = 30.0
HEALTH_CHECK_SECONDS = 15
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0

#: A component's message handler: RedisExecutor.handle_message.
Handler = Callable[[bytes], MessageOutcome]


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0-based)."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * (2 ** min(attempt, 16)))


class Subscriber:
    """Serves one Subscription until ``stop`` is set; ``run`` returns after the message in flight is handled."""

    def __init__(self, subscription: Subscription, handlers: Mapping[str, Handler], stop: threading.Event, *,
                 log: Callable[[str], None] = write_stderr_line) -> None:
        self.subscription = subscription
        self._handlers = handlers
        self._stop = stop
        self._log = log
        #: Counters for tests and the debug log: messages handled, failures, successful (re)subscriptions.
        self.messages = 0
        self.failures = 0
        self.subscriptions = 0
        self._channels = {channel.encode(): channel for channel in subscription.channels}

    def run(self) -> None:
        import redis  # noqa: PLC0415 - imported by Redis-triggered apps only

        errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        where = self.subscription.shown_address
        attempt = 0
        lost_since: float | None = None
        while not self._stop.is_set():
            pubsub = None
            listening = False
            try:
                pubsub = self._subscribe(redis)
                self.subscriptions += 1
                channels = ", ".join(f"{ch!r} -> {', '.join(ids)}" for ch, ids in self.subscription.channels.items())
                if lost_since is None:
                    self._log(f"spin: redis trigger: subscribed on {where}: {channels}")
                else:
                    self._log(f"spin: redis trigger: resubscribed on {where} after {time.monotonic() - lost_since:.1f} s"
                              f" ({attempt} attempt(s)): {channels}")
                attempt, lost_since = 0, None
                listening = True
                self._listen(pubsub)
            except errors as exc:
                lost_since = lost_since if lost_since is not None else time.monotonic()
                self._wait_before_retry(where, attempt, _reason(exc), listening)
                attempt += 1
            except redis.exceptions.RedisError as exc:  # e.g. an authentication or ACL error in the reply
                lost_since = lost_since if lost_since is not None else time.monotonic()
                self._wait_before_retry(where, attempt, f"the server refused: {_reason(exc)}", listening)
                attempt += 1
            finally:
                if pubsub is not None:
                    _close_quietly(pubsub)

    def _subscribe(self, redis: Any) -> Any:
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        client = redis.Redis.from_url(
            self.subscription.address, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_keepalive=True, health_check_interval=HEALTH_CHECK_SECONDS,
            retry=Retry(NoBackoff(), 0), decode_responses=False)
        pubsub = client.pubsub()  # per call below: the confirmations are read, then ignored
        try:
            pubsub.subscribe(*self.subscription.channels)
            # SUBSCRIBE is confirmed by one reply per channel; reading them here makes a refused subscription (or a
            # server that accepted the TCP connection but is not Redis) fail now rather than at the first message.
            confirmed = 0
            deadline = time.monotonic() + SOCKET_TIMEOUT_SECONDS
            while confirmed < len(self.subscription.channels):
                reply = pubsub.get_message(ignore_subscribe_messages=False, timeout=POLL_SECONDS)
                if reply is None:
                    if time.monotonic() > deadline:
                        raise redis.exceptions.TimeoutError("no reply to SUBSCRIBE")
                    if self._stop.is_set():
                        return pubsub
                elif reply.get("type") == "subscribe":
                    confirmed += 1
                elif reply.get("type") == "message":  # published between two confirmations: not lost
                    self._dispatch(reply["channel"], reply["data"])
        except BaseException:
            _close_quietly(pubsub)
            raise
        return pubsub

    def _listen(self, pubsub: Any) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
            if message is None or message.get("type") != "message":
                continue
            self._dispatch(message["channel"], message["data"])

    def _dispatch(self, raw_channel: bytes, payload: bytes) -> None:
        channel = self._channels.get(raw_channel)
        if channel is None:  # Spin: "message from unexpected channel"
            self._log(f"spin: redis trigger: message on unexpected channel {raw_channel!r}; ignored")
            return
        self.messages += 1
        for component_id in self.subscription.channels[channel]:
            outcome = self._handlers[component_id](bytes(payload))
            if outcome.error is not None:
                self.failures += 1
                self._log(message_failure_line(
                    outcome.error, f"Redis channel {channel!r} of {self.subscription.shown_address}"))

    def _wait_before_retry(self, where: str, attempt: int, reason: str, was_listening: bool) -> None:
        if self._stop.is_set():
            return
        delay = backoff_delay(attempt)
        verb = "lost" if was_listening else "cannot subscribe on"
        self._log(f"spin: redis trigger: {verb} {where}: {reason}; retrying in {delay:.1f} s")
        self._stop.wait(delay)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - the connection is being dropped anyway
        pass


__all__ = ["Subscriber", "backoff_delay", "POLL_SECONDS"]
