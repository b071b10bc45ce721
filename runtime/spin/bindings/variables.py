"""``fermyon:spin/variables@2.0.0``: ``get(name) -> result<string, error>``, Spin's error cases as they are.

``error`` is ``invalid-name(string) | undefined(string) | provider(string) | other(string)``; the resolver
(runtime.spin.variables) already raises VariableError with the case name, so this is a one-line mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.host.registry import REGISTRY
from runtime.host.values import Err, Ok, Variant
from runtime.spin.bindings.support import NoServices, services_of
from runtime.spin.variables import VariableError

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

variables = REGISTRY.interface("fermyon:spin/variables", versions=("2.0.0",))


@variables.func("get")
def get(ctx: RequestContext, name: str) -> Ok[str] | Err[Variant]:
    try:
        return Ok(services_of(ctx).variables.get(ctx.config.id, name))
    except VariableError as exc:
        return Err(Variant(exc.kind, exc.message))
    except NoServices as exc:
        return Err(Variant("provider", str(exc)))
