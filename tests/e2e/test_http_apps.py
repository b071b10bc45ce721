"""Spin HTTP apps built with the public SDKs, served through a real containerd 2.1 and this shim, asked with curl.

Each app is imported as containerd-shim-spin expects (spin.toml and its wasm at the image root, command "/"),
started with `ctr run -d --net-host`, and listens on a free port of 127.0.0.1 (SPIN_HTTP_LISTEN_ADDR). The apps
(scripts/build_http_apps.py): py-spin (Spin Python SDK 3.4.1), js-echo (@spinframework/build-tools), py-proxy
(componentize-py proxy world), multi (several components and routes); wagi-echo (a WASI p1 CGI module).
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import pytest

from tests.e2e.http_support import HttpTask
from tests.e2e.support import assert_no_leaks

pytestmark = pytest.mark.e2e

TEN_MIB = 10 * 1024 * 1024
#: A secret for py-spin's required `api_token` variable, given as containerd-shim-spin reads it.
TOKEN_ENV = {"SPIN_VARIABLE_API_TOKEN": "t0ken"}


@pytest.fixture(scope="module")
def serve(containerd_21, images_21, http_apps) -> Iterator:
    """serve(app, task_id, env) -> a running HttpTask; every task is removed and checked for leaks at the end."""
    started: list[HttpTask] = []

    def _serve(app: str, task_id: str, env: dict[str, str] | None = None, files: dict | None = None) -> HttpTask:
        image = images_21.wasm_image(app, files or {"/": http_apps[app]}, ["/"])
        task = HttpTask(containerd_21, image, task_id, env=dict(env or {}))
        started.append(task)
        result = task.run()
        assert result.returncode == 0, f"ctr run failed: {result.stderr}\nlog:\n{task.log()}"
        return task

    yield _serve
    for task in started:
        task.remove()
    assert_no_leaks(containerd_21, [task.task_id for task in started])


@pytest.fixture(scope="module")
def py_spin(serve) -> HttpTask:
    return serve("py-spin", "http-py-spin", {**TOKEN_ENV, "SPIN_SHIM_REQUEST_TIMEOUT": "3",
                                              "SPIN_MAX_INSTANCE_MEMORY": str(256 * 1024 * 1024)})


@pytest.fixture(scope="module")
def js_echo(serve) -> HttpTask:
    return serve("js-echo", "http-js-echo")


# ------------------------------------------------------------------------------------------------ Python SDK app


def test_python_sdk_app_answers(py_spin):
    response = py_spin.get("/hello")
    assert response.status == 200
    assert response.text == "Hello from Python!"
    assert response.headers["content-type"].startswith("text/plain")


def test_python_sdk_app_status_and_headers(py_spin):
    response = py_spin.get("/status/418")
    assert response.status == 418
    assert response.text == "status 418"
    echoed = py_spin.get("/echo", "-X", "PUT", "-H", "x-echo-colour: blue", data=b"abc")
    assert echoed.status == 200
    assert echoed.headers["x-method"] == "PUT"
    assert echoed.headers["x-echo-colour"] == "blue"
    assert echoed.body == b"abc"


def test_python_sdk_app_gets_spin_headers(py_spin):
    headers = py_spin.get("/spin-headers?q=1").json()
    assert isinstance(headers, dict)
    assert headers["spin-full-url"] == f"{py_spin.url}/spin-headers?q=1"
    assert headers["spin-path-info"] == "/spin-headers"
    assert headers["spin-matched-route"] == "/..."
    assert headers["spin-raw-component-route"] == "/..."
    assert headers["spin-component-route"] == ""
    assert headers["spin-base-path"] == "/"
    assert headers["spin-client-addr"].startswith("127.0.0.1:")


def test_python_sdk_app_ten_mib_both_ways(py_spin):
    payload = os.urandom(TEN_MIB)
    echoed = py_spin.get("/echo", "-X", "POST", data=payload, timeout=120)
    assert echoed.status == 200
    assert echoed.headers["x-body-length"] == str(TEN_MIB)
    assert hashlib.sha256(echoed.body).hexdigest() == hashlib.sha256(payload).hexdigest()
    big = py_spin.get(f"/big?bytes={TEN_MIB}", timeout=120)
    assert big.status == 200 and len(big.body) == TEN_MIB


def test_python_sdk_app_sees_environment_and_files(py_spin):
    assert py_spin.get("/env?name=APP_MODE").text == "test"  # the component's `environment`
    assert py_spin.get("/env?name=SPIN_VARIABLE_API_TOKEN").text == "t0ken"  # the task env
    assert py_spin.get("/file?path=/static/hello.txt").status == 200
    assert py_spin.get("/file?path=/spin.toml").status != 200  # in the image, not in `files`


def test_unknown_path_is_the_apps_404_and_health_answers(py_spin):
    assert py_spin.get("/no-such-thing").status == 404
    health = py_spin.get("/.well-known/spin/health")
    assert health.status == 200
    info = py_spin.get("/.well-known/spin/info")
    assert info.status == 200 and isinstance(info.json(), dict)


def test_guest_output_reaches_the_container_log(py_spin):
    assert py_spin.get("/log").status == 200
    from tests.e2e.http_support import wait_for_log

    assert wait_for_log(py_spin, "py-spin stdout marker"), py_spin.log()
    assert wait_for_log(py_spin, "py-spin stderr marker"), py_spin.log()


# ------------------------------------------------------------------------------------------------ JS, proxy world


def test_js_app_answers_and_streams_ten_mib(js_echo):
    hello = js_echo.get("/hello")
    assert hello.status == 200 and hello.text == "Hello from JS!"
    payload = os.urandom(TEN_MIB)
    echoed = js_echo.get("/echo", "-X", "POST", "-H", "Transfer-Encoding: chunked", data=payload, timeout=120)
    assert echoed.status == 200 and echoed.headers["x-body-length"] == str(TEN_MIB)
    assert hashlib.sha256(echoed.body).digest() == hashlib.sha256(payload).digest()
    # /echo-stream answers with the request body as a stream: the response starts before the upload ends
    streamed = js_echo.get("/echo-stream", "-X", "POST", "-H", "Transfer-Encoding: chunked", data=payload,
                           timeout=120)
    assert streamed.status == 200 and streamed.headers.get("transfer-encoding") == "chunked"
    assert hashlib.sha256(streamed.body).digest() == hashlib.sha256(payload).digest()
    big = js_echo.get(f"/big?bytes={TEN_MIB}", timeout=120)
    assert big.status == 200 and len(big.body) == TEN_MIB
    assert js_echo.get("/status/201").status == 201
    assert js_echo.get("/nothing-here").status == 404


def test_keep_alive_serves_several_requests_on_one_connection(js_echo):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", js_echo.port, timeout=30)
    try:
        for _ in range(5):
            connection.request("GET", "/hello")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b"Hello from JS!"
        assert connection.sock is not None  # never closed by the server in between
    finally:
        connection.close()


def test_componentize_py_proxy_world_app(serve):
    task = serve("py-proxy", "http-py-proxy")
    assert task.get("/hello").text == "Hello from Python (proxy world)!"
    echoed = task.get("/echo", "-X", "POST", data=b"proxy body")
    assert echoed.status == 200 and echoed.body == b"proxy body"


# ------------------------------------------------------------------------------------------------ routing


def test_multi_component_routing_precedence(serve):
    task = serve("multi", "http-multi")
    # the most specific route wins: exact > longer prefix > shorter prefix > catch-all
    cases = {
        "/api/exact/whoami": "api",  # "/api/exact" is exact: a longer path falls to "/api/..."
        "/api/v1/whoami": "deep",
        "/api/whoami": "api",
        "/other/whoami": "fallback",
        "/whoami": "fallback",
    }
    for path, component in cases.items():
        response = task.get(path)
        assert response.status == 200, (path, response.status, response.text)
        assert response.text.strip() == component, (path, response.text)
    assert task.get("/api/exact").headers["x-who"] == "exact"  # every js-echo response names its component
    headers = task.get("/api/v1/headers").json()
    assert headers["spin-matched-route"] == "/api/v1/..."
    assert headers["spin-component-route"] == "/api/v1"
    assert headers["spin-raw-component-route"] == "/api/v1/..."
    assert headers["spin-path-info"] == "/headers"
    # a private component is reachable by no route
    assert "internal" not in {task.get(p).text.strip() for p in ("/internal/whoami", "/whoami")}
    # static_response routes: answered by the host, no component; the more specific route beats "/..."
    static = task.get("/static/anything")
    assert (static.status, static.text, static.headers["x-static"]) == (201, "a static answer\n", "yes")
    assert static.headers["content-type"] == "text/plain" and static.headers["content-length"] == "16"
    assert "x-who" not in static.headers
    moved = task.get("/moved")
    assert (moved.status, moved.headers["location"], moved.body) == (308, "/api/whoami", b"")


# ------------------------------------------------------------------------------------------------ WAGI


def test_wagi_module(serve, guests):
    manifest = b"""spin_manifest_version = 2
