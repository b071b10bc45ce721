"""Spin's HTTP router: ``[[trigger.http]]`` routes in, "which component, and what did it match" out.

Pure and table-like on purpose (no I/O, no HTTP): every routing corner is pinned by tests from strings. The rules
are Spin 2/3's (spin crates/http/src/routes.rs on top of the ``routefinder`` crate), because an app must route
the same here as under ``spin up`` and containerd-shim-spin:

- A route is made absolute ("foo" behaves as "/foo", as Spin's ``absolutize`` does) and one trailing "/" is
  dropped ("/foo/" behaves as "/foo"; "/" becomes ""). What remains is Spin's *based route* (the base is always
  "/" in Spin 2+), which ``spin-matched-route`` carries verbatim.
- ``"/prefix/..."`` (or ``"/prefix/*"``) matches the prefix itself and everything below it; ``"/..."`` matches
  every path. ``":name"`` segments match one path segment (Spin 3, routefinder), captured for the
  ``spin-path-match-<name>`` headers.
- Paths are matched with their leading and trailing slashes trimmed (routefinder's rule), so "/foo/" reaches
  "/foo"; empty segments inside a path are not collapsed ("/a//b" does not reach "/a/b").
- The most specific match wins, segment by segment from the left: a literal segment beats a ``:param``, which
  beats the end of a route, which beats a wildcard. So "/foo" beats "/foo/...", "/a/b/..." beats "/a/...", and
  "/a/:id" beats "/a/...". Equally specific matches go to the route declared first.
- ``route = { private = true }`` (passed here as None) is reachable by no HTTP request.
- The same route string twice: the later entry wins and the earlier is reported (Spin's
  ``duplicate_routes_last_one_wins``), with the text Spin logs.
- Routes under ``/.well-known/spin/`` can never be reached (the server answers those paths itself); Spin
  warns, and so does ``Router.build``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime.errors import ManifestError
from runtime.http.contract import RouteInfo

#: Paths Spin answers itself, before routing (spin crates/http/src/lib.rs WELL_KNOWN_PREFIX).
WELL_KNOWN_PREFIX = "/.well-known/spin/"

# Segment kinds, ordered by specificity (higher wins). END marks where a non-wildcard route stops, so that an
# exact "/foo" outranks "/foo/..." for the path "/foo", yet "/foo/:id" outranks "/foo" nowhere it matters (they
# never both match one path).
_LITERAL, _PARAM, _END, _WILDCARD = 4, 3, 2, 1


class RouteError(ManifestError):
    """A ``[[trigger.http]]`` route Spin would refuse (e.g. an unnamed ":" parameter, a wildcard mid-route)."""


@dataclass(frozen=True)
class RouteMatch:
    """The router's answer for one path: the component, the ``RouteInfo`` for Spin's headers, named captures."""

    component_id: str
    info: RouteInfo
    #: ``(name, value)`` for each ``:name`` segment, in route order (Spin's ``named_wildcards``).
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Route:
    raw: str
    based: str
    component_id: str
    #: Literal text, ":name" for a parameter; the wildcard is not a segment (see ``wildcard``).
    segments: tuple[str, ...]
    wildcard: bool
    #: Specificity, compared lexicographically; see the module docstring.
    rank: tuple[int, ...]


def _based_route(raw: str) -> str:
    """Spin's ``sanitize_with_base("/", raw)``: absolute, one trailing slash dropped."""
    route = raw if raw.startswith("/") else "/" + raw
    return route[:-1] if route.endswith("/") else route


def _parse(based: str) -> tuple[tuple[str, ...], bool]:
    """Split a based route into segments as routefinder's parser does; raise ValueError with Spin's wording."""
    wildcard = False
    if based.endswith("/..."):
        spec, wildcard = based[: -len("/...")], True
    elif based.endswith("/*"):
        spec, wildcard = based[: -len("*")], True
    else:
        spec = based
    segments: list[str] = []
    # routefinder skips empty sections, so "/a//b" is "/a/b" and "" (the route "/") has no segments at all.
    for section in (s for s in spec.strip("/").split("/") if s):
        if section.startswith("*"):
            if len(section) > 1:
                raise ValueError(
                    f"since there can only be one wildcard, it doesn't need a name. replace `{section}` with `*`"
                )
            raise ValueError("a wildcard (`...` or `*`) can only end a route")
        if section == ":":
            raise ValueError("params must be named")
        segments.append(section)
    return tuple(segments), wildcard


