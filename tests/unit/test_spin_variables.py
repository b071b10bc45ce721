"""Spin variables: providers in containerd-shim-spin's order, component templates, errors that never leak values."""

from __future__ import annotations

import pytest

from runtime.errors import AppError, ManifestError
from runtime.manifest import parse_manifest
from runtime.spin.variables import MissingVariablesError, VariableError, VariableResolver, env_names

HEAD = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
"""


def resolver(variables: str, component_vars: str, env: dict[str, str] | None = None) -> VariableResolver:
    text = f"{HEAD}\n[variables]\n{variables}\n[component.web]\nsource = \"web.wasm\"\nvariables = {{ {component_vars} }}\n"
    return VariableResolver.from_manifest(parse_manifest(text, "/app/spin.toml"), env or {})


def error_of(call) -> VariableError:
    with pytest.raises(VariableError) as info:
        call()
    return info.value


def test_default_is_used_without_env():
    r = resolver('greeting = { default = "hello" }', 'message = "{{ greeting }}"')
    assert r.get("web", "message") == "hello"


def test_spin_variable_env_beats_plain_env_beats_default():
    r = resolver('greeting = { default = "hello" }', 'message = "{{ greeting }}"', {"GREETING": "plain"})
    assert r.get("web", "message") == "plain"
    r = resolver(
        'greeting = { default = "hello" }', 'message = "{{ greeting }}"',
        {"GREETING": "plain", "SPIN_VARIABLE_GREETING": "prefixed"},
    )
    assert r.get("web", "message") == "prefixed"


def test_env_names_are_upper_cased():
    assert env_names("api_key") == ("SPIN_VARIABLE_API_KEY", "API_KEY")
    r = resolver("api_key = { required = true }", 'key = "{{ api_key }}"', {"api_key": "lower-case is not read"})
    assert r.missing() == ("api_key",)


def test_templates_mix_literal_text_and_several_variables():
    r = resolver(
        'host = { default = "db" }\nport = { default = "5432" }',
        'url = "postgres://{{host}}:{{ port }}/x}}y", plain = "no templates here"',
    )
    assert r.get("web", "url") == "postgres://db:5432/x}}y"
    assert r.get("web", "plain") == "no templates here"


def test_get_all_lists_the_component_variables_in_order():
    r = resolver('a = { default = "1" }', 'first = "{{ a }}", second = "x{{ a }}"')
    assert r.get_all("web") == [("first", "1"), ("second", "x1")]
    assert r.get_all("unknown-component") == []


def test_undefined_key_is_the_undefined_case():
    r = resolver('a = { default = "1" }', 'first = "{{ a }}"')
    error = error_of(lambda: r.get("web", "a"))  # an app variable is not a component variable
    assert error.kind == "undefined" and "'web'.'a'" in error.message


@pytest.mark.parametrize("key", ["", "Upper", "has-dash", "1starts_with_digit", "ends_", "double__under", "sp ace"])
def test_invalid_names_are_the_invalid_name_case(key):
    r = resolver('a = { default = "1" }', 'first = "{{ a }}"')
    assert error_of(lambda: r.get("web", key)).kind == "invalid-name"


def test_required_variables_are_checked_at_load_naming_the_env_vars():
    r = resolver(
        'api_key = { required = true, secret = true }\ntoken = { required = true }\nok = { default = "x" }',
        'k = "{{ api_key }}"',
    )
    with pytest.raises(MissingVariablesError) as info:
        r.check_required()
    message = str(info.value)
    assert isinstance(info.value, AppError)
    assert message.startswith("/app/spin.toml: required variables without a value: api_key, token")
    assert "api_key: SPIN_VARIABLE_API_KEY or API_KEY; token: SPIN_VARIABLE_TOKEN or TOKEN" in message


def test_one_missing_variable_says_how_to_set_it():
    r = resolver("api_token = { required = true }", 'k = "{{ api_token }}"')
    with pytest.raises(MissingVariablesError) as info:
        r.check_required()
    assert str(info.value) == (
        "/app/spin.toml: required variable without a value: api_token "
        "(set SPIN_VARIABLE_API_TOKEN or API_TOKEN in the container's environment)"
    )


def test_required_variable_set_by_env_passes():
    r = resolver("api_key = { required = true }", 'k = "{{ api_key }}"', {"SPIN_VARIABLE_API_KEY": "s3cr3t"})
    r.check_required()
    assert r.get("web", "k") == "s3cr3t"


def test_secret_values_never_appear_in_messages_or_repr():
    secret = "s3cr3t-value"
    r = resolver(
        "api_key = { required = true, secret = true }\nother = { required = true }",
        'k = "{{ api_key }}{{ other }}"', {"SPIN_VARIABLE_API_KEY": secret},
    )
    with pytest.raises(MissingVariablesError) as info:
        r.check_required()
    error = error_of(lambda: r.get("web", "k"))
    assert error.kind == "provider"
    for text in (str(info.value), error.message, repr(r)):
        assert secret not in text


def test_template_naming_an_undeclared_app_variable_fails_the_load():
    with pytest.raises(ManifestError, match="component 'web': variable 'k' = '{{ nope }}' refers to application "
                       "variable 'nope', which is not declared"):
        resolver('a = { default = "1" }', 'k = "{{ nope }}"')


def test_bad_component_variable_key_or_template_fails_the_load():
    with pytest.raises(ManifestError, match="variable 'Bad'.*lower-case"):
        resolver('a = { default = "1" }', 'Bad = "x"')
    with pytest.raises(ManifestError, match="unclosed"):
        resolver('a = { default = "1" }', 'k = "{{ a "')
    with pytest.raises(ManifestError, match="invalid character"):
        resolver('a = { default = "1" }', 'k = "{{ a.b }}"')


def test_app_value_for_outbound_templates():
    r = resolver('host = { default = "api.example.com" }', "")
    assert r.app_value("host") == "api.example.com"
    assert error_of(lambda: r.app_value("nope")).kind == "undefined"
