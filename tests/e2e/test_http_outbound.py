"""Outbound HTTP of a Spin Python SDK 3.4.1 app (py-spin) through containerd, against real servers on loopback.

The image is py-spin's build with a manifest of its own: component `caller` (route `/...`) may reach
`http(s)://127.0.0.1:*`, `https://localhost:*`, itself (`http://self`) and the app's components
(`http://*.spin.internal`); component `locked` (a private route, the same wasm) may reach nothing. Image
`outbound-ca` also carries a CA made by openssl as the container's bundle (`/etc/ssl/certs/ca-certificates.crt`) and
a `/runtime-config.toml` whose `[[client_tls]]` gives `caller` a client certificate for `localhost` (resolved through
the node's /etc/hosts, which `ctr run --net-host` mounts) and only the webpki roots for `127.0.0.2`; image
`outbound-no-ca` (run by containerd 1.6, the other by 2.1) has neither. The upstream servers (tests/outbound_support.py) count the connections they accept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.outbound_support import Pki, counting_server, make_pki, server_tls

pytestmark = pytest.mark.e2e

MANIFEST = b"""spin_manifest_version = 2

[application]
name = "py-spin-outbound"
version = "0.1.0"

[[trigger.http]]
route = "/..."
component = "caller"

[[trigger.http]]
route = { private = true }
component = "locked"

[component.caller]
source = "app.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:*", "https://127.0.0.1:*", "https://localhost:*", "https://127.0.0.2:*",
                          "http://self", "http://*.spin.internal"]

[component.locked]
source = "app.wasm"
"""

RUNTIME_CONFIG = b"""[[client_tls]]
component_ids = ["caller"]
hosts = ["localhost"]
ca_roots_file = "certs/ca.crt"
client_cert_file = "certs/client.crt"
client_private_key_file = "/certs/client.key"

