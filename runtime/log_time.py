"""The timestamp on the container-log lines that report one request's or one message's failure.

UTC, ISO 8601 with milliseconds, so lines of several workers, triggers and pods sort and compare; shared by the
HTTP trigger (runtime.http.console) and the message triggers (runtime.message_trigger), which must not import
each other.
"""

from __future__ import annotations

import time


def utc_timestamp(now: float | None = None) -> str:
    """``2026-12-03T18:21:21.123Z`` for ``now`` (seconds since the epoch; default: the current time)."""
    if now is None:
        now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"
