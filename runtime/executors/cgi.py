"""WAGI's CGI mapping, pure (no wasmtime, no I/O): request -> environment and argv, stdout -> response.

Spin (crates/http/src/wagi/mod.rs and crates/trigger-http/src/{wagi,headers}.rs) defines what a WAGI module sees;
this follows it variable by variable so a module written for ``spin up`` reads the same values here. Where Spin
has an accident rather than a rule, we do the evident intent and say so below:

* ``CONTENT_TYPE``: Spin looks up a header literally named ``CONTENT_TYPE`` and so always sets ""; we take the
  request's Content-Type, as RFC 3875 §4.1.3 says.
* Repeated request headers: Spin keeps the last; we join them with ", " (RFC 3875 §4.1.18).
* ``SERVER_NAME`` without a Host header: Spin puts the literal "default_host"; the server gives us the listen
  address instead (``RequestHead.authority``).
* Repeated response headers (Set-Cookie): Spin keeps one (a HashMap); we keep all of them.
* argv: ``${ARGS}`` expands to the query split on "&", each piece url-decoded (the WAGI spec), one argv element
  per piece; the template is split on spaces *before* substitution so a decoded space stays inside its argument.
  Spin 2 substitutes the raw query with "&" replaced by " " and then splits (and so passes a trailing "" when the
  query is empty); Spin 3 passes key/value pairs decoded. Empty template tokens are dropped.

The CGI variables win over a component ``environment`` entry of the same name: a module that reads
``REQUEST_METHOD`` must get the request's, whatever the manifest says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

from runtime.http.contract import Headers, RequestHead

#: RFC 3875 §4.1.4; Spin's WAGI_VERSION.
GATEWAY_INTERFACE = "CGI/1.1"
#: Spin's SERVER_SOFTWARE_VERSION.
SERVER_SOFTWARE = "WAGI/1"
#: Request headers that never become HTTP_* variables (RFC 3875 §4.1.18: credentials and hop-by-hop).
_HIDDEN_REQUEST_HEADERS = frozenset({"authorization", "connection"})
#: The spin-* headers the server adds for the wasi:http executors; WAGI gets the same facts as X_* variables
#: (below) and, as in Spin, not as HTTP_SPIN_*.
_SPIN_HEADERS = frozenset({
    "spin-full-url", "spin-path-info", "spin-matched-route", "spin-base-path", "spin-raw-component-route",
    "spin-component-route", "spin-client-addr",
})
_SPIN_PATH_MATCH = "spin-path-match-"
#: Framing is the server's job: it sets Content-Length from the body we hand it.
_FRAMING_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_HEADER_END = re.compile(rb"\n\r*\n")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------------- request


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target; the query without its "?" ("" when there is none)."""
    path, _, query = target.partition("?")
    return path, query


def split_authority(authority: str) -> tuple[str, str]:
    """(host, port) of a Host header value; port "80" when absent (Spin's default). Brackets stay on IPv6 hosts."""
    if authority.startswith("["):
        host, _, rest = authority.partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host + "]", port or "80"
    host, _, port = authority.partition(":")
    return host or "localhost", port or "80"


def client_ip(client_addr: str) -> str:
    """The address part of "ip:port" / "[v6]:port" (REMOTE_ADDR carries no port)."""
    if client_addr.startswith("["):
        return client_addr[1:].partition("]")[0]
    host, sep, port = client_addr.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else client_addr


def _text(value: bytes) -> str:
    # Env values are C strings: a NUL would silently cut them; h11 rejects NUL in headers already.
    return value.decode("utf-8", "replace").replace("\0", "")


def build_env(head: RequestHead, content_length: int, component_env: Mapping[str, str]) -> dict[str, str]:
    """The WAGI module's environment: the component's ``environment`` overlaid by the CGI variables."""
    path, query = split_target(head.target)
    host, port = split_authority(head.authority)
    remote = client_ip(head.client_addr)
    route = head.route
    content_type = ""
    http_vars: dict[str, str] = {}
    path_matches: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name = raw_name.decode("latin-1").lower()
        value = _text(raw_value)
        if name.startswith(_SPIN_PATH_MATCH):
            path_matches["X_PATH_MATCH_" + name[len(_SPIN_PATH_MATCH):].upper().replace("-", "_")] = value
            continue
        if name in _SPIN_HEADERS or name in _HIDDEN_REQUEST_HEADERS:
            continue
        if name == "content-type":
            content_type = value
        key = "HTTP_" + name.upper().replace("-", "_")
        http_vars[key] = f"{http_vars[key]}, {value}" if key in http_vars else value

    path_info = route.path_info
    env = dict(component_env)
    env.update({
        "AUTH_TYPE": "",
        "CONTENT_LENGTH": str(content_length),
        "CONTENT_TYPE": content_type,
        "GATEWAY_INTERFACE": GATEWAY_INTERFACE,
        "PATH_INFO": path_info,  # raw, as Spin's compute_default_headers leaves it
        "PATH_TRANSLATED": unquote(path_info, errors="replace"),
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote,
        "REMOTE_HOST": remote,
        "REMOTE_USER": "",
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": route.component_route,
        "SERVER_NAME": host,
        "SERVER_PORT": port,
        # RequestHead carries no HTTP version; HTTP/1.1 is what the server speaks (and what h11 answers with).
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "X_FULL_URL": head.full_url,
        "X_RAW_PATH_INFO": path_info,
        "X_MATCHED_ROUTE": route.matched_route,
        "X_BASE_PATH": route.base_path,
        "X_RAW_COMPONENT_ROUTE": route.raw_route,
        "X_COMPONENT_ROUTE": route.component_route,
        "X_CLIENT_ADDR": head.client_addr,
    })
    env.update(path_matches)
    env.update(http_vars)
    return env


