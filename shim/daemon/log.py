"""Shim diagnostics to the bundle's `log` FIFO, which containerd copies into its own log.

Guest output never comes here: that is the task's stdout/stderr (`kubectl logs`). This is
for operators, in the logrus text format the Go shims write, and quiet by default
(warnings and errors): containerd-shim-spin measured a 17x throughput loss from logging
per request (containerd-shim-spin#17; it logs at error level since). `-debug` (containerd
at debug level) or SPIN_SHIM_LOG_LEVEL raises it.
"""

from __future__ import annotations

import datetime
import logging
import os

_LEVEL_NAMES = {
    logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
    logging.ERROR: "error", logging.CRITICAL: "fatal",
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogrusFormatter(logging.Formatter):
    def __init__(self, runtime: str, task_id: str | None, namespace: str | None) -> None:
        super().__init__()
        fields = [f"runtime={runtime}"]
        if namespace:
            fields.append(f"namespace={namespace}")
        if task_id:
            fields.append(f"id={task_id}")
        self._fields = " ".join(fields)

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        level = _LEVEL_NAMES.get(record.levelno, "info")
        return (f'time="{when.isoformat(timespec="microseconds")}" level={level} '
                f"msg={_quote(message)} {self._fields} logger={record.name}")


class FifoHandler(logging.Handler):
    """Writes whole lines to an fd; a vanished reader (containerd restarting, bundle
    gone) must never take the daemon down, so write errors are dropped."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self._fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001
            pass


def resolve_level(debug: bool) -> int:
    env = os.environ.get("SPIN_SHIM_LOG_LEVEL", "").upper()
    if env in ("DEBUG", "INFO", "WARNING", "ERROR"):
        return getattr(logging, env)
    return logging.DEBUG if debug else logging.WARNING


def setup_logging(log_fd: int | None, *, debug: bool, runtime: str, task_id: str | None,
                  namespace: str | None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(resolve_level(debug))
    if log_fd is None:
        root.addHandler(logging.NullHandler())
        return
    handler = FifoHandler(log_fd)
    handler.setFormatter(LogrusFormatter(runtime, task_id, namespace))
    root.addHandler(handler)


def open_log_fifo(bundle_dir: str) -> int | None:
    """containerd created `log` (a FIFO it reads) before running `start`."""
    try:
        return os.open(os.path.join(bundle_dir, "log"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
