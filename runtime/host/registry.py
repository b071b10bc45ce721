"""Which Python code serves which imported WIT interface: the provider hook of the component host.

A component imports interfaces by versioned name (``wasi:io/streams@0.2.9``, ``fermyon:spin/key-value@2.0.0``).
Each one we serve is an ``Interface`` in ``REGISTRY``: a name, the versions it accepts, its resources and its
functions. Linking (runtime.host.linking) walks the component's imports, finds the Interface for each and defines
exactly the functions and resources the component imports; anything imported that no Interface serves is named
in one MissingImportError at load (task Create), so an app never traps at request time for a missing import.

How a provider adds interfaces (another package, no edit of runtime.host)
-------------------------------------------------------------------------
1. Put the code in a module of a *provider package* and register at import time::

       # runtime/spin/bindings/variables.py
       from runtime.host.registry import REGISTRY
       from runtime.host.values import Err, Ok, Variant

       variables = REGISTRY.interface("fermyon:spin/variables", versions=("2.0.0",))

       @variables.func("get")
       def get(ctx, name: str):
           value = ctx.component.services.variables.get(ctx.config.id, name)   # whatever services offers
           return Ok(value) if value is not None else Err(Variant("undefined", f"no variable {name!r}"))

   ``versions`` are fnmatch patterns (``"0.2.*"``; ``""`` matches an unversioned import). Function names are
   the WIT export names as wasmtime lists them: ``get``, ``[constructor]fields``, ``[method]fields.get``,
   ``[static]fields.from-list``.

   The package's ``__init__`` imports its modules. ``REGISTRY`` imports every package in ``PROVIDER_PACKAGES``
   (this package's ``runtime.host.wasi`` and ``runtime.spin.bindings``) the first time it is asked for an
   interface; ``REGISTRY.add_provider_package(name)`` adds another. A missing provider package is skipped, a
   broken one (ImportError inside it) fails loudly.

2. A host function is called as ``impl(ctx, *args)``: ``ctx`` is the request's RequestContext
   (runtime.host.context): ``ctx.config`` is the ComponentConfig, ``ctx.component.services`` the app's Spin
   services, ``ctx.component.memo(key, factory)`` a per-component cache (thread-safe), ``ctx.state_for(key,
   factory)`` a per-request one, ``ctx.table`` the request's resources, ``ctx.head``/``ctx.body``/``ctx.sink`` the
   HTTP request and response, ``ctx.remaining()`` the seconds left before the request's deadline. Arguments and
   the return value use the fixed forms of runtime.host.values (``Ok``/``Err`` for results, ``Variant(tag,
   payload)`` for variants, None/value for options, dicts for records); the adapters generated from the real
   WIT types at link time do wasmtime-py's tagged/untagged spelling, so it never leaks into provider code.

3. Resources: ``kind = iface.resource("store", on_drop=None)`` declares a resource type owned by that interface
   (one process-wide id; aliases of it in other interfaces, like ``wasi:http/types.input-stream``, need nothing).
   Return a new handle with ``ctx.new(kind, obj)``; a ``borrow``/``own`` parameter arrives as its rep (an int):
   ``ctx.table.get(rep, Store)`` for a borrow (``self`` of a method), ``ctx.table.take(rep, Store)`` for an
   ``own`` the guest gives away. When the guest drops a handle the table entry goes and ``on_drop(ctx, obj)`` runs.
   Everything in the table is discarded at the end of the request.

4. Errors: return the WIT error value (``Err(Variant("access-denied"))``). Raise ``HostTrap(message)``
   (runtime.host.traps) to trap the guest instead; any other exception also traps, and its text goes to the
   container log as the reason.

5. Type-driven stubs: ``REGISTRY.interface(name, versions, stub=factory)`` serves every function the interface
   does not define itself with ``factory(func_name, FuncType)`` (called once per function at link time; it
   returns an impl, or None to leave the function missing), and every resource the component imports from it
   gets a ResourceKind automatically. Spin's DENY stubs (llm, mqtt, rdbms) use this to answer
   an error value of whatever shape the result type has.
"""

from __future__ import annotations

import fnmatch
import importlib
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wasmtime.component import ResourceHost

if TYPE_CHECKING:
    from wasmtime.component import FuncType

    from runtime.host.context import RequestContext

HostFunc = Callable[..., Any]
StubFactory = Callable[[str, "FuncType"], "HostFunc | None"]
DropHook = Callable[["RequestContext", Any], None]

PROVIDER_PACKAGES: tuple[str, ...] = ("runtime.host.wasi", "runtime.spin.bindings")

#: ``hook(interface, wit_name, impl) -> impl`` applied to every function as it is linked: runtime.telemetry adds
#: one (Spin's client spans) at load when the task env turns telemetry on; empty otherwise, so calls pay nothing.
LINK_HOOKS: list[Callable[[str, str, HostFunc], HostFunc]] = []

