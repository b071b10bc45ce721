"""How a guest's end becomes a process exit code and (for failures) one stderr line. Pure, no wasmtime import.

Exit codes (what ``kubectl get pod`` / ``ctr task ls`` will show for a command app):

* the guest's own code: WASI p1 ``proc_exit(n)`` / p2 ``wasi:cli/exit`` -> n; returning from ``_start`` -> 0;
  p2 ``wasi:cli/run`` returning ok -> 0, err -> 1 (what ``wasmtime run`` and Spin's command trigger do).
* EXIT_TRAP (1) for a trap or any other engine error while running. Not runwasi's 137: Kubernetes users read
  137 as SIGKILL / OOMKilled and would chase the wrong problem; a trap is the guest failing, like an uncaught
  exception, and 1 is what `spin up` itself exits with when a trigger fails. The reason is on stderr (the
  container log) as one line: ``spin: <component>: trap: <reason>``.
* EXIT_INTERRUPTED (143 = 128 + SIGTERM) when interrupt() stopped the guest: the code a process killed by
  SIGTERM reports, which is what the stop was.
"""

from __future__ import annotations

import os
import re

EXIT_TRAP = 1
EXIT_INTERRUPTED = 128 + 15

#: The message our epoch-deadline callback fails with; recognising it separates "we stopped it" from a trap.
INTERRUPT_MESSAGE = "guest interrupted by the runtime (task stop)"


def error_reason(message: str) -> str:
    """The informative part of a multi-line wasmtime error: the "Caused by" chain, without the backtrace."""
    lines = message.splitlines()
    if "Caused by:" in lines:
        causes = [re.sub(r"^\s*(\d+:\s*)?", "", line) for line in lines[lines.index("Caused by:") + 1 :]]
        causes = [c for c in causes if c]
        if causes:
            return ": ".join(dict.fromkeys(causes))
    first = next((line.strip() for line in lines if line.strip()), message)
    return first


def failure_line(component: str, message: str) -> str:
    """``spin: <component>: trap: <reason>`` for wasm traps, ``spin: <component>: error: <reason>`` otherwise."""
    reason = error_reason(message)
    if reason.startswith("wasm trap: "):
        return f"spin: {component}: trap: {reason[len('wasm trap: '):]}"
    return f"spin: {component}: error: {reason}"


def write_stderr_line(line: str) -> None:
    """Write straight to fd 2 (the task's stderr FIFO), bypassing sys.stderr which the shim may have replaced."""
    data = (line.rstrip("\n") + "\n").encode("utf-8", "replace")
    try:
        while data:
            written = os.write(2, data)
            data = data[written:]
    except OSError:
        pass  # stderr closed or a broken FIFO: nobody to tell
