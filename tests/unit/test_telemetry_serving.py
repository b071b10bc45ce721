"""Spans and metrics of a real Spin SDK app (py-spin) served in this process, exported by the real OTLP/HTTP
exporters to a real receiver (tests/otlp_support.py) that decodes the protobuf payloads.

Pins Spin's shape: the server span ``GET /...`` (kind server) whose parent is the request's traceparent, its child
``execute_wasm_component py-spin``, and under that the client spans of the host calls (key-value, outbound HTTP
with the traceparent it carried to the upstream); ``spin.request_count`` with Spin's attributes; everything
flushed at the drain (SIGTERM's path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import runtime.telemetry as state
from runtime.host import registry
from tests.otlp_support import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR, running_receiver
from tests.unit.telemetry_app import served_py_spin
from tests.upstream_support import answering_upstream

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture
def receiver() -> Iterator:
    with running_receiver() as receiver:
        yield receiver
    # this process keeps serving other tests: telemetry must not outlive the app that started it
    assert state.active is None
    registry.LINK_HOOKS.clear()


def _otel_env(receiver, **more: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "py-spin-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=unit", **more}


def test_request_trace_has_spins_spans_with_the_incoming_parent(tmp_path, receiver):
    with (answering_upstream(body=b"upstream says hi") as upstream,
          served_py_spin(tmp_path, _otel_env(receiver)) as app):
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        assert app.get("/kv/colour", method="PUT", body=b"blue", headers={"traceparent": traceparent})[0] == 200
        status, body = app.get(f"/outbound?url=http://127.0.0.1:{upstream.port}/x",
                               headers={"traceparent": traceparent, "x-forwarded-for": "203.0.113.9"})
        assert status == 200 and body.startswith(b"203\n")
    # the drain flushed everything: no waiting for the batch delay
    spans = receiver.trace(TRACE_ID)
    servers = [span for span in spans if span.kind == SPAN_KIND_SERVER]
    assert [span.name for span in servers] == ["PUT /...", "GET /..."]
    kv_server, http_server = servers
    for server in servers:
        assert server.parent_span_id == PARENT_ID
        assert server.attributes["http.route"] == "/..."
        assert server.attributes["network.protocol.name"] == "http"
        assert server.attributes["network.peer.address"] == "127.0.0.1"
        assert server.resource["service.name"] == "py-spin-test"
        assert server.resource["deployment.environment"] == "unit"
        assert server.scope == "spin"
    assert kv_server.attributes["http.response.status_code"] == 200
    assert kv_server.attributes["url.path"] == "/kv/colour" and kv_server.attributes["url.query"] == ""
    assert http_server.attributes["url.query"] == f"url=http://127.0.0.1:{upstream.port}/x"
    assert http_server.attributes["client.address"] == "203.0.113.9"
    assert "client.address" not in kv_server.attributes

    by_parent: dict[str, list] = {}
    for span in spans:
        by_parent.setdefault(span.parent_span_id, []).append(span)
    kv_execute, = by_parent[kv_server.span_id]
    assert kv_execute.name == "execute_wasm_component py-spin"
    kv_names = [span.name for span in by_parent[kv_execute.span_id]]
    assert "spin_key_value.open" in kv_names and "spin_key_value.set" in kv_names
    assert all(span.kind == SPAN_KIND_CLIENT for span in by_parent[kv_execute.span_id])

    http_execute, = by_parent[http_server.span_id]
    outbound, = [span for span in by_parent[http_execute.span_id] if span.name == "GET"]
    assert outbound.kind == SPAN_KIND_CLIENT
    assert outbound.attributes["url.full"] == f"http://127.0.0.1:{upstream.port}/x"
    assert outbound.attributes["server.address"] == "127.0.0.1"
    assert outbound.attributes["server.port"] == upstream.port
    assert outbound.attributes["http.request.method"] == "GET"
    assert outbound.attributes["http.response.status_code"] == 203
    # the upstream saw the outbound span as its parent, in the same trace
    assert upstream.headers[-1]["traceparent"] == f"00-{TRACE_ID}-{outbound.span_id}-01"


def test_request_without_traceparent_starts_a_new_trace(tmp_path, receiver):
    with served_py_spin(tmp_path, _otel_env(receiver)) as app:
        assert app.get("/hello")[0] == 200
    server, = [span for span in receiver.spans if span.kind == SPAN_KIND_SERVER]
    assert server.name == "GET /..." and server.parent_span_id == ""
    assert len(receiver.trace(server.trace_id)) == 2  # server and execute_wasm_component: no host call traced


def test_failed_kv_lookup_and_denied_outbound_are_error_spans(tmp_path, receiver):
    with served_py_spin(tmp_path, _otel_env(receiver)) as app:
        assert app.get("/outbound?url=http://192.0.2.1/")[0] == 502  # not in allowed_outbound_hosts
    denied, = [span for span in receiver.spans if span.name == "GET" and span.kind == SPAN_KIND_CLIENT]
    assert denied.status_code == STATUS_ERROR
    assert denied.attributes["error.type"] == "HTTP-request-denied"


def test_request_count_metric_as_spin_records_it(tmp_path, receiver):
    with served_py_spin(tmp_path, _otel_env(receiver)) as app:
        for _ in range(3):
            assert app.get("/hello")[0] == 200
        assert app.get("/.well-known/spin/health")[0] == 200  # Spin's own answer: not a routed request
    counts = [point for point in receiver.points if point.name == "spin.request_count"]
    assert counts, f"no spin.request_count among {[p.name for p in receiver.points]}"
    last = counts[-1]
    assert last.value == 3
    assert last.attributes == {"trigger_type": "http", "app_id": "py-spin", "component_id": "py-spin"}
    assert last.resource["service.name"] == "py-spin-test"


def test_traces_only_endpoint_sends_no_metrics(tmp_path, receiver):
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint + "/v1/traces"}
    with served_py_spin(tmp_path, env) as app:
        assert app.get("/hello")[0] == 200
    assert receiver.spans
    assert {request.path for request in receiver.requests} == {"/v1/traces"}


def _host_call_spans(receiver, path: str) -> list:
    """The client spans under the execute_wasm_component span of the one request to ``path``."""
    server, = [span for span in receiver.spans
               if span.kind == SPAN_KIND_SERVER and span.attributes["url.path"] == path]
    execute, = [span for span in receiver.spans if span.parent_span_id == server.span_id]
    return [span for span in receiver.spans if span.parent_span_id == execute.span_id]


def test_redis_and_sqlite_calls_are_client_spans_as_spin_names_them(tmp_path, receiver):
    import json
    from urllib.parse import quote

    from tests.redis_support import running_redis

    with running_redis(tmp_path / "redis") as redis_port, served_py_spin(tmp_path, _otel_env(receiver)) as app:
        address = quote(f"redis://127.0.0.1:{redis_port}/0", safe="")
        status, body = app.get(f"/redis?address={address}", method="POST",
                               body=json.dumps([["set", "k", "v"], ["get", "k"], ["incr", "n"]]).encode())
        assert status == 200, body
        status, body = app.get("/sqlite?db=default", method="POST",
                               body=json.dumps([["CREATE TABLE t (x)", []], ["SELECT 1", []]]).encode())
        assert status == 200, body
    redis_spans = _host_call_spans(receiver, "/redis")
    assert {span.name for span in redis_spans} == {"spin_outbound_redis.open_connection", "SET", "GET", "INCRBY"}
    opened, = [span for span in redis_spans if span.name == "spin_outbound_redis.open_connection"]
    assert opened.attributes == {"db.system.name": "redis", "server.address": "127.0.0.1",
                                 "server.port": redis_port, "db.namespace": "0"}
    assert all(span.attributes["db.system.name"] == "redis" for span in redis_spans)
    sqlite = _host_call_spans(receiver, "/sqlite")
    assert [s.name for s in sqlite].count("spin_sqlite.execute") == 2
    assert "spin_sqlite.open" in [s.name for s in sqlite]
    assert all(s.attributes == {"db.system.name": "sqlite"} for s in sqlite)


def test_postgres_and_mysql_calls_record_the_address_but_never_the_password(tmp_path, receiver):
    import json
    from urllib.parse import quote

    from tests.mysql_support import running_mariadb
    from tests.postgres_support import running_postgres

    with running_postgres() as pg, running_mariadb(tmp_path / "mariadb") as maria, \
            served_py_spin(tmp_path, _otel_env(receiver)) as app:
        status, body = app.get(f"/pg?v=4&address={quote(pg.url(), safe='')}", method="POST",
                               body=json.dumps([["query", "SELECT 1", []]]).encode())
        assert status == 200, body
        status, body = app.get(f"/mysql?address={quote(maria.url(), safe='')}", method="POST",
                               body=json.dumps([["query", "SELECT 1", []]]).encode())
        assert status == 200, body
    spans = {span.name: span for span in receiver.spans if span.kind == SPAN_KIND_CLIENT}
    for prefix, system, server in (("spin_outbound_pg", "postgresql", pg), ("spin_outbound_mysql", "mysql", maria)):
        opened, query = spans[f"{prefix}.open"], spans[f"{prefix}.query"]
        assert opened.attributes["db.system.name"] == query.attributes["db.system.name"] == system
        assert opened.attributes["server.address"] == "127.0.0.1"
        assert opened.attributes["server.port"] == server.port
        assert opened.attributes["db.namespace"]
        # (the server spans' url.query has it: this test passes the address in the query string)
        assert not any(server.password in str(value) for span in receiver.spans if span.kind == SPAN_KIND_CLIENT
                       for value in span.attributes.values())


def test_grpc_protocol_exports_to_an_otlp_grpc_collector(tmp_path):
    from tests.otlp_support import running_grpc_receiver

    with running_grpc_receiver() as grpc_receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=grpc"}
        try:
            with served_py_spin(tmp_path, env) as app:
                assert app.get("/hello", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})[0] == 200
        finally:
            registry.LINK_HOOKS.clear()
        server, = [span for span in grpc_receiver.trace(TRACE_ID) if span.kind == SPAN_KIND_SERVER]
        assert server.name == "GET /..." and server.parent_span_id == PARENT_ID
        assert any(point.name == "spin.request_count" for point in grpc_receiver.points)
        assert {request.headers.get("x-tenant") for request in grpc_receiver.requests} == {"grpc"}


def test_guest_errors_mark_the_server_span(tmp_path, receiver):
    with served_py_spin(tmp_path, _otel_env(receiver)) as app:
        assert app.get("/sdk-error")[0] == 500  # the SDK answers 500
        assert app.get("/raise")[0] == 500  # the guest traps before any response: the host answers 500
        assert app.get("/nothing-here")[0] == 404
    by_path = {span.attributes["url.path"]: span for span in receiver.spans if span.kind == SPAN_KIND_SERVER}
    for path in ("/sdk-error", "/raise"):
        assert by_path[path].attributes["http.response.status_code"] == 500
        assert by_path[path].attributes["error.type"] == "500"
        assert by_path[path].status_code == STATUS_ERROR
    not_found = by_path["/nothing-here"]  # a 404 of the guest is an answer, not a server error
    assert not_found.attributes["http.response.status_code"] == 404
    assert not_found.status_code != STATUS_ERROR and "error.type" not in not_found.attributes


CHAINING_HOSTS = ("http://self", "http://*.spin.internal")


def test_in_process_chained_requests_have_spins_spans_under_the_callers_client_span(tmp_path, receiver):
    """A self request (Spin sends it to its own listener) gets a server span of its own, child of the caller's
    outbound client span; a ``*.spin.internal`` one (Spin's interceptor calls handle_trigger_route, below the
    server span) gets its execute span right under the client span. Either way the callee's host calls are
    children of its execute span, all in the caller's trace, and Spin counts the callee's request."""
    self_trace, chained_trace = TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736"
    with served_py_spin(tmp_path, _otel_env(receiver), more_hosts=CHAINING_HOSTS) as app:
        assert app.get("/kv/fruit", method="PUT", body=b"plum")[0] == 200
        for trace_id, url in ((self_trace, "http://self.alt/kv/fruit"),
                              (chained_trace, "http://py-spin.spin.internal/kv/fruit")):
            status, body = app.get(f"/outbound?url={url}", headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"})
            assert (status, body) == (200, b"200\nplum")

    def callee_below_client(trace_id: str, url: str) -> tuple[list, object]:
        spans = receiver.trace(trace_id)
        caller, = [span for span in spans if span.kind == SPAN_KIND_SERVER and span.parent_span_id == PARENT_ID]
        assert caller.attributes["url.path"] == "/outbound"
        caller_execute, = [span for span in spans if span.parent_span_id == caller.span_id]
        client, = [span for span in spans if span.parent_span_id == caller_execute.span_id]
        assert client.name == "GET" and client.kind == SPAN_KIND_CLIENT
        assert client.attributes["url.full"] == url and client.attributes["http.response.status_code"] == 200
        return spans, client

    spans, client = callee_below_client(self_trace, "http://self.alt/kv/fruit")
    callee, = [span for span in spans if span.parent_span_id == client.span_id]
    assert callee.kind == SPAN_KIND_SERVER and callee.name == "GET /..."
    assert callee.attributes["url.path"] == "/kv/fruit" and callee.attributes["http.response.status_code"] == 200
    callee_execute, = [span for span in spans if span.parent_span_id == callee.span_id]
    assert callee_execute.name == "execute_wasm_component py-spin"
    assert {"spin_key_value.open", "spin_key_value.get"} <= {
        span.name for span in spans if span.parent_span_id == callee_execute.span_id}

    spans, client = callee_below_client(chained_trace, "http://py-spin.spin.internal/kv/fruit")
    callee_execute, = [span for span in spans if span.parent_span_id == client.span_id]
    assert callee_execute.name == "execute_wasm_component py-spin"
    assert [span for span in spans if span.kind == SPAN_KIND_SERVER] == [
        span for span in spans if span.attributes.get("url.path") == "/outbound"]  # no server span of its own
    assert {"spin_key_value.open", "spin_key_value.get"} <= {
        span.name for span in spans if span.parent_span_id == callee_execute.span_id}

    counts = [point for point in receiver.points if point.name == "spin.request_count"]
    assert counts[-1].value == 5  # the PUT, two callers, two callees


def test_a_chained_callee_that_traps_marks_its_spans_as_errors(tmp_path, receiver):
    """The callee traps before answering: the 500 the host gives for it is on the callee's server span."""
    with served_py_spin(tmp_path, _otel_env(receiver), more_hosts=CHAINING_HOSTS) as app:
        status, body = app.get("/outbound?url=http://self.alt/raise",
                               headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert (status, body.split(b"\n")[0]) == (200, b"500")
    spans = receiver.trace(TRACE_ID)
    callee, = [span for span in spans if span.kind == SPAN_KIND_SERVER and span.attributes["url.path"] == "/raise"]
    client, = [span for span in spans if span.span_id == callee.parent_span_id]
    assert client.kind == SPAN_KIND_CLIENT and client.attributes["http.response.status_code"] == 500
    assert callee.attributes["http.response.status_code"] == 500 and callee.status_code == STATUS_ERROR
    execute, = [span for span in spans if span.parent_span_id == callee.span_id]
    assert execute.status_code == STATUS_ERROR
