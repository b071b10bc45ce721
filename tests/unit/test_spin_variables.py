"""Spin variables: providers in containerd-shim-spin's order, component templates, errors that never leak values."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import AppError, ManifestError
from runtime.manifest import parse_manifest
from runtime.spin.runtime_config import EnvVariablesProviderSpec, RuntimeConfigError
from runtime.spin.variables import (
    DotenvSyntaxError,
    EnvProvider,
    MissingVariablesError,
    VariableError,
    VariableResolver,
    env_names,
    parse_dotenv,
)

HEAD = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
"""


def resolver(variables: str, component_vars: str, env: dict[str, str] | None = None,
             providers: tuple[EnvVariablesProviderSpec, ...] = ()) -> VariableResolver:
    text = f"{HEAD}\n[variables]\n{variables}\n[component.web]\nsource = \"web.wasm\"\nvariables = {{ {component_vars} }}\n"
    return VariableResolver.from_manifest(parse_manifest(text, "/app/spin.toml"), env or {}, providers)


def env_provider(index: int = 1, prefix: str | None = None, dotenv: str | None = None) -> EnvVariablesProviderSpec:
    """A provider as runtime_config.parse_runtime_config hands it over (dotenv text already read)."""
    where = f"/runtime-config.toml: [[config_provider]] #{index}"
    if dotenv is None:
        return EnvVariablesProviderSpec(where, prefix)
    return EnvVariablesProviderSpec(where, prefix, f"p{index}.env", Path(f"/rootfs/p{index}.env"), dotenv)


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


# ------------------------------------------------------------------------------------------- runtime-config providers

GREETING = ('greeting = { default = "hello" }', 'message = "{{ greeting }}"')


def test_configured_prefix_is_joined_with_an_underscore():
    r = resolver(*GREETING, {"MYAPP_GREETING": "prefixed"}, (env_provider(prefix="MYAPP"),))
    assert r.get("web", "message") == "prefixed"
    assert env_names("greeting", r.providers) == ("MYAPP_GREETING", "SPIN_VARIABLE_GREETING", "GREETING")


def test_prefix_is_kept_as_written_as_in_spin():
    """Spin's EnvVariablesProvider formats ``{prefix}_{NAME}``: a trailing '_' (spin-operator's 'SPIN_VARIABLE_')
    gives two, an empty prefix a leading one."""
    assert EnvProvider("SPIN_VARIABLE_").env_key("api_key") == "SPIN_VARIABLE__API_KEY"
    assert EnvProvider("").env_key("api_key") == "_API_KEY"
    r = resolver(*GREETING, {"SPIN_VARIABLE_GREETING": "default provider"}, (env_provider(prefix="SPIN_VARIABLE_"),))
    assert r.get("web", "message") == "default provider"


def test_providers_are_tried_in_order_then_spins_default_then_the_default_value():
    providers = (env_provider(1, "FIRST", "SECOND_GREETING=first-dotenv-decoy\n"), env_provider(2, "SECOND"))
    env = {"SECOND_GREETING": "second's env", "SPIN_VARIABLE_GREETING": "spin default", "GREETING": "plain"}
    assert resolver(*GREETING, env, providers).get("web", "message") == "second's env"
    env["FIRST_GREETING"] = "first's env"
    assert resolver(*GREETING, env, providers).get("web", "message") == "first's env"
    assert resolver(*GREETING, {"GREETING": "plain"}, providers).get("web", "message") == "plain"
    assert resolver(*GREETING, {}, providers).get("web", "message") == "hello"


def test_a_providers_env_beats_its_own_dotenv_and_its_dotenv_beats_later_providers():
    providers = (env_provider(1, "APP", "APP_GREETING=dotenv\n"),)
    assert resolver(*GREETING, {"APP_GREETING": "env"}, providers).get("web", "message") == "env"
    assert resolver(*GREETING, {"SPIN_VARIABLE_GREETING": "later"}, providers).get("web", "message") == "dotenv"


def test_plain_name_answers_wherever_spin_variable_name_is_looked_up():
    """containerd-shim-spin copies <NAME> to SPIN_VARIABLE_<NAME>: a default-prefix provider sees it before its
    dotenv does."""
    providers = (env_provider(1, None, "SPIN_VARIABLE_GREETING=dotenv\n"),)
    assert resolver(*GREETING, {"GREETING": "plain env"}, providers).get("web", "message") == "plain env"
    assert resolver(*GREETING, {}, providers).get("web", "message") == "dotenv"


def test_missing_dotenv_file_provides_nothing_but_is_named():
    spec = EnvVariablesProviderSpec("/runtime-config.toml: [[config_provider]] #1", "APP", ".env", Path("/r/.env"))
    r = resolver("token = { required = true }", 'k = "{{ token }}"', {}, (spec,))
    assert r.missing() == ("token",)
    assert error_of(lambda: r.get("web", "k")).message == (
        "no provider resolved required variable 'token' (set APP_TOKEN or SPIN_VARIABLE_TOKEN or TOKEN, "
        "or APP_TOKEN in .env)"
    )


