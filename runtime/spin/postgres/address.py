"""PostgreSQL connection strings as Spin takes them, the allowed_outbound_hosts check, and masking for messages.

Spin parses ``open``'s address with tokio-postgres's ``Config`` (factor-outbound-pg allowed_hosts.rs), so both of
its forms are accepted here:

- a URL, ``postgres://`` or ``postgresql://``: ``[user[:password]@][host[:port][,host[:port]...]][/dbname]
  [?key=value&...]``, percent-decoded, IPv6 hosts in brackets;
- key/value pairs, ``host=db port=5432 user=app password='a b' dbname=app``, values optionally single-quoted with
  backslash escapes.

Every TCP host must be allowed by the component's ``allowed_outbound_hosts`` as ``postgres://host:port`` (port
5432 when none is given), else Spin's ``connection-failed("address postgres://host:port is not permitted")``; a
Unix socket host is ``connection-failed("Unix sockets are not supported on WebAssembly")``; text that is no
connection string is ``connection-failed`` with the reason. ``hostaddr`` (an address to connect to instead of
resolving ``host``) is checked too, which Spin does not do: otherwise it would bypass the check.

A connection string carries the password: ``masked`` is the only form of it that reaches a message or a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from runtime.spin.postgres.errors import PgError

if TYPE_CHECKING:
    from runtime.spin.outbound import OutboundPolicy

DEFAULT_PORT = 5432
URL_PREFIXES = ("postgresql://", "postgres://")
SSL_MODES = ("disable", "prefer", "require")
#: tokio-postgres options this host reads, and those it accepts without acting on them (TCP keepalive tuning,
#: which the host's socket defaults cover).
_OPTIONS = {"user", "password", "dbname", "host", "hostaddr", "port", "sslmode", "connect_timeout",
            "application_name", "options", "target_session_attrs"}
_IGNORED_OPTIONS = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_retries",
                    "tcp_user_timeout", "channel_binding", "load_balance_hosts", "sslnegotiation"}
_TARGET_SESSION_ATTRS = ("any", "read-write")


@dataclass(frozen=True)
class ConnectOptions:
    """A parsed connection string: what the client needs to connect."""

    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    sslmode: str = "prefer"
    connect_timeout: float | None = None
    application_name: str | None = None
    options: str | None = None
    hostaddrs: tuple[str, ...] = ()
    target_session_attrs: str = "any"

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) in the order tokio-postgres tries them: port i for host i, or the single port for all."""
        ports = self.ports or (DEFAULT_PORT,)
        return [(host, ports[i] if len(ports) > 1 else ports[0]) for i, host in enumerate(self.hosts)]


def parse_connection_string(address: str) -> ConnectOptions:
    """ConnectOptions, or PgError connection-failed naming what is wrong (never echoing the password)."""
    if address.startswith(URL_PREFIXES):
        values, hosts, ports = _parse_url(address)
    else:
        values, hosts, ports = _parse_key_values(address), [], []
    for key in values:
        if key not in _OPTIONS and key not in _IGNORED_OPTIONS:
            raise _invalid(f"unknown option `{key}`")
    if "host" in values:
        hosts += [h for h in values["host"].split(",")]
    if "port" in values:
        ports += [p for p in values["port"].split(",")]
    port_numbers = tuple(_port(p) for p in ports)
    if len(port_numbers) > 1 and len(port_numbers) != len(hosts):
        raise _invalid("unexpected number of ports")
    sslmode = values.get("sslmode", "prefer")
    if sslmode not in SSL_MODES:
        raise _invalid("invalid value for option `sslmode`")
    attrs = values.get("target_session_attrs", "any")
    if attrs not in _TARGET_SESSION_ATTRS:
        raise _invalid("invalid value for option `target_session_attrs`")
    timeout = None
    if "connect_timeout" in values:
        try:
            seconds = int(values["connect_timeout"])
        except ValueError:
            raise _invalid("invalid value for option `connect_timeout`") from None
        timeout = float(seconds) if seconds > 0 else None
    hostaddrs = tuple(values["hostaddr"].split(",")) if "hostaddr" in values else ()
    if hostaddrs and len(hostaddrs) != len(hosts) and hosts:
        raise _invalid("number of hosts differs from number of hostaddrs")
    return ConnectOptions(hosts=tuple(hosts) or hostaddrs, ports=port_numbers, user=values.get("user"),
                          password=values.get("password"), dbname=values.get("dbname"), sslmode=sslmode,
                          connect_timeout=timeout, application_name=values.get("application_name"),
                          options=values.get("options"), hostaddrs=hostaddrs, target_session_attrs=attrs)


