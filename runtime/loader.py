"""Find the app in a directory, validate all of it, load its wasm (precompiled), and hand back a runnable app.

The shim calls ``load_app`` at task Create, so every mistake a user can make (no app, bad spin.toml, unsupported
trigger, corrupt wasm, missing imports, files outside the app, a bad SPIN_MAX_INSTANCE_MEMORY) raises an AppError
there with a message meant for them; ``LoadedApp.run`` at task Start only runs. Resolution mirrors
containerd-shim-spin (``/spin.toml`` in the rootfs: its ``SPIN_MANIFEST_FILE_PATH``) with runwasi's fallback
for plain images (``args[0]`` is the wasm file, as runwasi's sandbox context splits it).

Argument and environment rules (decided here; the shim passes the OCI spec's process.args and process.env):

* Spin app: the guest's argv is ``[<component id>, *args]`` (Spin's command trigger puts the component id in
  argv[0]), where ``args`` drops args[0] when it is ``/`` (the conventional image command for Spin apps) or a
  path to spin.toml, since those name the app, not an argument. Env = the component's ``environment`` overlaid
  by the task env: the pod spec is the deploy-time override of what the image baked in, as ``docker run -e``
  overrides an image's ENV.
* Bare ``.wasm``: argv is ``args`` unchanged (args[0] is argv[0], like execve), env is exactly the task env,
  and the guest gets no files at all.

``import runtime.loader`` does not import wasmtime (about 20 ms): that happens on the first load_app call.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from runtime.compiled import ComponentLoad, compile_wasm, forget_mapped
from runtime.errors import AppError, AppNotFoundError, InvalidSettingError, ManifestError, UnsupportedTriggerError
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from runtime.files import StagedFiles
    from runtime.guest import ComponentCommand, CoreCommand, GuestSetup
    from runtime.http.trigger import HttpApp
    from runtime.interrupt import Interrupter
    from runtime.manifest import Manifest

# The manifest model, file staging, the cache and wasmtime are imported by load_app, not here: the shim imports
# this module in processes that never load an app, and they cost ~35 ms of imports (tomllib, dataclasses,
# tempfile, logging) before wasmtime's own ~25 ms. Measured with `python -X importtime -c "import runtime.loader"`.
MANIFEST_FILE_NAME = "spin.toml"  # == runtime.manifest.MANIFEST_FILE_NAME (kept here to keep this import light)

COMMAND_TRIGGER = "command"
HTTP_TRIGGER = "http"  # == runtime.http.trigger.HTTP_TRIGGER
REDIS_TRIGGER = "redis"  # == runtime.redis_trigger.config.REDIS_TRIGGER
MQTT_TRIGGER = "mqtt"  # == runtime.mqtt.trigger_config.MQTT_TRIGGER
COMPONENTS_TO_RETAIN_ENV = "SPIN_COMPONENTS_TO_RETAIN"
#: The trigger types that serve until stopped (``_load_served`` loads each). An app may mix them
#: (runtime.multi_trigger runs one process per type), so adding a trigger type is an entry here and a branch in
#: ``_load_served`` calling a loader of ``load_http_app``'s shape.
_SERVED_TRIGGERS = (HTTP_TRIGGER, REDIS_TRIGGER, MQTT_TRIGGER)
#: Spin trigger types this runtime knows of but does not run; anything else is "unknown".
_UNSUPPORTED_TRIGGERS = {
    "sqs": "the sqs trigger is not supported by this shim",
    "cron": "the cron trigger is not supported by this shim",
}


class LoadedApp:
    """A validated, compiled app, ready to run once. Created by ``load_app``; not constructed directly."""

    def __init__(
        self,
        command: CoreCommand | ComponentCommand,
        interrupter: Interrupter,
        staged: StagedFiles,
        loads: tuple[ComponentLoad, ...],
        description: str,
    ) -> None:
        self._command = command
        self._interrupter = interrupter
        self._staged = staged
        self._run_lock = threading.Lock()
        self._ran = False
        #: One entry per wasm loaded, in load order.
        self.loads = loads
        #: e.g. "Spin app 'command-hello' (command trigger, component 'hello')" or "hello.wasm (WASI p1 module)".
        self.description = description

    @property
    def guest(self) -> GuestSetup:
        """What the guest will see (argv, env, preopens): for the shim's debug log and for tests."""
        return self._command.setup

    def run(self) -> int:
        """Run the guest in the calling thread until it ends; return its exit code (see runtime.exits).

        Blocking, and once per LoadedApp (a task is started once). Guest output goes to fds 1/2 directly.
        Staged files are removed when it returns.
        """
        with self._run_lock:
            if self._ran:
                raise RuntimeError("LoadedApp.run() may be called only once")
            self._ran = True
        try:
            return self._command.run(self._interrupter)
        finally:
            self.close()

    def interrupt(self) -> None:
        """Thread-safe: make the running guest trap at its next epoch check; run() then returns 143.

        Called before run(), run() returns 143 without starting the guest. A guest blocked inside one host call
        (e.g. a long sleep) only stops when that call returns: the shim's SIGKILL handles that case.
        """
        self._interrupter.request()

    def close(self) -> None:
        """Release what load_app set up on disk (staged files). Idempotent; run() calls it when done."""
        self._staged.cleanup()

    def __enter__(self) -> LoadedApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def load_app(root_dir: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings) -> LoadedApp | HttpApp:
    """Find, validate and load the app in ``root_dir`` (the container rootfs). Raises AppError subclasses.

    Messages name files as the image has them (``/spin.toml``), not where the rootfs happens to
    be mounted on the node: the user reading them knows the image, not the bundle path.
    """
    root_dir = Path(root_dir)
    forget_mapped()  # components of this app share mappings; the app holds them after, not the memo
    try:
        return _load_app(root_dir, args, env, settings)
    except AppError as exc:
        exc.args = (_image_relative(str(exc), root_dir),) + exc.args[1:]
        raise
    finally:
        forget_mapped()


