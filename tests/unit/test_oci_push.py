"""oci.push: the layout `spin registry push` gives a Spin app (spin crates/oci/src/client.rs; the locked app of
crates/locked-app/src/locked.rs), assembled without a registry.

The upload half is exercised here only against tiny stdlib HTTP servers (refusal, nothing listening); the real
registry and containerd pulls are in tests/e2e/test_oci_push.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oci import media_types as mt
from oci.push import (
    PushError,
    assemble_app,
    is_loopback_registry,
    main,
    parse_reference,
)
from runtime.errors import ManifestError
from tests.upstream_support import serving_in_thread

WASM = b"\0asm\x01\0\0\0"
OTHER_WASM = b"\0asm\x0d\0\x01\0"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_app(root: Path, toml_body: str, files: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "spin.toml").write_text('spin_manifest_version = 2\n' + toml_body)
    for rel, data in {"app.wasm": WASM, **(files or {})}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


SIMPLE = """
[application]
name = "simple"

[[trigger.http]]
route = "/..."
component = "web"

[component.web]
source = "app.wasm"
"""


def component(locked: dict, component_id: str) -> dict:
    return next(c for c in locked["components"] if c["id"] == component_id)


# ---------------------------------------------------------------------------------------------------- layers


def test_locked_app_is_the_last_layer_and_the_config_labels_its_digest(tmp_path):
    artifact = assemble_app(make_app(tmp_path / "app", SIMPLE), created="2024-05-06T07:08:09Z")
    assert [layer.media_type for layer in artifact.layers] == [mt.WASM_LAYER, mt.SPIN_APPLICATION]
    locked_blob = artifact.layers[-1]
    assert json.loads(locked_blob.read()) == artifact.locked_app
    assert locked_blob.digest == sha(locked_blob.read()) and locked_blob.size == len(locked_blob.read())

    config = json.loads(artifact.config.read())
    assert artifact.config.media_type == mt.OCI_CONFIG
    assert config == {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {mt.LOCKED_APP_DIGEST_LABEL: locked_blob.digest}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def test_manifest_is_an_oci_image_manifest_with_title_and_created(tmp_path):
    toml = SIMPLE.replace('name = "simple"', 'name = "simple"\nversion = "1.2.3"')
    artifact = assemble_app(make_app(tmp_path / "app", toml), created="2024-05-06T07:08:09Z")
    manifest = json.loads(artifact.manifest.read())
    assert artifact.manifest.digest == sha(artifact.manifest.read())
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"] == artifact.config.descriptor()
    assert manifest["layers"] == [layer.descriptor() for layer in artifact.layers]
    assert manifest["annotations"] == {
        "org.opencontainers.image.title": "simple",
        "org.opencontainers.image.version": "1.2.3",
        "org.opencontainers.image.created": "2024-05-06T07:08:09Z",
    }


def test_created_defaults_to_now_in_rfc3339(tmp_path):
    artifact = assemble_app(make_app(tmp_path / "app", SIMPLE))
    created = json.loads(artifact.manifest.read())["annotations"]["org.opencontainers.image.created"]
    assert len(created) == 20 and created[10] == "T" and created.endswith("Z")
    assert "org.opencontainers.image.version" not in json.loads(artifact.manifest.read())["annotations"]


def test_identical_wasm_is_one_layer_and_distinct_wasm_another(tmp_path):
    toml = SIMPLE + """
[[trigger.http]]
route = "/b/..."
component = "same"

[[trigger.http]]
route = "/c/..."
component = "other"

[component.same]
source = "copy.wasm"

