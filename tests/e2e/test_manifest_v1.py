"""A Spin manifest version 1 app served through a real containerd 2.1 and this shim, as Spin's loader runs it.

The py-spin app (Spin Python SDK 3.4.1, scripts/build_http_apps.py) with its spin.toml rewritten in the version 1
form (`spin_manifest_version = "1"`, `trigger = { type = "http", base = "/" }`, `[[component]]` with
`[component.trigger]` and `[component.config]`). What the conversion decides is checked from outside: the component
id `py_spin` becomes `py-spin` (SPIN_COMPONENTS_TO_RETAIN names the new id, or Create would fail), `config` becomes
the component's variables, `allowed_http_hosts = ["127.0.0.1:<port>"]` allows exactly that upstream over http, and
the component's environment, files and key-value store work as in the version 2 app.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.upstream_support import answering_upstream

pytestmark = pytest.mark.e2e

V1_MANIFEST = '''spin_manifest_version = "1"
name = "py-spin-v1"
version = "0.1.0"
description = "py-spin in the version 1 manifest form"
trigger = {{ type = "http", base = "/" }}

[variables]
greeting = {{ default = "hello" }}
api_token = {{ required = true, secret = true }}

[[component]]
id = "py_spin"
source = "app.wasm"
environment = {{ APP_MODE = "v1" }}
files = [{{ source = "static", destination = "/static" }}]
key_value_stores = ["default"]
allowed_http_hosts = ["127.0.0.1:{port}"]
[component.trigger]
route = "/..."
[component.config]
greeting = "{{{{ greeting }}}}"
token = "{{{{ api_token }}}}"
'''


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """A plain HTTP server on loopback for the app's outbound requests; yields its port."""
    with answering_upstream() as server:
        yield server.port


@pytest.fixture(scope="module")
def v1_app(containerd_21, images_21, http_apps, upstream) -> Iterator[HttpTask]:
    manifest = V1_MANIFEST.format(port=upstream).encode()
    image = images_21.wasm_image("py-spin-v1", {"/": http_apps["py-spin"], "/spin.toml": manifest}, ["/"])
    with serving(containerd_21, image, "manifest-v1", {"SPIN_VARIABLE_API_TOKEN": "t0ken",
                                                       "SPIN_COMPONENTS_TO_RETAIN": "py-spin"}) as task:
        yield task


def test_a_version_1_app_serves_its_route(v1_app):
    response = v1_app.get("/hello")
    assert response.status == 200 and response.text == "Hello from Python!"
    assert v1_app.get("/.well-known/spin/info").json()["name"] == "py-spin-v1"


def test_component_config_is_the_components_variables(v1_app):
    assert v1_app.get("/vars?names=greeting,token").json() == {"greeting": "hello", "token": "t0ken"}


def test_environment_files_and_key_value_store_of_a_version_1_component(v1_app):
    assert v1_app.get("/env?name=APP_MODE").text == "v1"
    assert v1_app.get("/file?path=/static/hello.txt").text == "Hello from a static file!\n"
    assert v1_app.get("/kv/colour", "-X", "PUT", data=b"blue").text == "stored"
    assert v1_app.get("/kv/colour").text == "blue"


def test_allowed_http_hosts_allow_that_host_and_port_only(v1_app, upstream):
    allowed = v1_app.get(f"/outbound?url=http://127.0.0.1:{upstream}/ping")
    assert allowed.status == 200, allowed.text
    assert "203" in allowed.text and "upstream saw /ping" in allowed.text
    # Same server, other address: not in the list (a v1 component without allowed_outbound_hosts gets only the
    # database defaults besides its allowed_http_hosts).
    denied = v1_app.get(f"/outbound?url=http://127.0.0.2:{upstream}/ping")
    assert denied.status == 502, denied.text
