"""``wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2`` over the same stores as Spin's key-value interface.

As Spin serves them (factor-key-value's wasi implementation): a bucket identifier is a store label with the same
access rules; ``error`` is ``no-such-store | access-denied | other(string)`` (the open-store limit, which this
interface has no case for, is ``other``); ``list-keys`` returns every key at once and refuses a cursor, since
it never hands one out. ``increment`` and ``swap`` are atomic across worker processes (SQLite write
transactions); a ``cas`` remembers the value it saw, and ``swap`` fails with ``cas-failed`` (handing back a
fresh cas) when the key changed since.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, open_stores, services_of
from runtime.spin.key_value import KeyValueError, Store

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

VERSIONS = ("0.2.0-draft2",)


class Bucket:
    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store


class Cas:
    """A compare-and-swap handle: the key and the value it had when the handle was made."""

    __slots__ = ("store", "key", "seen")

    def __init__(self, store: Store, key: str, seen: bytes | None) -> None:
        self.store = store
        self.key = key
        self.seen = seen


def _released(ctx: RequestContext, _handle: Any) -> None:
    open_stores(ctx).release()


store_iface = REGISTRY.interface("wasi:keyvalue/store", versions=VERSIONS)
atomics = REGISTRY.interface("wasi:keyvalue/atomics", versions=VERSIONS)
batch = REGISTRY.interface("wasi:keyvalue/batch", versions=VERSIONS)
BUCKET = store_iface.resource("bucket", on_drop=_released)
CAS = atomics.resource("cas")


def error_value(exc: KeyValueError) -> Variant:
    if exc.kind in ("no-such-store", "access-denied"):
        return Variant(exc.kind)
    return Variant("other", exc.message)


def _bucket(ctx: RequestContext, rep: int) -> Store:
    return ctx.table.get(rep, Bucket).store


# ---------------------------------------------------------------------------------------------------- store


@store_iface.func("open")
def open_bucket(ctx: RequestContext, identifier: str) -> Ok[Any] | Err[Variant]:
    try:
        store = services_of(ctx).open_store(ctx.config.id, identifier)
    except KeyValueError as exc:
        return Err(error_value(exc))
    except NoServices as exc:
        return Err(Variant("other", str(exc)))
    if not open_stores(ctx).reserve():
        return Err(Variant("other", "too many open buckets (drop some before opening more)"))
    return Ok(ctx.new(BUCKET, Bucket(store)))


@store_iface.func("[method]bucket.get")
def get(ctx: RequestContext, rep: int, key: str) -> Ok[bytes | None] | Err[Variant]:
    try:
        return Ok(_bucket(ctx, rep).get(key))
    except KeyValueError as exc:
        return Err(error_value(exc))


@store_iface.func("[method]bucket.set")
def set_(ctx: RequestContext, rep: int, key: str, value: bytes) -> Ok[None] | Err[Variant]:
    try:
        _bucket(ctx, rep).set(key, value)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY


@store_iface.func("[method]bucket.delete")
def delete(ctx: RequestContext, rep: int, key: str) -> Ok[None] | Err[Variant]:
    try:
        _bucket(ctx, rep).delete(key)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY


@store_iface.func("[method]bucket.exists")
def exists(ctx: RequestContext, rep: int, key: str) -> Ok[bool] | Err[Variant]:
    try:
        return Ok(_bucket(ctx, rep).exists(key))
    except KeyValueError as exc:
        return Err(error_value(exc))


@store_iface.func("[method]bucket.list-keys")
def list_keys(ctx: RequestContext, rep: int, cursor: str | None) -> Ok[dict[str, Any]] | Err[Variant]:
    if cursor is not None:
        return Err(Variant("other", "list-keys: cursors are not supported (all keys come in the first response)"))
    try:
        return Ok({"keys": _bucket(ctx, rep).get_keys(), "cursor": None})
    except KeyValueError as exc:
        return Err(error_value(exc))


# ---------------------------------------------------------------------------------------------------- atomics


@atomics.func("increment")
def increment(ctx: RequestContext, bucket_rep: int, key: str, delta: int) -> Ok[int] | Err[Variant]:
    try:
        return Ok(_bucket(ctx, bucket_rep).increment(key, delta))
    except KeyValueError as exc:
        return Err(error_value(exc))


@atomics.func("[static]cas.new")
def cas_new(ctx: RequestContext, bucket_rep: int, key: str) -> Ok[Any] | Err[Variant]:
    store = _bucket(ctx, bucket_rep)
    try:
        seen = store.get(key)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return Ok(ctx.new(CAS, Cas(store, key, seen)))


@atomics.func("[method]cas.current")
def cas_current(ctx: RequestContext, rep: int) -> Ok[bytes | None]:
    return Ok(ctx.table.get(rep, Cas).seen)


@atomics.func("swap")
def swap(ctx: RequestContext, cas_rep: int, value: bytes) -> Ok[None] | Err[Variant]:
    cas = ctx.table.take(cas_rep, Cas)
    try:
        if cas.store.compare_and_swap(cas.key, cas.seen, value):
            return OK_EMPTY
        fresh = Cas(cas.store, cas.key, cas.store.get(cas.key))
    except KeyValueError as exc:
        return Err(Variant("store-error", error_value(exc)))
    return Err(Variant("cas-failed", ctx.new(CAS, fresh)))


# ---------------------------------------------------------------------------------------------------- batch


@batch.func("get-many")
def get_many(ctx: RequestContext, bucket_rep: int, keys: list[str]) -> Ok[list[tuple[str, bytes | None]]] | Err[Variant]:
    try:
        return Ok(_bucket(ctx, bucket_rep).get_many(keys))
    except KeyValueError as exc:
        return Err(error_value(exc))


@batch.func("set-many")
def set_many(ctx: RequestContext, bucket_rep: int, items: list[tuple[str, bytes]]) -> Ok[None] | Err[Variant]:
    try:
        _bucket(ctx, bucket_rep).set_many(items)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY


@batch.func("delete-many")
def delete_many(ctx: RequestContext, bucket_rep: int, keys: list[str]) -> Ok[None] | Err[Variant]:
    try:
        _bucket(ctx, bucket_rep).delete_many(keys)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY
