"""Monkeypatches of wasmtime-py 50.0.1's component value marshalling: one for correctness, two for speed.

wasmtime-py converts every host-call argument and result by re-reading its type from the C API each time
(``FuncType.params``, ``VariantType.cases`` ... build fresh ValType objects on every access), and converts a
``list<u8>`` one ctypes call per byte. Measured here (ComponentExecutor.handle in a loop, one thread, no HTTP,
fresh instance per request, 2-core VM), stock -> patched:

    py-spin  (Spin SDK 3.4.1)   GET /hello   231 -> 452 req/s   p50 4.31 -> 2.19 ms
    py-proxy (componentize-py)  GET /hello   249 -> 519 req/s   p50 3.96 -> 1.92 ms
    js-echo  (StarlingMonkey)   GET /hello   665 -> 1215 req/s  p50 1.50 -> 0.80 ms
    1 MiB POST /echo (py-proxy / js-echo)    1106 / 1125 ms -> 62 / 65 ms

Upstreaming is the real fix; until then these patches are pinned to the exact version they were written
against and refuse any other (the internals they replace are private and change between releases).

* ``install_tagged_lowering`` (always needed by runtime.host): ``VariantLikeType._lower`` also accepts
  ``runtime.host.adapt.Tagged(case, payload)``, lowering by case name instead of by wasmtime-py's class test
  (which picks the wrong case for e.g. ``result<option<T>, E>``), and its untagged path no longer shares one
  module-global set between threads (``case_test_cache``).
* ``install_fast_marshalling``: the host-call trampoline caches each host function's parameter and result
  ValTypes (keyed by the function's slab index: a function added to a Linker keeps one type, and our Linkers
  serve one component each), and type properties (``cases``, ``fields``, ``element``, ``payload``, ``ok``,
  ``err``, ``_tagged`` ...) are memoized on the type objects, which are immutable. A host exception becomes a
  WasmtimeError naming it instead of going through the module-global ``LAST_EXCEPTION``, which another guest
  thread could pick up.
* ``install_fast_bytes``: ``list<u8>`` <-> ``bytes`` through the ``wasmtime_component_val_t[]`` array (32 bytes an
  element, the u8 at offset 8) with strided memoryview copies: one C-speed pass instead of n Python calls.

Values are identical to the stock path (tests/unit/test_host_marshal.py round-trips them through a component).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

PINNED_VERSION = "50.0.1"

_lock = threading.Lock()
_installed: set[str] = set()
#: True once install_fast_marshalling ran: the shared _lower then memoizes its per-case class table.
_memoize = False


class UnsupportedWasmtimeVersion(RuntimeError):
    pass


@functools.cache
def wasmtime_version() -> str:
    """The installed wasmtime-py version, from its dist-info directory name (importlib.metadata costs ~11 ms).
    Cached: the shim's sandbox asks once before its pivot_root hides the dist-info directory."""
    spec = importlib.util.find_spec("wasmtime")
    if spec is not None and spec.origin is not None:
        for dist_info in Path(spec.origin).parent.parent.glob("wasmtime-*.dist-info"):
            return dist_info.name[len("wasmtime-") : -len(".dist-info")]
    from importlib import metadata

    return metadata.version("wasmtime")


def _check_version() -> None:
    version = wasmtime_version()
    if version != PINNED_VERSION:
        raise UnsupportedWasmtimeVersion(
            f"runtime.host.marshal patches wasmtime-py {PINNED_VERSION} internals; installed is {version}. "
            "Re-check the patched functions against the new release before changing PINNED_VERSION."
        )


def install(*, speed: bool = True) -> None:
    """Install the patches once per process (idempotent, thread-safe). ``speed=False``: correctness patch only."""
    install_tagged_lowering()
    if speed:
        install_fast_marshalling()
        install_fast_bytes()


def installed() -> frozenset[str]:
    return frozenset(_installed)


def _once(name: str, patch: Callable[[], None]) -> None:
    with _lock:
        if name in _installed:
            return
        _check_version()
        patch()
        _installed.add(name)


# ------------------------------------------------------------------------------------------------ correctness


def install_tagged_lowering() -> None:
    _once("tagged-lowering", _patch_tagged_lowering)


def _case_table(ty: Any) -> list[tuple[str, Any, tuple[type, ...]]]:
    """(case name, payload type or None, the payload's Python classes) for each case, in order."""
    table = ty.__dict__.get("_host_case_table") if _memoize else None
    if table is None:
        table = []
        for name, case in ty._cases():
            classes: set[type] = set()
            if case is not None:
                case.add_classes(classes)
            table.append((name, case, tuple(classes)))
        if _memoize:
            ty.__dict__["_host_case_table"] = table
    return table


def _patch_tagged_lowering() -> None:
    from wasmtime import _ffi as ffi
    from wasmtime.component import Variant
    from wasmtime.component._types import VariantLikeType

    from runtime.host.adapt import Tagged

    def _lower(self: Any, store: Any, val: Any) -> tuple[str, Any]:
        table = _case_table(self)
        if type(val) is Tagged:
            for name, case, _classes in table:
                if name == val.tag:
                    return _lower_case(store, name, case, val.payload)
            raise ValueError(f"no case {val.tag!r} in this variant")
        tagged = self._tagged()
        if tagged and not isinstance(val, Variant):
            raise TypeError("expected Variant type")
        for name, case, classes in table:
            if tagged:
                if name != val.tag:
                    continue
            elif case is None:
                if val is not None:
                    continue
            elif not isinstance(val, classes):
                continue
            return _lower_case(store, name, case, val.payload if tagged else val)
        raise ValueError("value not valid for this variant")

    def _lower_case(store: Any, name: str, case: Any, payload: Any) -> tuple[str, Any]:
        if case is None:
            return (name, None)
        raw = ffi.wasmtime_component_val_t()
        case.convert_to_c(store, payload, ctypes.pointer(raw))
        return (name, ffi.wasmtime_component_val_new(ctypes.byref(raw)))

    VariantLikeType._lower = _lower


