"""A WASI command guest, checked at load time and run to completion in the calling thread.

Two kinds, one contract (``prepare`` at load: everything a user could get wrong is checked; ``run``: a fresh
Store, instantiate, call the entry point, map the end to an exit code):

* CoreCommand: a WASI preview 1 core module exporting ``_start``, linked with wasmtime's p1 implementation
  (``Linker.define_wasi``). ``Linker.instantiate_pre`` type-checks every import without running guest code.
* ComponentCommand: a WASI preview 2 component exporting ``wasi:cli/run@0.2.x``, linked with wasmtime's own p2
  implementation (``component.Linker.add_wasip2``: the Rust WASI, not the Python host later issues need for
  incoming HTTP). wasmtime-py has no component InstancePre, so ``prepare`` does one trial instantiation in a
  throwaway Store: that is the only way to make the linker check every import (names, functions, types) and the
  memory limit before Start. It runs no guest code except core ``start`` sections, which WASI command toolchains
  (wasi-libc, Rust, componentize-py, StarlingMonkey) do not emit; it costs about a millisecond.

Guest stdio is the process's own fds 0/1/2 (``inherit_*``): the shim has dup2'ed the task's FIFOs there, so guest
output reaches the container log with no copying through Python. Preopens are read-only (``fs_mutable=False``).
Networking is not granted (``WasiConfig`` has it off unless ``inherit_network`` is called).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.errors import MissingImportError, WasmLoadError
from runtime.exits import EXIT_INTERRUPTED, EXIT_TRAP, INTERRUPT_MESSAGE, failure_line, write_stderr_line
from runtime.files import Preopen
from runtime.interrupt import Interrupter

if TYPE_CHECKING:
    import wasmtime
    from wasmtime import component as wasmtime_component

_WASI_CLI_RUN = re.compile(r"^wasi:cli/run@0\.2\.\d+$")
_MISSING_INSTANCE = re.compile(r"component imports instance `([^`]+)`, but a matching implementation was not found")
#: Far enough that the trial instantiation never hits it; it has no interrupt callback.
_NO_DEADLINE = 2**62


@dataclass(frozen=True)
class GuestSetup:
    """What the guest sees: its name in messages, argv, environment and read-only preopens."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    preopens: Sequence[Preopen] = ()


def wasi_config(setup: GuestSetup | None) -> wasmtime.WasiConfig:
    """A WasiConfig with the process's stdio, exactly ``setup.env``, and read-only preopens; empty for trials."""
    import wasmtime

    config = wasmtime.WasiConfig()
    if setup is None:
        return config  # trial instantiation: no stdio, no args, no files
    config.argv = list(setup.argv)
    config.env = list(setup.env.items())
    config.inherit_stdin()
    config.inherit_stdout()
    config.inherit_stderr()
    for preopen in setup.preopens:
        config.preopen_dir(str(preopen.host_path), preopen.guest_path, fs_mutable=False)
    return config


def _new_store(engine: wasmtime.Engine, max_memory: int | None) -> wasmtime.Store:
    import wasmtime

    store = wasmtime.Store(engine)
    if max_memory is not None:
        store.set_limits(memory_size=max_memory)
    return store


class _Command:
    def __init__(self, setup: GuestSetup, engine: wasmtime.Engine, max_memory: int | None) -> None:
        self.setup = setup
        self.engine = engine
        self.max_memory = max_memory

    def run(self, interrupter: Interrupter) -> int:
        """Run to completion in this thread; return the exit code (see runtime.exits)."""
        import wasmtime

        if interrupter.requested:
            return EXIT_INTERRUPTED
        store = _new_store(self.engine, self.max_memory)
        interrupter.arm(store)
        store.set_wasi(wasi_config(self.setup))
        try:
            return self._call(store)
        except wasmtime.ExitTrap as exit_trap:
            return exit_trap.code
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            message = str(exc)
            if interrupter.requested and INTERRUPT_MESSAGE in message:
                return EXIT_INTERRUPTED
            write_stderr_line(failure_line(self.setup.name, message))
            return EXIT_TRAP

    def _call(self, store: wasmtime.Store) -> int:
        raise NotImplementedError


class CoreCommand(_Command):
    def __init__(self, setup: GuestSetup, engine: wasmtime.Engine, max_memory: int | None, module: wasmtime.Module) -> None:
        super().__init__(setup, engine, max_memory)
        self.module = module
        self.instance_pre = self._prepare()

    def _prepare(self) -> wasmtime.InstancePre:
        import wasmtime

        name = self.setup.name
        exports = {export.name: export.type for export in self.module.exports}
        if not isinstance(exports.get("_start"), wasmtime.FuncType):
            raise WasmLoadError(
                f"{name}: not a WASI command module: it exports no `_start` function "
                f"(exports: {', '.join(sorted(exports)) or 'none'}); build it as a command (wasm32-wasip1 binary), "
                "not a reactor/library"
            )
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        probe_store = wasmtime.Store(self.engine)
        probe_store.set_wasi(wasmtime.WasiConfig())
        missing = []
        for item in self.module.imports:
            try:
                linker.get(probe_store, item.module, item.name or "")
            except wasmtime.WasmtimeError:
                missing.append(f"{item.module}::{item.name}")
        if missing:
            raise MissingImportError(
                f"{name}: imports {len(missing)} function(s) this host does not provide: {', '.join(missing)} "
                "(WASI preview 1 modules may import only wasi_snapshot_preview1)",
                tuple(missing),
            )
        self._check_memory_limit()
        try:
            return linker.instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:  # an import with the right name but the wrong signature
            raise MissingImportError(f"{name}: cannot link: {failure_reason(exc)}") from None

    def _check_memory_limit(self) -> None:
        import wasmtime

        if self.max_memory is None:
            return
        for item in [*self.module.imports, *self.module.exports]:
            if isinstance(item.type, wasmtime.MemoryType):
                needed = item.type.limits.min * 65536
                if needed > self.max_memory:
                    raise WasmLoadError(
                        f"{self.setup.name}: needs at least {needed} bytes of linear memory, more than the "
                        f"per-instance limit of {self.max_memory} bytes (SPIN_MAX_INSTANCE_MEMORY)"
                    )

    def _call(self, store: wasmtime.Store) -> int:
        instance = self.instance_pre.instantiate(store)
        start = instance.exports(store)["_start"]
        start(store)  # type: ignore[operator]
        return 0  # returning from _start is exit 0, as in wasi-libc's crt


