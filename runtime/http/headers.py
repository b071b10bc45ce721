"""The ``spin-*`` request headers Spin adds for the guest (spin crates/trigger-http/src/headers.rs).

Pure functions of the request line, the Host header, the peer and the router's match, so that the wasi:http,
WAGI and Spin 1 executors all see what Spin's would: WAGI turns ``spin-path-info`` back into ``PATH_INFO`` and
friends, and SDK routers (e.g. the Python SDK's) read ``spin-path-info`` / ``spin-full-url``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from runtime.http.contract import Headers
from runtime.http.routing import RouteMatch

#: Header names the server sets; a client sending any of them has its value replaced, as Spin's
#: ``HeaderMap::insert`` does, so a client cannot forge what the router decided.
SPIN_HEADER_NAMES = frozenset({
    b"spin-full-url", b"spin-path-info", b"spin-matched-route", b"spin-base-path",
    b"spin-raw-component-route", b"spin-component-route", b"spin-client-addr",
})
_PATH_MATCH_PREFIX = b"spin-path-match-"


def request_path(target: str) -> str:
    """The path part of a request target, as hyper's ``uri.path()`` gives it (absolute-form targets included)."""
    if target.startswith("/"):
        return target.split("?", 1)[0]
    if "://" in target:
        return urlsplit(target).path or "/"
    # "*" (OPTIONS) and authority-form (CONNECT): no path any route can match.
    return target


def path_and_query(target: str) -> str:
    """What hyper's ``uri.path_and_query()`` gives for ``spin-full-url``: origin-form as is."""
    if target.startswith("/") or "://" not in target:
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def format_addr(host: str, port: int) -> str:
    """The peer as Rust's ``SocketAddr`` displays it ("ip:port", IPv6 in brackets), for ``spin-client-addr``."""
    try:
        is_v6 = ipaddress.ip_address(host.split("%", 1)[0]).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]:{port}" if is_v6 else f"{host}:{port}"


def full_url(scheme: str, host: str | None, target: str) -> str:
    """``spin-full-url``: scheme, the Host header ("localhost" without one, as Spin does), path and query."""
    return f"{scheme}://{host or 'localhost'}{path_and_query(target)}"


def spin_request_headers(*, scheme: str, host: str | None, target: str, match: RouteMatch,
                         client_addr: str) -> Headers:
    """The headers Spin adds, in Spin's order, names lower-case.

    ``host`` is the request's Host header (None when absent); ``client_addr`` is ``format_addr`` of the peer.
    """
    info = match.info
    headers: Headers = [
        (b"spin-path-info", info.path_info.encode()),
        (b"spin-full-url", full_url(scheme, host, target).encode()),
        (b"spin-matched-route", info.matched_route.encode()),
        (b"spin-base-path", info.base_path.encode()),
        (b"spin-raw-component-route", info.raw_route.encode()),
        (b"spin-component-route", info.component_route.encode()),
        (b"spin-client-addr", client_addr.encode()),
    ]
    # Spin names these SPIN_PATH_MATCH_<NAME upper-cased>, then turns '_' into '-' and lower-cases the lot.
    for name, value in match.params:
        headers.append((_PATH_MATCH_PREFIX + name.replace("_", "-").lower().encode(), value.encode()))
    return headers


def with_spin_headers(client_headers: Headers, spin_headers: Headers) -> Headers:
    """The client's headers without any it sent under a ``spin-*`` name the server sets, then the server's."""
    names = SPIN_HEADER_NAMES | {name for name, _ in spin_headers}
    kept = [(name, value) for name, value in client_headers if name not in names]
    return kept + spin_headers
