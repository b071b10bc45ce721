"""Convert between wasmtime-py's value forms and the fixed forms of runtime.host.values, driven by the real types.

Built once per host function when the Linker is built (the import's FuncType is known then), so a call pays only
for the parameters and results that need converting; a signature of ints, strings and bytes gets no adapter.

Lifting (guest -> host): resources become reps (``to_host``, which also releases the guest's borrow: every
ResourceAny must be converted or dropped before the host function returns, or wasmtime fails the call with "borrow
handles still remain at the end of the call"), results become Ok/Err, variants Variant, records dicts. An untagged
wasmtime value carries no tag, so the case is recovered from the payload's exact Python type: untagged means the
cases' class sets are disjoint, which makes that unambiguous.

Lowering (host -> guest): every result/variant/option becomes a ``Tagged(case, payload)`` that the patched
``_lower`` (runtime.host.marshal) maps by name, instead of wasmtime-py's class test. The class test picks the wrong
case whenever one case's classes include ``object`` (an ``option`` or empty case): for Spin key-value's
``result<option<list<u8>>, error>`` every err would be lowered as ok and fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wasmtime import WasmtimeError
from wasmtime.component import (
    BorrowType,
    ListType,
    OptionType,
    OwnType,
    Record,
    RecordType,
    ResourceAny,
    ResultType,
    TupleType,
    Variant,
    VariantType,
)
from wasmtime.component._types import ValType, VariantLikeType

from runtime.host.traps import HostTrap
from runtime.host.values import Err, Ok, Some

if TYPE_CHECKING:
    from wasmtime import StoreContext

Lift = Callable[["StoreContext", Any], Any]
Lower = Callable[[Any], Any]


class Tagged:
    """A variant/result/option value with its case named explicitly (understood by the patched ``_lower``)."""

    __slots__ = ("tag", "payload")

    def __init__(self, tag: str, payload: Any = None) -> None:
        self.tag = tag
        self.payload = payload

    def __repr__(self) -> str:
        return f"Tagged({self.tag!r}, {self.payload!r})"


# ------------------------------------------------------------------------------------------------ lifting


def lifter(ty: ValType) -> Lift | None:
    """A function turning wasmtime-py's value of ``ty`` into the host form, or None when they are the same."""
    if isinstance(ty, (OwnType, BorrowType)):
        return _lift_resource
    if isinstance(ty, ListType):
        element = lifter(ty.element)
        if element is None:
            return None
        return lambda store, value: [element(store, item) for item in value]
    if isinstance(ty, TupleType):
        parts = [lifter(t) for t in ty.elements]
        if not any(parts):
            return None
        return lambda store, value: tuple(p(store, v) if p else v for p, v in zip(parts, value))
    if isinstance(ty, RecordType):
        fields = [(name, lifter(t)) for name, t in ty.fields]
        return lambda store, value: {n: (f(store, getattr(value, n)) if f else getattr(value, n)) for n, f in fields}
    if isinstance(ty, VariantLikeType):
        return _variant_lifter(ty)
    return None


def _lift_resource(store: StoreContext, value: ResourceAny) -> int:
    try:
        return value.to_host(store).rep  # type: ignore[no-any-return]
    except WasmtimeError:
        value.drop(store)
        raise HostTrap("the guest passed one of its own resources where a host resource was expected") from None


def _make_neutral(ty: VariantLikeType) -> Callable[[str, Any], Any]:
    if isinstance(ty, ResultType):
        return lambda tag, payload: Ok(payload) if tag == "ok" else Err(payload)
    if isinstance(ty, OptionType):
        if isinstance(ty.payload, OptionType):
            return lambda tag, payload: None if tag == "none" else Some(payload)
        return lambda tag, payload: None if tag == "none" else payload
    return Variant


def _variant_lifter(ty: VariantLikeType) -> Lift | None:
    cases = ty._cases()
    case_lifts = {name: (lifter(case) if case is not None else None) for name, case in cases}
    make = _make_neutral(ty)
    if ty._tagged():
        def lift_tagged(store: StoreContext, value: Variant) -> Any:
            convert = case_lifts[value.tag]
            payload = value.payload
            return make(value.tag, convert(store, payload) if convert is not None else payload)

        return lift_tagged
    if isinstance(ty, OptionType) and case_lifts["some"] is None:
        return None  # untagged option of a plain type: wasmtime's None/value is already the host form
    by_type: dict[type, str] = {}
    none_tag = None
    for name, case in cases:
        classes: set[type] = set()
        if case is None:
            none_tag = name
            continue
        case.add_classes(classes)
        if object in classes:
            none_tag = name  # an option payload: its None belongs to this case
        for cls in classes - {object}:
            by_type[cls] = name

    def lift_untagged(store: StoreContext, value: Any) -> Any:
        tag = none_tag if value is None else by_type.get(type(value))
        if tag is None:
            raise HostTrap(f"cannot tell which case of a variant a {type(value).__name__} belongs to")
        convert = case_lifts[tag]
        return make(tag, convert(store, value) if convert is not None else value)

    return lift_untagged


# ------------------------------------------------------------------------------------------------ lowering


def lowerer(ty: ValType) -> Lower | None:
    """A function turning the host form into what wasmtime-py accepts for ``ty``, or None when they are the same."""
    if isinstance(ty, ListType):
        element = lowerer(ty.element)
        if element is None:
            return None
        return lambda value: [element(item) for item in value]
    if isinstance(ty, TupleType):
        parts = [lowerer(t) for t in ty.elements]
        if not any(parts):
            return None
        return lambda value: tuple(p(v) if p else v for p, v in zip(parts, value))
    if isinstance(ty, RecordType):
        fields = [(name, lowerer(t)) for name, t in ty.fields]

        def lower_record(value: Any) -> Record:
            record = Record()
            for name, convert in fields:
                item = value[name] if isinstance(value, dict) else getattr(value, name)
                setattr(record, name, convert(item) if convert is not None else item)
            return record

        return lower_record
    if isinstance(ty, ResultType):
        ok, err = lowerer(ty.ok) if ty.ok else None, lowerer(ty.err) if ty.err else None

        def lower_result(value: Ok[Any] | Err[Any]) -> Tagged:
            if type(value) is Ok:
                return Tagged("ok", ok(value.value) if ok is not None else value.value)
            if type(value) is Err:
                return Tagged("err", err(value.value) if err is not None else value.value)
            raise TypeError(f"a result must be returned as Ok(...) or Err(...), not {value!r}")

        return lower_result
    if isinstance(ty, OptionType):
        payload = lowerer(ty.payload)
        nested = isinstance(ty.payload, OptionType)
        if payload is None and not nested and not ty._tagged():
            return None  # wasmtime's own None/value test is right when the payload's classes exclude None

        def lower_option(value: Any) -> Tagged:
            if value is None:
                return Tagged("none")
            if nested:
                if type(value) is not Some:
                    raise TypeError(f"an option<option<...>> value must be None or Some(...), not {value!r}")
                value = value.value
            return Tagged("some", payload(value) if payload is not None else value)

        return lower_option
    if isinstance(ty, VariantType):
        case_lowers = {name: (lowerer(case) if case is not None else None) for name, case in ty.cases}

        def lower_variant(value: Variant) -> Tagged:
            try:
                convert = case_lowers[value.tag]
            except (KeyError, AttributeError):
                raise TypeError(f"not a case of this variant: {value!r}") from None
            return Tagged(value.tag, convert(value.payload) if convert is not None else value.payload)

        return lower_variant
    return None
