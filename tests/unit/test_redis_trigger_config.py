"""[[trigger.redis]] as Spin reads it: channel and component required, the address from the trigger or from
[application.trigger.redis], both resolved as variable templates, one subscription per server; and the loader's
dispatch of mixed apps (command beside a listener refused, SPIN_COMPONENTS_TO_RETAIN over every trigger type)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidSettingError, ManifestError, UnsupportedTriggerError
from runtime.loader import _trigger_types, retain_components
from runtime.manifest import parse_manifest
from runtime.redis_trigger.config import RedisTriggerConfig, group_subscriptions, parse_redis_triggers
from runtime.spin.variables import VariableResolver

HEAD = """
spin_manifest_version = 2
[application]
name = "app"
"""
COMPONENTS = """
[component.a]
source = "a.wasm"
[component.b]
source = "b.wasm"
"""


def triggers(body: str, env: dict[str, str] | None = None) -> list[RedisTriggerConfig]:
    manifest = parse_manifest(HEAD + body + COMPONENTS, Path("/spin.toml"))
    resolver = VariableResolver.from_manifest(manifest, env or {})

    def value_of(name: str) -> str:
        from runtime.spin.variables import VariableError

        try:
            return resolver.app_value(name)
        except VariableError as exc:
            raise LookupError(exc.message) from None

    return parse_redis_triggers(manifest, value_of)


def test_trigger_address_and_channel_are_taken_as_written():
    [t] = triggers('[[trigger.redis]]\naddress = "redis://127.0.0.1:6379"\nchannel = "jobs"\ncomponent = "a"\n')
    assert (t.component_id, t.channel, t.address) == ("a", "jobs", "redis://127.0.0.1:6379")


def test_application_address_is_the_default_and_a_trigger_address_overrides_it():
    found = triggers(
        '[application.trigger.redis]\naddress = "redis://default:6379"\n'
        '[[trigger.redis]]\nchannel = "one"\ncomponent = "a"\n'
        '[[trigger.redis]]\naddress = "redis://other:6380"\nchannel = "two"\ncomponent = "b"\n'
    )
    assert [(t.channel, t.address) for t in found] == [("one", "redis://default:6379"), ("two", "redis://other:6380")]


def test_templates_resolve_with_the_app_variables_and_their_env_providers():
    body = (
        '[variables]\nhost = { default = "localhost" }\nport = { required = true }\nchan = { default = "c" }\n'
        '[application.trigger.redis]\naddress = "redis://{{ host }}:{{ port }}"\n'
        '[[trigger.redis]]\nchannel = "{{ chan }}-x"\ncomponent = "a"\n'
    )
    [t] = triggers(body, {"SPIN_VARIABLE_PORT": "7000", "CHAN": "from-env"})
    assert (t.address, t.channel) == ("redis://localhost:7000", "from-env-x")


def test_subscriptions_group_by_address_and_channel():
    found = triggers(
        '[application.trigger.redis]\naddress = "redis://s1:6379"\n'
        '[[trigger.redis]]\nchannel = "x"\ncomponent = "a"\n'
        '[[trigger.redis]]\nchannel = "x"\ncomponent = "b"\n'
        '[[trigger.redis]]\nchannel = "y"\ncomponent = "a"\n'
        '[[trigger.redis]]\naddress = "redis://s2:6379"\nchannel = "x"\ncomponent = "a"\n'
    )
    subscriptions = group_subscriptions(found)
    assert [(s.address, dict(s.channels)) for s in subscriptions] == [
        ("redis://s1:6379", {"x": ("a", "b"), "y": ("a",)}),
        ("redis://s2:6379", {"x": ("a",)}),
    ]


@pytest.mark.parametrize("body, needle", [
    ('[[trigger.redis]]\naddress = "redis://h:1"\ncomponent = "a"\n', "`channel` is required"),
    ('[[trigger.redis]]\nchannel = "c"\ncomponent = "a"\n', "no Redis server address"),
    ('[[trigger.redis]]\naddress = "http://h:1"\nchannel = "c"\ncomponent = "a"\n', "not a redis:// or rediss://"),
    ('[[trigger.redis]]\naddress = "redis://h:99999"\nchannel = "c"\ncomponent = "a"\n', "out of range"),
    ('[[trigger.redis]]\naddress = "redis://h:1"\nchannel = ""\ncomponent = "a"\n', "`channel` is empty"),
    ('[[trigger.redis]]\naddress = "redis://h:1"\nchannel = "c"\ncomponent = "a"\nqueue = 1\n', "unknown key(s) 'queue'"),
    ('[application.trigger.redis]\nhost = "h"\n[[trigger.redis]]\nchannel = "c"\ncomponent = "a"\n',
     "[application.trigger.redis]: unknown key(s) 'host'"),
    ('[[trigger.redis]]\naddress = "redis://h:1"\nchanel = "c"\ncomponent = "a"\n',
     "unknown key(s) 'chanel' (did you mean `channel`?)"),
    ('[[trigger.redis]]\naddress = "redis://{{ nope }}:1"\nchannel = "c"\ncomponent = "a"\n', "no application variable 'nope'"),
    ('[variables]\nport = { required = true }\n'
     '[[trigger.redis]]\naddress = "redis://h:{{ port }}"\nchannel = "c"\ncomponent = "a"\n', "SPIN_VARIABLE_PORT"),
    ('[[trigger.redis]]\naddress = 6379\nchannel = "c"\ncomponent = "a"\n', "`address` must be a string"),
    ('[[trigger.redis]]\naddress = "redis://h:1"\nchannel = "c"\n', "names no `component`"),
])
def test_bad_trigger_config_is_a_manifest_error_that_names_the_trigger(body, needle):
    with pytest.raises(ManifestError) as caught:
        triggers(body)
    assert needle in str(caught.value)
    assert "/spin.toml" in str(caught.value)


def test_unknown_component_is_refused_by_the_manifest():
    with pytest.raises(ManifestError, match="references component 'zzz', which is not declared"):
        triggers('[[trigger.redis]]\naddress = "redis://h:1"\nchannel = "c"\ncomponent = "zzz"\n')


def test_a_password_in_the_address_never_appears_in_a_message():
    with pytest.raises(ManifestError) as caught:
        triggers('[[trigger.redis]]\naddress = "redis://u:hunter2@h:99999"\nchannel = "c"\ncomponent = "a"\n')
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    [t] = triggers('[[trigger.redis]]\naddress = "redis://u:hunter2@h:1"\nchannel = "c"\ncomponent = "a"\n')
    assert "hunter2" not in repr(t) and "hunter2" not in repr(group_subscriptions([t]))


# ------------------------------------------------------------------------------------------------ loader dispatch

MIXED = HEAD + """
[[trigger.http]]
route = "/..."
component = "a"
[[trigger.redis]]
address = "redis://h:1"
channel = "c"
component = "b"
""" + COMPONENTS


def test_http_and_redis_mix_in_manifest_order():
    assert _trigger_types(parse_manifest(MIXED, Path("/spin.toml"))) == ("http", "redis")


def test_a_command_beside_a_listener_is_refused_with_the_reason():
    text = HEAD + '[[trigger.command]]\ncomponent = "a"\n[[trigger.redis]]\naddress = "redis://h:1"\nchannel = "c"\ncomponent = "b"\n'
    with pytest.raises(UnsupportedTriggerError, match=r"mixes \[\[trigger.command\]\] with \[\[trigger.redis\]\]"):
        _trigger_types(parse_manifest(text + COMPONENTS, Path("/spin.toml")))


def test_retaining_components_drops_the_other_trigger_types():
    manifest = parse_manifest(MIXED, Path("/spin.toml"))
    kept = retain_components(manifest, {"SPIN_COMPONENTS_TO_RETAIN": "b"})
    assert [t.type for t in kept.triggers] == ["redis"] and _trigger_types(kept) == ("redis",)
    assert retain_components(manifest, {}) is manifest
    with pytest.raises(InvalidSettingError, match="no component"):
        retain_components(manifest, {"SPIN_COMPONENTS_TO_RETAIN": "b,zzz"})
