"""Self requests and ``*.spin.internal`` service chaining: the pure rules, then real py-spin components calling
each other in-process through runtime.http.chaining (no containerd: the executors of tests/unit/test_host_executor)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from runtime.host.executor import ComponentExecutor
from runtime.http import chaining
from runtime.http.chaining import LocalApp, LocalTarget, allows_chaining, classify
from runtime.http.routing import Router
from runtime.spin.outbound import OutboundPolicy
from tests.outbound_support import counting_server
from tests.unit.test_host_executor import make_executor, serve

COMPONENTS = ("caller", "locked")


def test_hosts_that_mean_the_app_itself() -> None:
    assert classify("") == LocalTarget("self")  # relative URL (the SDKs send authority ":443")
    assert classify("self.alt") == LocalTarget("self")
    assert classify("Self.Alt") == LocalTarget("self")
    assert classify("api.spin.internal") == LocalTarget("component", "api")
    assert classify("self") is None  # Spin resolves "self" like any host name
    assert classify("a.b.spin.internal") is None
    assert classify("spin.internal") is None
    assert classify("example.com") is None


@pytest.mark.parametrize(("entries", "component", "port", "allowed"), [
    (["http://*.spin.internal"], "caller", None, True),
    (["http://*.spin.internal"], "ghost", None, False),  # the wildcard expands to the app's components only
    (["http://locked.spin.internal"], "locked", None, True),
    (["http://locked.spin.internal"], "caller", None, False),
    (["http://locked.spin.internal"], "locked", 8080, False),
    (["http://locked.spin.internal:*"], "locked", 8080, True),
    (["https://*.spin.internal"], "locked", None, False),  # scheme matters
    (["*://*:*"], "locked", None, True),
    (["http://self"], "locked", None, False),
    ([], "locked", None, False),
])
def test_chaining_is_governed_like_spin(entries: list[str], component: str, port: int | None, allowed: bool) -> None:
    policy = OutboundPolicy.parse(entries)
    assert allows_chaining(policy, "http", component, port, COMPONENTS) is allowed


def test_relative_requests_need_a_self_entry() -> None:
    assert OutboundPolicy.parse(["http://self"]).allows_relative()
    assert OutboundPolicy.parse(["https://self.alt"]).allows_relative()
    assert OutboundPolicy.parse(["*://*:*"]).allows_relative()
    assert not OutboundPolicy.parse(["http://*.spin.internal", "http://127.0.0.1:*"]).allows_relative()


# ---------------------------------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def app() -> Iterator[LocalApp]:
    caller = make_executor("py-spin", allowed_outbound_hosts=(
        "http://127.0.0.1:*", "http://self", "http://*.spin.internal"))
    caller.component_id = "caller"
    locked = make_executor("py-spin", allowed_outbound_hosts=())
    locked.component_id = "locked"
    executors: dict[str, ComponentExecutor] = {"caller": caller, "locked": locked}
    router, _ = Router.build([("/...", "caller"), (None, "locked")])
    local = LocalApp(router, executors, authority="127.0.0.1:3000", request_timeout=20)
    chaining.install(local)
    yield local
    chaining.install(None)


def _outbound(app: LocalApp, executor: str, url: str) -> tuple[int, str]:
    sink = serve(app.executors[executor], f"/outbound?url={url}")  # type: ignore[arg-type]
    return sink.status, sink.body.decode()


def test_a_self_request_goes_through_the_apps_router(app: LocalApp) -> None:
    assert _outbound(app, "caller", "/hello") == (200, "200\nHello from Python!")
    assert _outbound(app, "caller", "http://self.alt/hello") == (200, "200\nHello from Python!")
    assert _outbound(app, "caller", "/.well-known/spin/health") == (200, "200\nOK")


def test_chaining_runs_the_named_component_with_spins_synthetic_route(app: LocalApp) -> None:
    status, text = _outbound(app, "caller", "http://locked.spin.internal/spin-headers")
    assert status == 200
    headers = json.loads(text.split("\n", 1)[1])
    assert headers["spin-client-addr"] == "0.0.0.0:0"
    assert headers["spin-path-info"] == "/spin-headers"
    assert headers["spin-component-route"] == ""
    assert headers["spin-raw-component-route"] == "/..."


def test_chained_and_self_requests_are_refused_when_not_allowed(app: LocalApp) -> None:
    # locked may reach nothing: its own self request and chaining are denied, with Spin's error.
    assert _outbound(app, "locked", "/hello") == (502, "ErrorCode_HttpRequestDenied()")
    assert _outbound(app, "locked", "http://caller.spin.internal/hello") == (502, "ErrorCode_HttpRequestDenied()")
    # Through the chain: caller -> locked -> (denied) answers 502 inside a 200.
    status, text = _outbound(app, "caller", "http://locked.spin.internal/outbound%3Furl%3D/hello")
    assert (status, text) == (200, "502\nErrorCode_HttpRequestDenied()")
    # An unknown component is not covered by the wildcard.
    assert _outbound(app, "caller", "http://ghost.spin.internal/hello") == (502, "ErrorCode_HttpRequestDenied()")


def test_nested_self_requests_work_and_are_cut_at_the_depth_bound(app: LocalApp) -> None:
    status, text = _outbound(app, "caller", "/outbound%3Furl%3D/outbound%253Furl%253D/hello")
    assert (status, text) == (200, "200\n200\n200\nHello from Python!")
    chaining._local.depth = chaining.MAX_DEPTH  # as if this request were already that deep in a loop
    try:
        assert _outbound(app, "caller", "/hello") == (502, "ErrorCode_LoopDetected()")
    finally:
        chaining._local.depth = 0


def test_the_streamed_body_route_reaches_the_upstream_while_it_writes(app: LocalApp) -> None:
    with counting_server() as server:
        base = f"http://127.0.0.1:{server.port}"
        sink = serve(app.executors["caller"], f"/outbound-stream?url={base}/upload&probe={base}/seen&mib=4")  # type: ignore[arg-type]
        assert sink.status == 200, sink.body
        result = json.loads(sink.body)
        assert result["sent"] == 4 << 20 and result["upstream"]["bytes"] == 4 << 20
        assert result["probe_seen"] > 0


def test_http_self_is_a_host_name_as_in_spin_and_the_note_says_what_to_write(app: LocalApp, capfd) -> None:
    assert _outbound(app, "caller", "http://self/hello") == (502, "ErrorCode_HttpRequestDenied()")
    assert "use a path" in capfd.readouterr().err