def query_args(query: str) -> list[str]:
    """The WAGI ``${ARGS}``: the query split on "&", each piece url-decoded ("+" is a space); empties dropped."""
    return [unquote_plus(piece, errors="replace").replace("\0", "") for piece in query.split("&") if piece]


def build_argv(template: str, target: str) -> list[str]:
    """argv from the ``argv`` template: ``${SCRIPT_NAME}`` is the request path (raw, as in Spin), ``${ARGS}``
    the decoded query pieces (a token that is exactly ``${ARGS}`` expands to one element per piece)."""
    path, query = split_target(target)
    args = query_args(query)
    argv: list[str] = []
    for token in template.split(" "):
        if not token:
            continue
        if token == "${ARGS}":
            argv.extend(args)
            continue
        argv.append(token.replace("${SCRIPT_NAME}", path).replace("${ARGS}", " ".join(args)))
    return argv


# ---------------------------------------------------------------------------------------------------- response


class CgiError(Exception):
    """The module's stdout is not a CGI response; ``str()`` says why, for the container log."""


@dataclass
class CgiResponse:
    status: int
    #: Lower-cased names, in the order printed; no framing headers (the server frames the body).
    headers: Headers
    body: bytes
    #: Problems that did not stop the response (skipped header lines, an unparsable Status), for the log.
    notes: list[str] = field(default_factory=list)


def parse_response(output: bytes) -> CgiResponse:
    """Parse a CGI response (RFC 3875 §6) as Spin's ``compose_response`` does.

    Headers end at the first empty line (LF LF; CRs in the header block are ignored, so CRLF works); everything
    after it is the body, byte for byte. ``Status: NNN [reason]`` sets the status (an unparsable one gives 502,
    as in Spin); ``Location`` without a Status gives 302; otherwise 200. A response needs at least one of
    Content-Type, Location or Status (Spin's rule, laxer than the RFC's). Raises CgiError when there is no header
    block at all, or none of those three headers.
    """
    if not output:
        raise CgiError("it printed nothing to stdout")
    end = _HEADER_END.search(output)
    if end is None:
        preview = output[:60].decode("utf-8", "replace").replace("\n", "\\n")
        raise CgiError(f"its output has no empty line ending a header block (output starts {preview!r})")
    try:
        header_text = output[: end.start()].replace(b"\r", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise CgiError("its CGI headers are not valid UTF-8") from None
    body = output[end.end():]

    notes: list[str] = []
    headers: Headers = []
    status: int | None = None
    location = False
    sufficient = False
    for line in header_text.strip().split("\n"):
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name:
            notes.append(f"ignored a CGI header line without a name and ':': {line[:80]!r}")
            continue
        lower = name.lower()
        if lower == "status":
            sufficient = True
            code = value.split(" ", 1)[0]
            if len(code) == 3 and code.isdigit() and 100 <= int(code) <= 599:
                status = int(code)
            else:
                notes.append(f"unparsable CGI Status {value!r}: answered 502")
                status = 502
            continue
        if lower in ("content-type", "location"):
            sufficient = True
            location = location or lower == "location"
        if lower in _FRAMING_RESPONSE_HEADERS:
            continue
        if not _TOKEN.match(name):
            notes.append(f"ignored CGI header with an invalid name {name!r}")
            continue
        if _BAD_VALUE.search(value):
            notes.append(f"ignored CGI header {name!r}: control characters in its value")
            continue
        headers.append((lower.encode("latin-1"), value.encode("utf-8")))
    if not sufficient:
        raise CgiError("it printed no Content-Type, Location or Status header")
    if status is None:
        status = 302 if location else 200
    return CgiResponse(status, headers, body, notes)
