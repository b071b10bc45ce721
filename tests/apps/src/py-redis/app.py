"""py-redis: a Redis-triggered Spin Python SDK 3.4.1 component (componentize-py 0.17.2, `-w spin-redis`).

It exports `fermyon:spin/inbound-redis` (`handle-message`) and uses Spin's services from inside the handler the
way an app would: every message is appended to the Redis list `py-redis:received` through outbound Redis (the
address is the component variable `redis_address`) and stored under key `last` in the `default` key-value store.
tests/apps/README.md lists the messages that make it fail instead.
"""

from spin_sdk import key_value, redis, variables
from spin_sdk.wit import exports
from spin_sdk.wit.imports.redis import RedisParameter_Binary
from spin_sdk.wit.imports.redis_types import Error
from spin_sdk.wit.types import Err


class InboundRedis(exports.InboundRedis):
    def handle_message(self, message: bytes) -> None:
        if message == b"fail":
            raise Err(Error.ERROR)  # the WIT error value: the host logs it, the subscription goes on
        if message == b"trap":
            raise RuntimeError("py-redis was asked to trap")  # uncaught: componentize-py traps
        with redis.open(variables.get("redis_address")) as connection:
            connection.execute("RPUSH", [RedisParameter_Binary(b"py-redis:received"), RedisParameter_Binary(message)])
        with key_value.open_default() as store:
            store.set("last", message)
        print(f"py-redis got {len(message)} bytes", flush=True)
