"""spin.toml v2 parsing and validation (runtime.manifest): pure, from strings, plus the load-time file checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtime.errors import ManifestError
from runtime.manifest import (
    GlobFiles,
    LocalSource,
    MappedFiles,
    RegistrySource,
    RemoteSource,
    load_manifest,
    parse_manifest,
)

MINIMAL = """
spin_manifest_version = 2

[application]
name = "demo"

[[trigger.command]]
component = "hello"

[component.hello]
source = "hello.wasm"
"""


def parse(text: str):
    return parse_manifest(text, Path("/app/spin.toml"))


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse(text)
    return str(caught.value)


def test_minimal_command_app_parses_into_typed_model():
    manifest = parse(MINIMAL)
    assert manifest.application.name == "demo"
    assert manifest.trigger_types == ("command",)
    (trigger,) = manifest.triggers
    assert trigger.type == "command" and trigger.component == "hello" and dict(trigger.config) == {}
    assert manifest.components["hello"].source == LocalSource("hello.wasm")
    assert manifest.app_dir == Path("/app")


def test_full_manifest_keeps_every_field():
    manifest = parse("""
spin_manifest_version = 2

[application]
name = "full"
version = "1.2.3"
description = "all the things"
authors = ["A <a@example.com>"]
[application.trigger.http]
base = "/"

[variables]
api_key = { required = true, secret = true }
greeting = { default = "hi", description = "what to say" }

[[trigger.http]]
id = "front"
route = "/..."
component = "web"
executor = { type = "spin" }

[[trigger.command]]
component = "tool"

[component.web]
source = { url = "https://example.com/web.wasm", digest = "sha256:abc" }
allowed_outbound_hosts = ["https://api.example.com"]
allowed_http_hosts = ["legacy.example.com"]
key_value_stores = ["default"]
sqlite_databases = ["default"]
ai_models = ["llama2-chat"]
variables = { key = "{{ api_key }}" }
files = ["static/**/*", { source = "assets", destination = "/assets" }]
exclude_files = ["static/private/*"]
environment = { MODE = "prod" }
[component.web.build]
command = "cargo build"
watch = ["src/**/*.rs"]

[component.tool]
source = { registry = "ghcr.io", package = "acme:tool", version = "1.0.0" }
""")
    assert manifest.application.version == "1.2.3"
    assert manifest.application.authors == ("A <a@example.com>",)
    assert dict(manifest.application.trigger_options["http"]) == {"base": "/"}
    assert manifest.variables["api_key"].required and manifest.variables["api_key"].secret
    assert manifest.variables["greeting"].default == "hi"
    web = manifest.components["web"]
    assert web.source == RemoteSource(url="https://example.com/web.wasm", digest="sha256:abc")
    assert web.allowed_outbound_hosts == ("https://api.example.com", "legacy.example.com")
    assert web.key_value_stores == ("default",)
    assert dict(web.variables) == {"key": "{{ api_key }}"}
    assert web.files == (GlobFiles("static/**/*"), MappedFiles("assets", "/assets"))
    assert web.exclude_files == ("static/private/*",)
    assert dict(web.environment) == {"MODE": "prod"}
    assert manifest.components["tool"].source == RegistrySource("acme:tool", "1.0.0", "ghcr.io")
    http = manifest.triggers_of_type("http")[0]
    assert http.id == "front"
    assert dict(http.config) == {"route": "/...", "executor": {"type": "spin"}}
    assert manifest.trigger_types == ("http", "command")


def test_toml_syntax_error_names_file_and_line():
    message = error_of('spin_manifest_version = 2\n[application]\nname = "x\n')
    assert message.startswith("/app/spin.toml: invalid TOML")
    assert "line 3" in message


def test_manifest_version_1_is_converted_not_refused():
    # The conversion itself: tests/unit/test_manifest_v1.py.
    manifest = parse('spin_manifest_version = "1"\nname = "old"\ntrigger = { type = "http" }\n')
    assert manifest.application.name == "old" and manifest.triggers == ()


def test_missing_or_unknown_manifest_version_is_rejected():
    assert "missing `spin_manifest_version = 2`" in error_of('[application]\nname = "x"\n')
    message = error_of('spin_manifest_version = 3\n[application]\nname = "x"\n')
    assert message.startswith("/app/spin.toml:1: invalid manifest version 3;")
    assert 'version 1 (`spin_manifest_version = "1"`)' in message
    assert "invalid manifest version '2'" in error_of('spin_manifest_version = "2"\n[application]\nname = "x"\n')


def test_application_name_is_required():
    assert "`name` is required" in error_of("spin_manifest_version = 2\n[application]\nversion = '1'\n")
    assert "missing [application]" in error_of("spin_manifest_version = 2\n")


def test_trigger_referencing_unknown_component_names_both():
    message = error_of(MINIMAL.replace('component = "hello"', 'component = "helo"'))
    assert "references component 'helo', which is not declared" in message
    assert "declared components: hello" in message
    assert ":7:" in message  # the [[trigger.command]] header line


def test_duplicate_trigger_ids_are_rejected():
    message = error_of(MINIMAL + '\n[[trigger.command]]\nid = "dup"\ncomponent = "hello"\n'
                       '[[trigger.command]]\nid = "dup"\ncomponent = "hello"\n')
    assert "duplicate trigger id 'dup'" in message


def test_duplicate_component_tables_are_a_toml_error():
    message = error_of(MINIMAL + '\n[component.hello]\nsource = "other.wasm"\n')
    assert "invalid TOML" in message


def test_inline_component_is_hoisted_under_the_trigger_id():
    manifest = parse("""
