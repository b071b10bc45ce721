"""py-spin (the Spin Python SDK test app) loaded and served in this process, as the instance process serves it with
one worker (InlineServer), for the telemetry unit tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.unit.test_host_marshal import app_wasm

#: Precompiled blobs survive between runs here (compiling py-spin takes ~13 s).
CACHE_DIR = Path("/var/cache/containerd-shim-spin-test/unit-telemetry")


def copy_py_spin(tmp_path: Path, more_hosts: tuple[str, ...] = ()) -> Path:
    """py-spin's build in a directory of its own (its key-value store and SQLite file land there); ``more_hosts``
    are added to its ``allowed_outbound_hosts`` (``http://self``, ``http://*.spin.internal``)."""
    build = app_wasm("py-spin").parent
    root = tmp_path / "py-spin"
    root.mkdir()
    try:  # a hard link where it can be (a symlink would point outside the app's root, which the loader refuses)
        os.link(build / "app.wasm", root / "app.wasm")
    except OSError:
        shutil.copy(build / "app.wasm", root / "app.wasm")
    manifest = (build / "spin.toml").read_text()
    if more_hosts:
        marker = 'allowed_outbound_hosts = ["'
        assert manifest.count(marker) == 1, "py-spin's spin.toml changed: update copy_py_spin"
        manifest = manifest.replace(marker, marker + '", "'.join(more_hosts) + '", "')
    (root / "spin.toml").write_text(manifest)
    shutil.copytree(build / "static", root / "static")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServedApp:
    port: int

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@contextlib.contextmanager
def served_py_spin(tmp_path: Path, env: dict[str, str], more_hosts: tuple[str, ...] = ()) -> Iterator[ServedApp]:
    """Load py-spin with ``env`` as the task env and serve it on a thread until the block ends, then drain it as
    SIGTERM does (HttpApp.interrupt). ``more_hosts``: see copy_py_spin."""
    from runtime.loader import load_app
    from runtime.settings import RuntimeSettings

    port = free_port()
    task_env = {"SPIN_HTTP_LISTEN_ADDR": f"127.0.0.1:{port}", "SPIN_SHIM_HTTP_WORKERS": "1",
                "SPIN_VARIABLE_API_TOKEN": "t", **env}
    app = load_app(copy_py_spin(tmp_path, more_hosts), ["/"], task_env, RuntimeSettings(cache_dir=CACHE_DIR))
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(app.run()), daemon=True)  # type: ignore[union-attr]
    thread.start()
    served = ServedApp(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if served.get("/.well-known/spin/health")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("py-spin never became healthy")
        time.sleep(0.05)
    try:
        yield served
    finally:
        app.interrupt()  # type: ignore[union-attr]
        thread.join(30)
        assert not thread.is_alive(), "the app did not drain"
        assert outcome == [0]


