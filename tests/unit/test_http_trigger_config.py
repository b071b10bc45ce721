"""[[trigger.http]] tables and the task-env knobs of the http trigger, checked before any wasm is loaded."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidSettingError, ManifestError
from runtime.http.trigger import (
    HttpRoute,
    parse_http_triggers,
    request_timeout,
    retained_routes,
    worker_count,
)
from runtime.manifest import parse_manifest

HEAD = """spin_manifest_version = 2
[application]
name = "app"
[component.a]
source = "a.wasm"
[component.b]
source = "b.wasm"
"""


def routes_of(triggers: str) -> list[HttpRoute]:
    return parse_http_triggers(parse_manifest(HEAD + triggers, "/spin.toml"))


def test_routes_private_routes_and_executors_are_parsed():
    routes = routes_of("""
[[trigger.http]]
route = "/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "b"
[[trigger.http]]
id = "cgi"
route = "/cgi/..."
component = "b"
executor = { type = "wagi", entrypoint = "main", argv = "${SCRIPT_NAME}" }
""")
    assert [(r.route, r.component_id, r.executor) for r in routes] == [
        ("/...", "a", None), (None, "b", None), ("/cgi/...", "b", "wagi")]
    assert routes[2].wagi_entrypoint == "main" and routes[2].wagi_argv == "${SCRIPT_NAME}"


@pytest.mark.parametrize("table, message", [
    ('component = "a"', "`route` is required"),
    ('route = { private = false }\ncomponent = "a"', "{ private = true }"),
    ('route = "/"\ncomponent = "a"\nexecutor = { type = "fast" }', "`executor` must be"),
    ('route = "/"\ncomponent = "a"\nexecutor = { type = "spin", argv = "x" }', "has no option"),
    ('route = "/"\ncomponent = "a"\nbase = "/x"', "unknown key"),
    ('route = "/"\nstatic_response = { status_code = 200 }', "static_response"),
])
def test_bad_trigger_tables_name_the_problem(table, message):
    with pytest.raises(ManifestError, match="/spin.toml") as error:
        routes_of("[[trigger.http]]\n" + table + "\n")
    assert message in str(error.value)


def test_components_to_retain_keeps_only_their_routes():
    routes = routes_of('[[trigger.http]]\nroute = "/a"\ncomponent = "a"\n[[trigger.http]]\nroute = "/b"\ncomponent = "b"\n')
    manifest = parse_manifest(HEAD, "/spin.toml")
    kept = retained_routes(routes, {"SPIN_COMPONENTS_TO_RETAIN": " b "}, manifest)
    assert [r.component_id for r in kept] == ["b"]
    assert retained_routes(routes, {}, manifest) == routes
    with pytest.raises(InvalidSettingError, match="no component.*'zzz'"):
        retained_routes(routes, {"SPIN_COMPONENTS_TO_RETAIN": "a,zzz"}, manifest)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "65"])
def test_bad_worker_counts_are_refused(raw):
    with pytest.raises(InvalidSettingError, match="SPIN_SHIM_HTTP_WORKERS"):
        worker_count({"SPIN_SHIM_HTTP_WORKERS": raw})


def test_worker_count_and_timeout_from_env():
    assert worker_count({"SPIN_SHIM_HTTP_WORKERS": "3"}) == 3
    assert request_timeout({}) == 30.0
    assert request_timeout({"SPIN_SHIM_REQUEST_TIMEOUT": "0.5"}) == 0.5
    for raw in ("0", "nan", "soon", "-3"):
        with pytest.raises(InvalidSettingError, match="SPIN_SHIM_REQUEST_TIMEOUT"):
            request_timeout({"SPIN_SHIM_REQUEST_TIMEOUT": raw})


def test_a_route_spin_rejects_names_the_manifest(tmp_path):
    from runtime.http.trigger import _build_router

    manifest = parse_manifest(HEAD + '[[trigger.http]]\nroute = "/a/:/b"\ncomponent = "a"\n', "/spin.toml")
    with pytest.raises(ManifestError, match=r"^/spin.toml: \[\[trigger.http\]\]: .*route /a/:/b.*component a"):
        _build_router(manifest, parse_http_triggers(manifest))
