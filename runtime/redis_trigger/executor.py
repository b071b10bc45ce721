"""RedisExecutor: one component exporting Spin's ``fermyon:spin/inbound-redis``, called once per message.

As Spin's trigger does (crates/trigger-redis ``dispatch_handler``): a fresh Store and instance per message, then
``handle-message(payload) -> result<_, error>``. Everything around the call (the import check against the host's
registry, the Linker, the trial instantiation that makes a too-small SPIN_MAX_INSTANCE_MEMORY a Create error, the
per-call RequestContext that gives the guest all of Spin's services, the cleanup of what the guest left open) is
the HTTP component executor's, so this class only finds its own export and calls it.

Spin also accepts ``spin:redis/inbound-redis@3.0.0``: its ``handle-message`` is async (WASIp3), which wasmtime-py
cannot call, so such a component fails the load with that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.errors import WasmLoadError
from runtime.host.executor import ComponentExecutor
from runtime.message_trigger import MessageExecutor, MessageOutcome

if TYPE_CHECKING:
    import wasmtime
    from wasmtime.component import Component

#: The export Spin's Python, Rust (spin-sdk 3) and Go SDKs give a Redis component (Spin's ``v1`` handler type).
INBOUND_REDIS = "fermyon:spin/inbound-redis"
INBOUND_REDIS_P3 = "spin:redis/inbound-redis@3.0.0"


class RedisExecutor(MessageExecutor, ComponentExecutor):
    """A loaded Redis component in the process that serves its subscription; ``handle_message`` per message."""

    def _find_handle(self, component: Component, engine: wasmtime.Engine) -> object:
        exports = list(component.type.exports(engine))
        if INBOUND_REDIS not in exports:
            if INBOUND_REDIS_P3 in exports:
                raise WasmLoadError(
                    f"{self.component_id}: exports {INBOUND_REDIS_P3}, whose async handle-message (WASIp3) this "
                    f"shim cannot call; build it for {INBOUND_REDIS} (e.g. spin-sdk 3's `spin-redis` world)"
                )
            raise WasmLoadError(
                f"{self.component_id}: not a Redis component: it exports {', '.join(exports) or 'nothing'}, not "
                f"{INBOUND_REDIS} (a [[trigger.redis]] component implements handle-message)"
            )
        interface_index = component.get_export_index(INBOUND_REDIS)
        index = component.get_export_index("handle-message", interface_index) if interface_index is not None else None
        if index is None:
            raise WasmLoadError(f"{self.component_id}: {INBOUND_REDIS} has no `handle-message` function")
        return index

    def handle_message(self, payload: bytes) -> MessageOutcome:
        """Run the guest for one message; never raises for what the guest did (the outcome says it)."""
        return self.call_handler((payload,), "handle-message")


__all__ = ["INBOUND_REDIS", "MessageOutcome", "RedisExecutor"]
