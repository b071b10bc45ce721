"""runtime-config.toml: the key-value stores this shim backs, and clear errors for everything it does not.

Also SpinServices.build, which combines the runtime config with spin.toml and the task env: everything is
validated at load, and the per-component views are what spin.toml says.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import AppError, ManifestError
from runtime.manifest import parse_manifest
from runtime.spin.key_value import KeyValueError
from runtime.spin.outbound import OutboundHostsError
from runtime.spin.runtime_config import (
    MAX_RUNTIME_CONFIG_BYTES,
    EnvVariablesProviderSpec,
    KeyValueStoreSpec,
    RuntimeConfigError,
    StateFileSpec,
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


def test_absolute_store_path_may_be_a_volume_mount_point_not_in_the_image(tmp_path: Path):
    """``/data`` is typically a volume: before (or without) the mount the image has no such directory, and the
    path is still the one inside the container's root."""
    stores = parse('[key_value_store.default]\ntype = "spin"\npath = "/data/kv.db"\n', tmp_path)
    assert stores["default"].db_path == tmp_path.resolve() / "data" / "kv.db"
    (tmp_path / "data").mkdir()
    assert parse('[key_value_store.default]\ntype = "spin"\npath = "/data/kv.db"\n', tmp_path) == stores


_MOUNTED_RESOLVE = """
import sys
from pathlib import Path
from runtime.spin.runtime_config import load_runtime_config
config = load_runtime_config(Path(sys.argv[1]))
print(config.key_value_stores["default"].db_path)
print(Path(sys.argv[1], "data").stat().st_dev != Path(sys.argv[1]).stat().st_dev)
"""


