"""The seam between the HTTP server (runtime.http) and the executors that run a guest for one request.

The server owns sockets, HTTP/1.1 framing, routing and Spin's request headers; an executor (runtime.host's
wasi:http component executor, runtime.executors' WAGI and Spin 1 executors) owns one component and turns one
request into one response. Everything crossing the seam is here so either side can be read, tested and replaced
alone, like runwasi's Instance between containerd and the engine.

Threading: ``Executor.handle`` runs on a guest thread of the worker process, never on the event loop, because a
wasm call is synchronous. ``RequestBody.read`` and ``ResponseSink.write`` therefore block that thread (the body
streams from the socket while the guest reads it; the response streams to the socket while the guest writes it),
and they are the only calls into the server an executor makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from runtime.files import Preopen

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class RouteInfo:
    """What Spin's router decided, for the ``spin-*`` headers and for WAGI's CGI variables."""

    #: The route as written in spin.toml, e.g. "/api/..." (Spin's ``spin-raw-component-route``).
    raw_route: str
    #: The route with a trailing "/..." removed, e.g. "/api" (``spin-component-route``).
    component_route: str
    #: The route that matched, as Spin spells it in ``spin-matched-route`` (the raw route).
    matched_route: str
    #: The part of the path after the matched prefix, starting with "/" or empty (``spin-path-info``).
    path_info: str
    #: Always "/" in Spin 2+ (``spin-base-path``).
    base_path: str = "/"


@dataclass(frozen=True)
class RequestHead:
    """One incoming request, as the executor sees it: Spin headers already added by the server."""

    method: str
    #: Path and query exactly as received, e.g. "/api/x?y=1".
    target: str
    #: Header names lower-cased; values as received. Includes the spin-* headers.
    headers: Headers
    scheme: str
    #: The Host header, or the listen address when the client sent none.
    authority: str
    #: "ip:port" of the peer.
    client_addr: str
    #: The component the route names.
    component_id: str
    route: RouteInfo
    #: The full URL Spin puts in ``spin-full-url``.
    full_url: str
    #: Monotonic time (time.monotonic()) after which the guest is stopped and the client gets a 504;
    #: ``math.inf`` when the server has no request timeout configured (Spin's default).
    deadline: float
    #: Content-Length when the client sent one, else None (chunked or no body).
    content_length: int | None = None


class RequestBody(Protocol):
    def read(self, max_bytes: int) -> bytes:
        """Block until some body bytes (at most max_bytes) are there; b"" at the end of the body.

        Raises ClientGone when the client disconnected or stalled past the server's body timeout, or when the
        request's deadline passed while waiting (a blocked host call must not outlive the deadline).
        While it waits, the server counts the guest as idle and may start another request in the process.
        """
        ...


class ResponseSink(Protocol):
    @property
    def started(self) -> bool:
        """True once ``start`` was called: from then on a failure can only abort the connection."""
        ...

    def start(self, status: int, headers: Headers) -> None:
        """Send the status line and headers. A Content-Length header fixes the framing; without one the server
        uses chunked encoding (or close-delimited for HTTP/1.0)."""
        ...

    def write(self, data: bytes) -> None:
        """Queue body bytes; blocks while the client is slower than the guest (backpressure).

        Raises ClientGone when the client went away, or read nothing for the server's body timeout: the
        executor stops the guest's writes with an error.
        """
        ...

    def finish(self, trailers: Headers | None = None) -> None:
        """End the body. Trailers are dropped unless the response is chunked."""
        ...


class ClientGone(Exception):
    """The client disconnected, or stalled past a server timeout, while the guest was reading or writing."""


@dataclass
class GuestFailure(Exception):
    """The guest failed before it produced a response: the server answers ``status`` with ``public_message``.

    ``log_line`` goes to the container's stderr (one line, e.g. "spin: api: trap: unreachable"), because the
    app's developer reads the container log, not the HTTP client's screen.
    """

    status: int
    public_message: str
    log_line: str = ""

    def __str__(self) -> str:
        return self.log_line or self.public_message


@dataclass
class HandleOutcome:
    """What the server logs and counts after a request (the response itself went through the sink)."""

    component_id: str
    status: int = 0
    #: Guest-side problems that did not prevent a response (e.g. a trap after the headers were sent).
    notes: list[str] = field(default_factory=list)


class Executor(Protocol):
    """One loaded component in one worker process. Built after fork, used from guest threads."""

    component_id: str

    def handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        """Run the guest for one request (a fresh Store and instance) and stream its response into ``sink``.

        Raises GuestFailure when no response was started (trap, timeout, memory exhausted, no response set);
        after ``sink.start`` a failure ends the response early and is reported by raising GuestFailure too
        (the server then closes the connection instead of answering).
        """
        ...


ExecutorKind = Literal["component", "wagi", "spin1"]


@dataclass(frozen=True)
class ComponentConfig:
    """Everything an executor needs to know about its component, resolved from spin.toml and the task at load.

    Built by runtime.http.trigger (which reads the manifest); executors never read spin.toml themselves.
    """

    id: str
    #: The wasm on the node (inside the mounted rootfs); already validated and precompiled by the loader.
    wasm_path: Path
    #: "component" = wasi:http incoming-handler 0.2.x; "wagi" = WASI p1 CGI; "spin1" = Spin 1 core module.
    executor: ExecutorKind
    #: The component's ``environment`` overlaid by the task env (what wasi:cli/environment returns).
    environment: Mapping[str, str]
    #: Read-only directories the guest sees (the component's ``files``).
    preopens: Sequence[Preopen] = ()
    allowed_outbound_hosts: tuple[str, ...] = ()
    key_value_stores: tuple[str, ...] = ()
    #: The component's ``variables`` table: name -> template ("{{ app_var }}" expands application variables).
    variables: Mapping[str, str] = field(default_factory=dict)
    #: Bytes per Store (SPIN_MAX_INSTANCE_MEMORY), None = wasmtime's own limit.
    max_instance_memory: int | None = None
    #: WAGI: ``[trigger.http.executor]`` entrypoint and argv template (Spin's defaults when not set).
    wagi_entrypoint: str = "_start"
    wagi_argv: str = "${SCRIPT_NAME} ${ARGS}"
    #: Spin services (variables, key-value, outbound HTTP) shared by the app's components; typed loosely here so
    #: this module needs no import of runtime.spin.
    services: Any = None
