"""Spin's ``[[client_tls]]`` runtime-config tables, and the TLS client settings of outbound HTTPS.

As Spin defines them (spin crates/factor-outbound-networking/src/runtime_config/spin.rs ``ClientTlsToml``,
``deny_unknown_fields``; tls.rs ``TlsClientConfigs``)::

    [[client_tls]]
    component_ids = ["web"]              # required, non-empty
    hosts = ["api.example.com"]          # required, non-empty; host names without a port
    ca_use_platform_roots = true         # optional
    ca_use_webpki_roots = false          # optional
    ca_roots_file = "certs/ca.pem"       # optional: PEM certificates to trust
    client_cert_file = "certs/me.pem"    # optional, with client_private_key_file: a client certificate
    client_private_key_file = "certs/me.key"

- Roots: both flags set -> as set; only platform -> (platform, no webpki); only webpki -> (no platform, webpki);
  neither -> platform unless ``ca_roots_file`` is given. At least one source of roots must remain.
- "Platform roots" here are the trust store the shim chose for the container (``SSL_CERT_FILE``: the container's
  ``/etc/ssl/certs/ca-certificates.crt`` when it has one, a pod's mounted CA bundle included, else the node's);
  "webpki roots" (Mozilla's root program, compiled into Spin) are Mozilla's roots as the ``certifi`` package ships
  them. Outbound HTTPS that no table matches uses both, as Spin's default client config does.
- Paths are relative to the runtime config file's directory (Spin joins them to it) or absolute in the
  container; either way they are resolved inside the task's root by the caller's ``resolve`` (image content and
  volumes are untrusted: a symlink cannot lead out of the root). Files are read at load, at most 1 MiB each.
- A request matches the first table (in file order) that lists both its component and its host (exact host name,
  case-insensitive; Spin looks the URI's host up in a map filled first-match-wins).

The certificates, key and CA roots are loaded into an ``ssl.SSLContext`` at load, so a bad file fails task Create
(Spin fails at start too); the platform and webpki roots are added in the worker on first use, after the shim has
chosen the trust store. Only HTTP/1.1 is offered in ALPN (the client speaks nothing else).
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.capped_read import CappedReadError, read_capped
from runtime.unknown_keys import unknown_keys_phrase

MAX_PEM_BYTES = 1 << 20
_KEYS = frozenset({"component_ids", "hosts", "ca_use_platform_roots", "ca_use_webpki_roots", "ca_roots_file",
                   "client_cert_file", "client_private_key_file"})
#: spin_serde's KebabId: lower-case words of letters and digits joined by '-', starting with a letter.
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)$")
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


class ClientTlsError(ValueError):
    """A ``[[client_tls]]`` table Spin would refuse; the message names the table and the key."""


@dataclass(frozen=True)
class ClientTlsSpec:
    """One ``[[client_tls]]`` table, its files read and checked."""

    where: str
    component_ids: tuple[str, ...]
    #: Lower-case, IPv6 without brackets.
    hosts: tuple[str, ...]
    use_platform_roots: bool
    use_webpki_roots: bool
    #: Certificates of ``ca_roots_file`` (PEM), None without one.
    ca_roots_pem: str | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    #: The context built at load (client certificate, ca_roots_file); roots of the platform/webpki are added on
    #: first use in the process (``TlsProfile.context``).
    base_context: Any = field(default=None, compare=False, repr=False)

    def matches(self, component_id: str, host: str) -> bool:
        return component_id in self.component_ids and normal_host(host) in self.hosts


def normal_host(host: str) -> str:
    return host.strip().strip("[]").lower()


def parse_client_tls(raw: Any, where: str, resolve: Callable[[str], Path]) -> tuple[ClientTlsSpec, ...]:
    """``[[client_tls]]`` tables -> specs; ClientTlsError naming ``where`` (the config file) and the table."""
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise ClientTlsError(f"{where}: client_tls must be written as [[client_tls]] tables (an array of tables)")
    return tuple(_parse_one(table, f"{where}: [[client_tls]] #{index}", resolve)
                 for index, table in enumerate(raw, start=1))


def _parse_one(table: dict[str, Any], where: str, resolve: Callable[[str], Path]) -> ClientTlsSpec:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ClientTlsError(f"{where}: {unknown_keys_phrase(unknown, _KEYS)} (Spin's keys: "
                             f"{', '.join(sorted(_KEYS))})")
    components = _string_list(table, "component_ids", where)
    for component in components:
        if not _KEBAB.match(component):
            raise ClientTlsError(f"{where}: component_ids: {component!r} is not a kebab-case component id")
    hosts = _string_list(table, "hosts", where)
    for host in hosts:
        _check_host(host, where)
    platform = _optional_bool(table, "ca_use_platform_roots", where)
    webpki = _optional_bool(table, "ca_use_webpki_roots", where)
    roots_file = _optional_path(table, "ca_roots_file", where)
    cert_file = _optional_path(table, "client_cert_file", where)
    key_file = _optional_path(table, "client_private_key_file", where)
    if platform is not None and webpki is not None:
        use_platform, use_webpki = platform, webpki
    elif platform is not None:
        use_platform, use_webpki = platform, False
    elif webpki is not None:
        use_platform, use_webpki = False, webpki
    else:
        use_platform, use_webpki = roots_file is None, False
    if (cert_file is None) != (key_file is None):
        given, missing = ("client_cert_file", "client_private_key_file") if key_file is None else \
            ("client_private_key_file", "client_cert_file")
        raise ClientTlsError(f"{where}: {given} specified without {missing}")
    roots_pem: str | None = None
    if roots_file is not None:
        data = _read(roots_file, "ca_roots_file", where, resolve)
        if _PEM_CERT not in data:
            raise ClientTlsError(f"{where}: ca_roots_file {roots_file!r} holds no PEM certificate")
        roots_pem = data.decode("ascii", "replace")
    if not (use_platform or use_webpki or roots_pem):
        raise ClientTlsError(f"{where}: at least one of ca_use_platform_roots, ca_use_webpki_roots or "
                             "ca_roots_file must give root certificates")
    if use_webpki:
        _webpki_bundle(where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["http/1.1"])
    if roots_pem is not None:
        try:
            context.load_verify_locations(cadata=roots_pem)
        except ssl.SSLError as exc:
            raise ClientTlsError(f"{where}: ca_roots_file {roots_file!r}: invalid certificate(s): {exc}") from None
    cert_path = key_path = None
    if cert_file is not None and key_file is not None:
        cert_path = _resolved_file(cert_file, "client_cert_file", where, resolve)
        key_path = _resolved_file(key_file, "client_private_key_file", where, resolve)
        try:
            context.load_cert_chain(str(cert_path), str(key_path))
        except (ssl.SSLError, OSError) as exc:
            raise ClientTlsError(f"{where}: client_cert_file {cert_file!r} / client_private_key_file "
                                 f"{key_file!r}: cannot load the certificate and key: {exc}") from None
    return ClientTlsSpec(where=where, component_ids=tuple(components), hosts=tuple(normal_host(h) for h in hosts),
                         use_platform_roots=use_platform, use_webpki_roots=use_webpki, ca_roots_pem=roots_pem,
                         client_cert_file=cert_path, client_key_file=key_path, base_context=context)


def _string_list(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key)
    if value is None:
        raise ClientTlsError(f"{where}: '{key}' is required")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClientTlsError(f"{where}: '{key}' must be a list of strings")
    if not value:
        raise ClientTlsError(f"{where}: '{key}' list may not be empty")
    return value


def _check_host(host: str, where: str) -> None:
    """Spin's ``validate_host``: an authority (``http::uri::Authority``) without a port."""
    bracketed = host.startswith("[")
    if (not bracketed and host.count(":") == 1) or (bracketed and "]:" in host):
        raise ClientTlsError(f"{where}: invalid TLS 'host' {host!r}; ports not currently supported")
    if not host or not _HOST.match(host):
        raise ClientTlsError(f"{where}: invalid TLS 'host' {host!r}")