def test_absolute_store_path_on_a_volume_mounted_in_the_root(tmp_path: Path):
    """A real mount at ``<root>/data`` (a tmpfs in a private mount namespace): resolving walks names, so the store
    path is the file on the volume, and stays inside the root."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8)")
    root = tmp_path / "rootfs"
    (root / "data").mkdir(parents=True)
    (root / "runtime-config.toml").write_text('[key_value_store.default]\ntype = "spin"\npath = "/data/kv.db"\n')
    script = f'mount -t tmpfs tmpfs "{root}/data" && exec "{sys.executable}" -c "$0" "{root}"'
    namespace = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    result = subprocess.run(["unshare", *namespace, "--mount", "sh", "-c", script, _MOUNTED_RESOLVE],
                            capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    if result.returncode != 0 and "mount" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount in a private namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    db_path, other_device = result.stdout.split()
    assert db_path == str(root.resolve() / "data" / "kv.db") and other_device == "True"


def test_spin_store_without_path_uses_the_default_file(tmp_path: Path):
    assert parse('[key_value_store.other]\ntype = "spin"\n', tmp_path) == {"other": KeyValueStoreSpec("other", None)}


def test_load_reads_the_file_at_the_image_root(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text('[key_value_store.cache]\ntype = "spin"\npath = "c.db"\n')
    config = load_runtime_config(tmp_path)
    assert config.path == tmp_path / "runtime-config.toml"
    assert set(config.key_value_stores) == {"cache"}


@pytest.mark.parametrize("store_type", ["azure_cosmos", "aws_dynamo"])
def test_other_store_types_are_not_supported_by_this_shim(tmp_path: Path, store_type: str):
    message = rejected(f'[key_value_store.cache]\ntype = "{store_type}"\nurl = "redis://x"\n', tmp_path)
    assert f"[key_value_store.cache]: type = '{store_type}' (" in message
    assert "is not supported by this shim" in message
    assert "runtime-config.toml" in message


def test_missing_type_and_unknown_keys(tmp_path: Path):
    assert "`type` is required" in rejected('[key_value_store.cache]\npath = "x.db"\n', tmp_path)
    assert "unknown key(s) 'url'" in rejected('[key_value_store.cache]\ntype = "spin"\nurl = "x"\n', tmp_path)


def test_unsupported_and_unknown_tables_name_the_file_and_table(tmp_path: Path):
    message = rejected('[llm_compute]\ntype = "remote_http"\nurl = "http://x"\n', tmp_path)
    assert message.startswith(f"{tmp_path}/runtime-config.toml: [llm_compute]:") and "not provided" in message
    assert "unknown table or key 'key_value_stores'" in rejected('[key_value_stores.x]\ntype = "spin"\n', tmp_path)


def test_sqlite_databases_take_the_key_value_stores_rules(tmp_path: Path):
    (tmp_path / "mnt" / "data").mkdir(parents=True)
    config = parse_runtime_config('[sqlite_database.default]\ntype = "spin"\npath = "/mnt/data/app.db"\n'
                                  '[sqlite_database.scratch]\ntype = "spin"\n', tmp_path / "runtime-config.toml",
                                  tmp_path)
    assert dict(config.sqlite_databases) == {"default": StateFileSpec("default", tmp_path / "mnt/data/app.db"),
                                             "scratch": StateFileSpec("scratch", None)}
    assert dict(config.key_value_stores) == {}
    message = rejected('[sqlite_database.default]\ntype = "libsql"\nurl = "https://x"\ntoken = "t"\n', tmp_path)
    assert "[sqlite_database.default]: type = 'libsql' (a remote libSQL / Turso database) is not supported" in message
    assert "unknown key(s) 'url'" in rejected('[sqlite_database.x]\ntype = "spin"\nurl = "x"\n', tmp_path)
    escape = rejected('[sqlite_database.x]\ntype = "spin"\npath = "../../../../etc/passwd.db"\n', tmp_path)
    assert "[sqlite_database.x]: path '../../../../etc/passwd.db'" in escape


def test_tuning_only_tables_are_ignored(tmp_path: Path):
    assert parse("[outbound_http]\nconnection_pooling = true\n", tmp_path) == {}


def test_invalid_toml_names_the_file(tmp_path: Path):
    assert rejected("[key_value_store.x\n", tmp_path).startswith(f"{tmp_path}/runtime-config.toml: invalid TOML")


def test_oversize_runtime_config_is_refused(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text("# padding\n" * (MAX_RUNTIME_CONFIG_BYTES // 10 + 1))
    with pytest.raises(RuntimeConfigError) as info:
        load_runtime_config(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}/runtime-config.toml: larger than 1 MiB, the most this shim reads; refusing it"
    )
    with (tmp_path / "runtime-config.toml").open("r+b") as f:
        f.truncate(MAX_RUNTIME_CONFIG_BYTES)  # exactly the cap: still read
    assert load_runtime_config(tmp_path).path == tmp_path / "runtime-config.toml"


def test_runtime_config_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path):
    os.mkfifo(tmp_path / "runtime-config.toml")  # opened without O_NONBLOCK this would hang the load
    with pytest.raises(RuntimeConfigError, match="runtime-config.toml: cannot read: not a regular file"):
        load_runtime_config(tmp_path)
    (tmp_path / "runtime-config.toml").unlink()
    (tmp_path / "runtime-config.toml").mkdir()
    with pytest.raises(RuntimeConfigError, match="runtime-config.toml: cannot read: a directory"):
        load_runtime_config(tmp_path)


def test_runtime_config_symlink_is_followed_inside_the_root(tmp_path: Path):
    """A Secret volume's files are relative symlinks into ``..data``; an absolute symlink means the container's
    root, never the node's (here a host file with the same name exists outside the root and must not be read)."""
    root = tmp_path / "rootfs"
    (root / "etc" / "spin" / "..data").mkdir(parents=True)
    (root / "etc" / "spin" / "..data" / "rc.toml").write_text('[key_value_store.a]\ntype = "spin"\n')
    (root / "runtime-config.toml").symlink_to("etc/spin/..data/rc.toml")
    assert set(load_runtime_config(root).key_value_stores) == {"a"}
    (root / "runtime-config.toml").unlink()
    host_file = tmp_path / "host-rc.toml"
    host_file.write_text('[key_value_store.host]\ntype = "spin"\n')
    (root / "runtime-config.toml").symlink_to(host_file)  # absolute: <root>/<tmp_path>/host-rc.toml, absent
    assert load_runtime_config(root).path is None
    (root / "runtime-config.toml").unlink()
    (root / "runtime-config.toml").symlink_to("../host-rc.toml")
    with pytest.raises(RuntimeConfigError, match="leads outside the app root"):
        load_runtime_config(root)


