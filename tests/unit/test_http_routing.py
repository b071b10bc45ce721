"""Spin's router, its spin-* request headers and the well-known endpoints, as tables (no sockets).

Expected values follow Spin 3 (crates/http/src/routes.rs tests, crates/trigger-http/src/headers.rs tests).
"""

import json

import pytest

from runtime.errors import ManifestError
from runtime.http.contract import RouteInfo
from runtime.http.headers import (
    format_addr, full_url, path_and_query, request_path, spin_request_headers, with_spin_headers,
)
from runtime.http.routing import RouteError, RouteMatch, Router
from runtime.http.wellknown import AppInfo, well_known_response


def _router(*entries):
    router, warnings = Router.build(list(entries))
    assert warnings == []
    return router


def _component(router, path):
    match = router.match(path)
    return None if match is None else match.component_id


# ------------------------------------------------------------------------------------------------ which component

@pytest.mark.parametrize("path, expected", [
    ("/foo", "foo"),
    ("/foo/", "foo"),            # routefinder trims trailing slashes
    ("//foo", "foo"),            # ... and leading ones
    ("/foo/bar", "foobar"),
    ("/foo/bar/", "foobar"),
    ("/foo/baz", None),          # exact routes match nothing below them
    ("/foobar", None),           # a route is segments, not a string prefix
    ("/fo", None),
    ("/", None),
    ("/FOO", None),              # case-sensitive
])
def test_exact_routes(path, expected):
    router = _router(("/foo", "foo"), ("/foo/bar", "foobar"))
    assert _component(router, path) == expected


@pytest.mark.parametrize("path", ["/", "/foo/bar", "/abc/", "/this/should/be/captured"])
def test_catch_all_matches_every_path(path):
    assert _component(_router(("/...", "all")), path) == "all"


@pytest.mark.parametrize("path, expected", [
    ("/api", "api"), ("/api/", "api"), ("/api/x", "api"), ("/api/x/y/", "api"),
    ("/apix", None), ("/ap", None), ("/", None),
])
def test_prefix_wildcard_matches_its_prefix_and_below(path, expected):
    assert _component(_router(("/api/...", "api")), path) == expected


def test_star_spelling_of_the_wildcard_is_accepted():
    assert _component(_router(("/api/*", "api")), "/api/x") == "api"


def test_exact_beats_wildcard_whatever_the_order():
    for entries in ([("/one", "exact"), ("/...", "all")], [("/...", "all"), ("/one", "exact")]):
        router = _router(*entries)
        assert _component(router, "/one") == "exact"
        assert _component(router, "/one/") == "exact"
        assert _component(router, "/two") == "all"
        assert _component(router, "/one/two") == "all"


def test_exact_prefix_beats_its_own_wildcard():
    router = _router(("/foo/...", "wild"), ("/foo", "exact"))
    assert _component(router, "/foo") == "exact"
    assert _component(router, "/foo/x") == "wild"


@pytest.mark.parametrize("order", [1, -1])
def test_longest_wildcard_prefix_wins_regardless_of_order(order):
    entries = [("/one/...", "one"), ("/one/two/...", "onetwo"), ("/one/two/three/...", "onetwothree")][::order]
    router = _router(*entries)
    assert _component(router, "/one/two/three/four") == "onetwothree"
    assert _component(router, "/one/two/three") == "onetwothree"
    assert _component(router, "/one/two/x") == "onetwo"
    assert _component(router, "/one/x") == "one"


def test_root_route_matches_only_the_root():
    router = _router(("/", "root"), ("/...", "all"))
    assert _component(router, "/") == "root"
    assert _component(router, "/x") == "all"
    assert _component(_router(("/", "root")), "/x") is None


def test_route_without_leading_slash_is_made_absolute_as_spin_does():
    router = _router(("foo", "foo"), ("bar/...", "bar"))
    assert _component(router, "/foo") == "foo"
    assert _component(router, "/bar/x") == "bar"
    assert router.match("/bar/x").info == RouteInfo(raw_route="bar/...", component_route="bar",
                                                    matched_route="/bar/...", path_info="/x")


def test_empty_path_segments_are_not_collapsed():
    assert _component(_router(("/a/b", "ab")), "/a//b") is None


def test_private_routes_are_unreachable():
    router, warnings = Router.build([(None, "private"), ("/x", "x")])
    assert warnings == []
    assert router.routes == (("/x", "x"),)
    assert _component(router, "/") is None


def test_no_routes_matches_nothing():
    assert _router().match("/") is None


# ------------------------------------------------------------------------------------------------ :params (Spin 3)

