"""A real OTLP/HTTP receiver for tests: the protobuf payloads the exporters POST to /v1/traces and /v1/metrics,
decoded with the opentelemetry-proto package's message classes (the collector service's own request types).

``running_receiver()`` yields an ``OtlpReceiver`` on 127.0.0.1 (a free port); ``endpoint`` is what
OTEL_EXPORTER_OTLP_ENDPOINT should name. Spans and metric points are flattened into small dataclasses so tests
read like the behaviour they pin; the raw requests (headers, paths) are kept too.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.upstream_support import serving_in_thread

#: opentelemetry.proto.trace.v1.Span.SpanKind values.
SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 1, 2, 3
#: opentelemetry.proto.trace.v1.Status.StatusCode values.
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a sum (counter) or histogram metric."""

    name: str
    attributes: dict[str, Any]
    value: float
    resource: dict[str, Any]


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]


@dataclass
class OtlpReceiver:
    port: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        with self.lock:
            self.requests.append(ReceivedRequest(path, headers))
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            spans = [ReceivedSpan(span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name,
                                  span.kind, attributes(span.attributes), span.status.code,
                                  attributes(resource_spans.resource.attributes), scope_spans.scope.name)
                     for resource_spans in traces.resource_spans
                     for scope_spans in resource_spans.scope_spans
                     for span in scope_spans.spans]
            with self.lock:
                self.spans.extend(spans)
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            points: list[ReceivedPoint] = []
            for resource_metrics in metrics.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            value = (point.sum if kind == "histogram" else
                                     point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)
                            points.append(ReceivedPoint(metric.name, attributes(point.attributes), value, resource))
            with self.lock:
                self.points.extend(points)
            return ExportMetricsServiceResponse().SerializeToString()
        raise KeyError(path)

    def wait_for(self, condition: Callable[[OtlpReceiver], Any], timeout: float = 15.0) -> Any:
        """Poll ``condition(self)`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                result = condition(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"the OTLP receiver never got what was expected; spans: "
                                     f"{[s.name for s in self.spans]}, metrics: {[p.name for p in self.points]}")
            time.sleep(0.05)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]


@contextlib.contextmanager
def running_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            try:
                answer = receiver.record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = 200
            except KeyError:
                answer, status = b"", 404
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            pass

    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        receiver.port = server.server_address[1]
        yield receiver


@contextlib.contextmanager
def running_grpc_receiver() -> Iterator[OtlpReceiver]:
    """The same receiver over OTLP/gRPC (the collector's TraceService and MetricsService, served by grpcio);
    ``endpoint`` is ``http://127.0.0.1:<port>`` as OTEL_EXPORTER_OTLP_ENDPOINT names a plaintext gRPC collector.
    Requests are recorded under the HTTP paths of their signal, so tests read both receivers alike."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    receiver = OtlpReceiver()

    def metadata(context: Any) -> dict[str, str]:
        return {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's name
            receiver.record("/v1/traces", metadata(context), request.SerializeToString())
            return ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's name
            receiver.record("/v1/metrics", metadata(context), request.SerializeToString())
            return ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    receiver.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver
    finally:
        server.stop(grace=None).wait(5)