[component.other]
source = "other.wasm"
"""
    app = make_app(tmp_path / "app", toml, {"copy.wasm": WASM, "other.wasm": OTHER_WASM})
    artifact = assemble_app(app)
    wasm_layers = [layer for layer in artifact.layers if layer.media_type == mt.WASM_LAYER]
    assert [layer.digest for layer in wasm_layers] == [sha(WASM), sha(OTHER_WASM)]
    sources = {c["id"]: c["source"] for c in artifact.locked_app["components"]}
    assert sources == {
        "web": {"content_type": "application/wasm", "digest": sha(WASM)},
        "same": {"content_type": "application/wasm", "digest": sha(WASM)},
        "other": {"content_type": "application/wasm", "digest": sha(OTHER_WASM)},
    }


def test_files_up_to_128_bytes_are_inlined_and_larger_ones_are_data_layers(tmp_path):
    small, exact, large = b"s" * 10, b"e" * 128, b"L" * 129
    toml = SIMPLE + 'files = ["small.txt", "exact.txt", "large.bin", "empty"]\n'
    app = make_app(tmp_path / "app", toml,
                   {"small.txt": small, "exact.txt": exact, "large.bin": large, "empty": b""})
    artifact = assemble_app(app)
    files = {f["path"]: f for f in component(artifact.locked_app, "web")["files"]}
    assert files["small.txt"] == {"digest": sha(small), "inline": base64.b64encode(small).decode(), "path": "small.txt"}
    assert files["exact.txt"]["inline"] == base64.b64encode(exact).decode()
    assert files["empty"] == {"digest": sha(b""), "inline": "", "path": "empty"}
    assert files["large.bin"] == {"digest": sha(large), "path": "large.bin"}
    data_layers = [layer for layer in artifact.layers if layer.media_type == mt.DATA_LAYER]
    assert [(layer.digest, layer.size, layer.read()) for layer in data_layers] == [(sha(large), 129, large)]


def test_layer_order_is_per_component_wasm_then_its_files_then_the_locked_app(tmp_path):
    big_a, big_b = b"A" * 200, b"B" * 200
    toml = """
[application]
name = "order"

[[trigger.http]]
route = "/a/..."
component = "one"

[[trigger.http]]
route = "/b/..."
component = "two"

[component.one]
source = "app.wasm"
files = ["a.bin"]

