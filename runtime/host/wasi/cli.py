"""``wasi:cli/*``, ``wasi:clocks/*`` and ``wasi:random/*`` @0.2.x: the small, stateless part of WASI.

stdout/stderr are the process's fds 1 and 2: the shim has dup2'ed the task's FIFOs there, so guest output reaches
the container log (``kubectl logs``) like a command guest's. Each guest write is one ``os.write`` (looped only if
the pipe takes less), never buffered in Python, so interleaving with other guest threads stays per write.
stdin is empty, as in Spin for HTTP components; arguments are empty; the environment is exactly
``ComponentConfig.environment``.
"""

from __future__ import annotations

import os
import random as _random
import time
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.traps import GuestExit, HostTrap
from runtime.host.values import Ok
from runtime.host.wasi.io import (
    INPUT_STREAM,
    OUTPUT_STREAM,
    POLLABLE,
    InputSource,
    InputStream,
    OutputStream,
    OutputTarget,
    StreamFailure,
    TimerPollable,
)

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

VERSIONS = ("0.2.*",)


class FdTarget(OutputTarget):
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, ctx: RequestContext, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as exc:
            raise StreamFailure(f"writing fd {self.fd}: {exc.strerror}") from None


STDOUT = FdTarget(1)
STDERR = FdTarget(2)
EMPTY_INPUT = InputSource()

# --- wasi:cli -----------------------------------------------------------------------------------------------

environment = REGISTRY.interface("wasi:cli/environment", VERSIONS)


@environment.func("get-environment")
def _get_environment(ctx: RequestContext) -> list[tuple[str, str]]:
    return ctx.component.memo("wasi:cli/environment", lambda: list(ctx.config.environment.items()))


environment.define("get-arguments", lambda ctx: [])
environment.define("initial-cwd", lambda ctx: None)

exit_iface = REGISTRY.interface("wasi:cli/exit", VERSIONS)


@exit_iface.func("exit")
def _exit(ctx: RequestContext, status: Any) -> None:
    raise GuestExit(0 if isinstance(status, Ok) else 1)


@exit_iface.func("exit-with-code")
def _exit_with_code(ctx: RequestContext, code: int) -> None:
    raise GuestExit(code)


REGISTRY.interface("wasi:cli/stdin", VERSIONS).define(
    "get-stdin", lambda ctx: ctx.new(INPUT_STREAM, InputStream(EMPTY_INPUT))
)
REGISTRY.interface("wasi:cli/stdout", VERSIONS).define(
    "get-stdout", lambda ctx: ctx.new(OUTPUT_STREAM, OutputStream(STDOUT))
)
REGISTRY.interface("wasi:cli/stderr", VERSIONS).define(
    "get-stderr", lambda ctx: ctx.new(OUTPUT_STREAM, OutputStream(STDERR))
)
REGISTRY.interface("wasi:cli/terminal-input", VERSIONS).resource("terminal-input")
REGISTRY.interface("wasi:cli/terminal-output", VERSIONS).resource("terminal-output")
# Never a terminal: the guest's stdio are the task's FIFOs.
REGISTRY.interface("wasi:cli/terminal-stdin", VERSIONS).define("get-terminal-stdin", lambda ctx: None)
REGISTRY.interface("wasi:cli/terminal-stdout", VERSIONS).define("get-terminal-stdout", lambda ctx: None)
REGISTRY.interface("wasi:cli/terminal-stderr", VERSIONS).define("get-terminal-stderr", lambda ctx: None)

# --- wasi:clocks --------------------------------------------------------------------------------------------

monotonic = REGISTRY.interface("wasi:clocks/monotonic-clock", VERSIONS)
monotonic.define("now", lambda ctx: time.monotonic_ns())
monotonic.define("resolution", lambda ctx: 1)
# Instants are time.monotonic_ns() values, so a TimerPollable compares them on time.monotonic()'s scale.
monotonic.define("subscribe-instant", lambda ctx, when: ctx.new(POLLABLE, TimerPollable(when / 1e9)))
monotonic.define(
    "subscribe-duration", lambda ctx, duration: ctx.new(POLLABLE, TimerPollable(time.monotonic() + duration / 1e9))
)

wall_clock = REGISTRY.interface("wasi:clocks/wall-clock", VERSIONS)


@wall_clock.func("now")
def _wall_now(ctx: RequestContext) -> dict[str, int]:
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return {"seconds": seconds, "nanoseconds": nanoseconds}


wall_clock.define("resolution", lambda ctx: {"seconds": 0, "nanoseconds": 1})

# --- wasi:random --------------------------------------------------------------------------------------------

#: A guest asking for more than this in one call is broken or hostile; os.urandom would allocate it all.
MAX_RANDOM_BYTES = 1 << 20


def _random_bytes(ctx: RequestContext, length: int) -> bytes:
    if length > MAX_RANDOM_BYTES:
        raise HostTrap(f"get-random-bytes({length}): more than {MAX_RANDOM_BYTES} bytes in one call")
    return os.urandom(length)


random_iface = REGISTRY.interface("wasi:random/random", VERSIONS)
random_iface.define("get-random-bytes", _random_bytes)
random_iface.define("get-random-u64", lambda ctx: int.from_bytes(os.urandom(8), "little"))

insecure = REGISTRY.interface("wasi:random/insecure", VERSIONS)
insecure.define("get-insecure-random-bytes", _random_bytes)
insecure.define("get-insecure-random-u64", lambda ctx: _random.getrandbits(64))

REGISTRY.interface("wasi:random/insecure-seed", VERSIONS).define(
    "insecure-seed", lambda ctx: (_random.getrandbits(64), _random.getrandbits(64))
)
