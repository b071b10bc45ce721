"""From a component's imports to a wasmtime Linker of Python host functions, and the load-time import check.

``plan_imports`` matches every imported instance against REGISTRY: each function and each resource the component
imports must be served, or it is listed as missing. ``check_imports`` raises one MissingImportError naming all of
them (wasmtime's own link error names only the first, guest.py's ``_missing_interfaces`` works around that for
command components). ``build_linker`` defines the served functions, each wrapped once with the adapters generated
from its real FuncType (runtime.host.adapt), so the per-call wrapper does no type work.

Resources: a WIT ``use`` re-exports a resource under the user's interface (``wasi:http/types.input-stream`` is
``wasi:io/streams.input-stream``); wasmtime resolves such aliases itself, so only the first import that exports a
given resource type (its owner: the component model orders definitions before uses) is defined, with the host
type id of the owner interface's ResourceKind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime.component import ComponentInstanceType, FuncType, Linker, ResourceType

from runtime.errors import MissingImportError
from runtime.host import adapt
from runtime.host.context import _local
from runtime.host.registry import REGISTRY, HostFunc, Interface, Registry, ResourceKind

if TYPE_CHECKING:
    from wasmtime import StoreContext
    from wasmtime.component import Component

    from runtime.http.contract import ComponentConfig


@dataclass
class InterfacePlan:
    import_name: str
    interface: Interface
    functions: list[tuple[str, FuncType, HostFunc]] = field(default_factory=list)
    resources: list[tuple[str, ResourceKind]] = field(default_factory=list)


@dataclass
class ImportPlan:
    interfaces: list[InterfacePlan]
    #: Every import nobody serves: an interface name, or ``interface#function`` / ``interface#resource``.
    missing: list[str]


def plan_imports(component: Component, engine: wasmtime.Engine, registry: Registry = REGISTRY) -> ImportPlan:
    plans: list[InterfacePlan] = []
    missing: list[str] = []
    seen_resources: list[ResourceType] = []
    for import_name, extern in component.type.imports(engine).items():
        instance_type = extern.ty
        if not isinstance(instance_type, ComponentInstanceType):
            missing.append(f"{import_name} (a {type(instance_type).__name__}, not an interface)")
            continue
        exports = instance_type.exports(engine)
        owned: list[str] = []
        for name, item in exports.items():
            ty = item.ty
            if isinstance(ty, ResourceType):
                if not any(ty == seen for seen in seen_resources):
                    owned.append(name)
                seen_resources.append(ty)
        interface = registry.find(import_name)
        if interface is None:
            missing.append(import_name)
            continue
        plan = InterfacePlan(import_name, interface)
        for name in owned:
            kind = interface.resource_for_link(name)
            if kind is None:
                missing.append(f"{import_name}#{name}")
            else:
                plan.resources.append((name, kind))
        for name, item in exports.items():
            ty = item.ty
            if isinstance(ty, FuncType):
                impl = interface.function_for_link(name, ty)
                if impl is None:
                    missing.append(f"{import_name}#{name}")
                else:
                    plan.functions.append((name, ty, impl))
        plans.append(plan)
    return ImportPlan(plans, missing)


def check_imports(
    component: Component, engine: wasmtime.Engine, config: ComponentConfig, registry: Registry = REGISTRY
) -> ImportPlan:
    """Raise MissingImportError naming every import of ``component`` that no provider serves; else the plan."""
    plan = plan_imports(component, engine, registry)
    if plan.missing:
        raise MissingImportError(
            f"{config.id}: imports {len(plan.missing)} interface(s) this host does not provide: "
            f"{', '.join(plan.missing)}",
            tuple(plan.missing),
        )
    return plan


def build_linker(engine: wasmtime.Engine, plan: ImportPlan) -> Linker:
    """A Linker defining everything in ``plan`` (which must have nothing missing)."""
    linker = Linker(engine)
    with linker.root() as root:
        for iface in plan.interfaces:
            with root.add_instance(iface.import_name) as instance:
                for name, kind in iface.resources:
                    instance.add_resource(name, ResourceType.host(kind.type_id), _destructor(kind))
                for name, func_type, impl in iface.functions:
                    instance.add_func(name, host_callback(f"{iface.import_name}#{name}", func_type, impl))
    return linker


def host_callback(qualname: str, func_type: FuncType, impl: HostFunc) -> Callable[..., Any]:
    """Wrap ``impl(ctx, *host_args)`` as wasmtime's ``fn(store, *args)``, with this signature's adapters.

    The adapters are built on the function's first call, not here: the Spin SDK app (py-spin) imports 228
    functions and calls ~16 per request; building all adapters up front measured 22 ms, against 10 ms for the
    whole executor load without them.

    Exceptions are recorded on the request context and re-raised as WasmtimeError: wasmtime-py would otherwise
    keep a non-wasmtime exception in one module global (``_enter.LAST_EXCEPTION``) shared by all threads, and
    another guest thread could pick it up.
    """
    adapters: tuple[list[adapt.Lift | None] | None, adapt.Lower | None] | None = None

    def callback(store: StoreContext, *args: Any) -> Any:
        nonlocal adapters
        ctx = getattr(_local, "ctx", None)
        if ctx is None:
            raise wasmtime.WasmtimeError(f"{qualname} called outside a request")
        ctx.store = store
        try:
            if adapters is None:
                adapters = _adapters(func_type)  # two threads racing here build equal adapters: harmless
            lifts, lower = adapters
            if lifts is not None:
                args = tuple(lift(store, arg) if lift is not None else arg for lift, arg in zip(lifts, args))
            result = impl(ctx, *args)
            return lower(result) if lower is not None else result
        except wasmtime.WasmtimeError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every host failure must become a trap, never escape
            if ctx.host_failure is None:
                ctx.host_failure = exc
            raise wasmtime.WasmtimeError(f"{qualname}: {describe_exception(exc)}") from None
        finally:
            ctx.store = None

    return callback


def _adapters(func_type: FuncType) -> tuple[list[adapt.Lift | None] | None, adapt.Lower | None]:
    lifts = [adapt.lifter(ty) for _, ty in func_type.params]
    result_type = func_type.result
    return (lifts if any(lifts) else None), (adapt.lowerer(result_type) if result_type is not None else None)


def _destructor(kind: ResourceKind) -> Callable[[StoreContext, int], None]:
    def drop(store: StoreContext, rep: int) -> None:
        ctx = getattr(_local, "ctx", None)
        if ctx is None:
            return  # the request is over: its table is already gone
        obj = ctx.table.pop(rep)
        if obj is not None and kind.on_drop is not None:
            try:
                kind.on_drop(ctx, obj)
            except Exception as exc:  # noqa: BLE001 - a failing drop hook must not escape into wasmtime
                ctx.notes.append(f"dropping {kind.interface}.{kind.name}: {describe_exception(exc)}")

    return drop


def describe_exception(exc: BaseException) -> str:
    from runtime.host.traps import GuestExit, HostTrap

    if isinstance(exc, (HostTrap, GuestExit)):
        return str(exc)
    return f"host error {type(exc).__name__}: {exc}"
