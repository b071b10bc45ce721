"""An app with an HTTP and a Redis trigger (py-mixed: one spin-all wasm, two components sharing the default
key-value store), loaded and run the way the shim's instance process runs it: ``run()`` on the main thread of a
fresh process, SIGTERM calling ``interrupt()``. Both triggers serve; SIGTERM drains both and exits 0; a trigger
that dies takes the app down with it, as in Spin."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_support import _free_port, running_redis
from tests.unit.test_host_marshal import app_wasm
from tests.unit.test_redis_trigger import CACHE_DIR, wait_for

REPO = Path(__file__).resolve().parents[2]

#: The instance process's part, minus the sandbox: load, then run on the main thread with SIGTERM -> interrupt.
RUNNER = r"""
import signal, sys
from pathlib import Path
from runtime.loader import load_app
from runtime.settings import RuntimeSettings
app = load_app(Path(sys.argv[1]), ["/"], dict(arg.split("=", 1) for arg in sys.argv[3:]),
               RuntimeSettings(cache_dir=Path(sys.argv[2])))
print("loaded:", type(app).__name__, app.description, file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *_: app.interrupt())
sys.exit(app.run())
"""


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


class MixedApp:
    def __init__(self, tmp_path: Path, redis_port: int, **env: str) -> None:
        self.app_dir = tmp_path / "app"
        shutil.copytree(app_wasm("py-mixed").parent, self.app_dir)
        self.http_port = _free_port("127.0.0.1")
        self.stderr_path = tmp_path / "stderr"
        env = {"SPIN_HTTP_LISTEN_ADDR": f"127.0.0.1:{self.http_port}",
               "SPIN_VARIABLE_REDIS_ADDRESS": f"redis://127.0.0.1:{redis_port}", **env}
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUNNER, str(self.app_dir), str(CACHE_DIR), *(f"{k}={v}" for k, v in env.items())],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def serving_http(self) -> bool:
        try:
            return self.get("/hello")[0] == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def test_both_triggers_serve_and_sigterm_drains_both(tmp_path, redis_port):
    app = MixedApp(tmp_path, redis_port)
    try:
        wait_for(lambda: "subscribed on" in app.stderr(), timeout=60, what=f"the subscription; {app.stderr()}")
        wait_for(app.serving_http, timeout=30, what="the HTTP listener")
        assert "loaded: MultiTriggerApp" in app.stderr()
        assert app.get("/last") == (404, b"nothing yet")
        redis.Redis(port=redis_port).publish("mixed", b"from redis")
        wait_for(lambda: app.get("/last") == (200, b"from redis"), what="the Redis handler's KV write, read over HTTP")
        # one process per trigger type under the supervisor
        children = Path(f"/proc/{app.process.pid}/task/{app.process.pid}/children").read_text().split()
        assert len(children) == 2, children
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(30) == 0, app.stderr()
    finally:
        app.kill()


def test_a_trigger_that_dies_stops_the_app(tmp_path, redis_port):
    app = MixedApp(tmp_path, redis_port)
    try:
        wait_for(lambda: "subscribed on" in app.stderr(), timeout=60, what="the subscription")
        wait_for(app.serving_http, timeout=30, what="the HTTP listener")
        children = Path(f"/proc/{app.process.pid}/task/{app.process.pid}/children").read_text().split()
        redis_child = int(children[1])  # parts fork in manifest order: http, then redis
        os.kill(redis_child, signal.SIGKILL)
        assert app.process.wait(30) == 128 + signal.SIGKILL
        assert "spin: the redis trigger was killed by signal 9; stopping the other trigger(s)" in app.stderr()
    finally:
        app.kill()


def test_retaining_only_the_redis_component_serves_no_http(tmp_path, redis_port):
    app = MixedApp(tmp_path, redis_port, SPIN_COMPONENTS_TO_RETAIN="listener")
    try:
        wait_for(lambda: "subscribed on" in app.stderr(), timeout=60, what="the subscription")
        assert "loaded: RedisApp" in app.stderr()
        time.sleep(0.5)
        assert not app.serving_http()
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(30) == 0
    finally:
        app.kill()


def test_retaining_only_the_http_component_of_a_spin_all_build_serves_http(tmp_path, redis_port):
    """An http-only app from spin-sdk's spin-all world imports fermyon:spin/redis-types too: served for every app
    (runtime.spin.bindings.types_only), so it loads like any http app."""
    app = MixedApp(tmp_path, redis_port, SPIN_COMPONENTS_TO_RETAIN="web")
    try:
        wait_for(app.serving_http, timeout=60, what=f"the HTTP listener; {app.stderr()}")
        assert "loaded: HttpApp" in app.stderr()
        assert "subscribed on" not in app.stderr()
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(30) == 0
    finally:
        app.kill()