# -------------------------------------------------------------------------------------------- variables providers


def providers(text: str, root: Path) -> list[EnvVariablesProviderSpec]:
    return list(parse_runtime_config(text, root / "runtime-config.toml", root).variables_providers)


def test_no_provider_tables_means_no_configured_providers(tmp_path: Path):
    assert providers("", tmp_path) == []
    assert load_runtime_config(tmp_path).variables_providers == ()


def test_env_provider_with_a_prefix(tmp_path: Path):
    (spec,) = providers('[[config_provider]]\ntype = "env"\nprefix = "MYAPP"\n', tmp_path)
    assert spec.prefix == "MYAPP" and spec.dotenv_path is None and spec.dotenv_text is None
    assert spec.where == f"{tmp_path}/runtime-config.toml: [[config_provider]] #1"
    (spec,) = providers('[[variables_provider]]\ntype = "env"\n', tmp_path)
    assert spec.prefix is None  # Spin's default, SPIN_VARIABLE


def test_env_provider_dotenv_path_is_read_inside_the_root(tmp_path: Path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "app.env").write_text("MYAPP_TOKEN=from-dotenv\n")
    for written in ("config/app.env", "/config/app.env", "./config/../config/app.env"):
        (spec,) = providers(f'[[config_provider]]\ntype = "env"\ndotenv_path = "{written}"\n', tmp_path)
        assert spec.dotenv_path == written
        assert spec.dotenv_file == tmp_path.resolve() / "config" / "app.env"
        assert spec.dotenv_text == "MYAPP_TOKEN=from-dotenv\n"
        assert "from-dotenv" not in repr(spec)


def test_dotenv_outside_the_root_is_refused_or_rerooted(tmp_path: Path):
    root = tmp_path / "rootfs"
    root.mkdir()
    host_env = tmp_path / "host.env"
    host_env.write_text("SPIN_VARIABLE_TOKEN=host-secret\n")
    message = rejected('[[config_provider]]\ntype = "env"\ndotenv_path = "../host.env"\n', root)
    assert message.startswith(f"{root}/runtime-config.toml: [[config_provider]] #1: dotenv_path '../host.env': ")
    assert "leads outside the app root" in message
    (root / "escape.env").symlink_to("../host.env")
    assert "leads outside the app root" in rejected(
        '[[config_provider]]\ntype = "env"\ndotenv_path = "escape.env"\n', root)
    # An absolute symlink is the container's path: <root>/<tmp_path>/host.env, which the image does not have.
    (root / "absolute.env").symlink_to(host_env)
    (spec,) = providers('[[config_provider]]\ntype = "env"\ndotenv_path = "absolute.env"\n', root)
    assert spec.dotenv_file == root.resolve() / str(host_env).lstrip("/") and spec.dotenv_text is None


def test_missing_dotenv_file_provides_nothing_as_in_spin(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="runtime.spin.runtime_config"):
        (spec,) = providers('[[config_provider]]\ntype = "env"\ndotenv_path = ".env"\n', tmp_path)
    assert spec.dotenv_file == tmp_path.resolve() / ".env" and spec.dotenv_text is None
    assert "dotenv_path '.env'" in caplog.text and "provides no variables" in caplog.text


