"""runtime.executors.cgi: the WAGI request -> environment/argv mapping and the CGI response parser (pure)."""

from __future__ import annotations

import pytest

from runtime.executors.cgi import (
    CgiError,
    build_argv,
    build_env,
    client_ip,
    parse_response,
    query_args,
    split_authority,
)
from runtime.http.contract import RequestHead, RouteInfo


def make_head(method: str = "GET", target: str = "/api/items/42?a=1&b=two+words",
              headers: list[tuple[bytes, bytes]] | None = None, authority: str = "example.com:3000",
              client_addr: str = "10.0.0.7:5555", path_info: str = "/items/42") -> RequestHead:
    route = RouteInfo(raw_route="/api/...", component_route="/api", matched_route="/api/...", path_info=path_info)
    return RequestHead(method=method, target=target, headers=headers or [], scheme="http", authority=authority,
                       client_addr=client_addr, component_id="cgi", route=route,
                       full_url=f"http://{authority}{target}", deadline=0.0)


# ---------------------------------------------------------------------------------------------------- env


def test_env_has_every_cgi_variable_spin_sets():
    head = make_head("POST", headers=[(b"host", b"example.com:3000"), (b"content-type", b"application/json")])
    env = build_env(head, 17, {})
    assert env == {
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": "17",
        "CONTENT_TYPE": "application/json",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "PATH_INFO": "/items/42",
        "PATH_TRANSLATED": "/items/42",
        "QUERY_STRING": "a=1&b=two+words",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_HOST": "10.0.0.7",
        "REMOTE_USER": "",
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/api",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "3000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "WAGI/1",
        "X_FULL_URL": "http://example.com:3000/api/items/42?a=1&b=two+words",
        "X_RAW_PATH_INFO": "/items/42",
        "X_MATCHED_ROUTE": "/api/...",
        "X_BASE_PATH": "/",
        "X_RAW_COMPONENT_ROUTE": "/api/...",
        "X_COMPONENT_ROUTE": "/api",
        "X_CLIENT_ADDR": "10.0.0.7:5555",
        "HTTP_HOST": "example.com:3000",
        "HTTP_CONTENT_TYPE": "application/json",
    }


def test_env_zero_content_length_and_no_content_type_without_a_body():
    env = build_env(make_head(), 0, {})
    assert env["CONTENT_LENGTH"] == "0"
    assert env["CONTENT_TYPE"] == ""


def test_env_path_translated_is_decoded_path_info_raw():
    env = build_env(make_head(path_info="/a%20b/%C3%A9"), 0, {})
    assert env["PATH_INFO"] == "/a%20b/%C3%A9"
    assert env["X_RAW_PATH_INFO"] == "/a%20b/%C3%A9"
    assert env["PATH_TRANSLATED"] == "/a b/é"


def test_env_http_variables_follow_rfc3875_and_hide_credentials():
    headers = [
        (b"x-request-id", b"abc"),
        (b"accept", b"text/html"),
        (b"accept", b"application/json"),
        (b"authorization", b"Bearer secret"),
        (b"connection", b"keep-alive"),
    ]
    env = build_env(make_head(headers=headers), 0, {})
    assert env["HTTP_X_REQUEST_ID"] == "abc"
    assert env["HTTP_ACCEPT"] == "text/html, application/json"
    assert "HTTP_AUTHORIZATION" not in env
    assert "HTTP_CONNECTION" not in env


def test_env_spin_headers_become_x_variables_not_http_spin():
    headers = [
        (b"spin-full-url", b"http://example.com:3000/api/items/42"),
        (b"spin-path-info", b"/items/42"),
        (b"spin-client-addr", b"10.0.0.7:5555"),
        (b"spin-path-match-user-id", b"42"),
    ]
    env = build_env(make_head(headers=headers), 0, {})
    assert not [name for name in env if name.startswith("HTTP_SPIN")]
    assert env["X_PATH_MATCH_USER_ID"] == "42"


def test_env_cgi_variables_win_over_the_component_environment():
    env = build_env(make_head("PUT"), 0, {"REQUEST_METHOD": "GET", "GREETING": "hi"})
    assert env["REQUEST_METHOD"] == "PUT"
    assert env["GREETING"] == "hi"


def test_env_values_never_carry_nul():
    env = build_env(make_head(headers=[(b"x-odd", b"a\0b\xff")]), 0, {})
    assert env["HTTP_X_ODD"] == "ab\ufffd"


@pytest.mark.parametrize("authority, expected", [
    ("example.com:3000", ("example.com", "3000")),
    ("example.com", ("example.com", "80")),
    ("[::1]:8080", ("[::1]", "8080")),
    ("[::1]", ("[::1]", "80")),
    ("", ("localhost", "80")),
])
def test_split_authority(authority, expected):
    assert split_authority(authority) == expected


