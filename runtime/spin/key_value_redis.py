"""A key-value store on a Redis server (runtime config ``[key_value_store.<label>] type = "redis"``, ``url``).

As Spin's ``key-value-redis``: the store is the whole Redis database the URL names (keys are not prefixed by the
label), ``get``/``set``/``delete``/``exists`` are GET/SET/DEL/EXISTS, ``get-keys`` is ``KEYS *``, the batch calls
MGET/MSET/DEL, ``increment`` INCRBY, and compare-and-swap a WATCH/MULTI/EXEC transaction. The server is the
platform's choice, so ``allowed_outbound_hosts`` does not govern it (as in Spin). Every failure, an unreachable
server included, is the ``other`` error with the reason (the URL's password masked).

One redis-py client per store and process, made on first use: redis-py's connection pool notices a fork and
opens new connections in the child, so worker processes never share a socket. redis-py is imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from runtime.spin.key_value_errors import KeyValueError
from runtime.spin.redis_url import masked

_T = TypeVar("_T")

#: The most one Redis operation waits before the store answers ``other``.
SOCKET_TIMEOUT_S = 5.0


class RedisStore:
    """An open store: what a guest's ``store`` / ``bucket`` resource stands for (the same calls as Store)."""

    def __init__(self, label: str, backend: RedisBackend) -> None:
        self.label = label
        self._backend = backend

    def get(self, key: str) -> bytes | None:
        return self._run(lambda r: r.get(key))

    def set(self, key: str, value: bytes) -> None:
        self._run(lambda r: r.set(key, bytes(value)))

    def delete(self, key: str) -> None:
        self._run(lambda r: r.delete(key))

    def exists(self, key: str) -> bool:
        return bool(self._run(lambda r: r.exists(key)))

    def get_keys(self) -> list[str]:
        return [key.decode("utf-8", "replace") for key in self._run(lambda r: r.keys("*"))]

    def get_many(self, keys: Sequence[str]) -> list[tuple[str, bytes | None]]:
        if not keys:
            return []
        return list(zip(keys, self._run(lambda r: r.mget(list(keys))), strict=True))

    def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        mapping = {key: bytes(value) for key, value in items}
        if mapping:
            self._run(lambda r: r.mset(mapping))

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._run(lambda r: r.delete(*keys))

    def increment(self, key: str, delta: int) -> int:
        return int(self._run(lambda r: r.incrby(key, delta)))

    def compare_and_swap(self, key: str, expected: bytes | None, value: bytes) -> bool:
        """Set ``key`` to ``value`` only if it still holds ``expected`` (None = absent): WATCH, compare, MULTI/EXEC."""

        def swap(client: Any) -> bool:
            import redis  # noqa: PLC0415 - already imported by the client

            with client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.get(key) != expected:
                        return False
                    pipe.multi()
                    pipe.set(key, bytes(value))
                    pipe.execute()
                    return True
                except redis.exceptions.WatchError:  # changed between WATCH and EXEC
                    return False

        return self._run(swap)

    def _run(self, operation: Callable[[Any], _T]) -> _T:
        client = self._backend.client()
        try:
            return operation(client)
        except self._backend.errors.RedisError as exc:
            raise KeyValueError("other", f"key-value store {self.label!r} ({masked(self._backend.url)}): {exc}") \
                from None


class RedisBackend:
    """One Redis URL's client, made lazily in each process that uses it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        self._pid = 0
        self.errors: Any = None

    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            import redis  # noqa: PLC0415 - only apps with a Redis store pay for the import

            self.errors = redis.exceptions
            self._client = redis.Redis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT_S,
                                                socket_connect_timeout=SOCKET_TIMEOUT_S, decode_responses=False)
            self._pid = os.getpid()
        return self._client