def _image_relative(message: str, root_dir: Path) -> str:
    root = str(root_dir).rstrip("/")
    return message.replace(root + "/", "/").replace(root, "/") if root else message


def _load_app(root_dir: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings) -> LoadedApp | HttpApp:
    settings = settings.with_task_env(env)
    manifest_path = root_dir / MANIFEST_FILE_NAME
    if manifest_path.is_file():
        return _load_spin_app(root_dir, manifest_path, args, env, settings)
    if args and args[0].endswith(".wasm"):
        return _load_bare_wasm(root_dir, args, env, settings)
    looked_for = f"/{MANIFEST_FILE_NAME} (not in the image)"
    if args:
        raise AppNotFoundError(
            f"no app found: looked for {looked_for}, and args[0] {args[0]!r} is not a .wasm file; "
            "set the image's command to a .wasm path, or add spin.toml at the image root"
        )
    raise AppNotFoundError(
        f"no app found: looked for {looked_for}, and the task has no args naming a .wasm file"
    )


def load_locked_app(app_dir: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings, *,
                    work_dir: Path, name: str) -> LoadedApp | HttpApp:
    """Load a Spin app from a locked-app directory (runtime.locked_app's layout: how OCI artifacts arrive).

    ``work_dir`` is where the app keeps state (the task's rootfs, as for spin.toml apps); ``name`` is how errors
    call the lock (e.g. "the locked app of image example.com/app:1"), since its path on the node means nothing to
    the user.
    """
    from runtime.locked_app import LOCK_FILE_NAME
    from runtime.locked_app import load_locked_app as read_lock

    forget_mapped()  # as in load_app
    try:
        settings = settings.with_task_env(env)
        manifest = read_lock(app_dir, name)
        return _load_manifest_app(manifest, manifest.path, args, env, settings, work_dir)
    except AppError as exc:  # later checks (triggers, files) name the lock by its path on the node
        exc.args = (str(exc).replace(str(app_dir / LOCK_FILE_NAME), name),) + exc.args[1:]
        raise
    finally:
        forget_mapped()


# ---------------------------------------------------------------------------------------------------- Spin apps


def _load_spin_app(
    root_dir: Path, manifest_path: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings
) -> LoadedApp | HttpApp:
    from runtime.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    # The rootfs is the task's work directory: Spin keeps the default key-value store under `.spin/` there,
    # so data outlives a restart of the task on the same container (as with `spin up` in the app dir).
    return _load_manifest_app(manifest, manifest_path, args, env, settings, work_dir=root_dir)


def _load_manifest_app(manifest: Manifest, manifest_path: Path, args: list[str], env: dict[str, str],
                       settings: RuntimeSettings, work_dir: Path) -> LoadedApp | HttpApp:
    manifest = retain_components(manifest, env)
    types = _trigger_types(manifest)
    if types == (COMMAND_TRIGGER,):
        return _load_command_app(manifest, manifest_path, args, env, settings)
    parts: list[tuple[str, Any]] = []
    try:
        for trigger_type in types:
            parts.append((trigger_type, _load_served(trigger_type, manifest, args, env, settings, work_dir)))
    except BaseException:
        for _, part in parts:
            part.close()
        raise
    if len(parts) == 1:
        return parts[0][1]  # type: ignore[no-any-return]
    from runtime.multi_trigger import MultiTriggerApp

    return MultiTriggerApp(parts)  # type: ignore[return-value]