def check_allowed(options: ConnectOptions, policy: OutboundPolicy) -> None:
    """Spin's ensure_address_allowed: each TCP host (and hostaddr) as ``postgres://host:port``."""
    ports = options.ports
    for index, host in enumerate(options.hosts + tuple(a for a in options.hostaddrs if a not in options.hosts)):
        if host.startswith("/"):
            raise PgError("connection-failed", "Unix sockets are not supported on WebAssembly")
        port = ports[index] if index < len(ports) and len(ports) > 1 else (ports[0] if len(ports) == 1 else None)
        shown = f"[{host}]" if ":" in host else host
        url = f"{shown}:{port}" if port is not None else shown
        if not policy.allows(f"postgres://{url}", default_scheme="postgres"):
            raise PgError("connection-failed", f"address postgres://{url} is not permitted")


def masked(address: str) -> str:
    """``address`` with any password replaced by ``***`` (URL userinfo, ``password=`` in the query or a pair)."""
    if address.startswith(URL_PREFIXES):
        scheme, _, rest = address.partition("://")
        authority_end = len(rest)
        for stop in "/?":
            position = rest.find(stop)
            if position >= 0:
                authority_end = min(authority_end, position)
        at = rest.rfind("@", 0, authority_end)
        if at >= 0:
            user, colon, _password = rest[:at].partition(":")
            rest = f"{user}:***{rest[at:]}" if colon else rest
        rest = re.sub(r"([?&]password=)[^&]*", r"\1***", rest)
        return f"{scheme}://{rest}"
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", r"\1***", address)


def _invalid(reason: str) -> PgError:
    return PgError("connection-failed", f"invalid connection string: {reason}")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _invalid("invalid value for option `port`")
    return int(text)


def _parse_url(address: str) -> tuple[dict[str, str], list[str], list[str]]:
    rest = address.split("://", 1)[1]
    values: dict[str, str] = {}
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    at = authority.rfind("@")
    if at >= 0:
        user, colon, password = authority[:at].partition(":")
        if user:
            values["user"] = unquote(user)
        if colon:
            values["password"] = unquote(password)
        authority = authority[at + 1:]
    hosts: list[str] = []
    ports: list[str] = []
    if authority:
        for item in authority.split(","):
            if item.startswith("["):
                close = item.find("]")
                if close < 0:
                    raise _invalid("unterminated IPv6 address")
                host, after = item[1:close], item[close + 1:]
                if after and not after.startswith(":"):
                    raise _invalid("unexpected characters after IPv6 address")
                port = after[1:]
            else:
                host, _, port = item.partition(":")
            hosts.append(unquote(host))
            if port:
                ports.append(port)
    if slash and path:
        values["dbname"] = unquote(path)
    if query:
        for pair in query.split("&"):
            if not pair:
                continue
            key, equals, value = pair.partition("=")
            if not equals:
                raise _invalid(f"unexpected EOF in parameter `{unquote(key)}`")
            values[unquote(key)] = unquote(value)
    return values, hosts, ports


_PAIR = re.compile(r"\s*([^\s=]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")


def _parse_key_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _PAIR.match(text, position)
        if match is None:
            raise _invalid("expected `key=value` pairs or a postgres:// URL")
        key, raw = match.group(1), match.group(2)
        if raw.startswith("'"):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        values[key] = raw
        position = match.end()
    return values
