"""py-mqtt: an MQTT-triggered component (componentize-py 0.17.2, `-d wit -w py-mqtt`).

The Spin Python SDK 3.4.1 has no MQTT trigger world, so wit/world.wit includes spin-trigger-mqtt's p2 world
`spin:mqtt-trigger/spin-mqtt` (wit/deps/spin-mqtt-trigger, copied from spinframework/spin-trigger-mqtt at
c07fa80, before its WIT became async) and imports Spin's outbound MQTT, key-value and variables
(fermyon:spin@2.0.0; the build copies them from spin-sdk 3.4.1's WIT, as py-proxy's recipe does).

Per message it answers through outbound MQTT: `<topic> got <payload>` published to the component variable
`reply_topic` (QoS 1) on `mqtt_address`, and stores the payload under key `last` in the `default` store.
tests/apps/README.md lists the messages that make it fail instead.
"""

from wit_world import WitWorld
from wit_world.imports import key_value, mqtt, variables
from wit_world.imports.spin_mqtt_types import Error_Other, Metadata
from wit_world.types import Err


class WitWorld(WitWorld):
    def handle_message(self, message: bytes, metadata: Metadata) -> None:
        if message == b"fail":
            raise Err(Error_Other("py-mqtt was asked to fail"))  # the WIT error value: logged, subscription goes on
        if message == b"trap":
            raise RuntimeError("py-mqtt was asked to trap")  # uncaught: componentize-py traps
        answer = metadata.topic.encode() + b" got " + message
        with mqtt.Connection.open(variables.get("mqtt_address"), "", "", 30) as connection:
            connection.publish(variables.get("reply_topic"), answer, mqtt.Qos.AT_LEAST_ONCE)
        with key_value.Store.open("default") as store:
            store.set("last", message)
        print(f"py-mqtt got {len(message)} bytes on {metadata.topic}", flush=True)
