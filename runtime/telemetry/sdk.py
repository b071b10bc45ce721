"""The OpenTelemetry SDK of a serving process: OTLP exporters, the tracer, Spin's request metric, the flush at drain.

Imported only when the task env turns telemetry on (runtime.telemetry.config). See the package docstring for why
``prepare`` (load, before fork: imports and the link hook, no thread) and ``start`` (after fork, in the process
that serves: exporters and their threads) are two steps.

Exporters come from the opentelemetry-exporter-otlp-proto-http and -grpc packages; nothing of OTLP is written
here. Every setting is passed explicitly from the task env (TelemetryConfig), never read by the SDK from this
process's ``os.environ``, which is the shim's, not the container's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import NoOpTracer, Tracer

import runtime.telemetry as state
from runtime.telemetry.config import GRPC, SignalExport, TelemetryConfig
from runtime.telemetry.request import RequestTrace

#: The instrumentation scopes: Spin's tracer is "spin"; its metric macros use the recording crate's name.
TRACER_NAME = "spin"
METER_NAME = "spin-trigger-http"


def shim_version() -> str:
    """This distribution's version for ``service.version`` (Spin puts its own version there)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("containerd-shim-spin")
    except PackageNotFoundError:
        return "unknown"


def prepare(config: TelemetryConfig) -> None:
    """At load, before any fork: host functions linked from now on get their Spin spans. Imports the exporters'
    modules so forked workers share them; starts no thread and opens no connection."""
    from runtime.host import registry
    from runtime.telemetry.spans import wrap

    for signal, kind in ((config.traces, "traces"), (config.metrics, "metrics")):
        # grpc's exporter imports grpcio, whose core links libstdc++ and librt: inside the task sandbox that works
        # because the shim dlopen'ed the core before the pivot (runtime.telemetry.needs_grpc of the same env).
        if signal is not None:
            _exporter_classes(signal, kind)
    if config.traces is not None and wrap not in registry.LINK_HOOKS:
        registry.LINK_HOOKS.append(wrap)


def _exporter_classes(signal: SignalExport, kind: str) -> Any:
    if signal.protocol == GRPC:
        if kind == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

            return GrpcSpans
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics
    if kind == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

        return HttpSpans
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics


def _exporter(signal: SignalExport, kind: str) -> Any:
    cls = _exporter_classes(signal, kind)
    if signal.protocol == GRPC:
        insecure = not signal.endpoint.lower().startswith("https://")
        return cls(endpoint=signal.endpoint, insecure=insecure, headers=dict(signal.headers), timeout=signal.timeout)
    return cls(endpoint=signal.endpoint, headers=dict(signal.headers), timeout=signal.timeout)


class Telemetry:
    """The serving process's providers and instruments; ``state.active`` while serving."""

    def __init__(self, config: TelemetryConfig, app_name: str) -> None:
        attributes = {"service.version": shim_version(), **config.resource, "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
                      "telemetry.sdk.version": sdk_version}
        resource = Resource(attributes)  # not Resource.create: that reads os.environ (the shim's)
        self.app_name = app_name
        #: Requests whose spans have not ended yet, for ``shutdown``.
        self._open = 0
        self._open_changed = threading.Condition()
        self.tracer_provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.tracer: Tracer = NoOpTracer()
        if config.traces is not None:
            self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(
                _exporter(config.traces, "traces"), schedule_delay_millis=config.span_delay * 1000,
                export_timeout_millis=config.traces.timeout * 1000))
            self.tracer = self.tracer_provider.get_tracer(TRACER_NAME)
        self.request_count: Any = None
        if config.metrics is not None:
            reader = PeriodicExportingMetricReader(_exporter(config.metrics, "metrics"),
                                                   export_interval_millis=config.metric_interval * 1000,
                                                   export_timeout_millis=config.metrics.timeout * 1000)
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            meter = self.meter_provider.get_meter(METER_NAME)
            # trigger-http server.rs: counter!(spin.request_count = 1, trigger_type, app_id, component_id)
            self.request_count = meter.create_counter("spin.request_count")

    def begin_request(self, head: Any, channel: Any, *, server_span: bool = True) -> RequestTrace:
        """The spans (and count) of one routed request about to run its guest (runtime.http.server._run_guest, and
        runtime.http.chaining's in-process requests: ``server_span`` False for ``*.spin.internal`` ones, which Spin
        counts in ``handle_trigger_route`` as well)."""
        if self.request_count is not None:
            self.request_count.add(1, {"trigger_type": "http", "app_id": self.app_name,
                                       "component_id": head.component_id})
        with self._open_changed:
            self._open += 1
        return RequestTrace(self.tracer, head, channel, self._request_ended, server_span=server_span)

    def _request_ended(self) -> None:
        with self._open_changed:
            self._open -= 1
            self._open_changed.notify_all()

    def shutdown(self, wait_requests: float = 5.0) -> None:
        """Export what is left and stop the exporters' threads (the drain after SIGTERM).

        First waits (up to ``wait_requests`` seconds) for the spans of requests still on guest threads: the
        server's drain ends once every response is complete, and a guest thread ends its spans just after (its
        job's tail), which would otherwise be after the last export (seen in test_telemetry_serving)."""
        with self._open_changed:
            self._open_changed.wait_for(lambda: self._open == 0, wait_requests)
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


class FlushingServer:
    """The worker's server, whose drain also flushes telemetry: runtime.http.workers awaits ``shutdown`` at SIGTERM
    and then exits, so the spans of the last requests leave before the process does."""

    def __init__(self, server: Any, telemetry: Telemetry) -> None:
        self.server = server
        self.telemetry = telemetry

    async def serve(self, sockets: Sequence[Any]) -> None:
        await self.server.serve(sockets)

    async def shutdown(self, grace: float) -> None:
        try:
            await self.server.shutdown(grace)
        finally:
            await asyncio.to_thread(self.telemetry.shutdown)
            state.active = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)


def start(config: TelemetryConfig, server: Any, app_name: str) -> FlushingServer:
    """In the process that serves, after any fork: exporters and their threads; ``state.active`` is set."""
    if state.active is not None:  # started twice in one process would export everything twice
        raise RuntimeError("telemetry already started in this process")
    telemetry = Telemetry(config, app_name)
    state.active = telemetry
    return FlushingServer(server, telemetry)