def test_unreadable_dotenv_file_fails_the_load(tmp_path: Path):
    (tmp_path / "dir.env").mkdir()
    message = rejected('[[config_provider]]\ntype = "env"\ndotenv_path = "dir.env"\n', tmp_path)
    assert message == (f"{tmp_path}/runtime-config.toml: [[config_provider]] #1: dotenv_path 'dir.env' "
                       f"({tmp_path.resolve()}/dir.env): cannot read: a directory")
    (tmp_path / "big.env").write_bytes(b"A=" + b"x" * (1 << 20))
    assert "larger than 1 MiB" in rejected('[[config_provider]]\ntype = "env"\ndotenv_path = "big.env"\n', tmp_path)
    (tmp_path / "latin1.env").write_bytes(b"A=caf\xe9\n")
    assert "not UTF-8" in rejected('[[config_provider]]\ntype = "env"\ndotenv_path = "latin1.env"\n', tmp_path)
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (tmp_path / "secret.env").write_text("A=1\n")
        (tmp_path / "secret.env").chmod(0)
        assert "Permission denied" in rejected(
            '[[config_provider]]\ntype = "env"\ndotenv_path = "secret.env"\n', tmp_path)


def test_several_providers_keep_their_order(tmp_path: Path):
    text = ('[[variables_provider]]\ntype = "env"\nprefix = "FIRST"\n\n'
            '[[variables_provider]]\ntype = "env"\nprefix = "SECOND"\n')
    assert [spec.prefix for spec in providers(text, tmp_path)] == ["FIRST", "SECOND"]