@pytest.mark.parametrize("addr, ip", [
    ("127.0.0.1:5555", "127.0.0.1"),
    ("[::1]:80", "::1"),
    ("[fe80::1%eth0]:80", "fe80::1%eth0"),
    ("unix", "unix"),
])
def test_client_ip(addr, ip):
    assert client_ip(addr) == ip


# ---------------------------------------------------------------------------------------------------- argv


def test_query_args_split_on_ampersand_and_url_decode():
    assert query_args("a=1&b=two+words&&c=%26%3D%20x") == ["a=1", "b=two words", "c=&= x"]
    assert query_args("") == []


def test_default_argv_is_path_then_args():
    assert build_argv("${SCRIPT_NAME} ${ARGS}", "/api/x?a=1&b=2") == ["/api/x", "a=1", "b=2"]


def test_default_argv_without_query_is_only_the_path():
    assert build_argv("${SCRIPT_NAME} ${ARGS}", "/api/x") == ["/api/x"]


def test_argv_keeps_a_decoded_space_inside_its_argument():
    assert build_argv("${SCRIPT_NAME} ${ARGS}", "/x?hello%20world") == ["/x", "hello world"]


def test_custom_argv_template():
    assert build_argv("prog  -v ${ARGS} --from=${SCRIPT_NAME} end", "/p?x&y") == [
        "prog", "-v", "x", "y", "--from=/p", "end"]
    assert build_argv("prog --args=${ARGS}", "/p?x&y") == ["prog", "--args=x y"]


# ---------------------------------------------------------------------------------------------------- response


def test_response_with_content_type_is_200():
    response = parse_response(b"Content-Type: text/plain\n\nhello\n")
    assert (response.status, response.headers, response.body, response.notes) == (
        200, [(b"content-type", b"text/plain")], b"hello\n", [])


def test_response_crlf_header_block_and_body_bytes_kept_exactly():
    body = b"line1\r\n\r\nline2\n\n\x00\xff"
    response = parse_response(b"Content-Type: application/octet-stream\r\nX-A: 1\r\n\r\n" + body)
    assert response.headers == [(b"content-type", b"application/octet-stream"), (b"x-a", b"1")]
    assert response.body == body


def test_response_status_header_sets_the_status_and_is_not_forwarded():
    response = parse_response(b"Status: 404 Not Found\nContent-Type: text/plain\n\nnope")
    assert response.status == 404
    assert response.headers == [(b"content-type", b"text/plain")]


def test_status_alone_is_a_sufficient_response():
    assert parse_response(b"Status: 204\n\n").status == 204


def test_unparsable_status_is_502_with_a_note():
    response = parse_response(b"Status: OK\nContent-Type: text/plain\n\nbody")
    assert response.status == 502
    assert response.body == b"body"
    assert "Status" in response.notes[0]


@pytest.mark.parametrize("output", [
    b"Location: /elsewhere\n\n",
    b"Content-Type: text/html\nLocation: /elsewhere\n\n<a>moved</a>",
])
def test_location_without_status_is_302(output):
    response = parse_response(output)
    assert response.status == 302
    assert (b"location", b"/elsewhere") in response.headers


@pytest.mark.parametrize("output", [b"Status: 301\nLocation: /x\n\n", b"Location: /x\nStatus: 301\n\n"])
def test_location_with_status_keeps_the_status(output):
    assert parse_response(output).status == 301


def test_repeated_headers_are_all_kept():
    response = parse_response(b"Content-Type: text/plain\nSet-Cookie: a=1\nSet-Cookie: b=2\n\n")
    assert response.headers[1:] == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_framing_headers_from_the_module_are_dropped():
    response = parse_response(b"Content-Type: text/plain\nContent-Length: 999\nTransfer-Encoding: chunked\n"
                              b"Connection: close\n\nabc")
    assert response.headers == [(b"content-type", b"text/plain")]


def test_bad_header_lines_are_skipped_with_notes():
    response = parse_response(b"Content-Type: text/plain\nno colon here\nBad Name: x\nX-Ctl: a\x01b\nX-Ok: y\n\n")
    assert response.headers == [(b"content-type", b"text/plain"), (b"x-ok", b"y")]
    assert len(response.notes) == 3


def test_header_values_are_trimmed_and_may_contain_colons():
    response = parse_response(b"Content-Type:text/plain\nX-Time:   12:30:00  \n\n")
    assert (b"x-time", b"12:30:00") in response.headers


@pytest.mark.parametrize("output, reason", [
    (b"", "printed nothing"),
    (b"just a body, no headers\n", "no empty line"),
    (b"Content-Type: text/plain\n", "no empty line"),
    (b"X-Only: 1\n\nbody", "no Content-Type, Location or Status"),
    (b"\n\nbody", "no Content-Type, Location or Status"),
    (b"Content-Type: caf\xe9\n\n", "not valid UTF-8"),
])
def test_not_a_cgi_response(output, reason):
    with pytest.raises(CgiError, match=reason):
        parse_response(output)
