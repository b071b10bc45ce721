"""MqttExecutor: one component of spin-trigger-mqtt's ``spin:mqtt-trigger`` world, called once per message.

As spin-trigger-mqtt does (src/lib.rs ``handle_mqtt_event``): a fresh Store and instance per message, then the
world's root export ``handle-message(message: payload, metadata: metadata { topic }) -> result<_, error>``
(``error`` is ``variant { other(string) }``). The call and its outcome line are runtime.message_trigger's, as for
the Redis trigger; everything around it (import check, Linker, trial instantiation, the per-call RequestContext with
the app's Spin services, cleanup) is the HTTP component executor's, so this class only finds its export.

The world's types interface ``spin:mqtt-trigger/spin-mqtt-types`` (unversioned, no functions) is imported by
every such component and registered here, so only an app that loads an MQTT component declares it.
spin-trigger-mqtt's newest WIT (``spin:mqtt-trigger@3.0.0``) makes ``handle-message`` async (WASIp3), which
wasmtime-py cannot call: such a component (it imports ``spin:mqtt-trigger/spin-mqtt-types@3.0.0``; a root export
carries no package version) fails the load with that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wasmtime.component import Record

from runtime.errors import WasmLoadError
from runtime.host.executor import ComponentExecutor
from runtime.message_trigger import MessageExecutor, MessageOutcome

if TYPE_CHECKING:
    import wasmtime
    from wasmtime.component import Component

#: The world's root export (a function, not an interface: ``export handle-message: func(...)``).
HANDLE_MESSAGE = "handle-message"
MQTT_TYPES = "spin:mqtt-trigger/spin-mqtt-types"
MQTT_TYPES_P3 = f"{MQTT_TYPES}@3.0.0"  # MQTT_TYPES itself is served for every app: runtime.spin.bindings.types_only


class MqttExecutor(MessageExecutor, ComponentExecutor):
    """A loaded MQTT component in the process that serves its subscription; ``handle_message`` per message."""

    def _find_handle(self, component: Component, engine: wasmtime.Engine) -> object:
        if MQTT_TYPES_P3 in list(component.type.imports(engine)):
            raise WasmLoadError(
                f"{self.component_id}: built for spin:mqtt-trigger@3.0.0, whose async handle-message (WASIp3) this "
                "shim cannot call; build it against spin-trigger-mqtt's unversioned spin:mqtt-trigger WIT"
            )
        exports = list(component.type.exports(engine))
        index = component.get_export_index(HANDLE_MESSAGE) if HANDLE_MESSAGE in exports else None
        if index is None:
            raise WasmLoadError(
                f"{self.component_id}: not an MQTT component: it exports {', '.join(exports) or 'nothing'}, not "
                f"`{HANDLE_MESSAGE}` (a [[trigger.mqtt]] component implements spin-trigger-mqtt's spin-mqtt world)"
            )
        return index

    def handle_message(self, payload: bytes, topic: str) -> MessageOutcome:
        """Run the guest for one message; never raises for what the guest did (the outcome says it)."""
        metadata = Record()
        metadata.topic = topic  # type: ignore[attr-defined] - wasmtime-py reads a record's fields as attributes
        return self.call_handler((payload, metadata), HANDLE_MESSAGE)


__all__ = ["HANDLE_MESSAGE", "MQTT_TYPES", "MqttExecutor"]
