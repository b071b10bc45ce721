"""Spin manifest version 1 loads as Spin loads it: converted to version 2 (runtime.manifest_v1), then validated.

The oracle is Spin's own test data (tests/unit/data/spin-manifest-v1/SOURCES.md): each v1 file of Spin's manifest
crate must give the same model as the v2 file Spin's ``v1_to_v2_app`` wrote for it, and the loader's v1 files must
give the triggers, ids and outbound hosts of the ``.lock`` Spin's loader wrote (quoted in the tests below).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import ManifestError
from runtime.http.trigger import parse_http_triggers
from runtime.loader import retain_components
from runtime.manifest import GlobFiles, LocalSource, MappedFiles, Manifest, load_manifest, parse_manifest
from runtime.manifest_v1 import convert_allowed_http_hosts

DATA = Path(__file__).parent / "data" / "spin-manifest-v1"
DATABASES = ("redis://*:*", "mysql://*:*", "postgres://*:*")


def parse_file(name: str) -> Manifest:
    path = DATA / name
    return parse_manifest(path.read_text(), path)


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, Path("/app/spin.toml"))
    return str(caught.value)


def model(manifest: Manifest) -> tuple:
    """Everything the runtime reads from a manifest, without the path it came from."""
    return (manifest.application, dict(manifest.variables), manifest.triggers, dict(manifest.components))


# ---------------------------------------------------------------------------------------------------- Spin's oracle


@pytest.mark.parametrize("name", ["maximal", "minimal", "old_version", "update_component_ids"])
def test_v1_gives_the_model_of_the_v2_file_spin_converts_it_to(name):
    assert model(parse_file(f"{name}.toml")) == model(parse_file(f"{name}.toml.v2"))


def test_maximal_v1_keeps_every_field_as_spin_does():
    manifest = parse_file("maximal.toml")
    assert manifest.application.version == "9999.9.9" and manifest.application.authors[1] == "bob@example.com"
    assert dict(manifest.application.trigger_options["fake"]) == {"global_option": True}
    assert [(t.id, t.component, dict(t.config)) for t in manifest.triggers] == [
        ("trigger-minimal-component", "minimal-component", {}),
        ("trigger-maximal-component", "maximal-component", {"option": True})]
    assert manifest.variables["var_two"].required and manifest.variables["var_two"].secret
    maximal = manifest.components["maximal-component"]
    assert maximal.files == (GlobFiles("pattern/*"), MappedFiles(source="placement", destination="/"))
    assert maximal.exclude_files == ("**/secret",)
    # allowed_outbound_hosts given: the http hosts are appended, no database defaults.
    assert maximal.allowed_outbound_hosts == ("https://fermyon.com:443", "http://example.com", "https://example.com")
    assert (maximal.key_value_stores, maximal.sqlite_databases, maximal.ai_models) == (
        ("default",), ("default",), ("llama2-chat",))
    assert manifest.components["minimal-component"].allowed_outbound_hosts == DATABASES


def test_component_ids_are_fixed_as_spin_fixes_them_and_retain_uses_the_new_ids():
    manifest = parse_file("update_component_ids.toml")
    assert list(manifest.components) == ["snake-case", "mixedcase"]
    assert [t.id for t in manifest.triggers] == ["trigger-snake-case", "trigger-mixedcase"]
    retained = retain_components(manifest, {"SPIN_COMPONENTS_TO_RETAIN": "snake-case"})
    assert [t.component for t in retained.triggers] == ["snake-case"]


def test_loader_valid_manifest_gives_the_triggers_and_hosts_of_spins_lock():
    manifest = parse_file("loader-valid-manifest.toml")  # spin_version = "1", the older key
    # valid-manifest.lock: triggers trigger-four-lights (executor http, /lights), trigger-old-test, trigger-web.
    assert [(t.type, t.id, t.component, dict(t.config)) for t in manifest.triggers] == [
        ("http", "trigger-four-lights", "four-lights", {"executor": {"type": "http"}, "route": "/lights"}),
        ("http", "trigger-old-test", "old-test", {"route": "/test"}),
        ("http", "trigger-web", "web", {"route": "/dont/test"})]
    assert all(c.allowed_outbound_hosts == DATABASES for c in manifest.components.values())
    assert dict(manifest.components["four-lights"].environment) == {"env1": "first", "env2": "second"}
    routes = parse_http_triggers(manifest)
    assert [(r.route, r.component_id) for r in routes] == [
        ("/lights", "four-lights"), ("/test", "old-test"), ("/dont/test", "web")]


def test_insecure_allow_all_wins_over_every_other_entry_as_in_spins_lock():
    component = parse_file("loader-insecure-allow-all-with-invalid-url.toml").components["hello"]
    assert component.allowed_outbound_hosts == (*DATABASES, "http://*:*", "https://*:*", "http://self")


def test_invalid_allowed_http_hosts_are_refused_with_spins_reasons():
    with pytest.raises(ManifestError) as caught:
        parse_file("loader-invalid-url-in-allowed-http-hosts.toml")
    message = str(caught.value)
    assert "One or more allowed_http_hosts entries was invalid" in message
    assert "ftp://random-data-api.fermyon.app isn't a valid host or host:port string" in message
    assert "example.com/wib/wob contains a path, should be host and optional port only" in message
    assert message.startswith(f"{DATA / 'loader-invalid-url-in-allowed-http-hosts.toml'}:9:")


def test_duplicate_component_ids_are_refused():
    with pytest.raises(ManifestError, match=r"-duplicate-id.toml:7: cannot have duplicate component IDs: hello"):
        parse_file("loader-invalid-manifest-duplicate-id.toml")


def test_wagi_executor_options_reach_the_http_trigger():
    manifest = parse_file("loader-wagi-custom-entrypoint.toml")
    (route,) = parse_http_triggers(manifest)
    assert (route.trigger_id, route.route, route.executor, route.wagi_entrypoint) == (
        "trigger-fs", "/hello", "wagi", "custom-entrypoint")
    assert manifest.components["fs"].files == (GlobFiles("**/*"),)


def test_component_config_becomes_component_variables():
    manifest = parse_file("testcase-http-smoke-test.toml")
    hello = manifest.components["hello"]
    assert dict(hello.variables) == {"message": "I'm a {{object}}"}
    assert manifest.variables["object"].default == "teapot"
    assert hello.files == (MappedFiles(source="assets", destination="/"),)
    variables = parse_file("runtime-test-variables.toml")
    assert dict(variables.components["variables"].variables) == {"variable": "{{ variable }}"}
    assert variables.application.authors == ("",)


# ---------------------------------------------------------------------------------------------------- versions


def test_invalid_versions_are_refused():
    with pytest.raises(ManifestError, match="invalid manifest version '77.301.12'"):
        parse_file("loader-invalid-version.toml")
    integer = error_of('spin_manifest_version = 1\nname = "x"\ntrigger = { type = "http" }\n')
    assert integer.startswith("/app/spin.toml:1: invalid manifest version 1 (an integer)")
    assert 'spin_manifest_version = "1"' in integer
    both = error_of('spin_manifest_version = "1"\nspin_version = "1"\nname = "x"\ntrigger = { type = "http" }\n')
    assert "both `spin_manifest_version` and `spin_version`" in both
    assert "`spin_version` is the version 1 name" in error_of('spin_version = 2\n[application]\nname = "x"\n')


# ---------------------------------------------------------------------------------------------------- v1 errors

V1 = '''spin_manifest_version = "1"
name = "old"
trigger = { type = "http", base = "/" }

[[component]]
id = "hello"
source = "hello.wasm"
[component.trigger]
route = "/..."
'''


def test_a_well_formed_v1_http_app_parses_and_routes():
    manifest = parse_manifest(V1, "/app/spin.toml")
    assert manifest.components["hello"].source == LocalSource("hello.wasm")
    assert [(r.trigger_id, r.route, r.component_id) for r in parse_http_triggers(manifest)] == [
        ("trigger-hello", "/...", "hello")]


@pytest.mark.parametrize("edit, line, expected", [
    (('name = "old"\n', 'nmae = "old"\n'), 2, "unknown key(s) 'nmae' (did you mean `name`?) in a version 1 manifest"),
    (('source = "hello.wasm"\n', 'source = "hello.wasm"\nenviroment = { A = "1" }\n'), 6,
     '[[component]] id = "hello": unknown key(s) \'enviroment\' (did you mean `environment`?)'),
    (('[component.trigger]\nroute = "/..."\n', ''), 6,
     '[[component]] id = "hello": `[component.trigger]` is required in a version 1 manifest'),
    (('id = "hello"', 'id = "9lives"'), 6,
     "invalid ID `9lives`: '-'-separated words must start with an ASCII letter; got '9'"),
    (('source = "hello.wasm"\n', 'source = "hello.wasm"\nconfig = { Message = "x" }\n'), 6,
     "invalid ID `Message`: '_'-separated words must be all lowercase or all UPPERCASE; got \"Message\""),
    (('source = "hello.wasm"\n', 'source = "hello.wasm"\nenvironment = { A = 1 }\n'), 6,
     '[[component]] id = "hello": `environment` must be a table of string values'),
    (('trigger = { type = "http", base = "/" }\n', ''), None, "`trigger` is required in a version 1 manifest"),
    (('route = "/..."\n', 'route = "/..."\n[variables]\nApi-Key = { default = "x" }\n'), 10,
     "invalid ID `Api-Key`: words must be separated with '_', not '-'"),
    (('[[component]]\n', '[component]\n'), 5, "components of a version 1 manifest are written as [[component]]"),
])
def test_v1_mistakes_name_the_v1_table_and_line(edit, line, expected):
    message = error_of(V1.replace(*edit))
    assert expected in message
    assert message.startswith(f"/app/spin.toml:{line}: " if line else "/app/spin.toml: "), message


def test_v1_component_trigger_cannot_name_another_component():
    message = error_of(V1.replace('route = "/..."', 'route = "/..."\ncomponent = "other"'))
    assert "[component.trigger] cannot set `component`" in message


# ---------------------------------------------------------------------------------------------------- allowed hosts


@pytest.mark.parametrize("entry, hosts", [
    ("example.com", ["http://example.com", "https://example.com"]),
    ("Example.COM:8080", ["http://example.com:8080", "https://example.com:8080"]),
    ("example.com:80", ["http://example.com", "https://example.com"]),  # the url crate drops http's default port
    ("https://example.com:443/", ["http://example.com", "https://example.com"]),
    ("http://localhost:3001", ["http://localhost:3001", "https://localhost:3001"]),
    ("192.168.1.1:3002", ["http://192.168.1.1:3002", "https://192.168.1.1:3002"]),
    ("http://[::1]:8001", ["http://[::1]:8001", "https://[::1]:8001"]),
    ("self", ["http://self"]),
])
def test_allowed_http_hosts_convert_as_in_spins_compat_layer(entry, hosts):
    assert convert_allowed_http_hosts([entry], allow_database_access=False) == hosts
    assert convert_allowed_http_hosts([entry], allow_database_access=True) == [*DATABASES, *hosts]


def test_load_manifest_of_a_v1_app_directory(tmp_path):
    (tmp_path / "hello.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "spin.toml").write_text(V1.replace('id = "hello"', 'id = "hello_world"'))
    manifest = load_manifest(tmp_path / "spin.toml")
    assert list(manifest.components) == ["hello-world"]
    assert manifest.triggers[0].id == "trigger-hello-world"
