"""The Spin interfaces an SDK imports but this shim does not back: every call answers the interface's own error.

The Spin Python SDK 3.4.1 imports all of Spin's APIs whatever the app uses (LLM; Redis, SQLite, MySQL, PostgreSQL
and MQTT too, which runtime.spin.bindings.redis, .sqlite, .mysql, .postgres and .mqtt back), so refusing to link
them would refuse every Python app. Instead they link, and a call gets an error value the guest can handle (never a
trap): the one a Spin host without that service configured would give.

One type-driven stub serves them all (runtime.host.registry's ``stub`` hook): at link time it reads the
function's result type and, for ``result<_, E>``, picks E's case by ``DENIAL_CASES`` order (``access-denied``,
``connection-failed``, ``other``, ...; a case with a string payload carries ``DENIAL_MESSAGE``), so a new
interface version with another error shape needs no code here. A function without an error result (a method of
a resource ``open`` never handed out) cannot be reached and traps if it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wasmtime.component import EnumType, ResultType, String, ValType, VariantType

from runtime.host.registry import REGISTRY, HostFunc
from runtime.host.traps import HostTrap
from runtime.host.values import Err, Variant

if TYPE_CHECKING:
    from wasmtime.component import FuncType

    from runtime.host.context import RequestContext

#: Interface name -> version patterns this shim answers with errors.
DENIED_INTERFACES: dict[str, tuple[str, ...]] = {
    "fermyon:spin/llm": ("2.0.0",),
    # 2.0.0, 3.0.0 and 4.0.0 are runtime.spin.bindings.postgres's; 4.1+ adds connection-builder (not served).
    "spin:postgres/postgres": ("4.[1-9]*",),
}

#: Error cases in order of preference: the most specific "you may not use this" first, then cases that carry a
#: message. llm has none of the first three and gets ``runtime-error(message)``.
DENIAL_CASES = ("access-denied", "connection-failed", "other", "runtime-error", "io")

DENIAL_MESSAGE = "{interface} is not provided by this shim (containerd-shim-spin-v2, Python)"


def denial_error(result_type: ValType | None, message: str) -> Err[Any] | None:
    """The ``Err`` to return for a call whose result type is ``result_type``; None when it has no error case."""
    if not isinstance(result_type, ResultType):
        return None
    err = result_type.err
    if err is None:
        return Err(None)
    if isinstance(err, String):
        return Err(message)
    if isinstance(err, EnumType):
        names = err.names
        return Err(next((n for n in DENIAL_CASES if n in names), names[0]))
    if isinstance(err, VariantType):
        case = _pick_case(err.cases)
        if case is None:
            return None
        name, payload = case
        return Err(Variant(name, message if isinstance(payload, String) else None))
    return None


def _pick_case(cases: list[tuple[str, ValType | None]]) -> tuple[str, ValType | None] | None:
    usable = {name: payload for name, payload in cases if payload is None or isinstance(payload, String)}
    for name in DENIAL_CASES:
        if name in usable:
            return name, usable[name]
    with_message = next(((n, p) for n, p in usable.items() if p is not None), None)
    return with_message or next(iter(usable.items()), None)


def deny_stub(interface: str) -> Callable[[str, FuncType], HostFunc | None]:
    """The registry stub factory for ``interface``: one impl per function, built from its real type at link time."""
    message = DENIAL_MESSAGE.format(interface=interface)

    def factory(func_name: str, func_type: FuncType) -> HostFunc | None:
        error = denial_error(func_type.result, message)
        qualname = f"{interface}#{func_name}"
        if error is None:
            def unreachable(ctx: RequestContext, *_args: Any) -> Any:
                raise HostTrap(f"{qualname}: {message}")

            return unreachable
        case = error.value.tag if isinstance(error.value, Variant) else error.value

        def deny(ctx: RequestContext, *_args: Any) -> Err[Any]:
            ctx.notes.append(f"{qualname}: {message}; returned error {case!r} to the guest")
            return error

        return deny

    return factory


for _name, _versions in DENIED_INTERFACES.items():
    REGISTRY.interface(_name, versions=_versions, stub=deny_stub(_name))