[component.two]
source = "other.wasm"
files = ["b.bin", "a-copy.bin"]
"""
    app = make_app(tmp_path / "app", toml,
                   {"other.wasm": OTHER_WASM, "a.bin": big_a, "b.bin": big_b, "a-copy.bin": big_a})
    artifact = assemble_app(app)
    assert [(layer.media_type, layer.digest) for layer in artifact.layers[:-1]] == [
        (mt.WASM_LAYER, sha(WASM)),
        (mt.DATA_LAYER, sha(big_a)),
        (mt.WASM_LAYER, sha(OTHER_WASM)),
        # a-copy.bin has a.bin's content: the component lists it, the push uploads it once.
        (mt.DATA_LAYER, sha(big_b)),
    ]
    assert component(artifact.locked_app, "two")["files"] == [
        {"digest": sha(big_a), "path": "a-copy.bin"},
        {"digest": sha(big_b), "path": "b.bin"},
    ]


# ---------------------------------------------------------------------------------------------------- files


def test_a_directory_mapping_lists_every_file_under_its_destination(tmp_path):
    toml = SIMPLE + 'files = [{ source = "assets", destination = "/static" }]\n'
    app = make_app(tmp_path / "app", toml, {"assets/index.html": b"<h1>", "assets/css/site.css": b"body{}"})
    paths = [f["path"] for f in component(assemble_app(app).locked_app, "web")["files"]]
    assert paths == ["static/css/site.css", "static/index.html"]


def test_a_mapping_to_the_root_and_a_single_file_mapping(tmp_path):
    toml = SIMPLE + ('files = [{ source = "www", destination = "/" }, '
                     '{ source = "conf/app.conf", destination = "/etc/app.conf" }]\n')
    app = make_app(tmp_path / "app", toml, {"www/index.html": b"hi", "conf/app.conf": b"k=v"})
    paths = [f["path"] for f in component(assemble_app(app).locked_app, "web")["files"]]
    assert paths == ["etc/app.conf", "index.html"]


def test_globs_keep_paths_relative_to_the_app_dir_and_exclude_files_apply(tmp_path):
    toml = SIMPLE + 'files = ["data/*.txt", "deep/**/*"]\nexclude_files = ["data/secret.txt", "deep/**/*.bak"]\n'
    app = make_app(tmp_path / "app", toml, {
        "data/a.txt": b"a", "data/secret.txt": b"s", "data/b.md": b"b", "data/sub/c.txt": b"c",
        "deep/x/y.txt": b"y", "deep/x/y.bak": b"old",
    })
    paths = [f["path"] for f in component(assemble_app(app).locked_app, "web")["files"]]
    assert paths == ["data/a.txt", "deep/x/y.txt"]


def test_exclude_files_apply_inside_a_mapped_directory(tmp_path):
    toml = SIMPLE + ('files = [{ source = "assets", destination = "/static" }]\n'
                     'exclude_files = ["assets/private/**"]\n')
    app = make_app(tmp_path / "app", toml, {"assets/ok.txt": b"ok", "assets/private/key": b"k"})
    paths = [f["path"] for f in component(assemble_app(app).locked_app, "web")["files"]]
    assert paths == ["static/ok.txt"]


def test_no_host_path_appears_anywhere_in_the_pushed_json(tmp_path):
    toml = SIMPLE + 'files = [{ source = "assets", destination = "/static" }]\n'
    app = make_app(tmp_path / "app", toml, {"assets/big.bin": b"x" * 1000})
    artifact = assemble_app(app)
    for blob in (artifact.layers[-1], artifact.config, artifact.manifest):
        assert str(tmp_path) not in blob.read().decode()
    assert "origin" not in artifact.locked_app["metadata"]
    for entry in component(artifact.locked_app, "web")["files"]:
        assert not entry["path"].startswith("/") and ".." not in entry["path"].split("/")
        assert "\\" not in entry["path"]


def test_a_symlink_leaving_the_app_dir_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    app = make_app(tmp_path / "app", SIMPLE + 'files = [{ source = "assets", destination = "/s" }]\n',
                   {"assets/ok.txt": b"ok"})
    (app / "assets" / "leak.txt").symlink_to(outside)
    with pytest.raises(ManifestError, match="leak.txt"):
        assemble_app(app)


# ---------------------------------------------------------------------------------------------------- the JSON


FULL = """
[application]
name = "full"
version = "0.3.0"
description = "all the fields"
authors = ["Ada <ada@example.com>"]

[application.trigger.http]
base = "/"

[variables]
greeting = { default = "hello", description = "what to say" }
api_token = { required = true, secret = true }

[[trigger.http]]
id = "main"
route = "/..."
component = "web"
executor = { type = "wagi", argv = "${SCRIPT_NAME}" }

[[trigger.http]]
route = { private = true }
component = "inner"

[component.web]
source = "app.wasm"
description = "the front"
allowed_outbound_hosts = ["https://example.com"]
allowed_http_hosts = ["legacy.example.com"]
key_value_stores = ["default"]
sqlite_databases = ["db"]
ai_models = ["llama2-chat"]
environment = { MODE = "prod" }

[component.web.variables]
greeting = "{{ greeting }}"
token = "{{ api_token }}"

