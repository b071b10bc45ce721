"""Spin's ``allowed_outbound_hosts``: which destinations a component may open connections to.

Mirrors Spin's outbound-networking rules (spin crates/factor-outbound-networking ``AllowedHostConfig``), so an
app that works under Spin/containerd-shim-spin is allowed and denied the same things here:

- An entry is ``scheme://host[:port]``. ``*`` stands for any scheme, any host or any port (``*://*:*`` = all).
- ``*.example.com`` allows every subdomain of example.com (not example.com itself); ``*`` elsewhere in a host is
  an error. An IP network in CIDR form (``*://10.0.0.0/8:80``) allows the addresses in it.
- A port is a number, ``*``, or a range ``4000..5000`` (Rust's ``start..end``: the end is *excluded*, as in
  Spin). Without a port, the scheme's well-known port applies (http 80, https 443, redis 6379, mysql 3306,
  postgres 5432, mqtt 1883); a scheme without one (``*``, ``tcp``) needs an explicit port.
- Host ``self`` (``http://self``) allows *relative* requests: those without an authority, which Spin routes to
  the app itself. A path (other than a trailing ``/``) in an entry is an error.
- ``{{ name }}`` templates are expanded from application variables at load (Spin does it per instance; the
  values come from the task's environment, which cannot change while the task lives).
- Entries without ``://`` are read as the deprecated ``allowed_http_hosts`` form, converted the way Spin's
  manifest compat layer does: ``insecure:allow-all`` -> ``http://*:*``, ``https://*:*``, ``http://self``;
  ``self`` -> ``http://self``; ``host[:port]`` -> ``http://host[:port]`` and ``https://host[:port]``.
  (runtime.manifest merges ``allowed_http_hosts`` into ``allowed_outbound_hosts``, so the two cannot be told
  apart here; Spin itself rejects a scheme-less ``allowed_outbound_hosts`` entry, this runtime accepts it.)

Pure: strings in, decisions out. Used by the wasi:http outgoing-handler (runtime.host) before any connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from runtime.errors import ManifestError
from runtime.spin.template import Template, TemplateError

_WELL_KNOWN_PORTS = {"http": 80, "https": 443, "redis": 6379, "mysql": 3306, "postgres": 5432, "mqtt": 1883}
_ALLOW_ALL_LEGACY = "insecure:allow-all"
#: Spin's service-chaining domain: ``http://<component-id>.spin.internal`` calls another component of the app.
SERVICE_CHAINING_SUFFIX = ".spin.internal"
_DOCS = "https://spinframework.dev/v3/http-outbound#granting-http-permissions-to-components"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundHostsError(ManifestError):
    """A malformed ``allowed_outbound_hosts`` entry; the message names the component and the entry."""


class OutboundDenied(Exception):
    """A guest asked for a destination its component may not reach (Spin: "Destination not allowed")."""

    def __init__(self, url: str, reason: str, suggested_entry: str | None = None) -> None:
        #: Which ``allowed_outbound_hosts`` entry would allow the request (None when the URL is unusable).
        self.suggested_entry = suggested_entry
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"Destination not allowed: {self.url}: {self.reason}"


# ---------------------------------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class HostRule:
    kind: Literal["any", "subdomain", "self", "literal", "cidr"]
    #: literal: the host, lower-case, IPv6 without brackets; subdomain: the suffix with its leading ".".
    value: str = ""
    network: IpNetwork | None = None

    def allows(self, host: str) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "subdomain":
            return _ip(host) is None and host.endswith(self.value)
        if self.kind == "literal":
            return host == self.value
        if self.kind == "cidr":
            address = _ip(host)
            return address is not None and self.network is not None and address in self.network
        return False  # "self" only allows relative requests


@dataclass(frozen=True)
class PortRule:
    #: None = any port. Otherwise the allowed ranges as (first, end) with ``end`` excluded; a single port p is
    #: (p, p + 1).
    ranges: tuple[tuple[int, int], ...] | None

    def allows(self, port: int | None, scheme: str) -> bool:
        if self.ranges is None:
            return True
        port = port if port is not None else _WELL_KNOWN_PORTS.get(scheme)
        return port is not None and any(first <= port < end for first, end in self.ranges)


@dataclass(frozen=True)
class AllowedHost:
    """One parsed ``allowed_outbound_hosts`` entry."""

    #: The entry as the user wrote it (after template expansion and legacy conversion).
    original: str
    #: None = any scheme.
    scheme: str | None
    host: HostRule
    port: PortRule

    def allows(self, destination: Destination) -> bool:
        if destination.relative:
            return self.host.kind in ("any", "self") and (self.scheme is None or self.scheme == destination.scheme)
        return (
            (self.scheme is None or self.scheme == destination.scheme)
            and self.host.allows(destination.host)
            and self.port.allows(destination.port, destination.scheme)
        )


@dataclass(frozen=True)
class Destination:
    """Where a guest wants to go, reduced to what the rules look at."""

    scheme: str
    #: Lower-case; IPv6 without brackets; "" when relative.
    host: str
    #: None when the URL names none (the scheme's well-known port applies).
    port: int | None
    #: No authority: a request to the app itself (Spin's "self" requests).
    relative: bool = False

    @property
    def authority(self) -> str:
        if self.relative:
            return "self"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_destination(url: str, default_scheme: str = "https") -> Destination:
    """A URL (or ``host:port``, or a path for a relative request) -> Destination; ValueError if unusable.

    Like Spin's ``OutboundUrl::parse``: when the text has no authority, ``{default_scheme}://`` is prepended
    and it is tried again, so ``example.com:443`` works.
    """
    text = url.strip()
    if text == "" or text.startswith("/") and not text.startswith("//"):
        return Destination(scheme=default_scheme, host="", port=None, relative=True)
    parts = urlsplit(text)
    if not parts.netloc and "://" not in text:
        parts = urlsplit(f"{default_scheme}://{text}")
    host = parts.hostname
    if not parts.netloc or not host:
        raise ValueError(f"{url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    scheme = (parts.scheme or default_scheme).lower()
    if port is not None and port == _WELL_KNOWN_PORTS.get(scheme):
        port = None  # as the url crate does: the scheme's own port is no port
    address = _ip(host)
    return Destination(scheme=scheme, host=str(address) if address is not None else host.lower(), port=port)


def service_chaining_target(host: str) -> str | None:
    """The component id when ``host`` is ``<component-id>.spin.internal`` (Spin's service chaining), else None."""
    host = host.lower()
    if not host.startswith("[") and host.count(":") == 1:
        host = host.partition(":")[0]
    name, dot, rest = host.partition(".")
    return name if dot and name and rest == SERVICE_CHAINING_SUFFIX[1:] else None


# ---------------------------------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class OutboundPolicy:
    """A component's allowed destinations. Empty = nothing allowed (Spin's default)."""

    hosts: tuple[AllowedHost, ...] = ()
    #: For messages: e.g. "spin.toml: component 'web'".
    where: str = ""

    @classmethod
    def parse(
        cls,
        entries: Iterable[str],
        where: str = "",
        resolve_variable: Callable[[str], str] | None = None,
        is_secret: Callable[[str], bool] | None = None,
    ) -> OutboundPolicy:
        """Parse every entry now (so a bad one fails task Create), expanding ``{{ var }}`` with resolve_variable.

        ``resolve_variable(name)`` returns an application variable's value or raises (its message is kept).
        Raises OutboundHostsError naming ``where`` and the entry; when a bad entry's template uses a variable
        ``is_secret`` says is secret, the message shows only the template, never the expanded text.
        """
        hosts: list[AllowedHost] = []
        for entry in entries:
            text = _render(entry, where, resolve_variable)
            try:
                for expanded in _legacy_forms(text):
                    hosts.append(_parse_entry(expanded))
            except ValueError as exc:
                if text != entry and is_secret is not None and any(map(is_secret, Template.parse(entry).references)):
                    raise OutboundHostsError(
                        f"{_prefix(where)}allowed_outbound_hosts entry {entry!r} is invalid once its variables are "
                        "expanded (the value is not shown: it uses a secret variable)"
                    ) from None
                shown = repr(entry) if text == entry else f"{entry!r} (= {text!r})"
                raise OutboundHostsError(f"{_prefix(where)}allowed_outbound_hosts entry {shown}: {exc}") from None
        return cls(hosts=tuple(hosts), where=where)

    @property
    def allows_all(self) -> bool:
        return any(h.scheme is None and h.host.kind == "any" and h.port.ranges is None for h in self.hosts)

    def allows(self, url: str, default_scheme: str = "https") -> bool:
        try:
            destination = parse_destination(url, default_scheme)
        except ValueError:
            return False
        return self.allows_destination(destination)

    def allows_destination(self, destination: Destination) -> bool:
        if destination.relative:  # no scheme to go by: Spin checks relative requests against http and https
            return self.allows_relative(("http", "https"))
        return any(h.allows(destination) for h in self.hosts)

    def allows_relative(self, schemes: Iterable[str] = ("http", "https")) -> bool:
        """Whether a request without authority (to the app itself) is allowed for any of ``schemes``."""
        return any(h.allows(Destination(s, "", None, relative=True)) for s in schemes for h in self.hosts)

    def check(self, url: str, default_scheme: str = "https") -> None:
        """Raise OutboundDenied (saying which entry would allow the URL) unless it is allowed."""
        try:
            destination = parse_destination(url, default_scheme)
        except ValueError as exc:
            raise OutboundDenied(url, f"cannot tell the destination ({exc})") from None
        if self.allows_destination(destination):
            return
        scheme = "http" if destination.relative else destination.scheme
        entry = f"{scheme}://{destination.authority}"
        component = f" of {self.where}" if self.where else ""
        raise OutboundDenied(
            url,
            f"to allow it, add \"{entry}\" to allowed_outbound_hosts{component}",
            suggested_entry=entry,
        )


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _render(entry: str, where: str, resolve_variable: Callable[[str], str] | None) -> str:
    """The entry with its ``{{ var }}`` templates expanded (the entry itself when it has none)."""
    if "{{" not in entry:
        return entry
    try:
        template = Template.parse(entry)
    except TemplateError as exc:
        raise OutboundHostsError(f"{_prefix(where)}allowed_outbound_hosts entry {entry!r}: {exc}") from None
    if resolve_variable is None:
        raise OutboundHostsError(
            f"{_prefix(where)}allowed_outbound_hosts entry {entry!r} uses variables, but none are available here"
        )
    try:
        return template.render(resolve_variable)
    except Exception as exc:  # the resolver's own error says which variable and why
        raise OutboundHostsError(f"{_prefix(where)}allowed_outbound_hosts entry {entry!r}: {exc}") from None


def _legacy_forms(text: str) -> list[str]:
    """``scheme://...`` entries as they are; the deprecated ``allowed_http_hosts`` forms converted as Spin does.

    Raises ValueError for text that is neither.
    """
    text = text.strip()
    if "://" in text:
        return [text]
    if text in ("*", ":", "", "?"):
        raise ValueError(
            "not an allowed outbound host format: hosts must be in the form <scheme>://<host>[:<port>], with '*' "
            f"wildcards allowed for each; '*://*:*' allows all outbound networking (no sandboxing). See {_DOCS}"
        )
    if text == _ALLOW_ALL_LEGACY:
        return ["http://*:*", "https://*:*", "http://self"]
    if text == "self":
        return ["http://self"]
    # Legacy allowed_http_hosts "host[:port]".
    try:
        legacy = urlsplit(f"http://{text}")
        legacy_port = legacy.port
    except ValueError:
        legacy, legacy_port = None, None
    if legacy is None or not legacy.hostname or legacy.path not in ("", "/") or legacy.query or "@" in text:
        raise ValueError(f"does not contain a scheme (write e.g. 'https://{text}' or '*://{text}'); see {_DOCS}")
    host = legacy.netloc.rstrip("/").rsplit(":", 1)[0] if legacy_port is not None else legacy.netloc.rstrip("/")
    suffix = f":{legacy_port}" if legacy_port is not None else ""
    return [f"http://{host}{suffix}", f"https://{host}{suffix}"]


def _parse_entry(text: str) -> AllowedHost:
    scheme_text, _, rest = text.partition("://")
    if rest.startswith("["):  # bracketed IPv6 literal: the port is after "]"
        close = rest.find("]")
        if close < 0:
            raise ValueError("unclosed '[' in an IPv6 host")
        host_text, after = rest[: close + 1], rest[close + 1 :]
        if after.startswith(":"):
            port_text = after[1:]
        elif after in ("", "/"):
            port_text = ""
        else:
            raise ValueError("has a path, which allowed_outbound_hosts entries may not have")
    else:
        host_text, sep, port_text = rest.rpartition(":")
        if not sep:
            host_text, port_text = rest, ""
    port_text, _, path = port_text.partition("/")
    if path:
        raise ValueError("has a path, which allowed_outbound_hosts entries may not have")
    scheme = _parse_scheme(scheme_text)
    port = _parse_port(port_text, scheme_text)
    host = _parse_host(host_text)
    return AllowedHost(original=text, scheme=scheme, host=host, port=port)


def _parse_scheme(text: str) -> str | None:
    if text == "*":
        return None
    if text.startswith("{"):
        raise ValueError("scheme lists are not supported")
    if not text or not text.isalpha():
        raise ValueError(f"invalid scheme {text!r}: only letters, or '*' for any scheme")
    return text.lower()


def _parse_port(text: str, scheme: str) -> PortRule:
    text = text.strip()
    if text == "":
        default = _WELL_KNOWN_PORTS.get(scheme.lower())
        if default is None:
            raise ValueError(
                f"no port was given and the scheme {scheme!r} has no well-known port; add ':<port>' or ':*'"
            )
        return PortRule(((default, default + 1),))
    if text == "*":
        return PortRule(None)
    if text.startswith("{"):
        raise ValueError("port lists are not supported")
    if ".." in text:
        first_text, _, end_text = text.partition("..")
        first, end = _port_number(first_text, text), _port_number(end_text, text)
        return PortRule(((first, end),))
    if "-" in text:
        raise ValueError(f"port {text!r} is not a number (write a port range as 'start..end', end excluded)")
    port = _port_number(text, text)
    return PortRule(((port, port + 1),))


def _port_number(text: str, whole: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"port {whole!r} is not a port number (0-65535), '*' or a range 'start..end'")
    return int(text)


def _parse_host(text: str) -> HostRule:
    host = text.strip()
    if host == "*":
        return HostRule("any")
    if host in ("self", "self.alt"):
        return HostRule("self")
    if host.startswith("{"):
        raise ValueError("host lists are not supported")
    if "/" in host.rstrip("/"):
        try:
            return HostRule("cidr", network=ipaddress.ip_network(host, strict=False))
        except ValueError:
            raise ValueError(f"host {host!r} must not include a path") from None
    host = host.rstrip("/")
    if not host:
        raise ValueError("has no host (use '*' for any host)")
    if host.startswith("*."):
        domain = host[2:]
        if "*" in domain:
            raise ValueError(f"host {host!r}: wildcards are allowed only as a '*.' prefix")
        return HostRule("subdomain", value=f".{domain.lower()}")
    if "*" in host:
        raise ValueError(f"host {host!r}: wildcards are allowed only as a '*.' prefix (e.g. '*.example.com')")
    if host.startswith("[") and host.endswith("]"):
        address = _ip(host[1:-1])
        if address is None or address.version != 6:
            raise ValueError(f"host {host!r} is not an IPv6 address")
        return HostRule("literal", value=str(address))
    if any(c in host for c in " @?#[]\\") or not host.isascii():
        raise ValueError(f"invalid host {host!r}")
    address = _ip(host)
    return HostRule("literal", value=str(address) if address is not None else host.lower())


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
