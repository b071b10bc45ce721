"""Which telemetry the task env asks for, read as Spin reads it (spin crates/telemetry/src/env.rs, detector.rs).

Pure: a mapping in, a ``TelemetryConfig`` (or None: off) out, no import of opentelemetry. The task env is the OCI
spec's process.env (what spin-operator injects), not this process's ``os.environ``, so everything the SDK would
otherwise read from ``os.environ`` is resolved here and handed to it explicitly.

Spin's rules, kept:

- traces are on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set and not empty,
  metrics when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is; ``OTEL_SDK_DISABLED``
  set to anything not empty turns both off (Spin's ``otel_sdk_disabled``: even ``false`` disables);
- the protocol is the per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``, else
  ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf``; ``grpc`` is the other one served; ``http/json`` is an
  error (Spin: "http/json OTLP protocol is not supported", and spin up fails), anything else a warning and
  http/protobuf;
- ``service.name`` is ``OTEL_SERVICE_NAME``, else ``service.name`` of ``OTEL_RESOURCE_ATTRIBUTES``, else ``spin``;
  ``service.version`` the shim's version; the other ``OTEL_RESOURCE_ATTRIBUTES`` pairs are added as they are.

From the OTLP exporter spec (opentelemetry-otlp reads them in Spin): a per-signal endpoint is used as it is; the
general endpoint gets ``/v1/traces`` or ``/v1/metrics`` appended for http/protobuf, and is used as it is for gRPC.
``OTEL_EXPORTER_OTLP[_SIGNAL]_HEADERS`` (``k=v,...``, percent-encoded) and ``..._TIMEOUT`` (milliseconds, default
10000) apply; ``OTEL_BSP_SCHEDULE_DELAY`` (ms, default 5000) and ``OTEL_METRIC_EXPORT_INTERVAL`` (ms, default
60000) set how often spans and metrics leave, as the Rust SDK's BatchSpanProcessor and PeriodicReader read them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from runtime.errors import InvalidSettingError

log = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
TIMEOUT = "OTEL_EXPORTER_OTLP_TIMEOUT"
SDK_DISABLED = "OTEL_SDK_DISABLED"
SERVICE_NAME = "OTEL_SERVICE_NAME"
RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
BSP_SCHEDULE_DELAY = "OTEL_BSP_SCHEDULE_DELAY"
METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"

HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
DEFAULT_SERVICE_NAME = "spin"
#: Path the OTLP/HTTP spec appends to the general endpoint, per signal.
_SIGNAL_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics"}


@dataclass(frozen=True)
class SignalExport:
    """Where and how one signal (traces or metrics) is exported."""

    #: For http/protobuf the full URL of the signal's path; for grpc the target as given (``http://host:4317``).
    endpoint: str
    protocol: str
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Seconds one export may take.
    timeout: float = 10.0


@dataclass(frozen=True)
class TelemetryConfig:
    """What to export: each signal that is on, with the resource attributes every export carries."""

    traces: SignalExport | None
    metrics: SignalExport | None
    resource: Mapping[str, str]
    #: Seconds between span batches leaving the BatchSpanProcessor.
    span_delay: float = 5.0
    #: Seconds between metric exports.
    metric_interval: float = 60.0


def _set(env: Mapping[str, str], name: str) -> str | None:
    """The value when set and not empty (Spin's ``any_vars_set``), else None."""
    value = env.get(name)
    return value if value else None


def sdk_disabled(env: Mapping[str, str]) -> bool:
    return _set(env, SDK_DISABLED) is not None


def signal_protocol(env: Mapping[str, str], signal: str) -> str:
    """The OTLP protocol of ``signal`` ("traces" or "metrics"): per-signal variable, then the general one."""
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    name = specific if specific in env else PROTOCOL
    raw = env.get(name, HTTP_PROTOBUF).strip()
    if raw in (HTTP_PROTOBUF, GRPC):
        return raw
    if raw == "http/json":
        raise InvalidSettingError(f"{name}=http/json: the http/json OTLP protocol is not supported (as in Spin); "
                                  "use http/protobuf or grpc")
    log.warning("%s=%r is not a valid OTLP protocol, defaulting to http/protobuf", name, raw)
    return HTTP_PROTOBUF


def signal_endpoint(env: Mapping[str, str], signal: str, protocol: str) -> str | None:
    """The endpoint ``signal`` is exported to, or None when neither its variable nor the general one is set."""
    specific = _set(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific is not None:
        return specific.strip()
    general = _set(env, ENDPOINT)
    if general is None:
        return None
    general = general.strip()
    if protocol == GRPC:
        return general
    return general.rstrip("/") + _SIGNAL_PATHS[signal]


def parse_key_values(raw: str, what: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` with percent-encoded keys and values (W3C Baggage form, which OTEL_RESOURCE_ATTRIBUTES and
    OTEL_EXPORTER_OTLP_HEADERS use); an item without ``=`` is an error naming the variable."""
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSettingError(f"{what}={raw!r}: {item.strip()!r} is not key=value")
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _timeout(env: Mapping[str, str], signal: str) -> float:
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
    name = specific if _set(env, specific) is not None else TIMEOUT
    return _milliseconds(env, name, 10000.0)


def _milliseconds(env: Mapping[str, str], name: str, default_ms: float) -> float:
    """A positive number of milliseconds from ``name``, in seconds."""
    raw = _set(env, name)
    if raw is None:
        return default_ms / 1000
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86_400_000:
        raise InvalidSettingError(f"{name}={raw!r} must be a positive number of milliseconds")
    return value / 1000


def _signal(env: Mapping[str, str], signal: str) -> SignalExport | None:
    if _set(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") is None and _set(env, ENDPOINT) is None:
        return None  # off: its protocol is not even read, as in Spin
    protocol = signal_protocol(env, signal)
    endpoint = signal_endpoint(env, signal, protocol)
    if endpoint is None:
        return None
    headers = parse_key_values(env.get(HEADERS, ""), HEADERS)
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"
    headers.update(parse_key_values(env.get(specific, ""), specific))
    return SignalExport(endpoint, protocol, headers, _timeout(env, signal))


def resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """Spin's SpinResourceDetector then EnvResourceDetector: service.name, then the pairs of
    OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME wins for service.name. (``service.version``, the shim's version
    unless OTEL_RESOURCE_ATTRIBUTES sets it, is added by runtime.telemetry.sdk.)"""
    pairs = parse_key_values(env.get(RESOURCE_ATTRIBUTES, ""), RESOURCE_ATTRIBUTES)
    attributes = {"service.name": DEFAULT_SERVICE_NAME, **pairs}
    service_name = _set(env, SERVICE_NAME)
    if service_name is not None:
        attributes["service.name"] = service_name
    return attributes


def from_env(env: Mapping[str, str]) -> TelemetryConfig | None:
    """The telemetry the task env asks for, or None when no signal is on. Raises InvalidSettingError."""
    if sdk_disabled(env):
        return None
    traces = _signal(env, "traces")
    metrics = _signal(env, "metrics")
    if traces is None and metrics is None:
        return None
    return TelemetryConfig(
        traces=traces,
        metrics=metrics,
        resource=resource_attributes(env),
        span_delay=_milliseconds(env, BSP_SCHEDULE_DELAY, 5000.0),
        metric_interval=_milliseconds(env, METRIC_EXPORT_INTERVAL, 60000.0),
    )
