"""``wasi:config/store@0.2.0-draft-2024-09-27``: the component's variables through the WASI config interface.

As Spin's variables factor serves it: ``get`` answers ``ok(none)`` for an undefined or invalid name (the WASI
spec's guidance) and ``err(upstream(...))`` when a value cannot be resolved; ``get-all`` lists the component's
variables. ``error`` is ``upstream(string) | io(string)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.host.registry import REGISTRY
from runtime.host.values import Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, services_of
from runtime.spin.variables import VariableError

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

store = REGISTRY.interface("wasi:config/store", versions=("0.2.0-draft-2024-09-27",))


@store.func("get")
def get(ctx: RequestContext, key: str) -> Ok[str | None] | Err[Variant]:
    try:
        return Ok(services_of(ctx).variables.get(ctx.config.id, key))
    except VariableError as exc:
        if exc.kind in ("undefined", "invalid-name"):
            return Ok(None)
        return Err(Variant("upstream", exc.message))
    except NoServices as exc:
        return Err(Variant("upstream", str(exc)))


@store.func("get-all")
def get_all(ctx: RequestContext) -> Ok[list[tuple[str, str]]] | Err[Variant]:
    try:
        return Ok(services_of(ctx).variables.get_all(ctx.config.id))
    except VariableError as exc:
        return Err(Variant("upstream", exc.message))
    except NoServices as exc:
        return Err(Variant("upstream", str(exc)))
