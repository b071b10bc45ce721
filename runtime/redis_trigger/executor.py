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

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import wasmtime

from runtime.errors import WasmLoadError
from runtime.exits import error_reason, failure_line
from runtime.host.context import RequestContext, bound
from runtime.host.executor import ComponentExecutor
from runtime.host.linking import describe_exception
from runtime.host.registry import REGISTRY
from runtime.host.traps import GuestExit

if TYPE_CHECKING:
    from wasmtime.component import Component

#: The export Spin's Python, Rust (spin-sdk 3) and Go SDKs give a Redis component (Spin's ``v1`` handler type).
INBOUND_REDIS = "fermyon:spin/inbound-redis"
INBOUND_REDIS_P3 = "spin:redis/inbound-redis@3.0.0"
REGISTRY.add_provider_package("runtime.redis_trigger.bindings")  # fermyon:spin/redis-types, for RedisExecutor users

#: A message handler runs without a deadline, as in Spin (it has none); the epoch deadline still has to be finite.
_NO_DEADLINE_SECONDS = 10 * 365 * 86400.0


@dataclass(frozen=True)
class MessageOutcome:
    """How one call of ``handle-message`` ended: ``error`` is None on success, else the line for the log."""

    component_id: str
    error: str | None = None
    seconds: float = 0.0


class RedisExecutor(ComponentExecutor):
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
        started = time.monotonic()
        with self.ticker.running():
            error = self._call(payload)
        return MessageOutcome(self.component_id, error, time.monotonic() - started)

    def _call(self, payload: bytes) -> str | None:
        cid = self.component_id
        ctx = RequestContext(self.host, deadline=time.monotonic() + _NO_DEADLINE_SECONDS)
        store = wasmtime.Store(self.engine)
        if self.config.max_instance_memory is not None:
            store.set_limits(memory_size=self.config.max_instance_memory)
        store.set_epoch_deadline(self.ticker.ticks_for(_NO_DEADLINE_SECONDS))
        result: object = None
        failure: Exception | None = None
        with bound(ctx):
            try:
                instance = self.linker.instantiate(store, self.component)
                func = instance.get_func(store, self.handle_index)  # type: ignore[arg-type]
                if func is None:
                    raise WasmLoadError(f"{cid}: handle-message is not a function")
                result = func(store, payload)
            except Exception as exc:  # noqa: BLE001 - traps, host errors and conversion errors alike
                failure = exc
            finally:
                self._end_request(ctx, store)
        host_failure = ctx.host_failure
        if isinstance(host_failure, GuestExit) and host_failure.status == 0:
            return None  # exit(0) from inside the handler: it finished
        if host_failure is not None:
            return f"spin: {cid}: error: {describe_exception(host_failure)}"
        if failure is not None:
            message = str(failure)
            if "exceeds memory limits" in message or "memory limit" in message:
                return f"spin: {cid}: error: the instance hit its memory limit ({self.config.max_instance_memory} bytes)"
            if "interrupt" in error_reason(message):
                return f"spin: {cid}: error: the handler was interrupted"
            return failure_line(cid, message)
        error = _error_case(result)
        return None if error is None else f"spin: {cid}: error: the handler returned error({error})"


def _error_case(result: object) -> str | None:
    """The ``error`` case of handle-message's ``result<_, error>``, None for ok.

    wasmtime-py spells this result ``Variant("ok")`` / ``Variant("err", "error")`` or bare (None / the enum name)
    depending on how the cases' Python types overlap (runtime.host.values); both are read here.
    """
    tag = getattr(result, "tag", None)
    if tag is not None:
        if tag == "ok":
            return None
        return str(getattr(result, "payload", None) or tag)
    if result is None:
        return None
    return str(result)


__all__ = ["INBOUND_REDIS", "MessageOutcome", "RedisExecutor"]