def test_named_segments_are_captured():
    router = _router(("/1/:two/3", "comp"))
    assert router.match("/1/2/3").params == (("two", "2"),)
    assert _component(router, "/1/2") is None
    assert _component(router, "/1/2/3/4") is None


def test_named_segment_with_trailing_wildcard():
    match = _router(("/foo/:userid/...", "comp")).match("/foo/42/bar")
    assert match.params == (("userid", "42"),)
    assert match.info == RouteInfo(raw_route="/foo/:userid/...", component_route="/foo/:userid",
                                   matched_route="/foo/:userid/...", path_info="/bar")


def test_literal_segment_beats_param_beats_wildcard():
    router = _router(("/users/...", "wild"), ("/users/:id", "param"), ("/users/me", "literal"))
    assert _component(router, "/users/me") == "literal"
    assert _component(router, "/users/42") == "param"
    assert _component(router, "/users/42/posts") == "wild"
    assert _component(router, "/users") == "wild"


def test_specificity_is_decided_from_the_left():
    router = _router(("/:a/b", "param-first"), ("/a/:b", "literal-first"))
    assert _component(router, "/a/b") == "literal-first"


def test_equally_specific_routes_go_to_the_first_declared():
    router = _router(("/a/:x", "first"), ("/a/:y", "second"))
    assert router.match("/a/1") == RouteMatch("first", RouteInfo("/a/:x", "/a/:x", "/a/:x", ""), (("x", "1"),))


# ------------------------------------------------------------------------------------------------ RouteInfo fields

@pytest.mark.parametrize("route, path, raw, component_route, matched_route, path_info", [
    # Spin's trailing_wildcard_respects_trailing_slash / trailing_wildcard_is_captured
    ("/test/...", "/test", "/test/...", "/test", "/test/...", ""),
    ("/test/...", "/test/", "/test/...", "/test", "/test/...", "/"),
    ("/test/...", "/test/hello", "/test/...", "/test", "/test/...", "/hello"),
    ("/test/...", "/test/hello/", "/test/...", "/test", "/test/...", "/hello/"),
    ("/...", "/1/2/3", "/...", "", "/...", "/1/2/3"),
    ("/...", "/", "/...", "", "/...", "/"),
    ("/1/...", "/1/2/3", "/1/...", "/1", "/1/...", "/2/3"),
    # exact routes have no path info
    ("/foo", "/foo", "/foo", "/foo", "/foo", ""),
    ("/foo", "/foo/", "/foo", "/foo", "/foo", ""),
    # Spin's based route drops one trailing slash; the raw route stays as written
    ("/foo/", "/foo", "/foo/", "/foo/", "/foo", ""),
    ("/", "/", "/", "/", "", ""),
])
def test_route_info_is_what_spin_puts_in_its_headers(route, path, raw, component_route, matched_route,
                                                     path_info):
    match = _router((route, "c")).match(path)
    assert match.info == RouteInfo(raw, component_route, matched_route, path_info)
    assert match.info.base_path == "/"


# ------------------------------------------------------------------------------------------ build: errors, warnings

def test_duplicate_route_the_later_one_wins_and_is_reported_as_spin_does():
    router, warnings = Router.build([("/", "comp-/"), ("/foo", "first"), ("/foo", "second"),
                                     ("/whee/...", "whee")])
    assert _component(router, "/foo") == "second"
    assert len(router.routes) == 3
    assert warnings == ["The following component routes are duplicates and will never be used:",
                        "  first: /foo (duplicate of second)"]


def test_duplicate_root_route_is_named_slash():
    _, warnings = Router.build([("/", "a"), ("/", "b"), ("/...", "c"), ("/...", "d")])
    assert warnings[1:] == ["  a: / (duplicate of b)", "  c: /... (duplicate of d)"]


def test_reserved_routes_are_warned_about_and_never_reached_through_the_server():
    _, warnings = Router.build([("/.well-known/spin/...", "comp")])
    assert warnings == ["Routes under /.well-known/spin/ are handled by the Spin runtime and will never be reached"]
    for route in ("/.well-known/spindle/...", "/.well-known/spin"):
        assert Router.build([(route, "comp")])[1] == []


@pytest.mark.parametrize("route, message", [
    ("/a/:", "params must be named"),
    ("/a/*name", "replace `*name` with `*`"),
    ("/a/.../b", None),   # "..." mid-route is a literal segment, not an error
    ("/*/b", "can only end a route"),
])
def test_route_spin_rejects_is_a_manifest_error_naming_the_component(route, message):
    if message is None:
        assert _component(_router((route, "c")), route) == "c"
        return
    with pytest.raises(RouteError) as info:
        Router.build([("/ok", "fine"), (route, "bad-comp")])
    assert isinstance(info.value, ManifestError)
    assert "bad-comp" in str(info.value) and message in str(info.value)