[application]
name = "wagi-echo"
[[trigger.http]]
route = "/cgi/..."
component = "wagi"
executor = { type = "wagi" }
[component.wagi]
source = "wagi-echo.wasm"
"""
    task = serve("wagi-echo", "http-wagi", files={"/spin.toml": manifest, "/wagi-echo.wasm": guests["wagi-echo.wasm"]})
    response = task.get("/cgi/some/path?x=1", "-X", "POST", data=b"cgi body")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    for expected in ("POST", "/some/path", "x=1", "/cgi/...", "cgi body"):
        assert expected in response.text, (expected, response.text)
    assert task.get("/elsewhere").status == 404  # no route: the trigger's own 404


def test_components_to_retain_serves_only_those_components(serve):
    task = serve("multi", "http-multi-retain", {"SPIN_COMPONENTS_TO_RETAIN": "api,deep"})
    assert task.get("/api/whoami").text.strip() == "api"
    assert task.get("/api/v1/whoami").text.strip() == "deep"
    assert task.get("/whoami").status == 404  # "fallback" was not retained: its route is gone
    assert task.get("/api/exact").headers.get("x-who") == "api"  # so is "exact"'s; "/api/..." takes it
    assert task.get("/static/x").status == 404  # static routes have no component to retain: gone, as in Spin


def test_spin1_core_module(serve, guests):
    manifest = b"""spin_manifest_version = 2
[application]
name = "spin1-echo"
[[trigger.http]]
route = "/v1/..."
component = "legacy"
[component.legacy]
source = "spin1-echo.wasm"
"""
    task = serve("spin1-echo", "http-spin1",
                 files={"/spin.toml": manifest, "/spin1-echo.wasm": guests["spin1-echo.wasm"]})
    response = task.get("/v1/thing?x=1", "-X", "POST", data=b"legacy body")
    assert response.status == 200
    assert response.headers["x-method"] == "POST" and response.headers["x-uri"] == "/v1/thing?x=1"
    assert response.body == b"legacy body"