class ComponentCommand(_Command):
    def __init__(
        self,
        setup: GuestSetup,
        engine: wasmtime.Engine,
        max_memory: int | None,
        component: wasmtime_component.Component,
    ) -> None:
        super().__init__(setup, engine, max_memory)
        self.component = component
        self.run_export = self._find_run_export()
        self.linker = self._prepare()

    def _find_run_export(self) -> str:
        exports = list(self.component.type.exports(self.engine))
        for export in exports:
            if _WASI_CLI_RUN.match(export):
                return export
        raise WasmLoadError(
            f"{self.setup.name}: not a WASI command component: it exports {', '.join(exports) or 'nothing'}, "
            "not wasi:cli/run@0.2.x (an HTTP component needs an http trigger in spin.toml)"
        )

    def _prepare(self) -> wasmtime_component.Linker:
        import wasmtime
        from wasmtime import component as wasmtime_component

        linker = wasmtime_component.Linker(self.engine)
        linker.add_wasip2()
        store = _new_store(self.engine, self.max_memory)
        store.set_epoch_deadline(_NO_DEADLINE)
        store.set_wasi(wasi_config(None))
        try:
            linker.instantiate(store, self.component)
        except wasmtime.WasmtimeError as exc:
            message = str(exc)
            if "matching implementation was not found" in message:
                missing = self._missing_interfaces(message)
                detail = failure_reason(exc)
                if missing:
                    raise MissingImportError(
                        f"{self.setup.name}: imports {len(missing)} interface(s) this host does not provide: "
                        f"{', '.join(missing)}",
                        tuple(missing),
                    ) from None
                raise MissingImportError(f"{self.setup.name}: cannot link: {detail}") from None
            if "exceeds memory limits" in message and self.max_memory is not None:
                raise WasmLoadError(
                    f"{self.setup.name}: needs more linear memory than the per-instance limit of "
                    f"{self.max_memory} bytes (SPIN_MAX_INSTANCE_MEMORY): {failure_reason(exc)}"
                ) from None
            raise WasmLoadError(f"{self.setup.name}: cannot instantiate: {failure_reason(exc)}") from None
        return linker

    def _missing_interfaces(self, first_error: str) -> list[str]:
        """Every imported instance the host lacks (wasmtime's link error names only the first).

        Only on the error path: take the name from the error, define that instance in a scratch linker with
        untyped stub functions and host resources for each of its exports (``add_func`` stubs are type-checked
        only when called), instantiate again, and repeat until it links or fails for another reason.
        """
        import wasmtime
        from wasmtime import component as wasmtime_component

        imports = self.component.type.imports(self.engine)
        missing: list[str] = []
        error = first_error
        for _ in range(len(imports)):
            match = _MISSING_INSTANCE.search(error)
            if match is None or match.group(1) in missing or match.group(1) not in imports:
                break
            missing.append(match.group(1))
            linker = wasmtime_component.Linker(self.engine)
            linker.allow_shadowing = True
            linker.add_wasip2()
            with linker.root() as root:
                for resource_id, name in enumerate(missing):
                    instance_type = imports[name].ty
                    if not isinstance(instance_type, wasmtime_component.ComponentInstanceType):
                        continue
                    with root.add_instance(name) as instance:
                        for export_name, export in instance_type.exports(self.engine).items():
                            item = export.ty
                            if isinstance(item, wasmtime_component.FuncType):
                                instance.add_func(export_name, _stub)
                            elif isinstance(item, wasmtime_component.ResourceType):
                                instance.add_resource(
                                    export_name, wasmtime_component.ResourceType.host(1000 + resource_id), _stub_dtor
                                )
            store = wasmtime.Store(self.engine)
            store.set_epoch_deadline(_NO_DEADLINE)
            store.set_wasi(wasi_config(None))
            try:
                linker.instantiate(store, self.component)
                break
            except wasmtime.WasmtimeError as exc:
                error = str(exc)
        return missing

    def _call(self, store: wasmtime.Store) -> int:
        instance = self.linker.instantiate(store, self.component)
        interface = instance.get_export_index(store, self.run_export)
        func_index = instance.get_export_index(store, "run", interface)
        if func_index is None:
            raise WasmLoadError(f"{self.setup.name}: {self.run_export} has no `run` function")
        run = instance.get_func(store, func_index)
        if run is None:
            raise WasmLoadError(f"{self.setup.name}: {self.run_export}#run is not a function")
        outcome = run(store)
        # result<_, _> comes back as Variant("ok") / Variant("err") in wasmtime-py 50.
        return 1 if getattr(outcome, "tag", "ok") == "err" else 0


def _stub(*_args: object) -> None:
    raise RuntimeError("stub import called")  # never: used only to probe linking


def _stub_dtor(*_args: object) -> None:
    pass


def failure_reason(exc: BaseException) -> str:
    from runtime.exits import error_reason

    return error_reason(str(exc))
