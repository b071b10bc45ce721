"""``fermyon:spin/key-value@2.0.0``: the ``store`` resource over the app's SQLite stores (runtime.spin.key_value).

``error`` is ``store-table-full | no-such-store | access-denied | other(string)``, returned as Spin returns it:
``open`` of a label outside the component's ``key_value_stores`` is ``access-denied``, of a label nothing backs
``no-such-store``, past Spin's per-instance limit of open stores ``store-table-full``; a failing SQLite
statement is ``other`` with SQLite's message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, open_stores, services_of
from runtime.spin.key_value import KeyValueError, Store

if TYPE_CHECKING:
    from runtime.host.context import RequestContext


class SpinStore:
    """A guest's ``store`` handle (a class of its own, so a wasi:keyvalue bucket rep is never taken for one)."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store


def _released(ctx: RequestContext, _handle: Any) -> None:
    open_stores(ctx).release()


key_value = REGISTRY.interface("fermyon:spin/key-value", versions=("2.0.0",))
STORE = key_value.resource("store", on_drop=_released)


def error_value(exc: KeyValueError) -> Variant:
    """The WIT ``error`` case for ``exc`` (only ``other`` carries a message)."""
    return Variant(exc.kind, exc.message if exc.kind == "other" else None)


@key_value.func("[static]store.open")
def open_store(ctx: RequestContext, label: str) -> Ok[Any] | Err[Variant]:
    try:
        store = services_of(ctx).open_store(ctx.config.id, label)
    except KeyValueError as exc:
        return Err(error_value(exc))
    except NoServices as exc:
        return Err(Variant("other", str(exc)))
    if not open_stores(ctx).reserve():
        return Err(Variant("store-table-full"))
    return Ok(ctx.new(STORE, SpinStore(store)))


def _store(ctx: RequestContext, rep: int) -> Store:
    return ctx.table.get(rep, SpinStore).store


@key_value.func("[method]store.get")
def get(ctx: RequestContext, rep: int, key: str) -> Ok[bytes | None] | Err[Variant]:
    try:
        return Ok(_store(ctx, rep).get(key))
    except KeyValueError as exc:
        return Err(error_value(exc))


@key_value.func("[method]store.set")
def set_(ctx: RequestContext, rep: int, key: str, value: bytes) -> Ok[None] | Err[Variant]:
    try:
        _store(ctx, rep).set(key, value)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY


@key_value.func("[method]store.delete")
def delete(ctx: RequestContext, rep: int, key: str) -> Ok[None] | Err[Variant]:
    try:
        _store(ctx, rep).delete(key)
    except KeyValueError as exc:
        return Err(error_value(exc))
    return OK_EMPTY


@key_value.func("[method]store.exists")
def exists(ctx: RequestContext, rep: int, key: str) -> Ok[bool] | Err[Variant]:
    try:
        return Ok(_store(ctx, rep).exists(key))
    except KeyValueError as exc:
        return Err(error_value(exc))


@key_value.func("[method]store.get-keys")
def get_keys(ctx: RequestContext, rep: int) -> Ok[list[str]] | Err[Variant]:
    try:
        return Ok(_store(ctx, rep).get_keys())
    except KeyValueError as exc:
        return Err(error_value(exc))
