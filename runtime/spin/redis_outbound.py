"""Spin's outbound Redis (``fermyon:spin/redis@2.0.0``): a guest's connection to a Redis server it may reach.

As in Spin (factor-outbound-redis): ``open(address)`` takes a ``redis://`` or ``rediss://`` URL; an address the
component's ``allowed_outbound_hosts`` does not allow (``redis://host:port``, default port 6379) or that is not
such a URL is ``invalid-address``; a server that cannot be reached, and any error reply, is ``other`` with the
reason; a reply that does not fit the WIT type (a set member that is not UTF-8) is ``type-error``.

The protocol is redis-py's (imported on first use: the start path never pays for it). Each ``open`` gets a
client with one connection of its own, closed when the guest drops it or the request ends, and every socket
operation is bounded by the request's deadline. redis-py's per-command reply callbacks are switched off, so
every command (``execute`` included) returns the reply as the server sent it: nil, integer, bytes, or a list
of those, which ``execute`` flattens as Spin does.

Limitation: redis-py hands simple-string (``+OK``) and bulk-string replies over alike, as bytes, so
``execute`` answers both as ``binary``; Spin answers a simple string as ``status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from runtime.spin.redis_url import DEFAULT_PORT, masked, parse_redis_url

if TYPE_CHECKING:
    from runtime.spin.outbound import OutboundPolicy

#: The case names of ``fermyon:spin/redis@2.0.0``'s ``error`` variant.
RedisErrorKind = Literal["invalid-address", "too-many-connections", "type-error", "other"]
#: A command's argument / reply element, as the bindings pass them.
RedisParameter = int | bytes
RedisReply = None | int | bytes

#: Spin's per-instance limit of open connections (its resource table), for the bindings.
MAX_OPEN_CONNECTIONS_PER_INSTANCE = 256
#: The most a single socket operation waits, whatever the request's deadline.
MAX_SOCKET_TIMEOUT_S = 30.0


class RedisError(Exception):
    """A Redis call failed; ``kind`` is the WIT error case, ``message`` the ``other`` payload / a description."""

    def __init__(self, kind: RedisErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: RedisErrorKind = kind
        self.message = message


class RedisConnection:
    """One guest connection: a redis-py client with a single connection, raw replies."""

    def __init__(self, address: str, policy: OutboundPolicy, timeout: float) -> None:
        check_address(address, policy)
        import redis  # noqa: PLC0415 - only apps that use Redis pay for the import
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        self._errors = redis.exceptions
        self.address = address
        timeout = max(0.1, min(timeout, MAX_SOCKET_TIMEOUT_S))
        try:
            # single_connection_client connects here: an unreachable server fails the open, as in Spin. No retries:
            # the guest decides whether to try again.
            self._client = redis.Redis.from_url(address, single_connection_client=True, socket_timeout=timeout,
                                                socket_connect_timeout=timeout, decode_responses=False,
                                                retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise RedisError("invalid-address", f"{masked(address)}: {exc}") from None
        except redis.exceptions.RedisError as exc:
            raise RedisError("other", f"{masked(address)}: {exc}") from None
        self._client.response_callbacks.clear()  # replies as the server sent them, for every command

    def execute(self, command: str, arguments: Sequence[RedisParameter]) -> list[RedisReply]:
        return _flatten(self._call(command, *arguments))

    def get(self, key: str) -> bytes | None:
        return _expect(self._call("GET", key), (bytes, type(None)), "GET")

    def set(self, key: str, value: bytes) -> None:
        self._call("SET", key, value)

    def incr(self, key: str) -> int:
        return _expect(self._call("INCR", key), int, "INCR")

    def delete(self, keys: Sequence[str]) -> int:
        return _expect(self._call("DEL", *keys), int, "DEL")

    def sadd(self, key: str, values: Sequence[str]) -> int:
        return _expect(self._call("SADD", key, *values), int, "SADD")

    def srem(self, key: str, values: Sequence[str]) -> int:
        return _expect(self._call("SREM", key, *values), int, "SREM")

    def smembers(self, key: str) -> list[str]:
        members = _expect(self._call("SMEMBERS", key), list, "SMEMBERS")
        try:
            return [member.decode("utf-8") for member in members]
        except (AttributeError, UnicodeDecodeError):
            raise RedisError("type-error", f"SMEMBERS {key!r}: a member is not a UTF-8 string") from None

    def publish(self, channel: str, payload: bytes) -> None:
        self._call("PUBLISH", channel, payload)

    def close(self) -> None:
        self._client.close()

    def _call(self, command: str, *args: Any) -> Any:
        try:
            return self._client.execute_command(command, *args)
        except self._errors.ResponseError as exc:
            raise RedisError("other", f"{command}: {exc}") from None
        except (self._errors.ConnectionError, self._errors.TimeoutError) as exc:
            raise RedisError("other", f"{masked(self.address)}: {exc}") from None
        except self._errors.RedisError as exc:
            raise RedisError("other", f"{command}: {exc}") from None


def check_address(address: str, policy: OutboundPolicy) -> None:
    """invalid-address unless ``address`` is a redis URL the component may reach."""
    try:
        parts = parse_redis_url(address)
    except ValueError as exc:
        raise RedisError("invalid-address", f"{masked(address)}: {exc}") from None
    if not policy.allows(address, default_scheme=parts.scheme):
        raise RedisError(
            "invalid-address",
            f"{masked(address)} is not allowed by the component's allowed_outbound_hosts "
            f"(add \"{parts.scheme}://{parts.hostname}:{parts.port or DEFAULT_PORT}\")",
        )


def _expect(reply: Any, kinds: type | tuple[type, ...], command: str) -> Any:
    if not isinstance(reply, kinds):
        raise RedisError("type-error", f"{command}: unexpected reply {type(reply).__name__}")
    return reply


def _flatten(reply: Any) -> list[RedisReply]:
    """Spin's conversion of a reply for ``execute``: nested lists flattened, everything else one element."""
    if isinstance(reply, list):
        flat: list[RedisReply] = []
        for item in reply:
            flat.extend(_flatten(item))
        return flat
    if reply is None or isinstance(reply, (int, bytes)):
        return [reply]
    raise RedisError("type-error", f"unexpected reply {type(reply).__name__}")
