"""Runtime options, as containerd hands them to a non-runc shim, and 2.3's bootstrap params.

CRI turns the runtime's `options` TOML table into `runtimeoptions.v1.Options` whose
`config_body` is that table re-serialised as TOML (containerd internal/cri/config/config.go
GenerateRuntimeOptions); the same Any arrives on `start`'s stdin (1.6-2.2), inside
BootstrapParams (2.3+), and as CreateTaskRequest.options. The one option this shim reads is
`SystemdCgroup` (runwasi's `systemd_cgroup` alias too).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

from shim.record import Record

RUNTIME_OPTIONS_TYPE_URL = "runtimeoptions.v1.Options"


def options_from_toml(body: str) -> dict[str, Any]:
    import tomllib  # only when containerd passed options: ~5 ms of `start` otherwise

    try:
        table = tomllib.loads(body) if body.strip() else {}
    except tomllib.TOMLDecodeError:
        return {}
    result: dict[str, Any] = {}
    for key in ("SystemdCgroup", "systemd_cgroup"):
        if isinstance(table.get(key), bool):
            result["systemd_cgroup"] = table[key]
    return result


def parse_task_options(options_any: Any) -> dict[str, Any]:
    """CreateTaskRequest.options -> settings; unknown types are ignored (runc's options
    may arrive when an operator copies a runc handler's table)."""
    if options_any is None or not options_any.type_url:
        return {}
    if options_any.type_url.removeprefix("type.googleapis.com/") != RUNTIME_OPTIONS_TYPE_URL:
        return {}
    from proto.containerd.runtimeoptions.v1 import api_pb2

    message = api_pb2.Options()
    try:
        message.ParseFromString(options_any.value)
    except Exception:  # noqa: BLE001 - malformed options are treated as absent
        return {}
    body = message.config_body.decode("utf-8", "replace") if message.config_body else ""
    if not body and message.config_path:
        try:
            with open(message.config_path) as f:
                body = f.read()
        except OSError:
            return {}
    return options_from_toml(body)


class StartInput(Record):
    """What `start` learned from its stdin."""

    options: dict[str, Any] = {}
    ttrpc_address: str | None = None
    grpc_address: str | None = None
    namespace: str | None = None
    debug: bool = False
    socket_dir: str | None = None
    bootstrap: bool = False


def parse_start_stdin(data: bytes, task_id: str) -> StartInput:
    """stdin is BootstrapParams (containerd 2.3+) or a bare options Any (older), or empty.

    Both are protobuf; BootstrapParams is recognised by its instance_id matching -id.
    """
    if not data:
        return StartInput()
    from google.protobuf import any_pb2
    from google.protobuf.message import DecodeError

    from proto.containerd.runtime.bootstrap.v1 import bootstrap_pb2

    params = bootstrap_pb2.BootstrapParams()
    try:
        params.ParseFromString(data)
        is_bootstrap = params.instance_id == task_id
    except DecodeError:
        is_bootstrap = False
    if is_bootstrap:
        result = StartInput(
            ttrpc_address=params.containerd_ttrpc_address or None,
            grpc_address=params.containerd_grpc_address or None,
            namespace=params.namespace or None,
            debug=params.log_level < 0,  # TRACE=-8, DEBUG=-4
            socket_dir=params.socket_dir if params.HasField("socket_dir") else None,
            bootstrap=True,
        )
        for extension in params.extensions:
            result.options.update(parse_task_options(extension.value))
        return result
    options_any = any_pb2.Any()
    try:
        options_any.ParseFromString(data)
    except DecodeError:
        return StartInput()
    return StartInput(options=parse_task_options(options_any))
