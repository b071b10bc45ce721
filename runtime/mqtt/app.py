"""Load a Spin app's ``[[trigger.mqtt]]`` part, and serve it: one subscription thread per ``[[trigger.mqtt]]``.

``load_mqtt_app`` (task Create) checks everything a user can get wrong, as runtime.redis_trigger.app does: the
broker settings and triggers (runtime.mqtt.trigger_config: keys, templates, address, keep-alive, QoS, topic
filters), every component's wasm, its imports and its ``handle-message`` export, and the app's Spin services, so
an MQTT component reaches exactly what an HTTP component of the same app would. The broker is not contacted at
Create: spin-trigger-mqtt connects at start, and a broker that is down then is waited for (runtime.mqtt.subscriber).

``MqttApp`` is runtime.message_trigger's app (run in the instance process, a thread per subscription, SIGTERM
drains the message in flight) over this trigger's subscriptions: one per ``[[trigger.mqtt]]``, as
spin-trigger-mqtt opens one client per trigger and handles its messages one after another.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.message_trigger import (
    DRAIN_GRACE,
    MessageTriggerApp,
    load_trigger_components,
    trigger_services,
    variable_lookup,
)
from runtime.mqtt.trigger_config import (
    MQTT_TRIGGER,
    BrokerSettings,
    MqttTriggerConfig,
    Subscription,
    parse_mqtt_triggers,
    subscriptions,
)
from runtime.wasm_binary import MQTT_HANDLER_EXPORT

if TYPE_CHECKING:
    from runtime.compiled import ComponentLoad
    from runtime.files import StagedFiles
    from runtime.manifest import Manifest
    from runtime.message_trigger import Subscriber
    from runtime.mqtt.executor import MqttExecutor
    from runtime.mqtt.subscriber import Handler
    from runtime.settings import RuntimeSettings
    from runtime.spin.services import SpinServices


class MqttApp(MessageTriggerApp):
    """Loaded MQTT triggers: validated executors and their subscriptions; ``run`` serves until ``interrupt``."""

    def __init__(self, *, description: str, loads: tuple[ComponentLoad, ...], staged: list[StagedFiles],
                 subscriptions: list[Subscription], executors: Mapping[str, MqttExecutor],
                 drain_grace: float = DRAIN_GRACE) -> None:
        self.subscriptions = subscriptions
        self.executors = executors
        super().__init__(description=description, loads=loads, staged=staged, trigger=MQTT_TRIGGER,
                         make_subscribers=partial(_subscribers, subscriptions, executors), drain_grace=drain_grace)


def _subscribers(subscriptions: list[Subscription], executors: Mapping[str, MqttExecutor],
                 stop: threading.Event) -> list[Subscriber]:
    from runtime.mqtt.subscriber import Subscriber as MqttSubscriber

    return [MqttSubscriber(subscription, _handler(subscription, executors), stop) for subscription in subscriptions]


def _handler(subscription: Subscription, executors: Mapping[str, MqttExecutor]) -> Handler:
    """The guest of the subscription's trigger, called with the message's payload and topic; its error line (with
    the component id) is what the Subscriber logs with the topic before going on."""
    (trigger,) = subscription.triggers  # runtime.mqtt.trigger_config.subscriptions: one trigger each
    handle_message = executors[trigger.component_id].handle_message
    return lambda message: handle_message(message.payload, message.topic).error


def mqtt_triggers(manifest: Manifest, services: SpinServices) -> tuple[BrokerSettings, list[MqttTriggerConfig]]:
    """The app's broker settings and ``[[trigger.mqtt]]``, their templates resolved with the app's variables."""
    parsed = parse_mqtt_triggers(manifest, variable_lookup(services))
    assert parsed is not None  # load_mqtt_app is called for apps with [[trigger.mqtt]] only
    return parsed


def load_mqtt_app(manifest: Manifest, args: list[str], env: dict[str, str], settings: RuntimeSettings, *,
                  work_dir: Path) -> MqttApp:
    """Validate and load every component the app's MQTT triggers name. Raises AppError.

    ``args`` (the task's args) mean nothing to an MQTT component, as in Spin; taken for the loaders' one shape.
    """
    from runtime.mqtt.executor import MqttExecutor

    services = trigger_services(manifest, MQTT_TRIGGER, env, settings, work_dir)
    broker, triggers = mqtt_triggers(manifest, services)
    executors, loads, staged = load_trigger_components(
        manifest, [t.component_id for t in triggers], env, settings, services, make_executor=MqttExecutor,
        core_module_refusal="a [[trigger.mqtt]] component must be a component of spin-trigger-mqtt's spin-mqtt "
                            "world (exporting handle-message)",
        exports=MQTT_HANDLER_EXPORT)
    topics = ", ".join(f"{t.topic!r} -> {t.component_id}" for t in triggers)
    description = (f"Spin app {manifest.application.name!r} (mqtt trigger, component(s) "
                   f"{', '.join(repr(c) for c in executors)}; {broker.address}: {topics})")
    return MqttApp(description=description, loads=loads, staged=staged, subscriptions=subscriptions(broker, triggers),
                   executors=executors)


__all__ = ["DRAIN_GRACE", "MqttApp", "load_mqtt_app", "mqtt_triggers"]