def _rank(segments: tuple[str, ...], wildcard: bool) -> tuple[int, ...]:
    kinds = [_PARAM if s.startswith(":") else _LITERAL for s in segments]
    return (*kinds, _WILDCARD if wildcard else _END)


class Router:
    """Routes of one app; build once (at load), then ``match`` per request."""

    def __init__(self, routes: tuple[_Route, ...]) -> None:
        # Most specific first; sorted() is stable, so equally specific routes keep manifest order.
        self._routes = tuple(sorted(routes, key=lambda r: r.rank, reverse=True))

    @classmethod
    def build(cls, entries: Iterable[tuple[str | None, str]]) -> tuple[Router, list[str]]:
        """Build from ``(route, component_id)`` pairs in manifest order; route None means ``{ private = true }``.

        Returns the router and the warnings Spin logs at start (duplicates, unreachable reserved routes), one
        line each, for the caller to write to the container log. Raises RouteError for a route Spin rejects.
        """
        by_raw: dict[str, _Route] = {}
        duplicates: list[tuple[_Route, str]] = []
        for raw, component_id in entries:
            if raw is None:
                continue
            based = _based_route(raw)
            try:
                segments, wildcard = _parse(based)
            except ValueError as err:
                raise RouteError(
                    f"Error parsing route {based} associated with component {component_id}: {err}"
                ) from None
            route = _Route(raw, based, component_id, segments, wildcard, _rank(segments, wildcard))
            replaced = by_raw.get(raw)
            if replaced is not None:
                duplicates.append((replaced, component_id))
            # A dict, like Spin's IndexMap: a repeated key keeps the first entry's position, takes the new value.
            by_raw[raw] = route
        warnings: list[str] = []
        if duplicates:
            warnings.append("The following component routes are duplicates and will never be used:")
            warnings += [f"  {old.component_id}: {old.based or '/'} (duplicate of {new})" for old, new in duplicates]
        if any(r.based.startswith(WELL_KNOWN_PREFIX) for r in by_raw.values()):
            warnings.append(
                f"Routes under {WELL_KNOWN_PREFIX} are handled by the Spin runtime and will never be reached"
            )
        return cls(tuple(by_raw.values())), warnings

    @property
    def routes(self) -> tuple[tuple[str, str], ...]:
        """``(raw route, component_id)`` of every reachable route, most specific first (for start-up logs)."""
        return tuple((r.raw, r.component_id) for r in self._routes)

    @property
    def listing(self) -> tuple[tuple[str, bool, str], ...]:
        """``(path, wildcard, component_id)`` of every reachable route, most specific first, as Spin lists them
        at start (``ParsedRoute``'s Display: the based route without its ``/...``, "" for "/")."""
        return tuple((r.based.removesuffix("/...").removesuffix("/*") if r.wildcard else r.based, r.wildcard,
                      r.component_id) for r in self._routes)

    def match(self, path: str) -> RouteMatch | None:
        """The best route for a request path (no query string, not percent-decoded, as Spin routes it)."""
        trimmed = path.strip("/")
        parts = trimmed.split("/") if trimmed else []
        for route in self._routes:
            captured = _match(route, parts)
            if captured is None:
                continue
            params, rest = captured
            return RouteMatch(
                component_id=route.component_id,
                info=RouteInfo(
                    raw_route=route.raw,
                    component_route=route.raw.removesuffix("/..."),
                    matched_route=route.based,
                    path_info=_path_info(rest, path) if route.wildcard else "",
                ),
                params=params,
            )
        return None


def _match(route: _Route, parts: list[str]) -> tuple[tuple[tuple[str, str], ...], str] | None:
    """``(named captures, wildcard remainder)`` when the route matches the trimmed path's parts, else None."""
    segments = route.segments
    if len(parts) < len(segments) or (not route.wildcard and len(parts) != len(segments)):
        return None
    params: list[tuple[str, str]] = []
    for segment, part in zip(segments, parts):
        if segment.startswith(":"):
            params.append((segment[1:], part))
        elif segment != part:
            return None
    return tuple(params), "/".join(parts[len(segments):])


def _path_info(rest: str, path: str) -> str:
    # Spin's trailing_wildcard(): routefinder drops trailing slashes, Spin puts one back for compatibility.
    if not rest:
        return "/" if path.endswith("/") else ""
    return f"/{rest}/" if path.endswith("/") else f"/{rest}"
