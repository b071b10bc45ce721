"""The shim's warm fork servers (shim/forkserver) as scripts and tests see them from outside: found by command line.

A fork server outlives every containerd by design (it serves the node's next `start`, then idles out after
SPIN_SHIM_FORK_SERVER_IDLE_SECONDS). A script or test session that ran the shim must still leave the machine as
it found it, so it stops the servers that appeared while it ran, and only those.

From a shell script (scripts/demo.sh), for the shim build of this checkout:

    .venv/bin/python scripts/fork_servers.py list > before      # the servers that already run
    .venv/bin/python scripts/fork_servers.py stop-new before    # stop the others
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

STOP_TIMEOUT_S = 10.0


def fork_server_pids(key: str) -> list[int]:
    """Live fork servers of the shim build with this key (shim.forkserver.build_key), by their command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[1:3] == [b"fork-server", key.encode()]:
                pids.append(int(entry))
    return pids


def stop_new(key: str, before: Iterable[int]) -> None:
    """Stop (SIGTERM, by pid) the fork servers of build ``key`` not in ``before``; RuntimeError if one stays."""
    started = set(fork_server_pids(key)) - set(before)
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while started & set(fork_server_pids(key)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"fork servers did not stop: {sorted(started & set(fork_server_pids(key)))}")
        time.sleep(0.1)


@contextlib.contextmanager
def new_fork_servers_stopped(key: str) -> Iterator[None]:
    """Stop the fork servers of build ``key`` that the block started (stop_new), however the block ends."""
    before = fork_server_pids(key)
    try:
        yield
    finally:
        stop_new(key, before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="this checkout's shim fork servers: list, or stop the new ones")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the pids of the running ones, one per line")
    stop = sub.add_parser("stop-new", help="stop those not listed in FILE (the output of `list`)")
    stop.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from shim.forkserver.build_key import build_key  # noqa: PLC0415 - the CLI only: hashes the shim's tree

    key = build_key()
    if args.command == "list":
        print("\n".join(map(str, fork_server_pids(key))))
    else:
        stop_new(key, [int(line) for line in args.file.read_text().split()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
