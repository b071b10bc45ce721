"""``wasi:sockets/*@0.2.x``: linked so that guests which merely import sockets load, and denied.

Spin gives HTTP components no raw sockets (outbound goes through wasi:http and the allowed hosts), so creating a
socket or resolving a name answers ``error-code.access-denied`` (the guest's libc reports EACCES). The network
capability itself exists (wasi-libc asks for it at start-up). Every other function needs a socket the guest can
never have; the type-driven stub answers access-denied when it returns a result, and traps otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmtime.component import OptionType, ResultType

from runtime.host.registry import REGISTRY, HostFunc
from runtime.host.traps import HostTrap
from runtime.host.values import Err

if TYPE_CHECKING:
    from wasmtime.component import FuncType

    from runtime.host.context import RequestContext

VERSIONS = ("0.2.*",)
ACCESS_DENIED = Err("access-denied")


def deny_stub(func_name: str, func_type: FuncType) -> HostFunc:
    result = func_type.result
    if isinstance(result, ResultType):
        return lambda ctx, *args: ACCESS_DENIED
    if isinstance(result, OptionType):
        return lambda ctx, *args: None

    def trap(ctx: RequestContext, *args: Any) -> None:
        raise HostTrap(f"wasi:sockets {func_name}: sockets are not available to HTTP components")

    return trap


network = REGISTRY.interface("wasi:sockets/network", VERSIONS, stub=deny_stub)
NETWORK = network.resource("network")
REGISTRY.interface("wasi:sockets/instance-network", VERSIONS).define(
    "instance-network", lambda ctx: ctx.new(NETWORK, NETWORK)
)
for _name in ("tcp", "udp", "tcp-create-socket", "udp-create-socket", "ip-name-lookup"):
    REGISTRY.interface(f"wasi:sockets/{_name}", VERSIONS, stub=deny_stub)
