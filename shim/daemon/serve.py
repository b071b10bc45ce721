"""The long-lived shim daemon: one asyncio loop serving the Task API over ttrpc.

One daemon serves one pod (or one `ctr` container). It is a child subreaper with one
reaper, logs to the first bundle's `log` FIFO, and publishes events to containerd. It
exits when containerd asks it to (Shutdown with no tasks left), or when it has had no
task and no connection for a while, so a daemon containerd never reached does not leak.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from shim import RUNTIME_NAME
from shim.daemon.args import DaemonArgs
from shim.daemon.log import open_log_fifo, setup_logging
from shim.env import positive_seconds
from shim.kernel import linux
from shim.process.reaper import Reaper
from shim.service.api import TASK_SERVICES, TaskService
from shim.service.events import EventPublisher
from shim.service.task import DaemonContext
from shim.ttrpc.server import TtrpcServer

log = logging.getLogger("shim.daemon.serve")

DEFAULT_CACHE_DIR = "/var/lib/containerd-shim-spin/precompiled"
# How long a daemon with no task and no containerd connection lingers before exiting.
IDLE_EXIT_SECONDS = 30.0
#: containerd's environment (inherited by shims) may shorten or lengthen the idle exit; tests use it.
IDLE_EXIT_ENV = "SPIN_SHIM_IDLE_EXIT_SECONDS"


def cache_dir() -> Path:
    return Path(os.environ.get("SPIN_SHIM_CACHE_DIR") or DEFAULT_CACHE_DIR)


def _warm_runtime() -> None:
    """Import the engine once here, so every instance process forked later starts with
    it loaded (~50 ms saved per task) and shares its pages."""
    try:
        import wasmtime  # noqa: F401

        import runtime.loader  # noqa: F401
    except Exception:  # noqa: BLE001 - the instance process will report the real error
        log.exception("cannot import the Wasm runtime")


def run_daemon(sock: socket.socket, args: DaemonArgs) -> int:
    os.chdir(args.bundle)
    linux.set_child_subreaper()
    try:
        linux.set_process_name("spin-shim")
    except OSError:
        pass
    setup_logging(open_log_fifo(args.bundle), debug=args.debug, runtime=RUNTIME_NAME,
                  task_id=args.task_id, namespace=args.namespace)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _warm_runtime()
    try:
        asyncio.run(_serve(sock, args))
    except Exception:  # noqa: BLE001
        log.exception("shim daemon failed")
        return 1
    finally:
        try:
            os.unlink(args.socket_path)
        except OSError:
            pass
    return 0


async def _serve(sock: socket.socket, args: DaemonArgs) -> None:
    loop = asyncio.get_running_loop()
    reaper = Reaper(loop)
    reaper.install()
    publisher = EventPublisher(args.ttrpc_address, args.namespace)
    publisher.start()
    stop = asyncio.Event()
    idle = _IdleWatch(loop, stop)
    context = DaemonContext(
        namespace=args.namespace, containerd_address=args.containerd_address,
        publisher=publisher, reaper=reaper, cache_dir=cache_dir(),
        systemd_cgroup=bool(args.options.get("systemd_cgroup", False)),
    )
    service = TaskService(context, request_shutdown=stop.set)
    context.on_tasks_changed = idle.update
    methods = service.methods()
    server = TtrpcServer({name: methods for name in TASK_SERVICES})
    server_task = loop.create_task(server.serve(sock))
    log.debug("serving %s on %s, forked by %s", args.task_id, args.socket_path,
              f"the fork server (pid {args.fork_server_pid})" if args.fork_server_pid else "start")
    idle.update(0)
    await stop.wait()
    log.debug("shutting down")
    # In-flight calls (Shutdown's own reply) are answered before connections close.
    await server.shutdown(grace=1.0)
    server_task.cancel()
    await publisher.close()


class _IdleWatch:
    """Stops the daemon after IDLE_EXIT_SECONDS with no task; re-armed by every change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self._loop = loop
        self._stop = stop
        self._seconds = positive_seconds(IDLE_EXIT_ENV, IDLE_EXIT_SECONDS)
        self._timer: asyncio.TimerHandle | None = None

    def update(self, task_count: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if task_count == 0:
            self._timer = self._loop.call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        log.info("no task for %.0f s: exiting", self._seconds)
        self._stop.set()