def test_variables_provider_wins_over_config_provider_as_in_spin(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    text = '[[config_provider]]\ntype = "vault"\nurl = "x"\n\n[[variables_provider]]\ntype = "env"\nprefix = "NEW"\n'
    with caplog.at_level(logging.WARNING, logger="runtime.spin.runtime_config"):
        assert [spec.prefix for spec in providers(text, tmp_path)] == ["NEW"]
    assert "[[config_provider]] is ignored" in caplog.text


@pytest.mark.parametrize(("provider_type", "what"), [("vault", "HashiCorp Vault"),
                                                     ("azure_key_vault", "Azure Key Vault")])
def test_vault_providers_are_refused_naming_the_file_and_type(tmp_path: Path, provider_type: str, what: str):
    text = (f'[[config_provider]]\ntype = "env"\n\n[[config_provider]]\ntype = "{provider_type}"\n'
            'url = "https://vault.example.com"\ntoken = "root"\nmount = "secret"\n')
    message = rejected(text, tmp_path)
    assert message == (
        f"{tmp_path}/runtime-config.toml: [[config_provider]] #2: type = '{provider_type}' ({what}) is not supported "
        "by this shim; only type = \"env\" (the container's environment, optionally a dotenv file) is: set the "
        "variables as SPIN_VARIABLE_<NAME> in the container's environment instead"
    )


def test_bad_provider_tables_are_refused(tmp_path: Path):
    assert "unknown provider type 'consul'" in rejected('[[variables_provider]]\ntype = "consul"\n', tmp_path)
    assert "`type` is required" in rejected('[[variables_provider]]\nprefix = "X"\n', tmp_path)
    assert "must be written as [[config_provider]] tables" in rejected('[config_provider]\ntype = "env"\n', tmp_path)
    assert "unknown key(s) 'url' for type \"env\"" in rejected(
        '[[config_provider]]\ntype = "env"\nurl = "x"\n', tmp_path)
    assert "`prefix` must be a string" in rejected('[[config_provider]]\ntype = "env"\nprefix = 1\n', tmp_path)
    assert "`dotenv_path` must be a non-empty string" in rejected(
        '[[config_provider]]\ntype = "env"\ndotenv_path = ""\n', tmp_path)


#: What spin-operator renders into the runtime-config Secret for a SpinApp without runtimeConfig options:
#: internal/runtimeconfig/runtime_config.go (K8sBuilder.Build always adds this env provider) marshalled with
#: go-toml v2 (internal/controller/spinapp_controller.go); the exact text is the first table of the expected
#: Secret in internal/controller/spinapp_controller_test.go (spinframework/spin-operator 943f5b1).
SPIN_OPERATOR_RENDER = """[[config_provider]]
type = 'env'
prefix = 'SPIN_VARIABLE_'
"""

#: The whole expected Secret of that test (a SpinApp with a redis key-value store), verbatim.
SPIN_OPERATOR_RENDER_WITH_REDIS = """[[config_provider]]
type = 'env'
prefix = 'SPIN_VARIABLE_'

[key_value_store]
[key_value_store.default]
type = 'redis'
url = 'redis://localhost:9000'
"""


def test_spin_operator_render_is_accepted(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text(SPIN_OPERATOR_RENDER)
    config = load_runtime_config(tmp_path)
    (spec,) = config.variables_providers
    assert spec.prefix == "SPIN_VARIABLE_" and spec.dotenv_path is None
    assert dict(config.key_value_stores) == {}


def test_spin_operator_render_with_a_redis_store_is_accepted(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text(SPIN_OPERATOR_RENDER_WITH_REDIS)
    config = load_runtime_config(tmp_path)
    assert dict(config.key_value_stores) == {"default": StateFileSpec("default", redis_url="redis://localhost:9000")}


@pytest.mark.parametrize(("table", "reason"), [
    ('type = "redis"\n', "needs `url`"),
    ('type = "redis"\nurl = "http://x"\n', "not a redis:// or rediss:// URL"),
    ('type = "redis"\nurl = "redis://u:hunter2@h:99999"\n', "redis://u:***@h:99999"),
    ('type = "redis"\nurl = "redis://h"\npath = "x"\n', "unknown key(s) 'path' for type \"redis\""),
    ('type = "redis"\nurls = "redis://h"\n', "'urls' (did you mean `url`?)"),
])
def test_a_redis_store_needs_a_redis_url_and_never_shows_its_password(tmp_path: Path, table: str, reason: str):
    message = rejected(f"[key_value_store.cache]\n{table}", tmp_path)
    assert reason in message and "hunter2" not in message


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
    (tmp_path / "runtime-config.toml").write_text('[key_value_store.default]\ntype = "aws_dynamo"\nregion = "x"\n')
    with pytest.raises(RuntimeConfigError, match="not supported by this shim"):
        build(tmp_path)


def test_a_redis_default_store_needs_no_file_and_serves_from_the_server(tmp_path: Path):
    from tests.redis_support import running_redis

    with running_redis(tmp_path / "redis") as port:
        (tmp_path / "runtime-config.toml").write_text(
            f'[key_value_store.default]\ntype = "redis"\nurl = "redis://127.0.0.1:{port}/2"\n')
        services = build(tmp_path)
        assert not (tmp_path / ".spin" / "sqlite_key_value.db").exists()
        store = services.open_store("py-spin", "default")
        store.set("k", b"v")
        assert store.get("k") == b"v" and store.exists("k") and store.get_keys() == ["k"]
        assert store.increment("n", 5) == 5 and store.get("n") == b"5"
        assert store.get_many(["k", "gone"]) == [("k", b"v"), ("gone", None)]
        store.set_many([("a", b"1"), ("b", b"2")])
        store.delete_many(["a"])
        assert store.compare_and_swap("b", b"2", b"3") and not store.compare_and_swap("b", b"2", b"4")
        assert store.get("b") == b"3"
        store.delete("k")
        assert store.get("k") is None
    with pytest.raises(KeyValueError) as info:  # the server is gone now
        store.get("k")
    assert info.value.kind == "other" and f"redis://127.0.0.1:{port}/2" in info.value.message


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


VARS_APP = """
spin_manifest_version = 2
[application]
name = "vars"
[variables]
api_token = { required = true, secret = true }
greeting = { default = "hello" }
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
[component.web.variables]
token = "{{ api_token }}"
greeting = "{{ greeting }}"
"""


def test_services_resolve_through_the_spin_operator_render(tmp_path: Path):
    """spin-operator sets SPIN_VARIABLE_<NAME> (internal/controller/deployment.go, ConstructEnvForApp) and renders
    prefix 'SPIN_VARIABLE_': Spin looks that provider up as SPIN_VARIABLE__API_TOKEN (prefix + '_' + name), which
    is unset, and finds the value through the default provider Spin appends, exactly as here."""
    (tmp_path / "runtime-config.toml").write_text(SPIN_OPERATOR_RENDER)
    services = build(tmp_path, VARS_APP, env={"SPIN_VARIABLE_API_TOKEN": "t0ken"})
    assert services.variables.get("web", "token") == "t0ken"
    assert services.variables.get("web", "greeting") == "hello"
    services = build(tmp_path, VARS_APP, env={"SPIN_VARIABLE__API_TOKEN": "first", "SPIN_VARIABLE_API_TOKEN": "2nd"})
    assert services.variables.get("web", "token") == "first"


def test_services_resolve_through_a_prefixed_provider_and_its_dotenv(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.env").write_text("# app settings\nMYAPP_API_TOKEN='from dotenv'\nMYAPP_GREETING=hi\n")
    (tmp_path / "runtime-config.toml").write_text(
        '[[config_provider]]\ntype = "env"\nprefix = "MYAPP"\ndotenv_path = "conf/app.env"\n')
    services = build(tmp_path, VARS_APP, env={})
    assert services.variables.get("web", "token") == "from dotenv"
    assert services.variables.get("web", "greeting") == "hi"
    services = build(tmp_path, VARS_APP, env={"MYAPP_GREETING": "env beats the provider's dotenv"})
    assert services.variables.get("web", "greeting") == "env beats the provider's dotenv"
    assert "from dotenv" not in repr(services)


def test_services_missing_variable_names_the_configured_providers(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text(
        '[[config_provider]]\ntype = "env"\nprefix = "MYAPP"\ndotenv_path = ".env"\n')
    with pytest.raises(MissingVariablesError) as info:
        build(tmp_path, VARS_APP, env={})
    assert str(info.value) == (
        f"{tmp_path}/spin.toml: required variable without a value: api_token (set MYAPP_API_TOKEN or "
        "SPIN_VARIABLE_API_TOKEN or API_TOKEN in the container's environment, or MYAPP_API_TOKEN in .env)"
    )


def test_services_dotenv_syntax_error_fails_the_load_without_the_value(tmp_path: Path):
    (tmp_path / ".env").write_text("OK=1\nSPIN_VARIABLE_API_TOKEN=s3cr3t and more\n")
    (tmp_path / "runtime-config.toml").write_text('[[config_provider]]\ntype = "env"\ndotenv_path = ".env"\n')
    with pytest.raises(RuntimeConfigError) as info:
        build(tmp_path, VARS_APP, env={})
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/runtime-config.toml: [[config_provider]] #1: dotenv_path '.env' (")
    assert "line 2: unexpected text after a blank" in message and "s3cr3t" not in message


def test_services_refuse_a_vault_provider(tmp_path: Path):
    (tmp_path / "runtime-config.toml").write_text('[[variables_provider]]\ntype = "vault"\nurl = "http://v"\n')
    with pytest.raises(RuntimeConfigError, match=r"\[\[variables_provider\]\] #1: type = 'vault' \(HashiCorp Vault\)"):
        build(tmp_path, VARS_APP)


def test_a_store_in_the_runtimes_own_directory_is_refused(tmp_path):
    """In the shim's sandbox the cache dir is inside the container's root and holds the node's compiled blobs
    while the app loads: no runtime config may put a store there."""
    from runtime.spin.key_value import KeyValueSetupError, KeyValueStores

    private = tmp_path / ".spin-shim"
    (private / "precompiled").mkdir(parents=True)
    with pytest.raises(KeyValueSetupError, match="runtime's own directory"):
        KeyValueStores.for_app(tmp_path, {"x": private / "precompiled" / "kv.db"}, private_dir=private)
    assert KeyValueStores.for_app(tmp_path, {"x": tmp_path / "data" / "kv.db"}, private_dir=private).labels == \
        {"default", "x"}
