"""Load a Spin app's ``[[trigger.redis]]`` part, and serve it: one subscription thread per Redis server.

``load_redis_app`` (task Create) checks everything a user can get wrong, as runtime.http.trigger does for routes:
the triggers (runtime.redis_trigger.config: channel, address, templates), every component's wasm, its imports and
its ``fermyon:spin/inbound-redis`` export, and the app's Spin services (variables, key-value stores, SQLite,
outbound hosts), so a Redis component reaches exactly what an HTTP component of the same app would.

``RedisApp.run`` (task Start) runs in the instance process itself (no worker processes: messages of one
subscription are handled one after another, as in Spin, so one process is enough). Each subscription runs in a
thread and the main thread waits on a pipe, so SIGTERM is taken at once even while a guest runs: ``interrupt``
asks the subscriptions to stop, the message in flight finishes (within ``DRAIN_GRACE``), and run returns 0.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.exits import write_stderr_line
from runtime.redis_trigger.config import (
    REDIS_TRIGGER,
    RedisTriggerConfig,
    Subscription,
    group_subscriptions,
    parse_redis_triggers,
)

if TYPE_CHECKING:
    from runtime.compiled import ComponentLoad
    from runtime.files import StagedFiles
    from runtime.manifest import Manifest
    from runtime.redis_trigger.executor import RedisExecutor
    from runtime.settings import RuntimeSettings
    from runtime.spin.services import SpinServices

log = logging.getLogger(__name__)

#: Seconds the message in flight gets after SIGTERM (the same as the HTTP trigger's drain); kubelet's grace period
#: (SIGKILL after it) is the real bound.
DRAIN_GRACE = 25.0
#: run's exit status when a handler was still running at the end of the grace (128 + SIGTERM, as for a command).
EXIT_NOT_DRAINED = 143


class RedisApp:
    """Loaded Redis triggers: validated executors and their subscriptions; ``run`` serves until ``interrupt``."""

    #: The shim calls ``run`` on its main thread (which takes SIGTERM); the guests run in subscription threads.
    serves_in_main_thread = True

    def __init__(self, *, description: str, loads: tuple[ComponentLoad, ...], staged: list[StagedFiles],
                 subscriptions: list[Subscription], executors: Mapping[str, RedisExecutor],
                 drain_grace: float = DRAIN_GRACE) -> None:
        self.description = description
        self.loads = loads
        self.subscriptions = subscriptions
        self.executors = executors
        self._staged = staged
        self._drain_grace = drain_grace
        self._interrupted = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.subscribers: list[object] = []

    def run(self) -> int:
        """Subscribe and serve until interrupted; 0 when every handler finished, EXIT_NOT_DRAINED otherwise."""
        from runtime.redis_trigger.subscriber import Subscriber

        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            for index, subscription in enumerate(self.subscriptions):
                handlers = {cid: self.executors[cid].handle_message for ids in subscription.channels.values()
                            for cid in ids}
                subscriber = Subscriber(subscription, handlers, stop)
                self.subscribers.append(subscriber)
                thread = threading.Thread(target=_serve, args=(subscriber,), name=f"redis-subscription-{index}",
                                          daemon=True)
                threads.append(thread)
            if not self._interrupted:
                for thread in threads:
                    thread.start()
            while not self._interrupted and all(t.is_alive() for t in threads if t.ident is not None):
                select.select([self._wake_r], [], [], 1.0)
            stop.set()
            if not self._interrupted:  # a subscription thread ended by itself: a bug (logged by _serve)
                return 1
            deadline = time.monotonic() + self._drain_grace
            for thread in threads:
                if thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                write_stderr_line(f"spin: redis trigger: a message handler was still running {self._drain_grace:g} s"
                                  " after SIGTERM; exiting without it")
                return EXIT_NOT_DRAINED
            return 0
        finally:
            self.close()

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

    def __enter__(self) -> RedisApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _serve(subscriber: object) -> None:
    try:
        subscriber.run()  # type: ignore[attr-defined]
    except BaseException as exc:  # noqa: BLE001 - say why the subscription ended; run() then exits 1
        write_stderr_line(f"spin: redis trigger: subscription failed: {type(exc).__name__}: {exc}")
        raise


def redis_triggers(manifest: Manifest, services: SpinServices) -> list[RedisTriggerConfig]:
    """The app's ``[[trigger.redis]]``, their templates resolved with the app's variable providers."""
    from runtime.spin.variables import VariableError

    def value_of(name: str) -> str:
        try:
            return services.variables.app_value(name)
        except VariableError as exc:
            raise LookupError(exc.message) from None

    return parse_redis_triggers(manifest, value_of)


def load_redis_app(manifest: Manifest, args: list[str], env: dict[str, str], settings: RuntimeSettings, *,
                   work_dir: Path) -> RedisApp:
    """Validate and load every component the app's Redis triggers name. Raises AppError.

    ``args`` (the task's args) mean nothing to a Redis component, as in Spin; taken for the loaders' one shape.
    """
    from runtime.files import stage_component_files, sweep_stale_staging
    from runtime.spin.services import SpinServices

    component_ids = sorted({t.component for t in manifest.triggers_of_type(REDIS_TRIGGER) if t.component})
    services = SpinServices.build(manifest, env, work_dir=work_dir, component_ids=component_ids,
                                  private_dir=settings.cache_dir)
    triggers = redis_triggers(manifest, services)
    subscriptions = group_subscriptions(triggers)

    sweep_stale_staging(settings.cache_dir)
    staged: list[StagedFiles] = []
    executors: dict[str, RedisExecutor] = {}
    loads: list[ComponentLoad] = []
    try:
        for component_id in dict.fromkeys(t.component_id for t in triggers):
            component = manifest.components[component_id]
            files = stage_component_files(manifest.app_dir, manifest.path, component, settings.cache_dir)
            staged.append(files)
            executor, load = _load_executor(manifest, component_id, files, env, settings, services)
            executors[component_id] = executor
            loads.append(load)
    except BaseException:
        for files in staged:
            files.cleanup()
        raise

    channels = "; ".join(f"{s.shown_address}: {', '.join(repr(c) for c in s.channels)}" for s in subscriptions)
    description = (f"Spin app {manifest.application.name!r} (redis trigger, component(s) "
                   f"{', '.join(repr(c) for c in executors)}; {channels})")
    return RedisApp(description=description, loads=tuple(loads), staged=staged, subscriptions=subscriptions,
                    executors=executors)


def _load_executor(manifest: Manifest, component_id: str, files: StagedFiles, env: Mapping[str, str],
                   settings: RuntimeSettings, services: SpinServices) -> tuple[RedisExecutor, ComponentLoad]:
    from runtime.compiled import compile_wasm
    from runtime.errors import WasmLoadError
    from runtime.http.contract import ComponentConfig
    from runtime.manifest import LocalSource
    from runtime.paths import resolve_in_root
    from runtime.redis_trigger.executor import RedisExecutor
    from runtime.wasm_binary import WasmKind

    component = manifest.components[component_id]
    assert isinstance(component.source, LocalSource)  # load_manifest rejected the others
    wasm_path = resolve_in_root(manifest.app_dir, component.source.path)
    what = f"component {component_id!r} ({component.source.path})"
    compiled, load, engine = compile_wasm(wasm_path, what, component_id, settings)
    if load.kind is not WasmKind.COMPONENT:
        raise WasmLoadError(f"{what}: is a WASI p1 core module; a [[trigger.redis]] component must be a component "
                            "exporting fermyon:spin/inbound-redis (Spin 1 Redis modules are not supported)")
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
    executor = RedisExecutor(config, compiled, engine)  # type: ignore[arg-type]
    log.debug("%s: redis executor ready in %.1f ms", what, (time.perf_counter() - started) * 1000)
    return executor, load


__all__ = ["DRAIN_GRACE", "RedisApp", "load_redis_app", "redis_triggers"]
