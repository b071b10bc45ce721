"""Load a Spin app whose trigger is ``http``: its routes, one executor per component, Spin's services, a listener.

Everything a user can get wrong is checked here, at task Create (in the instance process, inside the task's
network namespace), so it fails ``ctr run`` / CreateContainer with a message instead of a 500 at request time:
routes, executors, every component's imports, required variables, key-value stores, outbound host rules, and
the listen address (bound here, so "address already in use" is a Create error too).

``HttpApp.run`` (task Start) forks the worker processes that serve; they inherit the loaded executors (code pages
of the mmapped precompiled components are shared, not copied) and the bound listener.

Knobs read from the task environment, as containerd-shim-spin reads them:

* ``SPIN_HTTP_LISTEN_ADDR`` (default ``0.0.0.0:80``): where the trigger listens, inside the task's netns.
* ``SPIN_COMPONENTS_TO_RETAIN``: comma-separated component ids; only their routes are served (selective
  deployment). An id the app does not have is an error, not silently nothing.
* ``SPIN_MAX_INSTANCE_MEMORY``: bytes per instance (runtime.settings).

and by this shim only: ``SPIN_SHIM_HTTP_WORKERS`` (worker processes; default: the CPUs the task may use),
``SPIN_SHIM_REQUEST_TIMEOUT`` (seconds a guest may take per request before the client gets a 504; default 30) and
``SPIN_SHIM_ACCESS_LOG`` (a line per request on the container's stderr; runtime.http.console).

At Start, before the workers fork, the app writes Spin's start-up lines (where it listens, its routes) and its
own (workers, precompile cache hit or compile time) to the container's stderr, and a warning when nothing
outside the container can reach the listener (runtime.http.console).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import telemetry
from runtime.errors import InvalidSettingError, ManifestError, WasmLoadError
from runtime.http.console import access_log_enabled
from runtime.http.contract import ComponentConfig, Executor, ExecutorKind

if TYPE_CHECKING:
    import socket

    from runtime.files import StagedFiles
    from runtime.http.routing import Router
    from runtime.compiled import ComponentLoad
    from runtime.http.static_response import StaticResponse
    from runtime.manifest import Manifest, Trigger
    from runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

HTTP_TRIGGER = "http"
LISTEN_ADDR_ENV = "SPIN_HTTP_LISTEN_ADDR"
DEFAULT_LISTEN_ADDR = "0.0.0.0:80"
WORKERS_ENV = "SPIN_SHIM_HTTP_WORKERS"
REQUEST_TIMEOUT_ENV = "SPIN_SHIM_REQUEST_TIMEOUT"
DEFAULT_REQUEST_TIMEOUT = 30.0
#: Seconds the workers get to finish in-flight requests after SIGTERM before the supervisor stops waiting;
#: kubelet's own grace period (SIGKILL after it) is the real bound.
DRAIN_GRACE = 25.0

#: ``[[trigger.http]]`` keys this runtime understands.
_TRIGGER_KEYS = frozenset({"route", "executor", "static_response"})
_EXECUTOR_KEYS = {"http": frozenset({"type"}), "spin": frozenset({"type"}),
                  "wagi": frozenset({"type", "entrypoint", "argv"})}


@dataclass(frozen=True)
class HttpRoute:
    """One ``[[trigger.http]]``: the route (None for ``{ private = true }``) and what serves it."""

    trigger_id: str
    route: str | None
    #: The component that serves the route; for a ``static_response`` route its destination key
    #: (runtime.http.static_response), which names no component.
    component_id: str
    executor: ExecutorKind | None  # None: decided by the wasm's kind (component, or Spin 1 core module)
    wagi_entrypoint: str = "_start"
    wagi_argv: str = "${SCRIPT_NAME} ${ARGS}"
    static_response: StaticResponse | None = None


def parse_http_triggers(manifest: Manifest) -> list[HttpRoute]:
    """Every ``[[trigger.http]]`` of the manifest, validated (pure: no files, no wasm)."""
    _check_http_app_options(manifest)
    return [_parse_http_trigger(manifest, trigger) for trigger in manifest.triggers_of_type(HTTP_TRIGGER)]


def _check_http_app_options(manifest: Manifest) -> None:
    """``[application.trigger.http]`` (a version 1 manifest's ``trigger = { type = "http", base = ... }``) as
    Spin's http trigger checks it (spin crates/trigger-http ``validate_app``): only ``base`` is known, and as no
    route is prefixed with it since Spin 2, a base other than "/" is refused rather than silently ignored."""
    options = manifest.application.trigger_options.get(HTTP_TRIGGER)
    if not options:
        return
    from runtime.unknown_keys import unknown_keys_phrase

    where = f"{manifest.path}: [application.trigger.http]"
    unknown = set(options) - {"base"}
    if unknown:
        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, ('base',))} (the http trigger's only "
                            "application option is the deprecated `base`)")
    base = options.get("base", "/")
    if base != "/":
        raise ManifestError(
            f"{where}: base = {base!r}: this application is using the deprecated trigger 'base' field. The base "
            "must be prepended to each [[trigger.http]]'s 'route' (in a version 1 manifest: each "
            "[component.trigger] route), and `base` removed or set to \"/\""
        )


def _describe_value(value: Any) -> str:
    """A TOML value as the user wrote it, with its type: ``42 (an integer)``, ``true (a boolean)``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a float)"
    if isinstance(value, list):
        return f"{value!r} (an array)"
    if isinstance(value, dict):
        return f"{value!r} (a table)"
    return f"{value!r} ({type(value).__name__})"