def _load_served(trigger_type: str, manifest: Manifest, args: list[str], env: dict[str, str],
                 settings: RuntimeSettings, work_dir: Path) -> Any:
    """Load the part of the app one served trigger type runs.

    Every loader has the signature ``(manifest, args, env, settings, *, work_dir)``, validates everything at
    Create (AppError), and returns an object with ``run() -> int`` (serves until stopped; the task's exit code), a
    signal-safe ``interrupt()`` (SIGTERM: drain, then run returns), ``close()``, ``loads``, ``description`` and
    ``serves_in_main_thread = True``. Each is imported only by apps with that trigger.
    """
    if trigger_type == HTTP_TRIGGER:
        from runtime.http.trigger import load_http_app

        return load_http_app(manifest, args, env, settings, work_dir=work_dir)
    if trigger_type == REDIS_TRIGGER:
        from runtime.redis_trigger.app import load_redis_app

        return load_redis_app(manifest, args, env, settings, work_dir=work_dir)
    if trigger_type == MQTT_TRIGGER:
        from runtime.mqtt.app import load_mqtt_app

        return load_mqtt_app(manifest, args, env, settings, work_dir=work_dir)
    raise AssertionError(f"no loader for served trigger type {trigger_type!r}")  # _SERVED_TRIGGERS lists it


def retain_components(manifest: Manifest, env: Mapping[str, str]) -> Manifest:
    """The app with only the triggers of the components SPIN_COMPONENTS_TO_RETAIN names (Spin's
    ``retain_components``: it applies to every trigger type, and a type left without triggers is not run)."""
    raw = env.get(COMPONENTS_TO_RETAIN_ENV, "").strip()
    if not raw:
        return manifest
    from dataclasses import replace

    keep = {item.strip() for item in raw.split(",") if item.strip()}
    unknown = sorted(keep - set(manifest.components))
    if unknown:
        raise InvalidSettingError(
            f"{COMPONENTS_TO_RETAIN_ENV}={raw!r}: the app has no component(s) {', '.join(map(repr, unknown))} "
            f"(its components: {', '.join(sorted(manifest.components))})"
        )
    triggers = tuple(t for t in manifest.triggers if t.component in keep)
    if not triggers:
        raise InvalidSettingError(f"{COMPONENTS_TO_RETAIN_ENV}={raw!r}: none of these components has a trigger")
    return replace(manifest, triggers=triggers)


def _load_command_app(
    manifest: Manifest, manifest_path: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings
) -> LoadedApp:
    from runtime.files import stage_component_files, sweep_stale_staging
    from runtime.guest import GuestSetup
    from runtime.manifest import LocalSource
    from runtime.paths import resolve_in_root

    component_id = _command_component(manifest)
    component = manifest.components[component_id]
    assert isinstance(component.source, LocalSource)  # load_manifest rejected the others
    wasm_path = resolve_in_root(manifest.app_dir, component.source.path)

    guest_args = args[1:] if args and _names_the_app(args[0]) else list(args)
    guest_env = {**component.environment, **env}
    sweep_stale_staging(settings.cache_dir)
    staged = stage_component_files(manifest.app_dir, manifest_path, component, settings.cache_dir)
    try:
        setup = GuestSetup(
            name=component_id, argv=[component_id, *guest_args], env=guest_env, preopens=staged.preopens
        )
        description = f"Spin app {manifest.application.name!r} (command trigger, component {component_id!r})"
        return _build(setup, wasm_path, f"component {component_id!r} ({component.source.path})", staged,
                      settings, description)
    except BaseException:
        staged.cleanup()
        raise


