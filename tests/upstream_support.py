"""Plain HTTP servers on loopback in a thread of the test process: the upstream an app's outbound requests reach,
and the thread harness other test servers (OTLP receiver, refusing registry) run in.

One place for both, so every such server is shut down and closed the same way when its test ends, including a
test that fails half-way (a server left listening would answer the next test's requests).
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

Server = TypeVar("Server", bound=http.server.HTTPServer)


@contextlib.contextmanager
def serving_in_thread(server: Server) -> Iterator[Server]:
    """``server`` answering on a daemon thread until the block ends; then shut down, closed and joined."""
    server.daemon_threads = True  # type: ignore[attr-defined] - ThreadingMixIn's; harmless on a plain server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Upstream:
    port: int = 0
    #: The headers of each request it got, names lower-cased, in arrival order.
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def answering_upstream(*, host: str = "127.0.0.1", status: int = 203, body: bytes | None = None
                       ) -> Iterator[Upstream]:
    """Answers every GET with ``status`` and ``body`` (default ``upstream saw <path>``, so a test can tell the path
    the app sent); 203 by default, a status no app answers by itself."""
    upstream = Upstream()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            upstream.headers.append({name.lower(): value for name, value in self.headers.items()})
            answer = body if body is not None else f"upstream saw {self.path}".encode()
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            pass

    with serving_in_thread(http.server.ThreadingHTTPServer((host, 0), Handler)) as server:
        upstream.port = server.server_address[1]
        yield upstream