def _optional_bool(table: dict[str, Any], key: str, where: str) -> bool | None:
    value = table.get(key)
    if value is not None and not isinstance(value, bool):
        raise ClientTlsError(f"{where}: '{key}' must be true or false")
    return value


def _optional_path(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ClientTlsError(f"{where}: '{key}' must be a non-empty path")
    return value


def _resolved_file(written: str, key: str, where: str, resolve: Callable[[str], Path]) -> Path:
    try:
        return resolve(written)
    except Exception as exc:  # noqa: BLE001 - the resolver's error (an escape from the root) says why
        raise ClientTlsError(f"{where}: {key} {written!r}: {exc}") from None


def _read(written: str, key: str, where: str, resolve: Callable[[str], Path]) -> bytes:
    path = _resolved_file(written, key, where, resolve)
    try:
        data = read_capped(path, MAX_PEM_BYTES)
    except CappedReadError as exc:
        raise ClientTlsError(f"{where}: {key} {written!r} ({path}): {exc}") from None
    if data is None:
        raise ClientTlsError(f"{where}: {key} {written!r} ({path}): no such file")
    return data


def _webpki_bundle(where: str = "") -> str:
    """Mozilla's roots, as certifi ships them (a file in its package: readable in the sandbox's module bind)."""
    try:
        import certifi
    except ImportError:
        raise ClientTlsError(f"{where}: ca_use_webpki_roots needs Mozilla's roots (the certifi package), which "
                             "this installation lacks") from None
    return str(certifi.where())


# ---------------------------------------------------------------------------------------------------- contexts


class TlsProfile:
    """The SSLContext one group of outbound requests uses; the key separates pooled connections."""

    def __init__(self, key: str, base: ssl.SSLContext | None, platform: bool, webpki: bool) -> None:
        self.key = key
        self._base = base
        self._platform = platform
        self._webpki = webpki
        self._ready: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        """Built (or completed) on first use in this process, once the trust store is chosen."""
        ready = self._ready
        if ready is not None:
            return ready
        with self._lock:
            if self._ready is None:
                context = self._base
                if context is None:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.set_alpn_protocols(["http/1.1"])
                if self._platform:
                    context.set_default_verify_paths()  # SSL_CERT_FILE, as the sandbox chose it
                if self._webpki:
                    try:
                        context.load_verify_locations(cafile=_webpki_bundle())
                    except (ClientTlsError, OSError, ssl.SSLError):
                        if self._base is not None:  # asked for explicitly: checked at load, so this is a bug
                            raise
                self._ready = context
            return self._ready


#: Spin's default client config (platform and webpki roots, no client certificate), per process.
DEFAULT_PROFILE = TlsProfile("default", None, platform=True, webpki=True)
_profiles: dict[int, TlsProfile] = {}
_profiles_lock = threading.Lock()


def profile_for(specs: tuple[ClientTlsSpec, ...], component_id: str, host: str) -> TlsProfile:
    """The first matching table's profile, else the default."""
    for index, spec in enumerate(specs):
        if spec.matches(component_id, host):
            with _profiles_lock:
                profile = _profiles.get(id(spec))
                if profile is None:
                    profile = _profiles[id(spec)] = TlsProfile(
                        f"client_tls#{index + 1}", spec.base_context, spec.use_platform_roots, spec.use_webpki_roots)
            return profile
    return DEFAULT_PROFILE
