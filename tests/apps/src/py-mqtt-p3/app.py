"""py-mqtt-p3: an MQTT-triggered component of spin-trigger-mqtt's newest world, ``spin:mqtt-trigger@3.0.0``
(wit/spin-mqtt.wit, copied from spinframework/spin-trigger-mqtt 46758f4 "Asyncify the MQTT trigger"), built with
componentize-py 0.25.1 (spin5-py). Its ``handle-message`` is an ``async func`` (WASIp3), which wasmtime-py cannot
call: the shim refuses it at Create, and tests/unit/test_mqtt_trigger_app.py checks that it says why.
"""

from wit_world import WitWorld
from wit_world.imports.spin_mqtt_types import Metadata


class WitWorld(WitWorld):
    async def handle_message(self, message: bytes, metadata: Metadata) -> None:
        print(f"py-mqtt-p3 got {len(message)} bytes on {metadata.topic}", flush=True)
