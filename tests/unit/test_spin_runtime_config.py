"""runtime-config.toml: the key-value stores this shim backs, and clear errors for everything it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import AppError
from runtime.spin.runtime_config import (
    KeyValueStoreSpec,
    RuntimeConfigError,
    load_runtime_config,
    parse_runtime_config,
)


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