[component.inner]
source = "app.wasm"
"""


def test_locked_app_json_has_spins_shape(tmp_path):
    locked = assemble_app(make_app(tmp_path / "app", FULL)).locked_app
    assert locked["spin_lock_version"] == 0
    assert "must_understand" not in locked and "host_requirements" not in locked
    assert locked["metadata"] == {
        "name": "full",
        "version": "0.3.0",
        "description": "all the fields",
        "authors": ["Ada <ada@example.com>"],
        "triggers": {"http": {"base": "/"}},
        "trigger": {"type": "http"},
    }
    assert locked["variables"] == {
        "greeting": {"default": "hello", "description": "what to say", "secret": False},
        "api_token": {"secret": True},
    }
    assert locked["triggers"] == [
        {"id": "main", "trigger_type": "http", "trigger_config": {
            "component": "web", "route": "/...", "executor": {"type": "wagi", "argv": "${SCRIPT_NAME}"}}},
        {"id": "http-trigger-2", "trigger_type": "http", "trigger_config": {
            "component": "inner", "route": {"private": True}}},
    ]
    assert component(locked, "web") == {
        "id": "web",
        "metadata": {
            "description": "the front",
            "allowed_outbound_hosts": ["https://example.com", "legacy.example.com"],
            "key_value_stores": ["default"],
            "databases": ["db"],
            "ai_models": ["llama2-chat"],
        },
        "source": {"content_type": "application/wasm", "digest": sha(WASM)},
        "env": {"MODE": "prod"},
        "config": {"greeting": "{{ greeting }}", "token": "{{ api_token }}"},
    }
    # Empty maps and lists are left out; the metadata lists Spin always writes are kept.
    assert component(locked, "inner") == {
        "id": "inner",
        "metadata": {"allowed_outbound_hosts": [], "key_value_stores": [], "databases": [], "ai_models": []},
        "source": {"content_type": "application/wasm", "digest": sha(WASM)},
    }


def test_metadata_trigger_only_with_exactly_one_trigger_type(tmp_path):
    toml = SIMPLE + """
[[trigger.command]]
component = "cli"

[component.cli]
source = "app.wasm"
"""
    locked = assemble_app(make_app(tmp_path / "app", toml)).locked_app
    assert "trigger" not in locked["metadata"]
    assert [t["trigger_type"] for t in locked["triggers"]] == ["http", "command"]
    assert "variables" not in locked


def test_inline_trigger_components_are_hoisted_and_referenced_by_id(tmp_path):
    toml = """
[application]
name = "inline"

