"""OpenTelemetry through containerd: py-spin (Spin Python SDK 3.4.1) run by the shim with the OTEL_* env
spin-operator injects, exporting to a real OTLP/HTTP receiver started by the test (tests/otlp_support.py decodes
the protobuf payloads with opentelemetry-proto's message classes).

The task runs with `--net-host`, so the receiver and the upstream on 127.0.0.1 are what the pod's network
namespace reaches; the exporters run in the HTTP workers, inside the task's sandbox, started after the fork.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.otlp_support import (SPAN_KIND_CLIENT, SPAN_KIND_SERVER, OtlpReceiver, running_grpc_receiver,
                                 running_receiver)
from tests.upstream_support import answering_upstream

pytestmark = pytest.mark.e2e

TRACE_ID = "5b8efff798038103d269b633813fc60c"
PARENT_ID = "eee19b7ec3c1b174"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A plain HTTP server for the app's outbound call; yields its port and the headers of each request."""
    with answering_upstream(status=200, body=b"upstream") as server:
        yield server.port, server.headers


def _otel_env(receiver: OtlpReceiver, **more: str) -> dict[str, str]:
    return {"SPIN_VARIABLE_API_TOKEN": "t", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "py-spin-e2e", "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=py-spin-abc",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=e2e", **more}


# These start tasks of their own: they run before the module's `app` task exists (serving's leak check
# wants no other shim running).


@pytest.mark.parametrize("workers", ["1", "2"])  # the instance process serving itself; forked workers
def test_spans_are_flushed_at_sigterm_drain(containerd_21, images_21, http_apps, receiver, workers):
    """A batch delay longer than the test: the spans can only arrive through the drain's flush."""
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    service = f"py-spin-drain-{workers}"
    env = _otel_env(receiver, SPIN_SHIM_HTTP_WORKERS=workers, OTEL_BSP_SCHEDULE_DELAY="600000",
                    OTEL_METRIC_EXPORT_INTERVAL="600000", OTEL_SERVICE_NAME=service)
    with serving(containerd_21, image, f"otel-drain-{workers}", env) as task:
        for _ in range(4):
            assert task.get("/hello").status == 200
        time.sleep(0.5)
        assert not [s for s in receiver.spans if s.resource.get("service.name") == service]
        assert task.stop_task(), "SIGTERM was not enough"
        drained = [s for s in receiver.spans if s.resource.get("service.name") == service]
        assert [s.name for s in drained].count("GET /...") == 4
        counted = sum(p.value for p in receiver.points
                      if p.name == "spin.request_count" and p.resource.get("service.name") == service)
        assert counted == 4  # each worker's one final export of its cumulative count


def test_sdk_disabled_sends_nothing(containerd_21, images_21, http_apps, receiver):
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    env = _otel_env(receiver, OTEL_SDK_DISABLED="true", OTEL_BSP_SCHEDULE_DELAY="100",
                    OTEL_METRIC_EXPORT_INTERVAL="100", OTEL_SERVICE_NAME="py-spin-disabled")
    with serving(containerd_21, image, "otel-disabled", env) as task:
        for _ in range(3):
            assert task.get("/hello").status == 200
        assert task.stop_task()
    time.sleep(0.5)
    assert not [s for s in receiver.spans if s.resource.get("service.name") == "py-spin-disabled"]
    assert not [p for p in receiver.points if p.resource.get("service.name") == "py-spin-disabled"]


def test_grpc_protocol_exports_traces_and_metrics_from_inside_the_sandbox(containerd_21, images_21, http_apps):
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: grpcio's exporters, in forked workers inside the task's sandbox (the shim
    dlopen'ed grpcio's core before the pivot; the exporter's google.rpc comes through the bind after it)."""
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with running_grpc_receiver() as grpc_receiver:
        env = {"SPIN_VARIABLE_API_TOKEN": "t", "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "SPIN_SHIM_HTTP_WORKERS": "2",
               "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=grpc-e2e", "OTEL_SERVICE_NAME": "py-spin-grpc",
               "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
        with serving(containerd_21, image, "otel-grpc", env) as task:
            assert task.get("/kv/shade", "-X", "PUT", "-H", f"traceparent: {TRACEPARENT}", data=b"ochre").status == 200

            def complete(r: OtlpReceiver) -> list | None:
                spans = r.trace(TRACE_ID)
                return spans if {"PUT /...", "spin_key_value.set"} <= {span.name for span in spans} else None

            spans = grpc_receiver.wait_for(complete)
            server, = [span for span in spans if span.kind == SPAN_KIND_SERVER]
            assert server.name == "PUT /..." and server.parent_span_id == PARENT_ID
            assert server.resource["service.name"] == "py-spin-grpc"
            execute, = [span for span in spans if span.parent_span_id == server.span_id]
            assert execute.name == "execute_wasm_component py-spin"
            assert "spin_key_value.set" in {span.name for span in spans if span.parent_span_id == execute.span_id}
            points = grpc_receiver.wait_for(lambda r: [p for p in r.points if p.name == "spin.request_count"])
            assert points[-1].attributes["component_id"] == "py-spin" and points[-1].value >= 1
            assert {request.path for request in grpc_receiver.requests} == {"/v1/traces", "/v1/metrics"}
            assert all(request.headers.get("x-tenant") == "grpc-e2e" for request in grpc_receiver.requests)


def test_traces_over_grpc_beside_metrics_over_http_protobuf(containerd_21, images_21, http_apps):
    """The per-signal variables choose each signal's protocol (and endpoint), as in Spin."""
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with running_grpc_receiver() as grpc_receiver, running_receiver() as receiver:
        env = {"SPIN_VARIABLE_API_TOKEN": "t", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": grpc_receiver.endpoint,
               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "py-spin-mixed",
               "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{receiver.endpoint}/v1/metrics",
               "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
        with serving(containerd_21, image, "otel-grpc-mixed", env) as task:
            assert task.get("/hello", "-H", f"traceparent: {TRACEPARENT}").status == 200
            spans = grpc_receiver.wait_for(lambda r: [s for s in r.trace(TRACE_ID) if s.kind == SPAN_KIND_SERVER])
            assert spans[0].name == "GET /..." and spans[0].resource["service.name"] == "py-spin-mixed"
            receiver.wait_for(lambda r: [p for p in r.points if p.name == "spin.request_count"
                                         and p.resource.get("service.name") == "py-spin-mixed"])
            assert {request.path for request in grpc_receiver.requests} == {"/v1/traces"}
            assert not [s for s in receiver.spans if s.resource.get("service.name") == "py-spin-mixed"]


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps, receiver) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    env = _otel_env(receiver, SPIN_SHIM_HTTP_WORKERS="2", OTEL_BSP_SCHEDULE_DELAY="200",
                    OTEL_METRIC_EXPORT_INTERVAL="500")
    with serving(containerd_21, image, "otel", env) as task:
        yield task


def test_request_with_traceparent_is_one_trace_with_outbound_http_and_kv_children(app, receiver, upstream):
    port, seen = upstream
    assert app.get("/kv/colour", "-X", "PUT", "-H", f"traceparent: {TRACEPARENT}", data=b"teal").status == 200
    response = app.get(f"/outbound?url=http://127.0.0.1:{port}/up", "-H", f"traceparent: {TRACEPARENT}")
    assert response.status == 200, response.text

    def complete(r: OtlpReceiver) -> list | None:
        spans = r.trace(TRACE_ID)
        names = {span.name for span in spans}
        wanted = {"PUT /...", "GET /...", "execute_wasm_component py-spin", "spin_key_value.set", "GET"}
        return spans if wanted <= names else None

    spans = receiver.wait_for(complete)
    servers = {span.name: span for span in spans if span.kind == SPAN_KIND_SERVER}
    assert set(servers) == {"PUT /...", "GET /..."}
    for server in servers.values():
        assert server.parent_span_id == PARENT_ID  # the incoming traceparent is the parent
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["http.route"] == "/..."
        assert server.resource["service.name"] == "py-spin-e2e"
        assert server.resource["k8s.pod.name"] == "py-spin-abc"
    executes = {span.parent_span_id: span for span in spans if span.name == "execute_wasm_component py-spin"}
    kv_execute, http_execute = executes[servers["PUT /..."].span_id], executes[servers["GET /..."].span_id]
    kv_spans = [span for span in spans if span.parent_span_id == kv_execute.span_id]
    assert {"spin_key_value.open", "spin_key_value.set"} <= {span.name for span in kv_spans}
    outbound, = [span for span in spans if span.parent_span_id == http_execute.span_id and span.name == "GET"]
    assert outbound.kind == SPAN_KIND_CLIENT
    assert outbound.attributes["url.full"] == f"http://127.0.0.1:{port}/up"
    assert outbound.attributes["http.response.status_code"] == 200
    # the upstream got a traceparent of this trace, naming the outbound span as its parent
    assert seen[-1]["traceparent"] == f"00-{TRACE_ID}-{outbound.span_id}-01"
    # OTEL_EXPORTER_OTLP_HEADERS reached the receiver
    assert all(request.headers.get("x-tenant") == "e2e" for request in receiver.requests)


def test_request_count_metric_arrives(app, receiver):
    """Spin's spin.request_count counter, exported every OTEL_METRIC_EXPORT_INTERVAL by each worker."""
    for _ in range(3):
        assert app.get("/hello").status == 200

    def ours(r: OtlpReceiver) -> list:
        return [p for p in r.points
                if p.name == "spin.request_count" and p.resource.get("service.name") == "py-spin-e2e"]

    point = receiver.wait_for(ours)[-1]
    assert point.attributes == {"trigger_type": "http", "app_id": "py-spin", "component_id": "py-spin"}
    assert point.value >= 1