def _trigger_types(manifest: Manifest) -> tuple[str, ...]:
    """The app's trigger types, in manifest order: one command, or any mix of served types (http, redis).

    UnsupportedTriggerError for a type this shim does not run, and for a command beside another type: a command
    runs to its end and its exit code is the task's, which a listener beside it cannot share (containerd-shim-spin
    would start both and end the task when the command ends, stopping the listener mid-request).
    """
    for trigger_type in manifest.trigger_types:
        if trigger_type == COMMAND_TRIGGER or trigger_type in _SERVED_TRIGGERS:
            continue
        reason = _UNSUPPORTED_TRIGGERS.get(
            trigger_type,
            f"unknown trigger type {trigger_type!r} (Spin trigger types are http, redis, mqtt, sqs, cron and command)",
        )
        raise UnsupportedTriggerError(
            f"{manifest.path}: [[trigger.{trigger_type}]]: {reason}; this shim runs [[trigger.http]], "
            "[[trigger.redis]], [[trigger.mqtt]] and [[trigger.command]] apps"
        )
    types = manifest.trigger_types
    if not types:
        raise ManifestError(f"{manifest.path}: the app declares no triggers; add [[trigger.http]] tables")
    if COMMAND_TRIGGER in types and len(types) > 1:
        others = ", ".join(f"[[trigger.{t}]]" for t in types if t != COMMAND_TRIGGER)
        raise UnsupportedTriggerError(
            f"{manifest.path}: the app mixes [[trigger.command]] with {others}; a command runs to its end and its "
            "exit code is the task's, so it cannot share a task with a trigger that serves until stopped: split it "
            f"into two apps (or retain one kind with {COMPONENTS_TO_RETAIN_ENV})"
        )
    return types


def _command_component(manifest: Manifest) -> str:
    """The component the app's command trigger runs (``_trigger_types`` made sure there is one)."""
    commands = manifest.triggers_of_type(COMMAND_TRIGGER)
    if len(commands) > 1:
        ids = ", ".join(repr(t.id) for t in commands)
        raise ManifestError(
            f"{manifest.path}: {len(commands)} [[trigger.command]] tables ({ids}); a task runs one command, so "
            "declare exactly one (Spin itself would silently run only the first)"
        )
    trigger = commands[0]
    if trigger.component is None:
        raise ManifestError(f"{manifest.path}: [[trigger.command]] {trigger.id!r} names no `component`")
    return trigger.component


def _names_the_app(arg0: str) -> bool:
    """True for "/" and paths to spin.toml: the conventional command of a Spin image, not a guest argument."""
    return arg0.strip() == "/" or PurePosixPath(arg0).name == MANIFEST_FILE_NAME


# ---------------------------------------------------------------------------------------------------- bare wasm


def _load_bare_wasm(root_dir: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings) -> LoadedApp:
    from runtime.files import StagedFiles
    from runtime.guest import GuestSetup
    from runtime.paths import PathEscapeError, quoted_path, resolve_in_root

    try:
        wasm_path = resolve_in_root(root_dir, args[0])
    except PathEscapeError as exc:
        raise AppNotFoundError(f"args[0]: {exc}") from None
    if not wasm_path.is_file():
        raise AppNotFoundError(
            f"args[0] {quoted_path(args[0])}: no such file in the image (looked for {quoted_path(wasm_path)}; no "
            f"/{MANIFEST_FILE_NAME} either)"
        )
    name = PurePosixPath(args[0]).name
    setup = GuestSetup(name=name, argv=list(args), env=dict(env))
    return _build(setup, wasm_path, name, StagedFiles(preopens=()), settings, name)


# ---------------------------------------------------------------------------------------------------- common


def _build(
    setup: GuestSetup,
    wasm_path: Path,
    what: str,
    staged: StagedFiles,
    settings: RuntimeSettings,
    description: str,
) -> LoadedApp:
    from runtime.guest import ComponentCommand, CoreCommand
    from runtime.interrupt import Interrupter
    from runtime.wasm_binary import WASI_COMMAND_EXPORT, WasmKind

    compiled, load, engine = compile_wasm(wasm_path, what, setup.name, settings, exports=WASI_COMMAND_EXPORT)
    command: CoreCommand | ComponentCommand
    if load.kind is WasmKind.COMPONENT:
        command = ComponentCommand(setup, engine, settings.max_instance_memory, compiled)  # type: ignore[arg-type]
        description += " (WASI p2 component)"
    else:
        command = CoreCommand(setup, engine, settings.max_instance_memory, compiled)  # type: ignore[arg-type]
        description += " (WASI p1 module)"
    return LoadedApp(command, Interrupter(engine), staged, (load,), description)


def env_from_oci(process_env: list[str]) -> dict[str, str]:
    """OCI ``process.env`` ("K=V" strings) as a dict, later entries winning, entries without '=' ignored."""
    env: dict[str, str] = {}
    for entry in process_env:
        key, sep, value = entry.partition("=")
        if sep and key:
            env[key] = value
    return env


__all__ = ["LoadedApp", "ComponentLoad", "load_app", "load_locked_app", "compile_wasm", "env_from_oci"]
