"""One MQTT subscription: connect to the broker with the trigger's settings, SUBSCRIBE to its topic filters, hand
each message to the handler, and come back when the broker goes away.

As spin-trigger-mqtt (src/lib.rs ``run_listener``): one client per ``[[trigger.mqtt]]``, MQTT 3.1.1, an empty
client id with a clean session (the broker assigns the id), the ``[application.trigger.mqtt]`` username, password
and keep-alive, each topic subscribed with its QoS, and messages handled one after another: the next one is read
after the handler of this one returned. The handler gets the payload and the topic (the WIT's
``handle-message(payload, metadata { topic })``), plus the QoS and retain flag.

Where this differs from Spin: when the connection drops, spin-trigger-mqtt's message stream ends and so does its
listener; here the loop logs the loss and reconnects, waiting ``backoff_delay(attempt)`` between attempts (0.5 s
doubling to 30 s, back to 0.5 s after a subscription succeeds), and subscribes again (a clean session forgets
subscriptions). A broker that is not up yet at start is waited for the same way. A subscription the broker
refuses (a SUBACK failure, e.g. an ACL) fails the attempt and is retried with the same back-off, logged each time.

Delivery: paho acknowledges a QoS 1 message (PUBACK) or completes a QoS 2 one (PUBCOMP) after ``on_message``
returns, that is after the handler: a message whose handler was cut short by a crash is not acknowledged.
A handler's failure (its returned error text, or an exception) is logged with the topic and counted, and the next
message is handled as usual, as Spin does.

Stop: ``stop`` (a threading.Event) is checked between messages and at least every ``POLL_SECONDS``; the message
in flight finishes, its acknowledgement and a DISCONNECT are written, and ``run`` returns.

paho-mqtt is imported by ``run`` only (an app with an MQTT trigger), and driven by runtime.mqtt.pump in this
thread: no paho thread, so every callback runs here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.exits import write_stderr_line
from runtime.message_trigger import message_failure_line
from runtime.mqtt.pump import SUCCESS, pump_once
from runtime.mqtt.trigger_config import Subscription

POLL_SECONDS = 0.5
#: TCP connect, then the CONNACK; and the SUBACK (paho C's default connect timeout is 30 s, rumqttc's 5 s).
CONNECT_TIMEOUT_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class MqttMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


#: A message handler: None when the guest handled it, else the error text to log.
Handler = Callable[[MqttMessage], "str | None"]


class SubscribeFailed(Exception):
    """This attempt to connect and subscribe failed; ``str()`` says why (never the password)."""


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0-based)."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * (2 ** min(attempt, 16)))


class Subscriber:
    """Serves one Subscription until ``stop`` is set; ``run`` returns after the message in flight is handled."""

    def __init__(self, subscription: Subscription, handler: Handler, stop: threading.Event, *,
                 log: Callable[[str], None] = write_stderr_line) -> None:
        self.subscription = subscription
        self._handler = handler
        self._stop = stop
        self._log = log
        #: Counters for tests and the debug log: messages handled, failures, successful (re)subscriptions.
        self.messages = 0
        self.failures = 0
        self.subscriptions = 0
        self._where = f"{subscription.broker.address}"
        self._topics = ", ".join(f"{topic!r} (QoS {qos})" for topic, qos in subscription.topics)

    def run(self) -> None:
        attempt = 0
        lost_since: float | None = None
        while not self._stop.is_set():
            client = None
            try:
                client = self._subscribe()
                if client is None:  # stopped while connecting
                    return
                self.subscriptions += 1
                if lost_since is None:
                    self._log(f"spin: mqtt trigger: subscribed on {self._where}: {self._topics}")
                else:
                    self._log(f"spin: mqtt trigger: resubscribed on {self._where} after "
                              f"{time.monotonic() - lost_since:.1f} s ({attempt} attempt(s)): {self._topics}")
                attempt, lost_since = 0, None
                self._listen(client)
            except SubscribeFailed as exc:
                lost_since = lost_since if lost_since is not None else time.monotonic()
                verb = "lost" if self.subscriptions and attempt == 0 else "cannot subscribe on"
                self._wait_before_retry(f"{verb} {self._where}: {exc}", attempt)
                attempt += 1
            finally:
                if client is not None:
                    _disconnect(client)

    # ------------------------------------------------------------------------------------------------ internals

    def _subscribe(self) -> Any:
        from paho.mqtt.client import Client, MQTTv311  # noqa: PLC0415 - imported by MQTT-triggered apps only
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        broker = self.subscription.broker
        client = Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True, protocol=MQTTv311)
        client.username_pw_set(broker.username, broker.password)
        state: dict[str, Any] = {}
        client.on_connect = lambda _c, _u, _f, reason, _p: state.__setitem__("connack", reason)
        client.on_subscribe = lambda _c, _u, _mid, codes, _p: state.__setitem__("suback", codes)
        client.on_message = lambda _c, _u, message: self._dispatch(message)
        client.connect_timeout = CONNECT_TIMEOUT_SECONDS
        try:
            client.connect(broker.host, broker.port, keepalive=broker.keep_alive_s)
        except (OSError, ValueError) as exc:
            _close_socket(client)
            raise SubscribeFailed(_reason(exc)) from None
        try:
            if not self._pump_until(client, lambda: "connack" in state, "the broker's CONNACK"):
                return _disconnect(client)
            if state["connack"].is_failure:
                raise SubscribeFailed(f"the broker refused the connection: {state['connack']}")
            client.subscribe(list(self.subscription.topics))
            if not self._pump_until(client, lambda: "suback" in state, "the broker's SUBACK"):
                return _disconnect(client)
            refused = [topic for (topic, _), code in zip(self.subscription.topics, state["suback"])
                       if code.is_failure]
            if refused:
                raise SubscribeFailed(f"the broker refused the subscription to {', '.join(map(repr, refused))}")
        except BaseException:
            _disconnect(client)
            raise
        return client

    def _pump_until(self, client: Any, done: Callable[[], bool], what: str) -> bool:
        """False when stopped first; SubscribeFailed when the connection ends or CONNECT_TIMEOUT_SECONDS pass."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
        while not done():
            if self._stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise SubscribeFailed(f"timed out waiting for {what}")
            rc = pump_once(client, min(left, POLL_SECONDS))
            if rc != SUCCESS and not done():
                raise SubscribeFailed(f"{_error_text(rc)} while waiting for {what}")
        return True

    def _listen(self, client: Any) -> None:
        while not self._stop.is_set():
            rc = pump_once(client, POLL_SECONDS)
            if rc != SUCCESS:
                raise SubscribeFailed(_error_text(rc))

    def _dispatch(self, message: Any) -> None:
        self.messages += 1
        received = MqttMessage(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        try:
            error = self._handler(received)
        except Exception as exc:  # noqa: BLE001 - a host bug in one handler must not end the subscription
            error = f"spin: mqtt trigger: handler failed: {_reason(exc)}"
        if error is not None:
            self.failures += 1
            self._log(message_failure_line(error, f"MQTT topic {received.topic!r} of {self._where}"))

    def _wait_before_retry(self, reason: str, attempt: int) -> None:
        if self._stop.is_set():
            return
        delay = backoff_delay(attempt)
        self._log(f"spin: mqtt trigger: {reason}; retrying in {delay:.1f} s")
        self._stop.wait(delay)


def _disconnect(client: Any) -> None:
    """A DISCONNECT after whatever is queued (the last message's PUBACK), then the socket closed."""
    try:
        if client.is_connected():
            client.disconnect()
    except OSError:
        pass
    _close_socket(client)


def _close_socket(client: Any) -> None:
    sock = client.socket()
    if sock is not None:
        sock.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _error_text(rc: int) -> str:
    from paho.mqtt.client import error_string  # noqa: PLC0415

    return error_string(rc)


__all__ = ["Handler", "MqttMessage", "POLL_SECONDS", "Subscriber", "backoff_delay"]
