"""runtime-config.toml: the key-value stores this shim backs, and clear errors for everything it does not.

Also SpinServices.build, which combines the runtime config with spin.toml and the task env: everything is
validated at load, and the per-component views are what spin.toml says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import AppError, ManifestError
from runtime.manifest import parse_manifest
from runtime.spin.key_value import KeyValueError
from runtime.spin.outbound import OutboundHostsError
from runtime.spin.runtime_config import (
    KeyValueStoreSpec,
    RuntimeConfigError,
    load_runtime_config,
    parse_runtime_config,
)
from runtime.spin.services import SpinServices
from runtime.spin.variables import MissingVariablesError


def parse(text: str, root: Path) -> dict[str, KeyValueStoreSpec]:
    return dict(parse_runtime_config(text, root / "runtime-config.toml", root).key_value_stores)


def rejected(text: str, root: Path) -> str:
    with pytest.raises(RuntimeConfigError) as info:
        parse(text, root)
    assert isinstance(info.value, AppError)
    return str(info.value)


def test_no_file_means_no_configured_stores(tmp_path: Path):
    config = load_runtime_config(tmp_path)
    assert config.path is None and dict(config.key_value_stores) == {}


def test_spin_store_path_is_relative_to_the_config_file(tmp_path: Path):
    stores = parse('[key_value_store.cache]\ntype = "spin"\npath = "data/cache.db"\n', tmp_path)
    assert stores == {"cache": KeyValueStoreSpec("cache", tmp_path.resolve() / "data" / "cache.db")}


def test_absolute_store_path_is_inside_the_image_root(tmp_path: Path):
    stores = parse('[key_value_store.default]\ntype = "spin"\npath = "/var/kv.db"\n', tmp_path)
    assert stores["default"].db_path == tmp_path.resolve() / "var" / "kv.db"


def test_store_path_may_not_leave_the_image_root(tmp_path: Path):
    assert "outside the app root" in rejected('[key_value_store.x]\ntype = "spin"\npath = "../../etc/kv.db"\n', tmp_path)


def test_spin_store_without_path_uses_the_default_file(tmp_path: Path):
    assert parse('[key_value_store.other]\ntype = "spin"\n', tmp_path) == {"other": KeyValueStoreSpec("other", None)}


def test_load_reads_the_file_at_the_image_root(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text('[key_value_store.cache]\ntype = "spin"\npath = "c.db"\n')
    config = load_runtime_config(tmp_path)
    assert config.path == tmp_path / "runtime-config.toml"
    assert set(config.key_value_stores) == {"cache"}


@pytest.mark.parametrize("store_type", ["redis", "azure_cosmos", "aws_dynamo"])
def test_other_store_types_are_not_supported_by_this_shim(tmp_path: Path, store_type: str):
    message = rejected(f'[key_value_store.cache]\ntype = "{store_type}"\nurl = "redis://x"\n', tmp_path)
    assert f"[key_value_store.cache]: type = '{store_type}' is not supported by this shim" in message
    assert "runtime-config.toml" in message


def test_missing_type_and_unknown_keys(tmp_path: Path):
    assert "`type` is required" in rejected('[key_value_store.cache]\npath = "x.db"\n', tmp_path)
    assert "unknown key(s) 'url'" in rejected('[key_value_store.cache]\ntype = "spin"\nurl = "x"\n', tmp_path)


def test_unsupported_and_unknown_tables_name_the_file_and_table(tmp_path: Path):
    message = rejected('[sqlite_database.default]\ntype = "spin"\n', tmp_path)
    assert message.startswith(f"{tmp_path}/runtime-config.toml: [sqlite_database]:") and "not provided" in message
    assert "SPIN_VARIABLE_<NAME>" in rejected('[[config_provider]]\ntype = "vault"\n', tmp_path)
    assert "unknown table or key 'key_value_stores'" in rejected('[key_value_stores.x]\ntype = "spin"\n', tmp_path)


def test_tuning_only_tables_are_ignored(tmp_path: Path):
    assert parse("[outbound_http]\nconnection_pooling = true\n", tmp_path) == {}


def test_invalid_toml_names_the_file(tmp_path: Path):
    assert rejected("[key_value_store.x\n", tmp_path).startswith(f"{tmp_path}/runtime-config.toml: invalid TOML")


# ---------------------------------------------------------------------------------------------------- SpinServices

PY_SPIN = """
spin_manifest_version = 2
[application]
name = "py-spin"
[variables]
greeting = { default = "hello" }
api_token = { required = true, secret = true }
api_host = { default = "api.example.com" }
[[trigger.http]]
route = "/..."
component = "py-spin"
[component.py-spin]
source = "app.wasm"
key_value_stores = ["default"]
allowed_outbound_hosts = ["http://127.0.0.1:*", "https://{{ api_host }}"]
[component.py-spin.variables]
greeting = "{{ greeting }}"
token = "{{ api_token }}"
literal = "fixed-value"
[component.other]
source = "other.wasm"
"""


def build(tmp_path: Path, text: str = PY_SPIN, env: dict[str, str] | None = None, **kwargs) -> SpinServices:
    manifest = parse_manifest(text, tmp_path / "spin.toml")
    return SpinServices.build(manifest, {"SPIN_VARIABLE_API_TOKEN": "t0ken"} if env is None else env,
                              work_dir=tmp_path, **kwargs)


def test_py_spin_app_services(tmp_path: Path):
    services = build(tmp_path, env={"SPIN_VARIABLE_API_TOKEN": "t0ken", "GREETING": "hi from env"})
    assert services.variables.get("py-spin", "greeting") == "hi from env"
    assert services.variables.get("py-spin", "token") == "t0ken"
    assert services.variables.get("py-spin", "literal") == "fixed-value"
    policy = services.outbound_policy("py-spin")
    assert policy.allows("http://127.0.0.1:8080/x") and policy.allows("https://api.example.com/")
    assert not policy.allows("http://127.0.0.2:8080/x")
    assert not services.outbound_policy("other").allows("http://127.0.0.1:8080/x")
    store = services.open_store("py-spin", "default")
    store.set("k", b"v")
    assert store.get("k") == b"v"
    assert (tmp_path / ".spin" / "sqlite_key_value.db").is_file()
    with pytest.raises(KeyValueError) as info:
        services.open_store("other", "default")
    assert info.value.kind == "access-denied"


def test_missing_required_variable_fails_the_load(tmp_path: Path):
    with pytest.raises(MissingVariablesError, match="api_token.*SPIN_VARIABLE_API_TOKEN or API_TOKEN"):
        build(tmp_path, env={})


def test_store_label_nothing_backs_fails_the_load(tmp_path: Path):
    text = PY_SPIN.replace('key_value_stores = ["default"]', 'key_value_stores = ["default", "cache"]')
    with pytest.raises(ManifestError) as info:
        build(tmp_path, text)
    message = str(info.value)
    assert "component 'py-spin': key_value_stores names store 'cache', which is not defined" in message
    assert "[key_value_store.cache]" in message


def test_store_label_from_runtime_config(tmp_path: Path):
    text = PY_SPIN.replace('key_value_stores = ["default"]', 'key_value_stores = ["cache"]')
    (tmp_path / "runtime-config.toml").write_text('[key_value_store.cache]\ntype = "spin"\npath = "cache.db"\n')
    services = build(tmp_path, text)
    services.open_store("py-spin", "cache").set("k", b"v")
    assert (tmp_path / "cache.db").is_file() and not (tmp_path / ".spin").exists()


def test_unsupported_runtime_config_fails_the_load(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text('[key_value_store.default]\ntype = "redis"\nurl = "redis://x"\n')
    with pytest.raises(RuntimeConfigError, match="not supported by this shim"):
        build(tmp_path)


def test_bad_outbound_entry_fails_the_load(tmp_path: Path):
    text = PY_SPIN.replace('"http://127.0.0.1:*"', '"http://127.0.0.1:1000-2000"')
    with pytest.raises(OutboundHostsError, match="component 'py-spin': allowed_outbound_hosts entry"):
        build(tmp_path, text)


def test_outbound_template_naming_an_undeclared_variable_fails_the_load(tmp_path: Path):
    text = PY_SPIN.replace("{{ api_host }}", "{{ nope }}")
    with pytest.raises(OutboundHostsError, match="no application variable 'nope'"):
        build(tmp_path, text)


def test_only_retained_components_are_checked(tmp_path: Path):
    text = PY_SPIN + 'allowed_outbound_hosts = ["bad://"]\n'
    with pytest.raises(AppError):
        build(tmp_path, text)
    services = build(tmp_path, text, component_ids={"py-spin"})
    assert "other" not in services.outbound_policies
