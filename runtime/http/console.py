"""What the HTTP trigger tells the person reading the container log (``ctr run``'s terminal, ``kubectl logs``).

Pure text, plus one cheap probe of the network namespace: no I/O beyond that, so every line is pinned by unit
tests. The lines go to the task's stderr in one write(2) each (runtime.http.server ``log_line``).

- **At start** (task Start, before the workers fork): Spin's own start-up text (spin crates/trigger-http/src/
  server.rs ``print_startup_msgs``: ``Serving http://<addr>``, ``Available Routes:``, ``  <component>: <url>``
  with ``(wildcard)`` after a ``/...`` route), then one line of this shim's: workers, and for each component
  whether its precompiled form came from the cache or was compiled (and how long it took). Without these, a task
  started in a namespace nobody can reach ran silently (issue 16).
- **A warning** when the listener is on a non-loopback address in a network namespace whose only interface is
  ``lo`` (``ctr run`` without ``--net-host`` gives exactly that): the app then cannot be reached from outside the
  container, although the task is RUNNING and its health endpoint answers inside.
- **The access log** (``SPIN_SHIM_ACCESS_LOG``): one line per request, and the timestamp that trap and timeout
  lines carry. UTC, ISO 8601 with milliseconds, so lines of several workers and pods sort and compare.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from runtime.errors import InvalidSettingError
from runtime.log_time import utc_timestamp

if TYPE_CHECKING:
    from runtime.compiled import ComponentLoad

#: Task env switch of the access log, and the values it takes (anything else fails Create, as a typo must not
#: silently leave the log off).
ACCESS_LOG_ENV = "SPIN_SHIM_ACCESS_LOG"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


def access_log_enabled(env: Mapping[str, str]) -> bool:
    """``SPIN_SHIM_ACCESS_LOG``: ``1``/``true``/``yes``/``on`` turn it on; unset, empty, ``0``/``false``/``no``/
    ``off`` leave it off (case-insensitive)."""
    raw = env.get(ACCESS_LOG_ENV, "")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise InvalidSettingError(f"{ACCESS_LOG_ENV}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


# ------------------------------------------------------------------------------------------------ start-up


def base_url(scheme: str, bound: str) -> str:
    """Spin's ``format!("{scheme}://{local_addr:?}")``: ``http://0.0.0.0:80``, ``http://[::]:80``."""
    return f"{scheme}://{bound}"


def startup_lines(url: str, listing: Iterable[tuple[str, bool, str]],
                  static_names: Mapping[str, str] | None = None) -> list[str]:
    """Spin's start-up text for one listener: ``Serving <url>``, ``Available Routes:``, one line per route.

    ``listing`` is ``Router.listing``; ``static_names`` maps a static response's destination key to the trigger
    id Spin shows for it (Spin's ``TriggerLookupKey::Trigger``).
    """
    statics = static_names or {}
    lines = [f"Serving {url}", "Available Routes:"]
    for path, wildcard, destination in listing:
        name = statics.get(destination, destination)
        lines.append(f"  {name}: {url}{path}{' (wildcard)' if wildcard else ''}")
    return lines


def describe_load(load: ComponentLoad) -> str:
    """``js-echo: precompiled, cache hit (3 ms)`` or ``js-echo: compiled in 5.21 s (cached for the next start)``."""
    cache = load.cache
    if cache.outcome == "hit":
        return f"{load.name}: precompiled, cache hit ({cache.seconds * 1000:.0f} ms)"
    again = " (the cached blob was invalid)" if cache.outcome == "rebuilt" else ""
    return f"{load.name}: compiled in {cache.seconds:.2f} s{again} (cached for the next start)"


def trigger_summary(workers: int, loads: Sequence[ComponentLoad], statics: int = 0) -> str:
    """The shim's own start-up line: how the trigger serves, and what its start cost."""
    parts = [f"{workers} worker process{'es' if workers != 1 else ''}"]
    if statics:
        parts.append(f"{statics} static response{'s' if statics != 1 else ''}")
    parts += [describe_load(load) for load in loads]
    return "spin: http trigger: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ reachability


def interface_names() -> list[str] | None:
    """The network interfaces of this process's network namespace, or None if the kernel would not say.

    ``if_nameindex(3)`` asks the kernel over netlink, so it reflects the namespace the process is in, which
    ``/sys/class/net`` (the mounter's namespace, and absent in the task's sandbox) need not. About 50 us.
    """
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return None


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8 and ::1 (also as ::ffff:127.x): a listener there is meant to be local only."""
    plain = host.split("%", 1)[0].lower()
    return plain.startswith("127.") or plain == "::1" or plain.startswith("::ffff:127.")


def unreachable_warning(bound_host: str, bound: str, interfaces: list[str] | None) -> str | None:
    """The warning for a listener nobody outside can reach, or None.

    Only for a non-loopback listener (0.0.0.0, ::, an address) in a namespace whose interfaces are ``lo`` alone:
    with a CNI network (a pod's ``eth0``) or ``--net-host`` there are others. Spin's warning format
    (``Warning: ...``, spin crates/terminal ``warn!``).
    """
    if interfaces is None or is_loopback_host(bound_host) or any(name != "lo" for name in interfaces):
        return None
    return (f"Warning: the HTTP trigger listens on {bound} in a network namespace that has only a loopback "
            "interface (lo): nothing outside this container can reach it. Run the task in the host's network "
            "(`ctr run --net-host ...`) or give it a network (a Kubernetes pod, or CNI with "
            "`ctr run --cni ...`); to serve only inside the container, listen on 127.0.0.1 "
            "(SPIN_HTTP_LISTEN_ADDR)")


# ------------------------------------------------------------------------------------------------ requests


def access_line(now: float, method: str, path: str, status: int | None, seconds: float, component: str,
                outcome: str = "") -> str:
    """``2026-12-03T18:21:21.123Z GET /hello 200 1.24ms js-echo``; ``-`` for a status never sent; ``outcome``
    (e.g. ``aborted``) appended when the response did not complete."""
    shown = "-" if status is None else str(status)
    tail = f" {outcome}" if outcome else ""
    return f"{utc_timestamp(now)} {method} {path} {shown} {seconds * 1000:.2f}ms {component}{tail}"


def request_failure_line(now: float, line: str, method: str, path: str) -> str:
    """A trap or timeout line of one request, with when it happened and which request it was."""
    return f"{utc_timestamp(now)} {line} [{method} {path}]"


__all__ = ["ACCESS_LOG_ENV", "access_line", "access_log_enabled", "base_url", "describe_load", "interface_names",
           "is_loopback_host", "request_failure_line", "startup_lines", "trigger_summary", "unreachable_warning",
           "utc_timestamp"]
