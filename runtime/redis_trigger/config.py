"""``[[trigger.redis]]`` as Spin reads it: which component handles which channel on which server.

Spin (crates/trigger-redis, ``TriggerConfig`` / ``TriggerMetadata``, both ``deny_unknown_fields``):

* each ``[[trigger.redis]]`` has ``component`` and ``channel`` (both required) and may have ``address``;
* a trigger without ``address`` takes ``[application.trigger.redis] address`` (that table has no other key);
* ``address`` and ``channel`` are templates over the application variables (``"redis://{{ host }}:6379"``),
  resolved once at start with the app's variable providers;
* triggers are grouped into one subscription per distinct address, each channel subscribed once, a message on a
  channel going to every component that listens to it.

Checked here, at task Create, where Spin fails at start: no channel, no address anywhere, a template naming an
undeclared variable or one without a value, and (beyond Spin, whose Redis client would fail only when it
connects) an address that is not a ``redis://`` / ``rediss://`` URL with a host, and an empty channel. Pure:
manifest model and a variable resolver in, plain data out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from runtime.errors import ManifestError
from runtime.manifest import Manifest, Trigger
from runtime.spin.redis_url import masked, parse_redis_url
from runtime.spin.template import Template, TemplateError
from runtime.unknown_keys import unknown_keys_phrase

REDIS_TRIGGER = "redis"
#: ``[[trigger.redis]]`` keys besides ``id`` and ``component`` (runtime.manifest takes those two out).
_TRIGGER_KEYS = frozenset({"channel", "address"})
#: ``[application.trigger.redis]`` keys.
_METADATA_KEYS = frozenset({"address"})


@dataclass(frozen=True)
class RedisTriggerConfig:
    """One ``[[trigger.redis]]``, its templates resolved."""

    trigger_id: str
    component_id: str
    channel: str
    #: The server URL; may hold a password, so show it only through ``runtime.spin.redis_url.masked``.
    address: str = field(repr=False)


@dataclass(frozen=True)
class Subscription:
    """One connection to one server: its channels and, per channel, the components a message goes to."""

    address: str = field(repr=False)
    #: channel -> component ids, both in manifest order.
    channels: Mapping[str, tuple[str, ...]]

    @property
    def shown_address(self) -> str:
        return masked(self.address)


def parse_redis_triggers(manifest: Manifest, value_of: Callable[[str], str]) -> list[RedisTriggerConfig]:
    """Every ``[[trigger.redis]]`` of ``manifest``, resolved with ``value_of`` (an application variable's value by
    name, raising LookupError with the reason when it has none). Raises ManifestError."""
    default_address = _default_address(manifest, value_of)
    return [_parse_trigger(manifest, trigger, default_address, value_of)
            for trigger in manifest.triggers_of_type(REDIS_TRIGGER)]


def group_subscriptions(triggers: list[RedisTriggerConfig]) -> list[Subscription]:
    """One Subscription per distinct address (Spin's ``server_channel_components``), in manifest order."""
    by_address: dict[str, dict[str, list[str]]] = {}
    for trigger in triggers:
        components = by_address.setdefault(trigger.address, {}).setdefault(trigger.channel, [])
        if trigger.component_id not in components:
            components.append(trigger.component_id)
    return [Subscription(address, {channel: tuple(ids) for channel, ids in channels.items()})
            for address, channels in by_address.items()]


def _default_address(manifest: Manifest, value_of: Callable[[str], str]) -> str | None:
    metadata = manifest.application.trigger_options.get(REDIS_TRIGGER)
    if metadata is None:
        return None
    where = f"{manifest.path}: [application.trigger.redis]"
    unknown = sorted(set(metadata) - _METADATA_KEYS)
    if unknown:
        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, _METADATA_KEYS)} (known: address)")
    if "address" not in metadata:
        return None
    return _resolve(where, "address", metadata["address"], value_of)


def _parse_trigger(manifest: Manifest, trigger: Trigger, default_address: str | None,
                   value_of: Callable[[str], str]) -> RedisTriggerConfig:
    where = f"{manifest.path}: [[trigger.redis]] {trigger.id!r}"
    config = dict(trigger.config)
    unknown = sorted(set(config) - _TRIGGER_KEYS)
    if unknown:
        raise ManifestError(f"{where}: {unknown_keys_phrase(unknown, (*_TRIGGER_KEYS, 'component'))} "
                            "(known: channel, component, address)")
    if trigger.component is None:
        raise ManifestError(f"{where}: names no `component` (the component that handles the channel's messages)")
    if "channel" not in config:
        raise ManifestError(f"{where}: `channel` is required (the Redis channel to subscribe to)")
    channel = _resolve(where, "channel", config["channel"], value_of)
    if not channel:
        raise ManifestError(f"{where}: `channel` is empty")
    if "address" in config:
        address = _resolve(where, "address", config["address"], value_of)
    elif default_address is not None:
        address = default_address
    else:
        raise ManifestError(
            f"{where}: no Redis server address: set `address = \"redis://host:6379\"` in this trigger or in "
            "[application.trigger.redis]"
        )
    try:
        parse_redis_url(address)
    except ValueError as exc:
        source = config.get("address", "[application.trigger.redis] address")
        raise ManifestError(f"{where}: address {masked(address)!r} (from {masked(str(source))!r}): {exc}") from None
    return RedisTriggerConfig(trigger.id, trigger.component, channel, address)


def _resolve(where: str, key: str, raw: object, value_of: Callable[[str], str]) -> str:
    """A ``{{ variable }}`` template as Spin's ``resolve_expression`` renders it; ManifestError naming the key."""
    if not isinstance(raw, str):
        raise ManifestError(f"{where}: `{key}` must be a string; got {raw!r}")
    try:
        return Template.parse(raw).render(value_of)
    except TemplateError as exc:
        raise ManifestError(f"{where}: `{key}`: {exc}") from None
    except LookupError as exc:
        reason = exc.args[0] if exc.args else str(exc)
        raise ManifestError(f"{where}: `{key}` = {masked(raw)!r}: {reason}") from None


__all__ = ["REDIS_TRIGGER", "RedisTriggerConfig", "Subscription", "group_subscriptions", "parse_redis_triggers"]