# Host resource type ids, process-wide: ResourceType.host(id) at link time and ResourceHost.own(rep, id) at run
# time must agree, and two interfaces' resources must never share one.
_type_ids = itertools.count(1)


@dataclass(eq=False)
class ResourceKind:
    """One host resource type: where it is declared, its id, and what to do when the guest drops a handle."""

    interface: str
    name: str
    type_id: int
    on_drop: DropHook | None = None

    def own(self, rep: int) -> ResourceHost:
        """An owned handle to the table entry ``rep``, to return to the guest."""
        return ResourceHost.own(rep, self.type_id)

    def __repr__(self) -> str:
        return f"<resource {self.interface}.{self.name} #{self.type_id}>"


@dataclass(eq=False)
class Interface:
    """A WIT interface served by Python: what ``REGISTRY.interface(...)`` returns; see the module docstring."""

    name: str
    versions: tuple[str, ...]
    functions: dict[str, HostFunc] = field(default_factory=dict)
    resources: dict[str, ResourceKind] = field(default_factory=dict)
    stub: StubFactory | None = None

    def serves(self, version: str) -> bool:
        return any(fnmatch.fnmatchcase(version, pattern) for pattern in self.versions)

    def func(self, wit_name: str) -> Callable[[HostFunc], HostFunc]:
        """Decorator: serve the function ``wit_name`` of this interface with the decorated ``impl(ctx, *args)``."""

        def register(impl: HostFunc) -> HostFunc:
            if wit_name in self.functions:
                raise ValueError(f"{self.name}: {wit_name} is defined twice")
            self.functions[wit_name] = impl
            return impl

        return register

    def define(self, wit_name: str, impl: HostFunc) -> None:
        """Non-decorator form of ``func`` (for tables of small functions)."""
        self.func(wit_name)(impl)

    def resource(self, name: str, on_drop: DropHook | None = None) -> ResourceKind:
        if name in self.resources:
            raise ValueError(f"{self.name}: resource {name} is declared twice")
        kind = ResourceKind(self.name, name, next(_type_ids), on_drop)
        self.resources[name] = kind
        return kind

    def resource_for_link(self, name: str) -> ResourceKind | None:
        """The kind to link under ``name``: declared, or made on the fly for a stubbed interface."""
        kind = self.resources.get(name)
        if kind is None and self.stub is not None:
            kind = self.resource(name)
        return kind

    def function_for_link(self, name: str, func_type: FuncType) -> HostFunc | None:
        impl = self.functions.get(name)
        if impl is None and self.stub is not None:
            impl = self.stub(name, func_type)
        if impl is not None:
            for hook in LINK_HOOKS:
                impl = hook(self.name, name, impl)
        return impl


def split_import_name(import_name: str) -> tuple[str, str]:
    """``"wasi:io/streams@0.2.9"`` -> ``("wasi:io/streams", "0.2.9")``; an unversioned name gets version ""."""
    name, _, version = import_name.partition("@")
    return name, version


class Registry:
    def __init__(self, provider_packages: Iterable[str] = ()) -> None:
        self._interfaces: dict[str, list[Interface]] = {}
        self._packages = list(provider_packages)
        self._loaded: set[str] = set()
        self._lock = threading.RLock()

    def interface(self, name: str, versions: Iterable[str], *, stub: StubFactory | None = None) -> Interface:
        """Declare an interface (``name`` without version) serving the version patterns ``versions``."""
        iface = Interface(name, tuple(versions), stub=stub)
        with self._lock:
            self._interfaces.setdefault(name, []).append(iface)
        return iface

    def add_provider_package(self, package: str) -> None:
        with self._lock:
            if package not in self._packages:
                self._packages.append(package)

    def find(self, import_name: str) -> Interface | None:
        """The Interface serving ``import_name`` (name@version), or None. Two that both match are a bug."""
        self.load_providers()
        name, version = split_import_name(import_name)
        matches = [iface for iface in self._interfaces.get(name, ()) if iface.serves(version)]
        if len(matches) > 1:
            raise RuntimeError(f"{import_name} is served by {len(matches)} registered interfaces; keep one")
        return matches[0] if matches else None

    def load_providers(self) -> None:
        """Import every provider package once (they register on import)."""
        with self._lock:
            for package in self._packages:
                if package in self._loaded:
                    continue
                self._loaded.add(package)
                try:
                    importlib.import_module(package)
                except ModuleNotFoundError as exc:
                    if exc.name is None or not package.startswith(exc.name):
                        raise  # the package exists but something it imports is missing: a real error
                    # not installed / not written yet: its interfaces stay missing and load says so


#: The process-wide registry every executor links from.
REGISTRY = Registry(PROVIDER_PACKAGES)
