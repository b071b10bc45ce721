"""Load a Spin app's ``[[trigger.redis]]`` part, and serve it: one subscription thread per Redis server.

``load_redis_app`` (task Create) checks everything a user can get wrong, as runtime.http.trigger does for routes:
the triggers (runtime.redis_trigger.config: channel, address, templates), every component's wasm, its imports and
its ``fermyon:spin/inbound-redis`` export, and the app's Spin services (variables, key-value stores, SQLite,
outbound hosts), so a Redis component reaches exactly what an HTTP component of the same app would.

``RedisApp`` is runtime.message_trigger's app (run in the instance process, a thread per subscription, SIGTERM
drains the message in flight) over this trigger's subscriptions.
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
from runtime.redis_trigger.config import (
    REDIS_TRIGGER,
    RedisTriggerConfig,
    Subscription,
    group_subscriptions,
    parse_redis_triggers,
)
from runtime.wasm_binary import REDIS_HANDLER_EXPORT

if TYPE_CHECKING:
    from runtime.compiled import ComponentLoad
    from runtime.files import StagedFiles
    from runtime.manifest import Manifest
    from runtime.message_trigger import Subscriber
    from runtime.redis_trigger.executor import RedisExecutor
    from runtime.settings import RuntimeSettings
    from runtime.spin.services import SpinServices


class RedisApp(MessageTriggerApp):
    """Loaded Redis triggers: validated executors and their subscriptions; ``run`` serves until ``interrupt``."""

    def __init__(self, *, description: str, loads: tuple[ComponentLoad, ...], staged: list[StagedFiles],
                 subscriptions: list[Subscription], executors: Mapping[str, RedisExecutor],
                 drain_grace: float = DRAIN_GRACE) -> None:
        self.subscriptions = subscriptions
        self.executors = executors
        super().__init__(description=description, loads=loads, staged=staged, trigger="redis",
                         make_subscribers=partial(_subscribers, subscriptions, executors), drain_grace=drain_grace)


def _subscribers(subscriptions: list[Subscription], executors: Mapping[str, RedisExecutor],
                 stop: threading.Event) -> list[Subscriber]:
    from runtime.redis_trigger.subscriber import Subscriber as RedisSubscriber

    return [RedisSubscriber(subscription, {cid: executors[cid].handle_message
                                           for ids in subscription.channels.values() for cid in ids}, stop)
            for subscription in subscriptions]


def redis_triggers(manifest: Manifest, services: SpinServices) -> list[RedisTriggerConfig]:
    """The app's ``[[trigger.redis]]``, their templates resolved with the app's variable providers."""
    return parse_redis_triggers(manifest, variable_lookup(services))


def load_redis_app(manifest: Manifest, args: list[str], env: dict[str, str], settings: RuntimeSettings, *,
                   work_dir: Path) -> RedisApp:
    """Validate and load every component the app's Redis triggers name. Raises AppError.

    ``args`` (the task's args) mean nothing to a Redis component, as in Spin; taken for the loaders' one shape.
    """
    from runtime.redis_trigger.executor import RedisExecutor

    services = trigger_services(manifest, REDIS_TRIGGER, env, settings, work_dir)
    triggers = redis_triggers(manifest, services)
    subscriptions = group_subscriptions(triggers)
    executors, loads, staged = load_trigger_components(
        manifest, [t.component_id for t in triggers], env, settings, services, make_executor=RedisExecutor,
        core_module_refusal="a [[trigger.redis]] component must be a component exporting "
                            "fermyon:spin/inbound-redis (Spin 1 Redis modules are not supported)",
        exports=REDIS_HANDLER_EXPORT)
    channels = "; ".join(f"{s.shown_address}: {', '.join(repr(c) for c in s.channels)}" for s in subscriptions)
    description = (f"Spin app {manifest.application.name!r} (redis trigger, component(s) "
                   f"{', '.join(repr(c) for c in executors)}; {channels})")
    return RedisApp(description=description, loads=loads, staged=staged, subscriptions=subscriptions,
                    executors=executors)


__all__ = ["DRAIN_GRACE", "RedisApp", "load_redis_app", "redis_triggers"]
