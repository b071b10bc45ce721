"""[[trigger.http]] tables and the task-env knobs of the http trigger, checked before any wasm is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidSettingError, ManifestError
from runtime.http.trigger import (
    HttpRoute,
    parse_http_triggers,
    request_timeout,
    worker_count,
)
from runtime.http.static_response import MAX_STATIC_BODY_BYTES, StaticResponse
from runtime.loader import retain_components
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
    ('route = 42\ncomponent = "a"', '`route` must be a string (a path such as "/..." or "/api/...") or '
                                  "{ private = true }; got 42 (an integer)"),
    ('route = true\ncomponent = "a"', "`route` must be a string"),
    ('route = ["/a"]\ncomponent = "a"', "got ['/a'] (an array)"),
    ('rout = "/"\ncomponent = "a"', "unknown key(s) 'rout' (did you mean `route`?)"),
    ('route = "/"\ncompnent = "a"', "unknown key(s) 'compnent' (did you mean `component`?)"),
    ('route = "/"\ncomponent = "a"\nexecutor = { type = "wagi", entrypont = "x" }',
     "executor 'wagi' has no option(s) 'entrypont' (did you mean `entrypoint`?)"),
    ('route = { private = false }\ncomponent = "a"', "{ private = true }"),
    ('route = "/"\ncomponent = "a"\nexecutor = { type = "fast" }', "`executor` must be"),
    ('route = "/"\ncomponent = "a"\nexecutor = { type = "spin", argv = "x" }', "has no option"),
    ('route = "/"\ncomponent = "a"\nbase = "/x"', "unknown key"),
    ('route = "/"', "names no `component` (a trigger names a component or a static_response)"),
    ('route = "/"\ncomponent = "a"\nstatic_response = { body = "x" }', "both `component` and `static_response`"),
    ('route = "/"\nstatic_response = "hello"', "`static_response` must be a table"),
    ('route = "/"\nstatic_response = { status_code = 99 }', "status_code must be an HTTP status"),
    ('route = "/"\nstatic_response = { status_code = "200" }', "status_code must be an HTTP status"),
    ('route = "/"\nstatic_response = { headers = { "bad name" = "v" } }', "not a valid HTTP header name"),
    ('route = "/"\nstatic_response = { headers = { x-a = "one\\r\\nx-injected: two" } }', "control character"),
    ('route = "/"\nstatic_response = { headers = { x-a = 1 } }', "the value must be a string"),
    ('route = "/"\nstatic_response = { body = 42 }', "body must be a string"),
])
def test_bad_trigger_tables_name_the_problem(table, message):
    with pytest.raises(ManifestError, match="/spin.toml") as error:
        routes_of("[[trigger.http]]\n" + table + "\n")
    assert message in str(error.value)


def retained_routes(manifest, env) -> list[HttpRoute]:
    """The http routes the loader's SPIN_COMPONENTS_TO_RETAIN filtering leaves (runtime.loader.retain_components)."""
    return parse_http_triggers(retain_components(manifest, env))


def test_components_to_retain_keeps_only_their_routes():
    manifest = parse_manifest(
        HEAD + '[[trigger.http]]\nroute = "/a"\ncomponent = "a"\n[[trigger.http]]\nroute = "/b"\ncomponent = "b"\n',
        "/spin.toml")
    routes = parse_http_triggers(manifest)
    kept = retained_routes(manifest, {"SPIN_COMPONENTS_TO_RETAIN": " b "})
    assert [r.component_id for r in kept] == ["b"]
    assert retained_routes(manifest, {}) == routes
    with pytest.raises(InvalidSettingError, match="no component.*'zzz'"):
        retained_routes(manifest, {"SPIN_COMPONENTS_TO_RETAIN": "a,zzz"})


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


def test_static_response_routes_are_parsed_as_spin_reads_them(caplog):
    routes = routes_of("""
[[trigger.http]]
route = "/..."
component = "a"
[[trigger.http]]
id = "moved"
route = "/old/..."
static_response = { status_code = 301, headers = { location = "/new", content-length = "999" }, note = "x" }
[[trigger.http]]
route = "/hi"
static_response = { body = "h\u00e9llo" }
""")
    assert [r.static_response is None for r in routes] == [True, False, False]
    moved, hello = routes[1], routes[2]
    assert moved.component_id == "static-response:moved" and moved.route == "/old/..."
    # Framing headers are the server's (the body's real length goes out); the rest as written.
    assert moved.static_response == StaticResponse(301, ((b"location", b"/new"),), b"")
    assert hello.static_response == StaticResponse(200, (), "h\u00e9llo".encode())
    assert "ignoring unknown key(s) 'note'" in caplog.text  # Spin ignores it too (no deny_unknown_fields)


def test_a_static_response_body_is_bounded():
    big = "x" * (MAX_STATIC_BODY_BYTES + 1)
    with pytest.raises(ManifestError, match="static_response.body is"):
        routes_of(f'[[trigger.http]]\nroute = "/"\nstatic_response = {{ body = "{big}" }}\n')


def test_retaining_components_drops_static_routes_as_spin_does():
    manifest = parse_manifest(HEAD + """
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/s"
static_response = { body = "s" }
""", "/spin.toml")
    kept = retained_routes(manifest, {"SPIN_COMPONENTS_TO_RETAIN": "a"})
    assert [r.component_id for r in kept] == ["a"]


def test_application_http_options_are_checked_as_spin_checks_them():
    """[application.trigger.http]: only the deprecated `base`, and only "/" (Spin 2+ prefixes no route with it)."""
    trigger = '[[trigger.http]]\nroute = "/..."\ncomponent = "a"\n'

    def app(options: str) -> str:
        return HEAD.replace('name = "app"\n', f'name = "app"\n[application.trigger.http]\n{options}\n') + trigger

    assert [r.route for r in parse_http_triggers(parse_manifest(app('base = "/"'), "/spin.toml"))] == ["/..."]
    with pytest.raises(ManifestError, match=r"base = '/api': this application is using the deprecated trigger"):
        parse_http_triggers(parse_manifest(app('base = "/api"'), "/spin.toml"))
    with pytest.raises(ManifestError, match=r"unknown key\(s\) 'bse' \(did you mean `base`\?\)"):
        parse_http_triggers(parse_manifest(app('bse = "/"'), "/spin.toml"))


def test_a_base_other_than_slash_is_refused_as_spins_http_trigger_refuses_it():
    # Spin's crates/loader/tests/triggers/http.toml (tests/unit/data/spin-manifest-v1/SOURCES.md).
    spin_v1 = (Path(__file__).parent / "data" / "spin-manifest-v1" / "loader-triggers-http.toml").read_text()
    manifest = parse_manifest(spin_v1, "/spin.toml")  # trigger = { type = "http", base = "/test" }
    assert dict(manifest.application.trigger_options["http"]) == {"base": "/test"}
    with pytest.raises(ManifestError, match="deprecated trigger 'base' field. The base must be prepended"):
        parse_http_triggers(manifest)
    with_slash = spin_v1.replace('base = "/test"', 'base = "/"')
    routes = parse_http_triggers(parse_manifest(with_slash, "/spin.toml"))
    assert [r.route for r in routes] == ["/hello/...", "/waggy/..."]