# ------------------------------------------------------------------------------------------------ fast types


def install_fast_marshalling() -> None:
    _once("fast-marshalling", _patch_fast_marshalling)


def _memoized_property(original: property, key: str) -> property:
    getter = original.fget
    assert getter is not None

    def get(self: Any) -> Any:
        cache = self.__dict__
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = getter(self)
            return value

    return property(get, doc=original.__doc__)


def _memoized_method(original: Callable[[Any], Any], key: str) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def call(self: Any) -> Any:
        cache = self.__dict__
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = original(self)
            return value

    return call


def _patch_fast_marshalling() -> None:
    global _memoize
    from wasmtime import StoreContext, WasmtimeError
    from wasmtime import _ffi as ffi
    from wasmtime.component import _linker
    from wasmtime.component import _types as types

    for cls, names in (
        (types.FuncType, ("params", "result")),
        (types.ListType, ("element",)),
        (types.RecordType, ("fields",)),
        (types.TupleType, ("elements",)),
        (types.VariantType, ("cases",)),
        (types.OptionType, ("payload",)),
        (types.ResultType, ("ok", "err")),
        (types.EnumType, ("names",)),
        (types.FlagsType, ("names",)),
    ):
        for name in names:
            setattr(cls, name, _memoized_property(getattr(cls, name), f"_host_memo_{name}"))
    types.ListType._is_bytes = _memoized_method(types.ListType._is_bytes, "_host_memo_is_bytes")
    types.VariantLikeType._tagged = _memoized_method(types.VariantLikeType._tagged, "_host_memo_tagged")
    types.ResultType._cases = _memoized_method(types.ResultType._cases, "_host_memo_cases")
    types.OptionType._cases = _memoized_method(types.OptionType._cases, "_host_memo_cases")
    _memoize = True

    functions = _linker.FUNCTIONS
    signatures: dict[int, tuple[int, int, list[Any], Any]] = {}

    @ffi.wasmtime_component_func_callback_t  # type: ignore[misc]
    def fast_func_impl(idx, context, ty_raw, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
        store = StoreContext(context)
        failure: WasmtimeError | None = None
        try:
            key = idx or 0
            signature = signatures.get(key)
            if signature is None or signature[0] != nargs or signature[1] != nresults:
                with types.FuncType._from_ptr(ty_raw, owner=store) as func_type:
                    signature = (nargs, nresults, [ty for _, ty in func_type.params], func_type.result)
                signatures[key] = signature
            _, _, param_types, result_type = signature
            pyargs = [ty.convert_from_c(args[i]) for i, ty in enumerate(param_types)]
            result = functions.get(key)(store, *pyargs)
            if result_type is not None:
                result_type.convert_to_c(store, result, results)
        except WasmtimeError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - becomes a trap, like wasmtime-py's own handler
            failure = WasmtimeError(f"python exception in a host function: {type(exc).__name__}: {exc}")
        finally:
            store._invalidate()
        if failure is not None:
            return ctypes.cast(failure._consume(), ctypes.c_void_p).value
        return 0

    # add_func looks the trampoline up by this module-global name at each call: Linkers built from now on use it.
    _linker.func_impl = fast_func_impl


# ------------------------------------------------------------------------------------------------ fast bytes


def install_fast_bytes() -> None:
    _once("fast-bytes", _patch_fast_bytes)


def _patch_fast_bytes() -> None:
    from wasmtime import _ffi as ffi
    from wasmtime.component import _types as types

    stride = ctypes.sizeof(ffi.wasmtime_component_val_t)
    offset = ffi.wasmtime_component_val_t.of.offset
    kind_offset = ffi.wasmtime_component_val_t.kind.offset
    u8_kind = ffi.WASMTIME_COMPONENT_U8.value
    list_kind = ffi.WASMTIME_COMPONENT_LIST
    list_kind_value = ffi.WASMTIME_COMPONENT_LIST.value
    assert ctypes.sizeof(ffi.wasmtime_component_valkind_t) == 1, "the kind byte layout changed"

    stock_to_c = types.ListType.convert_to_c
    stock_from_c = types.ListType.convert_from_c

    def element_bytes(data: Any, count: int) -> memoryview:
        array = (ctypes.c_uint8 * (count * stride)).from_address(ctypes.addressof(data.contents))
        return memoryview(array).cast("B")

    def convert_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
        if not self._is_bytes():
            return stock_to_c(self, store, val, ptr)
        if not isinstance(val, (bytes, bytearray, memoryview)):
            raise TypeError("expected bytes value")
        count = len(val)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, count)
        if count:
            view = element_bytes(raw.data, count)
            view[kind_offset::stride] = bytes((u8_kind,)) * count
            view[offset::stride] = val
        ptr.contents.kind = list_kind
        ptr.contents.of.list = raw

    def convert_from_c(self: Any, c: Any) -> Any:
        if not self._is_bytes():
            return stock_from_c(self, c)
        assert c.kind == list_kind_value
        try:
            count = c.of.list.size
            if count == 0:
                return b""
            return element_bytes(c.of.list.data, count)[offset::stride].tobytes()
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))

    types.ListType.convert_to_c = convert_to_c
    types.ListType.convert_from_c = convert_from_c
