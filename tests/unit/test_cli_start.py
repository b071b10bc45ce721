"""The pure parts of the shim command: Go-style flags, the socket address, stdin options."""

import hashlib

import pytest

from shim.cli.flags import UsageError, parse_flags
from shim.cli.start import socket_path
from shim.service.options import (
    RUNTIME_OPTIONS_TYPE_URL,
    options_from_toml,
    parse_start_stdin,
)


def test_flags_as_containerd_passes_them_for_start():
    flags = parse_flags(["-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock",
                         "-publish-binary", "/usr/bin/containerd", "-id", "abc", "-debug", "start"])
    assert (flags.namespace, flags.address, flags.id, flags.debug, flags.action) == (
        "k8s.io", "/run/containerd/containerd.sock", "abc", True, "start")
    assert flags.publish_binary == "/usr/bin/containerd"


def test_flags_accept_go_equals_and_double_dash_forms():
    flags = parse_flags(["--namespace=default", "-id=x", "-bundle", "/b", "-debug=false", "delete"])
    assert (flags.namespace, flags.id, flags.bundle, flags.debug, flags.action) == (
        "default", "x", "/b", False, "delete")


def test_unknown_flag_is_a_usage_error():
    with pytest.raises(UsageError, match="not defined: -bogus"):
        parse_flags(["-bogus", "start"])


def test_missing_flag_value_is_a_usage_error():
    with pytest.raises(UsageError, match="needs an argument"):
        parse_flags(["-id"])


def test_version_flag():
    assert parse_flags(["-v"]).version
    assert parse_flags(["-version"]).version


def test_socket_path_is_sha256_of_go_filepath_join():
    # Go: filepath.Join("/run/containerd/containerd.sock", "k8s.io", "sandbox") cleaned.
    joined = "/run/containerd/containerd.sock/k8s.io/sandbox"
    expected = "/run/containerd/s/" + hashlib.sha256(joined.encode()).hexdigest()
    assert socket_path("/run/containerd/containerd.sock", "k8s.io", "sandbox") == expected
    assert socket_path("/run/containerd//containerd.sock/", "k8s.io", "sandbox") == expected


def test_socket_path_honours_bootstrap_socket_dir():
    assert socket_path("/a.sock", "ns", "g", "/tmp/s").startswith("/tmp/s/")


def test_empty_stdin_means_no_options():
    assert parse_start_stdin(b"", "t1").options == {}


def test_runtime_options_any_on_stdin_gives_systemd_cgroup():
    from google.protobuf import any_pb2

    from proto.containerd.runtimeoptions.v1 import api_pb2

    options = api_pb2.Options(type_url=RUNTIME_OPTIONS_TYPE_URL, config_body=b"SystemdCgroup = true\n")
    wrapped = any_pb2.Any(type_url=RUNTIME_OPTIONS_TYPE_URL, value=options.SerializeToString())
    parsed = parse_start_stdin(wrapped.SerializeToString(), "t1")
    assert not parsed.bootstrap
    assert parsed.options == {"systemd_cgroup": True}


def test_bootstrap_params_of_containerd_2_3_are_recognised():
    from google.protobuf import any_pb2

    from proto.containerd.runtime.bootstrap.v1 import bootstrap_pb2
    from proto.containerd.runtimeoptions.v1 import api_pb2

    options = api_pb2.Options(config_body=b"systemd_cgroup = true")
    params = bootstrap_pb2.BootstrapParams(
        instance_id="t1", namespace="k8s.io", log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        containerd_ttrpc_address="/run/c.sock.ttrpc", containerd_grpc_address="/run/c.sock",
        socket_dir="/run/s")
    params.extensions.add().value.CopyFrom(
        any_pb2.Any(type_url=RUNTIME_OPTIONS_TYPE_URL, value=options.SerializeToString()))
    parsed = parse_start_stdin(params.SerializeToString(), "t1")
    assert parsed.bootstrap
    assert (parsed.namespace, parsed.ttrpc_address, parsed.grpc_address, parsed.socket_dir) == (
        "k8s.io", "/run/c.sock.ttrpc", "/run/c.sock", "/run/s")
    assert parsed.debug
    assert parsed.options == {"systemd_cgroup": True}


def test_garbage_on_stdin_is_ignored_not_fatal():
    assert parse_start_stdin(b"\xff\xff\xff\xff", "t1").options == {}


def test_toml_options_ignore_unknown_and_malformed():
    assert options_from_toml("Foo = 1") == {}
    assert options_from_toml("not [toml") == {}


def test_the_start_path_imports_none_of_the_heavy_modules():
    """`start` runs on every `ctr run` and pod start, before containerd can create the task: each of these would
    add milliseconds to it (typing ~5, hashlib's OpenSSL ~4, dataclasses' inspect ~9, asyncio ~15, protobuf and
    wasmtime far more). The daemon imports them, in the fork server or after the cold path's fork."""
    import json
    import subprocess
    import sys

    code = ("import sys; before = set(sys.modules)\n"
            "import shim.cli.main, shim.cli.start, shim.forkserver.client\n"
            "import json; print(json.dumps(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    imported = set(json.loads(result.stdout))
    heavy = {"typing", "hashlib", "dataclasses", "inspect", "asyncio", "logging", "pathlib", "subprocess",
             "google.protobuf", "grpc", "wasmtime", "tomllib", "shim.daemon.serve", "shim.service.api"}
    assert "shim.forkserver.client" in imported  # the probe imported what it names
    assert imported & heavy == set()