[[client_tls]]
component_ids = ["caller"]
hosts = ["127.0.0.2"]
ca_use_webpki_roots = true
"""

WORKERS = {"SPIN_SHIM_HTTP_WORKERS": "2"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def app_without_ca(containerd_16, images_16, http_apps) -> Iterator[HttpTask]:
    # On the other containerd (1.6): serving() checks at teardown that none of its daemon's shims is left.
    image = images_16.wasm_image("outbound-no-ca", {"/": http_apps["py-spin"], "/spin.toml": MANIFEST}, ["/"])
    with serving(containerd_16, image, "outbound-no-ca", WORKERS) as task:
        yield task


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps, pki: Pki) -> Iterator[HttpTask]:
    image = images_21.wasm_image("outbound-ca", {
        "/": http_apps["py-spin"],
        "/spin.toml": MANIFEST,
        "/etc/ssl/certs/ca-certificates.crt": pki.ca_crt.read_bytes(),
        "/runtime-config.toml": RUNTIME_CONFIG,
        "/certs/ca.crt": pki.ca_crt.read_bytes(),
        "/certs/client.crt": pki.client_crt.read_bytes(),
        "/certs/client.key": pki.client_key.read_bytes(),
    }, ["/"])
    with serving(containerd_21, image, "outbound-ca", WORKERS) as task:
        yield task


# ---------------------------------------------------------------------------------------------------- keep-alive


def test_100_requests_of_one_guest_request_use_one_connection(app: HttpTask) -> None:
    with counting_server() as upstream:
        response = app.get(f"/outbound-many?n=100&url=http://127.0.0.1:{upstream.port}/ping")
        assert response.status == 200, response.text
        assert response.json() == {"200": 100}
        assert upstream.accepted == 1


def test_100_guest_requests_to_one_host_use_a_handful_of_connections(app: HttpTask) -> None:
    with counting_server() as upstream:
        for _ in range(100):
            response = app.get(f"/outbound?url=http://127.0.0.1:{upstream.port}/ping")
            assert response.text == "200\npong", response.text
        # One pool per worker process: at most one connection each for sequential requests.
        assert 1 <= upstream.accepted <= int(WORKERS["SPIN_SHIM_HTTP_WORKERS"]), upstream.accepted


# ---------------------------------------------------------------------------------------------------- streaming


def _expected_digest(size: int) -> str:
    pattern = bytes(i % 251 for i in range(251))
    return hashlib.sha256((pattern * (size // 251 + 1))[:size]).hexdigest()


@pytest.mark.parametrize("with_length", [False, True], ids=["chunked", "content-length"])
def test_a_10_mib_request_body_streams_to_the_upstream_as_the_guest_writes_it(app: HttpTask, with_length: bool):
    size = 10 << 20
    with counting_server() as upstream:
        base = f"http://127.0.0.1:{upstream.port}"
        response = app.get(f"/outbound-stream?mib=10&length={int(with_length)}&url={base}/upload&probe={base}/seen",
                           timeout=120)
        assert response.status == 200, response.text
        result = response.json()
        # After the guest wrote 1 MiB of 10 it asked the upstream what had arrived: a host that buffered the body
        # until the guest finished would have sent nothing yet.
        assert 0 < result["probe_seen"] < size, result
        assert result["sent"] == size
        assert result["status"] == 200
        assert result["upstream"] == {"bytes": size, "sha256": _expected_digest(size), "chunked": not with_length}


def test_a_large_response_body_streams_to_the_guest(app: HttpTask) -> None:
    # py-spin's /big through its own self request: 8 MiB read by the SDK in chunks from the in-process response.
    response = app.get("/outbound?url=/big%3Fbytes%3D8388608", timeout=120)
    assert response.status == 200
    assert response.body == b"200\n" + (b"0123456789abcdef" * (8388608 // 16))


# ---------------------------------------------------------------------------------------------------- TLS


def test_https_is_verified_against_the_containers_ca_bundle(app: HttpTask, pki: Pki) -> None:
    with counting_server(server_tls(pki)) as upstream:
        for _ in range(3):
            response = app.get(f"/outbound?url=https://127.0.0.1:{upstream.port}/ping")
            assert response.text == "200\npong", response.text + app.log()
        assert upstream.accepted <= int(WORKERS["SPIN_SHIM_HTTP_WORKERS"])  # TLS connections are pooled too


def test_https_to_a_ca_the_container_does_not_trust_fails_clearly(app_without_ca: HttpTask, pki: Pki) -> None:
    with counting_server(server_tls(pki)) as upstream:
        response = app_without_ca.get(f"/outbound?url=https://127.0.0.1:{upstream.port}/ping")
        assert (response.status, response.text) == (502, "ErrorCode_TlsProtocolError()")
        log = app_without_ca.log()
        assert "certificate verify failed" in log.lower(), log


def test_client_tls_presents_the_configured_client_certificate(app: HttpTask, pki: Pki) -> None:
    with counting_server(server_tls(pki, require_client_cert=True)) as upstream:
        response = app.get(f"/outbound?url=https://localhost:{upstream.port}/whoami")
        assert response.text == "200\nclient", response.text + app.log()
        # The same server by IP: no [[client_tls]] table matches, so no certificate, and the server refuses.
        refused = app.get(f"/outbound?url=https://127.0.0.1:{upstream.port}/whoami")
        assert refused.status == 502, refused.text


def test_webpki_roots_are_mozillas_and_do_not_include_a_private_ca(app: HttpTask, pki: Pki) -> None:
    # [[client_tls]] for 127.0.0.2 trusts only the webpki roots (certifi's bundle, read inside the sandbox): the
    # handshake runs and fails on verification, which shows the bundle was loaded and the container's was not used.
    with counting_server(server_tls(pki), host="127.0.0.2") as upstream:
        response = app.get(f"/outbound?url=https://127.0.0.2:{upstream.port}/ping")
        assert (response.status, response.text) == (502, "ErrorCode_TlsProtocolError()")
        log = app.log()
        assert f"127.0.0.2:{upstream.port}" in log and "certificate verify failed" in log.lower(), log


# ---------------------------------------------------------------------------------------------------- chaining


def test_self_requests_go_through_the_apps_router(app: HttpTask) -> None:
    assert app.get("/outbound?url=/hello").text == "200\nHello from Python!"
    assert app.get("/outbound?url=http://self.alt/hello").text == "200\nHello from Python!"
    assert app.get("/outbound?url=/no-such-route").text == "404\nnot found"  # py-spin's own 404


def test_service_chaining_reaches_a_private_component(app: HttpTask) -> None:
    response = app.get("/outbound?url=http://locked.spin.internal/spin-headers")
    status, _, body = response.text.partition("\n")
    assert status == "200", response.text
    headers = json.loads(body)
    assert headers["spin-client-addr"] == "0.0.0.0:0" and headers["spin-path-info"] == "/spin-headers"


def test_self_and_chained_requests_are_refused_where_not_allowed(app: HttpTask) -> None:
    # `locked` may reach nothing: its self request, reached through the chain, is denied with Spin's error.
    response = app.get("/outbound?url=http://locked.spin.internal/outbound%3Furl%3D/hello")
    assert response.text == "502\nErrorCode_HttpRequestDenied()", response.text
    # `*.spin.internal` means the app's components: another name is denied, not looked up.
    ghost = app.get("/outbound?url=http://ghost.spin.internal/hello")
    assert (ghost.status, ghost.text) == (502, "ErrorCode_HttpRequestDenied()")
    log = app.log()
    assert "its own app but it does not have permission" in log and "ghost.spin.internal" in log, log
    assert "BEGIN" not in log  # no key or certificate material reaches the container log