# ------------------------------------------------------------------------------------------------ spin-* headers

def test_default_headers_match_spins_own_test():
    match = _router(("/foo/...", "DUMMY")).match("/foo/bar")
    headers = dict(spin_request_headers(scheme="https", host="fermyon.dev",
                                        target="/foo/bar?key1=value1&key2=value2", match=match,
                                        client_addr="127.0.0.1:8777"))
    assert headers == {
        b"spin-full-url": b"https://fermyon.dev/foo/bar?key1=value1&key2=value2",
        b"spin-path-info": b"/bar",
        b"spin-matched-route": b"/foo/...",
        b"spin-base-path": b"/",
        b"spin-raw-component-route": b"/foo/...",
        b"spin-component-route": b"/foo",
        b"spin-client-addr": b"127.0.0.1:8777",
    }


def test_named_wildcards_become_path_match_headers():
    match = _router(("/foo/:user_id/...", "DUMMY")).match("/foo/42/bar")
    headers = spin_request_headers(scheme="http", host="h", target="/foo/42/bar", match=match, client_addr="a")
    assert (b"spin-path-match-user-id", b"42") in headers
    assert dict(headers)[b"spin-component-route"] == b"/foo/:user_id"


def test_headers_come_in_spins_order():
    match = _router(("/...", "c")).match("/")
    names = [n for n, _ in spin_request_headers(scheme="http", host=None, target="/", match=match, client_addr="a")]
    assert names == [b"spin-path-info", b"spin-full-url", b"spin-matched-route", b"spin-base-path",
                     b"spin-raw-component-route", b"spin-component-route", b"spin-client-addr"]


def test_client_cannot_forge_spin_headers():
    match = _router(("/...", "c")).match("/x")
    spin = spin_request_headers(scheme="http", host="h", target="/x", match=match, client_addr="1.2.3.4:5")
    client = [(b"host", b"h"), (b"spin-path-info", b"/forged"), (b"spin-path-match-id", b"x"), (b"accept", b"*/*")]
    merged = with_spin_headers(client, spin)
    # Spin replaces only the names it sets: a spin-path-match-* the route does not capture stays as sent.
    assert merged[:3] == [(b"host", b"h"), (b"spin-path-match-id", b"x"), (b"accept", b"*/*")]
    assert dict(merged)[b"spin-path-info"] == b"/x"
    assert [n for n, _ in merged].count(b"spin-path-info") == 1


def test_full_url_without_host_uses_localhost_as_spin_does():
    assert full_url("http", None, "/a?b") == "http://localhost/a?b"


@pytest.mark.parametrize("target, path, pq", [
    ("/a/b?x=1", "/a/b", "/a/b?x=1"),
    ("/", "/", "/"),
    ("http://example.com/a?x=1", "/a", "/a?x=1"),
    ("http://example.com", "/", "/"),
    ("*", "*", "*"),
])
def test_request_target_forms(target, path, pq):
    assert request_path(target) == path
    assert path_and_query(target) == pq


@pytest.mark.parametrize("host, port, text", [
    ("127.0.0.1", 80, "127.0.0.1:80"), ("::1", 8080, "[::1]:8080"), ("::ffff:10.0.0.1", 1, "[::ffff:10.0.0.1]:1"),
])
def test_client_addr_is_formatted_as_rusts_socketaddr(host, port, text):
    assert format_addr(host, port) == text


# ------------------------------------------------------------------------------------------------ well-known

def test_health_answers_ok():
    response = well_known_response("/.well-known/spin/health", AppInfo())
    assert (response.status, response.body) == (200, b"OK")


def test_info_is_pretty_json_without_absent_fields():
    response = well_known_response("/.well-known/spin/info", AppInfo(name="app", version="1.0"))
    assert response.status == 200 and (b"content-type", b"application/json") in response.headers
    assert json.loads(response.body) == {"name": "app", "version": "1.0"}
    assert response.body.startswith(b'{\n  "name": "app"')


@pytest.mark.parametrize("path", ["/.well-known/spin/other", "/.well-known/spin/health/", "/.well-known/spin/"])
def test_other_well_known_names_are_empty_404s(path):
    response = well_known_response(path, AppInfo())
    assert (response.status, response.body) == (404, b"")


@pytest.mark.parametrize("path", ["/.well-known/spin", "/.well-known/spindle/health", "/health"])
def test_paths_outside_the_prefix_are_the_apps(path):
    assert well_known_response(path, AppInfo()) is None