[[trigger.http]]
id = "front"
route = "/..."
component = { source = "app.wasm", environment = { A = "1" } }
"""
    locked = assemble_app(make_app(tmp_path / "app", toml)).locked_app
    assert locked["triggers"][0]["trigger_config"] == {"component": "front", "route": "/..."}
    assert component(locked, "front")["env"] == {"A": "1"}


def test_a_spin_toml_path_works_like_its_directory(tmp_path):
    app = make_app(tmp_path / "app", SIMPLE)
    by_dir = assemble_app(app, created="2024-01-01T00:00:00Z")
    by_file = assemble_app(app / "spin.toml", created="2024-01-01T00:00:00Z")
    assert by_dir.manifest.digest == by_file.manifest.digest


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_spin_toml_is_a_clear_error(tmp_path):
    with pytest.raises(PushError, match=r"spin\.toml: not found"):
        assemble_app(tmp_path)


def test_a_source_that_is_not_wasm_names_the_component_and_file(tmp_path):
    app = make_app(tmp_path / "app", SIMPLE)
    (app / "app.wasm").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(PushError, match=r"component 'web': source 'app.wasm' is not a wasm file"):
        assemble_app(app)


def test_a_remote_source_is_refused(tmp_path):
    toml = SIMPLE.replace('source = "app.wasm"', 'source = { url = "https://x/app.wasm", digest = "sha256:00" }')
    with pytest.raises(PushError, match="component 'web': only a local .wasm `source` can be pushed"):
        assemble_app(make_app(tmp_path / "app", toml))


def test_dependencies_are_refused(tmp_path):
    toml = SIMPLE + '\n[component.web.dependencies]\n"ns:pkg/iface" = { path = "dep.wasm" }\n'
    with pytest.raises(PushError, match="component 'web': `dependencies` are not supported"):
        assemble_app(make_app(tmp_path / "app", toml))


def test_a_missing_wasm_is_the_manifests_error(tmp_path):
    app = make_app(tmp_path / "app", SIMPLE)
    (app / "app.wasm").unlink()
    with pytest.raises(ManifestError, match="source file 'app.wasm' not found"):
        assemble_app(app)


def test_a_missing_files_source_is_the_manifests_error(tmp_path):
    app = make_app(tmp_path / "app", SIMPLE + 'files = [{ source = "nope", destination = "/x" }]\n')
    with pytest.raises(ManifestError, match="'nope' not found"):
        assemble_app(app)


# ---------------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5000/apps/hello:v1", ("127.0.0.1:5000", "apps/hello", "v1")),
    ("localhost/hello:latest", ("localhost", "hello", "latest")),
    ("ghcr.io/org/team/app:1.0.0-rc.1", ("ghcr.io", "org/team/app", "1.0.0-rc.1")),
])
def test_references_name_registry_repository_and_tag(text, expected):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == expected
    assert str(ref) == text


@pytest.mark.parametrize("text, message", [
    ("hello:v1", "must start with a registry host"),
    ("127.0.0.1:5000/hello", "needs a tag"),
    ("127.0.0.1:5000/hello@sha256:abcd", "needs a tag, not a digest"),
    ("127.0.0.1:5000/Hello:v1", "lower-case"),
])
def test_bad_references_are_refused_with_the_reason(text, message):
    with pytest.raises(PushError, match=message):
        parse_reference(text)


def test_loopback_registries_are_plain_http():
    assert is_loopback_registry("127.0.0.1:5000") and is_loopback_registry("localhost:5000")
    assert is_loopback_registry("[::1]:5000") and is_loopback_registry("localhost")
    assert not is_loopback_registry("ghcr.io") and not is_loopback_registry("10.0.0.1:5000")


# ---------------------------------------------------------------------------------------------------- CLI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_nothing_listening_is_exit_1_with_one_line_naming_the_registry(tmp_path, capsys):
    port = _free_port()
    assert main([str(make_app(tmp_path / "app", SIMPLE)), f"127.0.0.1:{port}/apps/x:v1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach registry 127.0.0.1:{port}" in err
    assert "Traceback" not in err


class _RefusingRegistry(http.server.BaseHTTPRequestHandler):
    """Answers /v2/ like a registry, and refuses every upload the way distribution does (JSON errors)."""

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, b"{}")

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(404, b"")

    def do_POST(self) -> None:  # noqa: N802
        body = json.dumps({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})
        self._answer(403, body.encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_cli_registry_refusal_is_exit_1_with_status_and_registry_message(tmp_path, capsys):
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingRegistry)) as server:
        port = server.server_address[1]
        assert main([str(make_app(tmp_path / "app", SIMPLE)), f"127.0.0.1:{port}/apps/x:v1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"registry 127.0.0.1:{port} refused blob sha256:" in err
    assert "HTTP 403" in err and "requested access to the resource is denied" in err


def test_cli_app_errors_are_exit_1_without_traceback(tmp_path, capsys):
    assert main([str(tmp_path), "127.0.0.1:1/apps/x:v1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("containerd-shim-spin-v2 push: ") and "not found" in err and err.count("\n") == 1


def test_cli_bad_reference_is_exit_1(tmp_path, capsys):
    assert main([str(make_app(tmp_path / "app", SIMPLE)), "hello"]) == 1
    assert "must start with a registry host" in capsys.readouterr().err


def test_shim_cli_dispatches_push_and_keeps_import_cheap():
    # `push --help` through the console entry point; and importing shim.cli.main must not import oras or oci.push.
    result = subprocess.run([sys.executable, "-c", "from shim.cli.main import main; main(['push', '--help'])"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "REGISTRY[:PORT]/REPOSITORY:TAG" in result.stdout and "--insecure" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, shim.cli.main; print('oras' in sys.modules, 'oci.push' in sys.modules)"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], check=True)
    assert probe.stdout.split() == ["False", "False"]
