"""What Spin's message triggers (Redis, MQTT) share: loading their components, calling a handler export once per
message, and serving their subscriptions until SIGTERM.

Each trigger keeps its own config, subscriber and export (runtime.redis_trigger, runtime.mqtt); this module is the
part that does not depend on where messages come from:

* ``load_trigger_components``: every component a trigger names, staged, compiled and made into that trigger's
  executor with the same ComponentConfig an HTTP component gets, so it reaches exactly the app's Spin services;
* ``MessageExecutor``: a fresh Store and instance per message, the handler called with the message's arguments,
  its ``result<_, error>`` (or trap, host error, memory limit, interrupt) turned into one log line or None;
* ``MessageTriggerApp``: the app object the shim runs (``run``/``interrupt``/``close``). It runs in the instance
  process itself (messages of one subscription are handled one after another, as in Spin, so one process is
  enough): each subscriber in a thread, the main thread waiting on a pipe so SIGTERM is taken at once even while a
  guest runs; ``interrupt`` asks the subscribers to stop, the message in flight finishes within ``DRAIN_GRACE``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from runtime.exits import write_stderr_line
from runtime.log_time import utc_timestamp

if TYPE_CHECKING:
    from runtime.compiled import ComponentLoad
    from runtime.files import StagedFiles
    from runtime.manifest import Manifest
    from runtime.settings import RuntimeSettings
    from runtime.spin.services import SpinServices
    from runtime.wasm_binary import ExportRequirement

log = logging.getLogger(__name__)

#: Seconds the message in flight gets after SIGTERM (the same as the HTTP trigger's drain); kubelet's grace period
#: (SIGKILL after it) is the real bound.
DRAIN_GRACE = 25.0
#: run's exit status when a handler was still running at the end of the grace (128 + SIGTERM, as for a command).
EXIT_NOT_DRAINED = 143
#: A message handler runs without a deadline, as in Spin (it has none); the epoch deadline still has to be finite.
NO_DEADLINE_SECONDS = 10 * 365 * 86400.0

_E = TypeVar("_E")


@dataclass(frozen=True)
class MessageOutcome:
    """How one call of the handler ended: ``error`` is None on success, else the line for the log."""

    component_id: str
    error: str | None = None
    seconds: float = 0.0


def message_failure_line(error: str, source: str, now: float | None = None) -> str:
    """The container-log line of one message whose handler failed: when (as the HTTP trigger's request failure
    lines), what, and which message (``source``: e.g. ``Redis channel 'orders' of redis://host:6379``)."""
    return f"{utc_timestamp(now)} {error} (message on {source}); the subscription goes on"


class Subscriber(Protocol):
    def run(self) -> None: ...


def variable_lookup(services: SpinServices) -> Callable[[str], str]:
    """The app-level variable resolver the trigger configs' templates use (LookupError for an unknown name)."""
    from runtime.spin.variables import VariableError

    def value_of(name: str) -> str:
        try:
            return services.variables.app_value(name)
        except VariableError as exc:
            raise LookupError(exc.message) from None

    return value_of


def trigger_services(manifest: Manifest, trigger_type: str, env: Mapping[str, str], settings: RuntimeSettings,
                     work_dir: Any) -> SpinServices:
    """The app's Spin services, checked for the components the trigger type names."""
    from runtime.spin.services import SpinServices

    component_ids = sorted({t.component for t in manifest.triggers_of_type(trigger_type) if t.component})
    return SpinServices.build(manifest, env, work_dir=work_dir, component_ids=component_ids,
                              private_dir=settings.cache_dir)


def load_trigger_components(
    manifest: Manifest, component_ids: Collection[str], env: Mapping[str, str], settings: RuntimeSettings,
    services: SpinServices, *, make_executor: Callable[[Any, Any, Any], _E], core_module_refusal: str,
    exports: ExportRequirement | None = None,
) -> tuple[dict[str, _E], tuple[ComponentLoad, ...], list[StagedFiles]]:
    """Stage, compile and load each component (in the given order). ``core_module_refusal`` is what a WASI p1 core
    module hears (these triggers call component exports); ``exports``, what the trigger calls, is checked before a
    compile (runtime.precompile). Raises AppError; nothing staged is left behind then."""
    from runtime.files import stage_component_files, sweep_stale_staging

    sweep_stale_staging(settings.cache_dir)
    staged: list[StagedFiles] = []
    executors: dict[str, _E] = {}
    loads: list[ComponentLoad] = []
    try:
        for component_id in dict.fromkeys(component_ids):
            files = stage_component_files(manifest.app_dir, manifest.path, manifest.components[component_id],
                                          settings.cache_dir)
            staged.append(files)
            executors[component_id], load = _load_executor(manifest, component_id, files, env, settings, services,
                                                           make_executor, core_module_refusal, exports)
            loads.append(load)
    except BaseException:
        for files in staged:
            files.cleanup()
        raise
    return executors, tuple(loads), staged


def _load_executor(manifest: Manifest, component_id: str, files: StagedFiles, env: Mapping[str, str],
                   settings: RuntimeSettings, services: SpinServices, make_executor: Callable[[Any, Any, Any], _E],
                   core_module_refusal: str, exports: ExportRequirement | None) -> tuple[_E, ComponentLoad]:
    from runtime.compiled import compile_wasm
    from runtime.errors import WasmLoadError
    from runtime.http.contract import ComponentConfig
    from runtime.manifest import LocalSource
    from runtime.paths import resolve_in_root
    from runtime.wasm_binary import WasmKind

    component = manifest.components[component_id]
    assert isinstance(component.source, LocalSource)  # load_manifest rejected the others
    wasm_path = resolve_in_root(manifest.app_dir, component.source.path)
    what = f"component {component_id!r} ({component.source.path})"
    compiled, load, engine = compile_wasm(wasm_path, what, component_id, settings, exports=exports)
    if load.kind is not WasmKind.COMPONENT:
        raise WasmLoadError(f"{what}: is a WASI p1 core module; {core_module_refusal}")
    config = ComponentConfig(
        id=component_id,
        wasm_path=wasm_path,
        executor="component",
        environment={**component.environment, **env},
        preopens=files.preopens,
        allowed_outbound_hosts=component.allowed_outbound_hosts,
        key_value_stores=component.key_value_stores,
        variables=dict(component.variables),
        max_instance_memory=settings.max_instance_memory,
        services=services,
    )
    started = time.perf_counter()
    executor = make_executor(config, compiled, engine)
    log.debug("%s: executor ready in %.1f ms", what, (time.perf_counter() - started) * 1000)
    return executor, load


class MessageExecutor:
    """The per-message call of a trigger's handler export, mixed into a ComponentExecutor subclass that finds the
    export (``_find_handle``; its index is ``self.handle_index``)."""

    def call_handler(self, arguments: Sequence[object], what: str) -> MessageOutcome:
        """Run the guest for one message; never raises for what the guest did (the outcome says it)."""
        started = time.monotonic()
        with self.ticker.running():  # type: ignore[attr-defined]
            error = self._call(arguments, what)
        return MessageOutcome(self.component_id, error, time.monotonic() - started)  # type: ignore[attr-defined]

    def _call(self, arguments: Sequence[object], what: str) -> str | None:
        import wasmtime

        from runtime.errors import WasmLoadError
        from runtime.exits import error_reason, failure_line
        from runtime.host.context import RequestContext, bound
        from runtime.host.linking import describe_exception
        from runtime.host.traps import GuestExit

        executor: Any = self
        cid = executor.component_id
        ctx = RequestContext(executor.host, deadline=time.monotonic() + NO_DEADLINE_SECONDS)
        store = wasmtime.Store(executor.engine)
        if executor.config.max_instance_memory is not None:
            store.set_limits(memory_size=executor.config.max_instance_memory)
        store.set_epoch_deadline(executor.ticker.ticks_for(NO_DEADLINE_SECONDS))
        result: object = None
        failure: Exception | None = None
        with bound(ctx):
            try:
                instance = executor.linker.instantiate(store, executor.component)
                func = instance.get_func(store, executor.handle_index)
                if func is None:
                    raise WasmLoadError(f"{cid}: {what} is not a function")
                result = func(store, *arguments)
            except Exception as exc:  # noqa: BLE001 - traps, host errors and conversion errors alike
                failure = exc
            finally:
                executor._end_request(ctx, store)
        host_failure = ctx.host_failure
        if isinstance(host_failure, GuestExit) and host_failure.status == 0:
            return None  # exit(0) from inside the handler: it finished
        if host_failure is not None:
            return f"spin: {cid}: error: {describe_exception(host_failure)}"
        if failure is not None:
            message = str(failure)
            if "exceeds memory limits" in message or "memory limit" in message:
                return (f"spin: {cid}: error: the instance hit its memory limit "
                        f"({executor.config.max_instance_memory} bytes)")
            if "interrupt" in error_reason(message):
                return f"spin: {cid}: error: the handler was interrupted"
            return failure_line(cid, message)
        error = error_case(result)
        return None if error is None else f"spin: {cid}: error: the handler returned error({error})"


def error_case(result: object) -> str | None:
    """The ``error`` of a handler's ``result<_, error>``, None for ok.

    wasmtime-py spells this result ``Variant("ok")`` / ``Variant("err", payload)`` or bare (None / the payload)
    depending on how the cases' Python types overlap (runtime.host.values); both are read here. A payload that is
    itself a variant (``error::other(string)``) is shown as ``case: text``.
    """
    tag = getattr(result, "tag", None)
    if tag is not None:
        if tag == "ok":
            return None
        payload = getattr(result, "payload", None)
        if tag == "err" and payload is not None:
            return error_case_text(payload)
        return str(payload or tag)
    if result is None:
        return None
    return error_case_text(result)


def error_case_text(payload: object) -> str:
    inner_tag = getattr(payload, "tag", None)
    if inner_tag is not None:
        inner = getattr(payload, "payload", None)
        return inner_tag if inner is None else f"{inner_tag}: {inner}"
    return str(payload)


class MessageTriggerApp:
    """Loaded message triggers: their subscribers, run in threads until ``interrupt``. ``make_subscribers`` is
    called in ``run`` with the stop event and returns the subscribers (one thread each)."""

    #: The shim calls ``run`` on its main thread (which takes SIGTERM); the guests run in subscriber threads.
    serves_in_main_thread = True

    def __init__(self, *, description: str, loads: tuple[ComponentLoad, ...], staged: list[StagedFiles],
                 trigger: str, make_subscribers: Callable[[threading.Event], list[Subscriber]],
                 drain_grace: float = DRAIN_GRACE) -> None:
        self.description = description
        self.loads = loads
        self._trigger = trigger
        self._make_subscribers = make_subscribers
        self._staged = staged
        self._drain_grace = drain_grace
        self._interrupted = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.subscribers: list[Subscriber] = []

    def run(self) -> int:
        """Subscribe and serve until interrupted; 0 when every handler finished, EXIT_NOT_DRAINED otherwise."""
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            self.subscribers[:] = self._make_subscribers(stop)
            for index, subscriber in enumerate(self.subscribers):
                threads.append(threading.Thread(target=self._serve, args=(subscriber,), daemon=True,
                                                name=f"{self._trigger}-subscription-{index}"))
            if not self._interrupted:
                for thread in threads:
                    thread.start()
            while not self._interrupted and all(t.is_alive() for t in threads if t.ident is not None):
                select.select([self._wake_r], [], [], 1.0)
            stop.set()
            if not self._interrupted:  # a subscriber thread ended by itself: a bug (logged by _serve)
                return 1
            deadline = time.monotonic() + self._drain_grace
            for thread in threads:
                if thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in threads):
                write_stderr_line(f"spin: {self._trigger} trigger: a message handler was still running "
                                  f"{self._drain_grace:g} s after SIGTERM; exiting without it")
                return EXIT_NOT_DRAINED
            return 0
        finally:
            self.close()

    def _serve(self, subscriber: Subscriber) -> None:
        try:
            subscriber.run()
        except BaseException as exc:  # noqa: BLE001 - say why the subscription ended; run() then exits 1
            write_stderr_line(f"spin: {self._trigger} trigger: subscription failed: {type(exc).__name__}: {exc}")
            raise

    def interrupt(self) -> None:
        """SIGTERM: stop reading messages, let the ones in flight finish, then run returns 0. Signal-safe."""
        self._interrupted = True
        wake = self._wake_w
        if wake < 0:  # closed: run has returned, and the number may belong to another file by now
            return
        try:
            os.write(wake, b"t")
        except OSError:  # full: a wakeup is pending anyway
            pass

    def close(self) -> None:
        """Remove the staged files and the wake pipe. Idempotent; run calls it when it returns."""
        for staged in self._staged:
            staged.cleanup()
        self._staged = []
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1
        for fd in (wake_r, wake_w):
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> MessageTriggerApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["DRAIN_GRACE", "EXIT_NOT_DRAINED", "MessageExecutor", "MessageOutcome", "MessageTriggerApp",
           "error_case", "load_trigger_components", "trigger_services", "variable_lookup"]