def _parse_http_trigger(manifest: Manifest, trigger: Trigger) -> HttpRoute:
    where = f"{manifest.path}: [[trigger.http]] {trigger.id!r}"
    config = dict(trigger.config)
    unknown = set(config) - _TRIGGER_KEYS
    if unknown:
        from runtime.unknown_keys import unknown_keys_phrase

        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, (*_TRIGGER_KEYS, 'component'))} "
                            "(known: route, component, static_response, executor)")
    static = config.get("static_response")
    if trigger.component is None and static is None:
        raise ManifestError(f"{where}: names no `component` (a trigger names a component or a static_response)")
    if trigger.component is not None and static is not None:
        raise ManifestError(f"{where}: names both `component` and `static_response`; a trigger has one of them")
    route = config.get("route")
    if isinstance(route, dict):
        if route != {"private": True}:
            raise ManifestError(f"{where}: `route` must be a path string or {{ private = true }}; got {route!r}")
        route = None
    elif "route" not in config:
        raise ManifestError(f"{where}: `route` is required (a path such as \"/...\" or \"/api/...\", or "
                            "{ private = true })")
    elif not isinstance(route, str):
        raise ManifestError(f"{where}: `route` must be a string (a path such as \"/...\" or \"/api/...\") or "
                            f"{{ private = true }}; got {_describe_value(route)}")
    executor: ExecutorKind | None = None
    entrypoint, argv = "_start", "${SCRIPT_NAME} ${ARGS}"
    raw_executor = config.get("executor")
    if raw_executor is not None:
        if not isinstance(raw_executor, dict) or raw_executor.get("type") not in _EXECUTOR_KEYS:
            raise ManifestError(
                f"{where}: `executor` must be {{ type = \"spin\" }}, {{ type = \"http\" }} or {{ type = \"wagi\" }}; "
                f"got {raw_executor!r}"
            )
        kind = raw_executor["type"]
        extra = set(raw_executor) - _EXECUTOR_KEYS[kind]
        if extra:
            from runtime.unknown_keys import keys_with_suggestions

            raise ManifestError(f"{where}: executor {kind!r} has no option(s) "
                                f"{keys_with_suggestions(extra, _EXECUTOR_KEYS[kind])}")
        if kind == "wagi":
            executor = "wagi"
            entrypoint = raw_executor.get("entrypoint", entrypoint)
            argv = raw_executor.get("argv", argv)
            if not isinstance(entrypoint, str) or not isinstance(argv, str):
                raise ManifestError(f"{where}: wagi `entrypoint` and `argv` must be strings")
    if static is not None:
        from runtime.http.static_response import parse_static_response, static_destination

        return HttpRoute(trigger.id, route, static_destination(trigger.id), None,
                         static_response=parse_static_response(static, where))
    assert trigger.component is not None
    return HttpRoute(trigger.id, route, trigger.component, executor, entrypoint, argv)