def test_missing_variables_message_lists_each_variables_keys():
    r = resolver("a = { required = true }\nb = { required = true }", 'k = "{{ a }}{{ b }}"', {},
                 (env_provider(1, "APP", "OTHER=1\n"),))
    with pytest.raises(MissingVariablesError) as info:
        r.check_required()
    assert str(info.value) == (
        "/app/spin.toml: required variables without a value: a, b (set in the container's environment: "
        "a: APP_A or SPIN_VARIABLE_A or A (or APP_A in p1.env); b: APP_B or SPIN_VARIABLE_B or B (or APP_B in p1.env))"
    )


def test_dotenv_values_never_appear_in_messages_or_repr():
    secret = "dotenv-s3cr3t"
    r = resolver("api_key = { required = true, secret = true }", 'k = "{{ api_key }}"', {},
                 (env_provider(1, "APP", f"APP_API_KEY={secret}\n"),))
    assert r.get("web", "k") == secret
    assert secret not in repr(r)
    with pytest.raises(RuntimeConfigError) as info:
        resolver("a = { default = \"1\" }", "", {}, (env_provider(1, "APP", f"APP_A={secret} tail\n"),))
    assert str(info.value) == (
        "/runtime-config.toml: [[config_provider]] #1: dotenv_path 'p1.env' (/rootfs/p1.env): line 1: unexpected "
        "text after a blank in the value (quote a value that has spaces)"
    )


# ---------------------------------------------------------------------------------------------------- dotenv syntax


def test_dotenv_basic_syntax_as_dotenvy():
    text = (
        "\n# a comment\nKEY=1\nKEY2=\"2\"\nKEY3='3'\nKEY4='fo ur'\nKEY5=\"fi ve\"\nKEY6=s\\ ix\nKEY7=\n"
        "KEY8=     \nKEY9=   # foo\nKEY10  =\"before =\"\nexport   SHELL_LOVER=1\nURL=http://x/#frag #c\r\n"
    )
    assert parse_dotenv(text, {}) == {
        "KEY": "1", "KEY2": "2", "KEY3": "3", "KEY4": "fo ur", "KEY5": "fi ve", "KEY6": "s ix", "KEY7": "",
        "KEY8": "", "KEY9": "", "KEY10": "before =", "SHELL_LOVER": "1", "URL": "http://x/#frag",
    }


def test_dotenv_escapes_multiline_and_duplicates():
    text = (
        'A=my\\ cool\\ value\nB=\\$sweet\nC="awesome \\"mang\\""\nD=\'sweet $\\fgs\'\\\'\'fds\'\n'
        'E="line 1\\nline 2"\nF="first\nsecond"\nA=last wins\n'
    ).replace("A=last wins", "A='last wins'")
    assert parse_dotenv(text, {}) == {
        "A": "last wins", "B": "$sweet", "C": 'awesome "mang"', "D": "sweet $\\fgs'fds", "E": "line 1\nline 2",
        "F": "first\nsecond",
    }


def test_dotenv_substitution_env_first_then_earlier_keys():
    text = 'KEY=test\nK1="${KEY}"\nK2=$KEY$KEY\nK3=$KEY_1\nK4="$KEY"\nK5=\'$KEY\'\nK6=>${NOPE}<\n'
    assert parse_dotenv(text, {"KEY": "env wins"}) == {
        "KEY": "test", "K1": "env wins", "K2": "env winsenv wins", "K3": "env wins_1", "K4": "env wins", "K5": "$KEY",
        "K6": "><",
    }
    assert parse_dotenv("A=1\nB=${A}x\n", {})["B"] == "1x"


@pytest.mark.parametrize(("text", "what"), [
    ("KEY=my uncool value\n", "line 1: unexpected text after a blank"),
    ('OK=1\nKEY2="why\nmore\n', "line 2: a quoted value is not closed"),
    ("KEY4=h\\8u\n", "line 1: invalid escape"),
    ("  invalid  \n", "line 1: expected '='"),
    ("=value\n", "line 1: expected a variable name"),
    ("KEY=>${KEY{<\n", "line 1: a quote or ${ in the value is not closed"),
])
def test_dotenv_syntax_errors_name_the_line_only(text: str, what: str):
    with pytest.raises(DotenvSyntaxError) as info:
        parse_dotenv(text, {})
    assert str(info.value).startswith(what)
    assert "uncool" not in str(info.value) and "why" not in str(info.value)


def test_dotenv_bom_and_missing_final_newline():
    assert parse_dotenv("\ufeffA=1\nB=2  ", {}) == {"A": "1", "B": "2"}