spin_manifest_version = 2
[application]
name = "inline"
[[trigger.command]]
id = "greeter"
component = { source = "hello.wasm", environment = { A = "1" } }
[[trigger.command]]
component = { source = "other.wasm" }
""")
    first, second = manifest.triggers
    assert first.component == "greeter"
    assert manifest.components["greeter"].source == LocalSource("hello.wasm")
    assert dict(manifest.components["greeter"].environment) == {"A": "1"}
    assert second.component == "inline-component-1"
    assert second.id == "command-trigger-2"


def test_component_ids_must_be_kebab_case():
    message = error_of(MINIMAL.replace("[component.hello]", "[component.Hello_World]").replace(
        'component = "hello"', 'component = "Hello_World"'))
    assert "'Hello_World' must be lower-kebab-case" in message


def test_unknown_component_key_is_rejected_listing_known_keys():
    message = error_of(MINIMAL + 'enviroment = { A = "1" }\n')
    assert "unknown key(s) 'enviroment' (did you mean `environment`?)" in message
    assert "(known: ai_models, allowed_http_hosts," in message


@pytest.mark.parametrize("text, expected", [
    (MINIMAL + 'allowed_outbound_host = ["https://x"]\n',
     "'allowed_outbound_host' (did you mean `allowed_outbound_hosts`?)"),
    (MINIMAL + 'key-value-stores = ["default"]\n', "'key-value-stores' (did you mean `key_value_stores`?)"),
    (MINIMAL + 'colour = "blue"\n', "unknown key(s) 'colour' (known:"),  # nothing close: no guess
    (MINIMAL.replace('name = "demo"', 'name = "demo"\nversoin = "1"'),
     "[application]: unknown key(s) 'versoin' (did you mean `version`?)"),
    (MINIMAL + "[variables]\nkey = { defualt = 'x' }\n", "unknown key(s) 'defualt' (did you mean `default`?)"),
    (MINIMAL + "[componet.x]\nsource = 'a'\n",
     "unknown key(s) 'componet' (did you mean `component`?) at the top level"),
])
def test_a_misspelt_key_gets_a_did_you_mean(text, expected):
    assert expected in error_of(text)


def test_a_flood_of_unknown_keys_gives_a_short_error():
    """spin.toml is image content: 80 000 unknown keys (880 kB) or one 100 000-character key must not become a
    megabyte of Create error; ten keys are named, the rest counted, a long key cut."""
    message = error_of(MINIMAL + "".join(f"k{i:06d} = 1\n" for i in range(80_000)))
    assert "'k000000'" in message and "'k000009'" in message and "'k000010'" not in message
    assert "... and 79990 more" in message and len(message) < 2000, message[:3000]
    message = error_of(MINIMAL + "x" * 100_000 + " = 1\n")
    assert "'" + "x" * 64 + "'... (100000 characters)" in message and len(message) < 2000, message[:3000]


def test_a_valid_manifest_scans_its_lines_a_fixed_number_of_times(monkeypatch):
    """Each component's and variable's line was looked up eagerly, a scan of the file each: 8 000 components
    (287 kB) took 47 s, before the cgroup join. Now a line is looked for only when an error names it."""
    from runtime import manifest

    scans: list[tuple[str, ...]] = []
    real_line_of = manifest._Ctx.line_of
    monkeypatch.setattr(manifest._Ctx, "line_of", lambda self, *h: scans.append(h) or real_line_of(self, *h))
    text = "spin_manifest_version = 2\n[application]\nname = 'x'\n[variables]\n" + "".join(
        f"v{i} = {{ default = 'x' }}\n" for i in range(1_000)) + "".join(
        f"[component.c{i}]\nsource = 'a.wasm'\n" for i in range(2_000))
    assert len(parse_manifest(text, "/app/spin.toml").components) == 2_000
    assert len(scans) <= 2, scans[:5]  # the version line and [application], whatever the manifest's size


def test_an_error_in_a_late_component_still_names_its_line():
    text = "spin_manifest_version = 2\n[application]\nname = 'x'\n" + "".join(
        f"[component.c{i}]\nsource = 'a.wasm'\n" for i in range(100)) + "[component.Bad_Id]\nsource = 'a.wasm'\n"
    assert error_of(text).startswith("/app/spin.toml:204: ")


def test_component_source_is_required_and_typed():
    assert "`source` is required" in error_of(MINIMAL.replace('source = "hello.wasm"', 'description = "x"'))
    assert "`source` must be a path string" in error_of(MINIMAL.replace('"hello.wasm"', "42"))


def test_files_entries_are_validated():
    bad_destination = MINIMAL + 'files = [{ source = "a", destination = "relative" }]\n'
    assert "must be an absolute guest path" in error_of(bad_destination)
    bad_entry = MINIMAL + "files = [{ source = \"a\" }]\n"
    assert "each `files` entry must be" in error_of(bad_entry)


def test_environment_values_must_be_strings():
    assert "`environment` must be a table of string values" in error_of(MINIMAL + "environment = { A = 1 }\n")


def test_variables_are_validated():
    base = "spin_manifest_version = 2\n[application]\nname = 'v'\n"
    assert "lower_snake_case" in error_of(base + "[variables]\nApiKey = { default = 'x' }\n")
    assert "both `required` and have a `default`" in error_of(
        base + "[variables]\nkey = { default = 'x', required = true }\n")
    assert "unknown key(s) 'defualt'" in error_of(base + "[variables]\nkey = { defualt = 'x' }\n")
    # Spin's loader: "must be `required` OR have a `default`".
    assert "must be `required = true` or have a `default`" in error_of(
        base + "[variables]\nkey = { description = 'x' }\n")


def test_trigger_must_be_an_array_of_tables():
    assert "[[trigger.command]]" in error_of(
        "spin_manifest_version = 2\n[application]\nname = 'x'\n[trigger.command]\ncomponent = 'a'\n")


def test_trigger_level_components_map_is_rejected_clearly():
    message = error_of(MINIMAL.replace('component = "hello"', 'components = { a = "hello" }'))
    assert "`components`" in message and "not supported yet" in message


def test_unknown_top_level_key_is_rejected():
    message = error_of(MINIMAL + "\n[componnet.x]\nsource = 'a'\n")
    assert message.startswith(
        "/app/spin.toml:13: unknown key(s) 'componnet' (did you mean `component`?) at the top level")


def test_unknown_trigger_types_parse_fine_the_loader_decides():
    manifest = parse(MINIMAL.replace("trigger.command", "trigger.foo"))
    assert manifest.trigger_types == ("foo",)


# ---------------------------------------------------------------------------------------------------- load_manifest


def write_app(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    (tmp_path / "spin.toml").write_text(text)
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    return tmp_path / "spin.toml"


def test_load_manifest_checks_that_local_sources_exist(tmp_path):
    path = write_app(tmp_path, MINIMAL)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert "component 'hello': source file 'hello.wasm' not found" in str(caught.value)
    assert str(tmp_path / "hello.wasm") in str(caught.value)

    write_app(tmp_path, MINIMAL, {"hello.wasm": "x"})
    assert load_manifest(path).components["hello"].source == LocalSource("hello.wasm")


def test_load_manifest_rejects_sources_outside_the_app_dir(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "outside.wasm").write_text("x")
    path = write_app(app, MINIMAL.replace('"hello.wasm"', '"../outside.wasm"'))
    with pytest.raises(ManifestError, match="leads outside the app root"):
        load_manifest(path)
    (app / "link.wasm").symlink_to("../outside.wasm")
    path = write_app(app, MINIMAL.replace('"hello.wasm"', '"link.wasm"'))
    with pytest.raises(ManifestError, match="leads outside the app root"):
        load_manifest(path)


def test_load_manifest_rejects_remote_and_registry_sources_clearly(tmp_path):
    remote = MINIMAL.replace('"hello.wasm"', '{ url = "https://example.com/a.wasm", digest = "sha256:00" }')
    with pytest.raises(ManifestError, match="is not supported by this runtime yet"):
        load_manifest(write_app(tmp_path, remote))
    registry = MINIMAL.replace('"hello.wasm"', '{ package = "a:b", version = "1.0.0" }')
    with pytest.raises(ManifestError, match="registry source a:b@1.0.0 is not supported"):
        load_manifest(write_app(tmp_path, registry))


def test_load_manifest_rejects_component_dependencies(tmp_path):
    text = MINIMAL + '[component.hello.dependencies]\n"a:b/c" = "1.0.0"\n'
    with pytest.raises(ManifestError, match="`dependencies`"):
        load_manifest(write_app(tmp_path, text, {"hello.wasm": "x"}))


def test_load_manifest_reports_non_utf8(tmp_path):
    (tmp_path / "spin.toml").write_bytes(b"name = '\xff'\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(tmp_path / "spin.toml")


def test_manifest_module_does_not_import_wasmtime():
    import subprocess

    code = "import runtime.manifest, sys; print('wasmtime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
