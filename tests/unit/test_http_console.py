"""What the HTTP trigger writes for its reader: Spin's start-up lines, the unreachable-listener warning, the access
log and the timestamps of failure lines (runtime.http.console), and the router's listing they are built from."""

from __future__ import annotations

import calendar
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.compiled import ComponentLoad
from runtime.errors import InvalidSettingError
from runtime.http.console import (access_line, access_log_enabled, base_url, interface_names, is_loopback_host,
                                  request_failure_line, startup_lines, trigger_summary, unreachable_warning,
                                  utc_timestamp)
from runtime.http.routing import Router
from runtime.precompile import CacheResult
from runtime.wasm_binary import WasmKind

NOON = calendar.timegm((2026, 12, 3, 12, 0, 0)) + 0.0425


def _load(name: str, outcome: str, seconds: float) -> ComponentLoad:
    return ComponentLoad(name, Path("/app.wasm"), WasmKind.COMPONENT,
                         CacheResult(outcome, "ab" * 32, None, seconds))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ start-up


def test_startup_lines_are_spins_serving_and_available_routes():
    router, _ = Router.build([("/...", "fallback"), ("/api/...", "api"), ("/api/exact", "exact"), ("/", "root"),
                              (None, "internal")])
    lines = startup_lines(base_url("http", "0.0.0.0:80"), router.listing)
    # Spin: "Serving http://0.0.0.0:80", "Available Routes:", "  <key>: <url><route>" with " (wildcard)".
    assert lines[:2] == ["Serving http://0.0.0.0:80", "Available Routes:"]
    assert sorted(lines[2:]) == sorted([
        "  fallback: http://0.0.0.0:80 (wildcard)",
        "  api: http://0.0.0.0:80/api (wildcard)",
        "  exact: http://0.0.0.0:80/api/exact",
        "  root: http://0.0.0.0:80",
    ])
    assert not any("internal" in line for line in lines)  # a private route is reachable by no URL


def test_startup_lines_name_a_static_response_by_its_trigger():
    router, _ = Router.build([("/static/...", "static:trigger-3"), ("/*", "web")])
    lines = startup_lines("http://[::]:8080", router.listing, {"static:trigger-3": "trigger-3"})
    assert lines[2:] == ["  trigger-3: http://[::]:8080/static (wildcard)", "  web: http://[::]:8080 (wildcard)"]


def test_trigger_summary_says_workers_and_how_each_component_was_loaded():
    line = trigger_summary(2, [_load("js-echo", "hit", 0.0034), _load("api", "compiled", 5.214),
                               _load("old", "rebuilt", 1.0)], statics=1)
    assert line == ("spin: http trigger: 2 worker processes; 1 static response; js-echo: precompiled, cache hit "
                    "(3 ms); api: compiled in 5.21 s (cached for the next start); old: compiled in 1.00 s "
                    "(the cached blob was invalid) (cached for the next start)")
    assert trigger_summary(1, []) == "spin: http trigger: 1 worker process"


# ------------------------------------------------------------------------------------------------ reachability


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fe80::1%eth0"])
def test_a_listener_in_a_loopback_only_namespace_is_warned_about(host):
    warning = unreachable_warning(host, f"{host}:80", ["lo"])
    assert warning is not None and warning.startswith("Warning: the HTTP trigger listens on ")
    assert "--net-host" in warning and "only a loopback interface" in warning


@pytest.mark.parametrize("host, interfaces", [
    ("0.0.0.0", ["lo", "eth0"]),       # a pod's CNI network
    ("0.0.0.0", ["lo", "ens4", "cni0"]),  # the host's network
    ("127.0.0.1", ["lo"]),              # local only, on purpose
    ("::1", ["lo"]),
    ("0.0.0.0", None),                  # the kernel would not say: no guess
])
def test_no_warning_where_the_listener_is_reachable_or_meant_to_be_local(host, interfaces):
    assert unreachable_warning(host, f"{host}:80", interfaces) is None


def test_loopback_hosts():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("127.1.2.3") and is_loopback_host("::1")
    assert is_loopback_host("::ffff:127.0.0.1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::") and not is_loopback_host("10.0.0.1")


def test_interface_names_are_this_namespaces():
    assert "lo" in (interface_names() or [])
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare(1) for a fresh network namespace")
    code = "import sys; sys.path.insert(0, %r); from runtime.http.console import interface_names; " \
           "print(interface_names())" % str(Path(__file__).resolve().parents[2])
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['lo']"


# ------------------------------------------------------------------------------------------------ requests


def test_utc_timestamp_is_iso_8601_with_milliseconds():
    assert utc_timestamp(NOON) == "2026-12-03T12:00:00.042Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_timestamp())


def test_access_line_fields():
    assert access_line(NOON, "GET", "/hello", 200, 0.00123, "js-echo") == \
        "2026-12-03T12:00:00.042Z GET /hello 200 1.23ms js-echo"
    assert access_line(NOON, "POST", "/up", None, 2.5, "api", "client gone") == \
        "2026-12-03T12:00:00.042Z POST /up - 2500.00ms api client gone"


def test_failure_line_names_the_request():
    assert request_failure_line(NOON, "spin: api: trap: unreachable", "GET", "/raise") == \
        "2026-12-03T12:00:00.042Z spin: api: trap: unreachable [GET /raise]"


@pytest.mark.parametrize("value, enabled", [
    (None, False), ("", False), ("0", False), ("false", False), ("off", False), ("no", False),
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" 1 ", True),
])
def test_access_log_switch(value, enabled):
    env = {} if value is None else {"SPIN_SHIM_ACCESS_LOG": value}
    assert access_log_enabled(env) is enabled


def test_access_log_switch_refuses_a_typo():
    with pytest.raises(InvalidSettingError, match="SPIN_SHIM_ACCESS_LOG='ture'"):
        access_log_enabled({"SPIN_SHIM_ACCESS_LOG": "ture"})


def test_listening_on_a_host_name_binds_what_it_resolves_to():
    from runtime.http.listen import bind_listener

    sock = bind_listener("localhost:0")
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
