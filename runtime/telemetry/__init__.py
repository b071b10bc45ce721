"""OpenTelemetry for Spin apps: traces and metrics over OTLP, as Spin (crates/telemetry) exports them.

This package's ``__init__`` and ``config`` import nothing of opentelemetry: the server's hot path reads ``active``
(one attribute load and a None check per request when telemetry is off), and an app whose task env names no OTLP
endpoint never imports the SDK (tests/unit/test_telemetry_off.py pins it; the SDK and its exporters cost ~160 ms
of imports).

Process model (runtime.http.workers): the app loads in the instance process, which may then fork HTTP workers.
``sdk.prepare`` runs at load, before any fork: it imports the SDK (so forked workers share those pages) and installs
the span wrapper that host functions are linked with (runtime.host.registry.LINK_HOOKS), but starts no thread.
``sdk.start`` runs in the process that serves (each worker after fork, or the instance process itself with one
worker): it creates the exporters and their threads (BatchSpanProcessor, PeriodicExportingMetricReader) and sets
``active``. The drain at SIGTERM flushes them (sdk.FlushingServer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from runtime.telemetry.config import TelemetryConfig
    from runtime.telemetry.sdk import Telemetry

#: The serving process's telemetry once ``sdk.start`` ran; None (the default) means off: nothing is traced.
active: Telemetry | None = None

#: The variables that turn a signal on (runtime.telemetry.config has the whole rule).
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
              "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def at_load(env: Mapping[str, str]) -> TelemetryConfig | None:
    """At app load (the instance process, before any fork): the telemetry the task env asks for, prepared; None
    when it asks for none (then nothing of opentelemetry is imported). Raises InvalidSettingError (a Create error).

    The same on/off test as config.from_env, done here first because importing config costs ~2 ms (its
    dataclasses) that a start without telemetry should not pay."""
    if env.get("OTEL_SDK_DISABLED") or not any(env.get(name) for name in _ENDPOINTS):
        return None
    from runtime.telemetry.config import from_env

    config = from_env(env)
    if config is not None:
        from runtime.telemetry.sdk import prepare

        prepare(config)
    return config


def serving(config: TelemetryConfig | None, server: Any, app_name: str) -> Any:
    """In the process that serves, after any fork: ``server`` itself when telemetry is off, else ``server`` with the
    exporters started and flushed at its drain (sdk.FlushingServer)."""
    if config is None:
        return server
    from runtime.telemetry.sdk import start

    return start(config, server, app_name)


def needs_grpc(env: Mapping[str, str]) -> bool:
    """Whether the task env asks for OTLP over gRPC for a signal that is on (cheap: ~1 us, no import). grpcio's core
    links libstdc++ and librt, which a task sandbox can only use when they were loaded before the pivot: the
    instance process asks this first and dlopens the core only then (shim/wasm/sandbox/python_paths.py), so a
    task that does not export over gRPC pays nothing for it (~4 ms of the instance's start for one that does)."""
    if env.get("OTEL_SDK_DISABLED") or not any(env.get(name) for name in _ENDPOINTS):
        return False
    general = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    for signal in ("TRACES", "METRICS"):
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"):
            specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
            if (specific.strip() if specific is not None else general) == "grpc":
                return True
    return False
