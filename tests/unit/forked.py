"""Running a test's action in a forked child (for what a process cannot undo: a pivot_root, a setuid, a changed
environment) and getting its JSON report back."""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def in_child(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            report = {"ok": action()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    report = json.loads(data)
    assert "error" not in report, report["error"]
    return report["ok"]