def worker_count(env: Mapping[str, str], cpus: float | None = None) -> int:
    """SPIN_SHIM_HTTP_WORKERS, else one per CPU the container may use (runtime.http.workers)."""
    raw = env.get(WORKERS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 64:
            raise InvalidSettingError(f"{WORKERS_ENV}={raw!r} must be a number of processes from 1 to 64")
        return int(raw)
    from runtime.http.workers import default_worker_count

    return default_worker_count(cpus)


def request_timeout(env: Mapping[str, str]) -> float:
    raw = env.get(REQUEST_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REQUEST_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= 86400):
        raise InvalidSettingError(f"{REQUEST_TIMEOUT_ENV}={raw!r} must be a number of seconds (e.g. 30 or 0.5)")
    return seconds


# ---------------------------------------------------------------------------------------------------- the app


class HttpApp:
    """A loaded http app: validated executors and a bound listener; ``run`` serves until ``interrupt``."""

    #: The shim runs this app's ``run`` on its main thread: it forks workers and waits for them.
    serves_in_main_thread = True

    def __init__(self, *, description: str, loads: tuple[ComponentLoad, ...], staged: list[StagedFiles],
                 make_server: Callable[[], Any], listener: socket.socket, workers: int,
                 startup_lines: tuple[str, ...] = ()) -> None:
        self.description = description
        #: What ``run`` writes to the container's stderr before it serves (runtime.http.console).
        self.startup_lines = startup_lines
        self.loads = loads
        self._staged = staged
        self._make_server = make_server
        self._listener = listener
        self._workers = workers
        self._pool: Any = None
        self._interrupted = False

    def run(self) -> int:
        """Serve until interrupted (exit 0 after draining) or until a worker dies (128+signal, or 1)."""
        from runtime.http.workers import InlineServer, WorkerPool

        if self._interrupted:
            return 0
        if self.startup_lines:
            from runtime.exits import write_stderr_line

            write_stderr_line("\n".join(self.startup_lines))
        try:
            if self._workers == 1:
                self._pool = InlineServer(self._listener, self._make_server)
            else:
                self._pool = WorkerPool(self._workers, self._listener, self._make_server)
            return self._pool.run()
        finally:
            self.close()

    def interrupt(self) -> None:
        """SIGTERM: stop accepting, let in-flight requests finish, then exit 0. Safe from a signal handler."""
        self._interrupted = True
        if self._pool is not None:
            self._pool.terminate(DRAIN_GRACE)

    def close(self) -> None:
        for staged in self._staged:
            staged.cleanup()
        try:
            self._listener.close()
        except OSError:
            pass

    def __enter__(self) -> HttpApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def load_http_app(manifest: Manifest, args: list[str], env: dict[str, str],
                  settings: RuntimeSettings, work_dir: Path) -> HttpApp:
    """Validate and load every component the app's http routes use; bind the listener. Raises AppError."""
    from runtime.files import stage_component_files, sweep_stale_staging
    from runtime.http.listen import bind_listener
    from runtime.spin.services import SpinServices

    routes = parse_http_triggers(manifest)  # SPIN_COMPONENTS_TO_RETAIN applied: runtime.loader.retain_components
    router = _build_router(manifest, routes)
    workers = worker_count(env, settings.cpus)
    timeout = request_timeout(env)
    access_log = access_log_enabled(env)
    # OpenTelemetry (runtime.telemetry): read and prepared before the components are linked; None when off.
    telemetry_config = telemetry.at_load(env)
    services = SpinServices.build(manifest, env, work_dir=work_dir,
                                  component_ids=sorted({route.component_id for route in routes
                                                        if route.static_response is None}),
                                  private_dir=settings.cache_dir)

    sweep_stale_staging(settings.cache_dir)
    staged: list[StagedFiles] = []
    executors: dict[str, Executor] = {}
    loads: list[ComponentLoad] = []
    listener = None
    try:
        for component_id, route in _components_in_route_order(routes).items():
            component = manifest.components[component_id]
            files = stage_component_files(manifest.app_dir, manifest.path, component, settings.cache_dir)
            staged.append(files)
            executor, load = _load_executor(manifest, route, files, env, settings, services)
            executors[component_id] = executor
            loads.append(load)
        executors.update(_static_responders(routes))
        listen_addr = env.get(LISTEN_ADDR_ENV, "").strip() or DEFAULT_LISTEN_ADDR
        listener = bind_listener(listen_addr)
    except BaseException:
        for files in staged:
            files.cleanup()
        raise

    def make_server() -> Any:
        """Runs in each worker after fork (the executors start their epoch tickers there on first use)."""
        from runtime.http.chaining import LocalApp, install
        from runtime.http.headers import format_addr
        from runtime.http.server import HttpServer, ServerOptions
        from runtime.http.wellknown import AppInfo

        info = AppInfo(name=manifest.application.name, version=manifest.application.version)
        bound = listener.getsockname()
        authority = format_addr(bound[0], bound[1]) if isinstance(bound, tuple) else "localhost"
        # Self requests and *.spin.internal calls of the guests in this worker (runtime.http.chaining).
        install(LocalApp(router, executors, authority=authority, request_timeout=timeout, app_info=info))
        server = HttpServer(router, executors, ServerOptions(request_timeout=timeout, app_info=info,
                                                             access_log=access_log))
        return telemetry.serving(telemetry_config, server, manifest.application.name)

    names = ", ".join(repr(c) for c in _components_in_route_order(routes)) or "none"
    statics = sum(route.static_response is not None for route in routes)
    description = (f"Spin app {manifest.application.name!r} (http trigger on {listen_addr}, "
                   f"component(s) {names}{f', {statics} static response(s)' if statics else ''}, "
                   f"{workers} worker(s))")
    return HttpApp(description=description, loads=tuple(loads), staged=staged, make_server=make_server,
                   listener=listener, workers=workers,
                   startup_lines=_startup_lines(router, routes, listener, workers, tuple(loads)))


def _startup_lines(router: Router, routes: list[HttpRoute], listener: socket.socket, workers: int,
                   loads: tuple[ComponentLoad, ...]) -> tuple[str, ...]:
    """Spin's start-up text, the shim's summary line, and the unreachable-listener warning (runtime.http.console).

    Computed at Create, in the task's network namespace and before seccomp applies (the interface probe uses
    netlink); written at Start.
    """
    from runtime.http.console import (base_url, interface_names, startup_lines, trigger_summary,
                                      unreachable_warning)
    from runtime.http.headers import format_addr

    name = listener.getsockname()
    host, bound = (name[0], format_addr(name[0], name[1])) if isinstance(name, tuple) else (str(name), str(name))
    statics = {route.component_id: route.trigger_id for route in routes if route.static_response is not None}
    lines = [*startup_lines(base_url("http", bound), router.listing, statics),
             trigger_summary(workers, loads, len(statics))]
    warning = unreachable_warning(host, bound, interface_names())
    if warning is not None:
        lines.append(warning)
    return tuple(lines)


def _build_router(manifest: Manifest, routes: list[HttpRoute]) -> Router:
    """Spin's router over the retained routes; a route Spin rejects is a RouteError (a ManifestError)."""
    from runtime.http.routing import RouteError, Router

    try:
        router, warnings = Router.build([(route.route, route.component_id) for route in routes])
    except RouteError as exc:
        raise RouteError(f"{manifest.path}: [[trigger.http]]: {exc}") from None
    for warning in warnings:
        log.warning("%s: %s", manifest.path, warning)
    return router


def _static_responders(routes: list[HttpRoute]) -> dict[str, Executor]:
    """The static routes' responders, under their destination keys (runtime.http.static_response)."""
    from runtime.http.static_response import StaticResponder

    return {route.component_id: StaticResponder(route.component_id, route.static_response)
            for route in routes if route.static_response is not None}


def _components_in_route_order(routes: list[HttpRoute]) -> dict[str, HttpRoute]:
    """Each component once, with the first route that names it (its executor settings); static routes have none."""
    first: dict[str, HttpRoute] = {}
    for route in routes:
        if route.static_response is None:
            first.setdefault(route.component_id, route)
    return first


def _load_executor(manifest: Manifest, route: HttpRoute, files: StagedFiles, env: Mapping[str, str],
                   settings: RuntimeSettings, services: Any) -> tuple[Executor, ComponentLoad]:
    from runtime.compiled import compile_wasm
    from runtime.manifest import LocalSource
    from runtime.paths import resolve_in_root
    from runtime.wasm_binary import HTTP_HANDLER_EXPORT, WasmKind

    component = manifest.components[route.component_id]
    assert isinstance(component.source, LocalSource)  # load_manifest rejected the others
    wasm_path = resolve_in_root(manifest.app_dir, component.source.path)
    what = f"component {component.id!r} ({component.source.path})"
    compiled, load, engine = compile_wasm(wasm_path, what, component.id, settings,
                                          exports=None if route.executor == "wagi" else HTTP_HANDLER_EXPORT)

    executor_kind: ExecutorKind
    if load.kind is WasmKind.COMPONENT:
        if route.executor == "wagi":
            raise WasmLoadError(f"{what}: is a component; the wagi executor runs WASI p1 core modules. "
                                "Remove `executor = { type = \"wagi\" }` from its [[trigger.http]]")
        executor_kind = "component"
    elif route.executor == "wagi":
        executor_kind = "wagi"
    else:
        from runtime.executors.spin1 import is_spin1_module

        if not is_spin1_module(compiled):
            raise WasmLoadError(
                f"{what}: is a WASI p1 core module without Spin 1's `handle-http-request` export; if it is a "
                "CGI program, add `executor = { type = \"wagi\" }` to its [[trigger.http]]"
            )
        executor_kind = "spin1"

    config = ComponentConfig(
        id=component.id,
        wasm_path=wasm_path,
        executor=executor_kind,
        environment={**component.environment, **env},
        preopens=files.preopens,
        allowed_outbound_hosts=component.allowed_outbound_hosts,
        key_value_stores=component.key_value_stores,
        variables=dict(component.variables),
        max_instance_memory=settings.max_instance_memory,
        wagi_entrypoint=route.wagi_entrypoint,
        wagi_argv=route.wagi_argv,
        services=services,
    )
    started = time.perf_counter()
    executor: Executor
    if executor_kind == "component":
        from runtime.host.executor import ComponentExecutor

        executor = ComponentExecutor(config, compiled, engine)
    elif executor_kind == "wagi":
        from runtime.executors.wagi import load_wagi

        executor = load_wagi(config, compiled, engine, stdout_dir=settings.scratch_dir)
    else:
        from runtime.executors.spin1 import load_spin1

        executor = load_spin1(config, compiled, engine)
    log.debug("%s: %s executor ready in %.1f ms", what, executor_kind, (time.perf_counter() - started) * 1000)
    return executor, load


__all__ = ["HttpApp", "HttpRoute", "load_http_app", "parse_http_triggers"]
