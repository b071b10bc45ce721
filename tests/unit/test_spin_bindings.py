"""Spin's host interfaces as registry providers: what each call returns, and that the values fit the real WIT types.

Provider functions are called as the linker calls them (``impl(ctx, *host_args)``) with a real RequestContext and
SpinServices. Where the exact WIT types matter (the deny stubs read them; every return value must lower into
them), the types come from an import-only component generated from the Spin Python SDK 3.4.1's own WIT with
wasm-tools (the toolchains scripts/install_app_toolchains.sh installs); those tests skip without the toolchains.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import _ffi as ffi
from wasmtime.component import Component, FuncType, ResourceHost, Variant

from runtime.host import adapt, marshal
from runtime.host.context import ComponentHost, RequestContext
from runtime.host.linking import plan_imports
from runtime.host.registry import REGISTRY
from runtime.host.traps import HostTrap
from runtime.host.values import Err, Ok
from runtime.http.contract import ComponentConfig
from runtime.manifest import parse_manifest
from runtime.spin.bindings import deny
from runtime.spin.bindings import key_value as spin_kv
from runtime.spin.key_value import MAX_OPEN_STORES_PER_INSTANCE
from runtime.spin.services import SpinServices

MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[variables]
greeting = { default = "hello" }
api_token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
[component.web.variables]
greeting = "{{ greeting }}"
token = "{{ api_token }}"
literal = "fixed-value"
[component.other]
source = "other.wasm"
"""

SPIN_IMPORTS = (
    "wasi:config/store@0.2.0-draft-2024-09-27", "spin:postgres/postgres@3.0.0", "spin:postgres/postgres@4.0.0",
    "spin:sqlite/sqlite@3.0.0", "fermyon:spin/llm@2.0.0", "fermyon:spin/redis@2.0.0",
    "fermyon:spin/rdbms-types@2.0.0", "fermyon:spin/postgres@2.0.0", "fermyon:spin/mqtt@2.0.0",
    "fermyon:spin/mysql@2.0.0", "fermyon:spin/sqlite@2.0.0", "fermyon:spin/key-value@2.0.0",
    "fermyon:spin/variables@2.0.0", "wasi:keyvalue/store@0.2.0-draft2", "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
)


@pytest.fixture
def services(tmp_path: Path) -> SpinServices:
    manifest = parse_manifest(MANIFEST, tmp_path / "spin.toml")
    return SpinServices.build(manifest, {"SPIN_VARIABLE_API_TOKEN": "t0ken"}, work_dir=tmp_path)


def context(services: Any, component_id: str = "web") -> RequestContext:
    config = ComponentConfig(id=component_id, wasm_path=Path("/dev/null"), executor="component", environment={},
                             services=services)
    return RequestContext(ComponentHost(config))


def call(import_name: str, func: str, ctx: RequestContext, *args: Any) -> Any:
    interface = REGISTRY.find(import_name)
    assert interface is not None, import_name
    return interface.functions[func](ctx, *args)


def rep_of(result: Ok[Any]) -> int:
    assert isinstance(result, Ok) and isinstance(result.value, ResourceHost), result
    return result.value.rep


# ---------------------------------------------------------------------------------------------------- variables

VARIABLES = "fermyon:spin/variables@2.0.0"
CONFIG = "wasi:config/store@0.2.0-draft-2024-09-27"


def test_variables_get_resolves_component_variables(services: SpinServices):
    ctx = context(services)
    assert call(VARIABLES, "get", ctx, "greeting") == Ok("hello")
    assert call(VARIABLES, "get", ctx, "token") == Ok("t0ken")
    assert call(VARIABLES, "get", ctx, "literal") == Ok("fixed-value")


def test_variables_errors_are_spins_cases(services: SpinServices):
    ctx = context(services)
    undefined = call(VARIABLES, "get", ctx, "api_token")  # an app variable the component does not map
    assert isinstance(undefined, Err) and undefined.value.tag == "undefined"
    invalid = call(VARIABLES, "get", ctx, "Not-Valid")
    assert isinstance(invalid, Err) and invalid.value.tag == "invalid-name"
    assert call(VARIABLES, "get", context(services, "other"), "greeting").value.tag == "undefined"


def test_without_services_variables_answer_a_provider_error():
    result = call(VARIABLES, "get", context(None), "greeting")
    assert isinstance(result, Err) and result.value.tag == "provider"


def test_wasi_config_get_and_get_all(services: SpinServices):
    ctx = context(services)
    assert call(CONFIG, "get", ctx, "greeting") == Ok("hello")
    assert call(CONFIG, "get", ctx, "nope") == Ok(None)  # undefined: none, as the WASI spec asks
    assert call(CONFIG, "get", ctx, "Bad-Name") == Ok(None)
    assert call(CONFIG, "get-all", ctx) == Ok([("greeting", "hello"), ("token", "t0ken"), ("literal", "fixed-value")])
    assert call(CONFIG, "get-all", context(services, "other")) == Ok([])


# ---------------------------------------------------------------------------------------------------- key-value

KV = "fermyon:spin/key-value@2.0.0"


def test_spin_key_value_store_operations(services: SpinServices):
    ctx = context(services)
    store = rep_of(call(KV, "[static]store.open", ctx, "default"))
    assert call(KV, "[method]store.get", ctx, store, "k") == Ok(None)
    assert call(KV, "[method]store.set", ctx, store, "k", b"v") == Ok(None)
    assert call(KV, "[method]store.get", ctx, store, "k") == Ok(b"v")
    assert call(KV, "[method]store.exists", ctx, store, "k") == Ok(True)
    assert call(KV, "[method]store.get-keys", ctx, store) == Ok(["k"])
    assert call(KV, "[method]store.delete", ctx, store, "k") == Ok(None)
    assert call(KV, "[method]store.exists", ctx, store, "k") == Ok(False)


def test_spin_key_value_access_denied_and_no_such_store(services: SpinServices):
    assert call(KV, "[static]store.open", context(services), "cache") == Err(Variant("access-denied"))
    assert call(KV, "[static]store.open", context(services, "other"), "default") == Err(Variant("access-denied"))
    widened = dataclasses.replace(services, key_value_labels={"web": ("default", "ghost")})
    assert call(KV, "[static]store.open", context(widened), "ghost") == Err(Variant("no-such-store"))


def test_spin_key_value_store_table_full_until_a_handle_is_dropped(services: SpinServices):
    ctx = context(services)
    reps = [rep_of(call(KV, "[static]store.open", ctx, "default")) for _ in range(MAX_OPEN_STORES_PER_INSTANCE)]
    assert call(KV, "[static]store.open", ctx, "default") == Err(Variant("store-table-full"))
    spin_kv.STORE.on_drop(ctx, ctx.table.pop(reps[0]))  # what the linker's destructor does on resource.drop
    rep_of(call(KV, "[static]store.open", ctx, "default"))


def test_spin_key_value_handles_are_not_buckets(services: SpinServices):
    ctx = context(services)
    bucket = rep_of(call(WASI_STORE, "open", ctx, "default"))
    with pytest.raises(HostTrap):
        call(KV, "[method]store.get", ctx, bucket, "k")


# ---------------------------------------------------------------------------------------------------- wasi:keyvalue

WASI_STORE = "wasi:keyvalue/store@0.2.0-draft2"
ATOMICS = "wasi:keyvalue/atomics@0.2.0-draft2"
BATCH = "wasi:keyvalue/batch@0.2.0-draft2"


def test_wasi_keyvalue_shares_the_spin_store(services: SpinServices):
    ctx = context(services)
    spin_store = rep_of(call(KV, "[static]store.open", ctx, "default"))
    call(KV, "[method]store.set", ctx, spin_store, "shared", b"yes")
    bucket = rep_of(call(WASI_STORE, "open", ctx, "default"))
    assert call(WASI_STORE, "[method]bucket.get", ctx, bucket, "shared") == Ok(b"yes")
    assert call(WASI_STORE, "[method]bucket.set", ctx, bucket, "b", b"2") == Ok(None)
    assert call(WASI_STORE, "[method]bucket.exists", ctx, bucket, "b") == Ok(True)
    keys = call(WASI_STORE, "[method]bucket.list-keys", ctx, bucket, None)
    assert sorted(keys.value["keys"]) == ["b", "shared"] and keys.value["cursor"] is None
    assert call(WASI_STORE, "[method]bucket.list-keys", ctx, bucket, "c").value.tag == "other"
    assert call(WASI_STORE, "[method]bucket.delete", ctx, bucket, "b") == Ok(None)
    assert call(WASI_STORE, "open", context(services, "other"), "default") == Err(Variant("access-denied"))


def test_wasi_keyvalue_atomics(services: SpinServices):
    ctx = context(services)
    bucket = rep_of(call(WASI_STORE, "open", ctx, "default"))
    assert call(ATOMICS, "increment", ctx, bucket, "n", 2) == Ok(2)
    assert call(ATOMICS, "increment", ctx, bucket, "n", 3) == Ok(5)
    cas = rep_of(call(ATOMICS, "[static]cas.new", ctx, bucket, "n"))
    assert call(ATOMICS, "[method]cas.current", ctx, cas) == Ok(b"5")
    assert call(ATOMICS, "swap", ctx, cas, b"50") == Ok(None)
    assert cas not in ctx.table  # swap takes ownership of the cas
    stale = rep_of(call(ATOMICS, "[static]cas.new", ctx, bucket, "n"))
    call(WASI_STORE, "[method]bucket.set", ctx, bucket, "n", b"changed")
    failed = call(ATOMICS, "swap", ctx, stale, b"lost")
    assert isinstance(failed, Err) and failed.value.tag == "cas-failed"
    fresh = failed.value.payload.rep
    assert call(ATOMICS, "[method]cas.current", ctx, fresh) == Ok(b"changed")
    assert call(WASI_STORE, "[method]bucket.get", ctx, bucket, "n") == Ok(b"changed")


def test_wasi_keyvalue_batch(services: SpinServices):
    ctx = context(services)
    bucket = rep_of(call(WASI_STORE, "open", ctx, "default"))
    assert call(BATCH, "set-many", ctx, bucket, [("a", b"1"), ("b", b"2")]) == Ok(None)
    assert call(BATCH, "get-many", ctx, bucket, ["a", "x", "b"]) == Ok([("a", b"1"), ("x", None), ("b", b"2")])
    assert call(BATCH, "delete-many", ctx, bucket, ["a"]) == Ok(None)
    assert call(BATCH, "get-many", ctx, bucket, ["a"]) == Ok([("a", None)])


# ---------------------------------------------------------------------------------------------------- sqlite

SQLITE_V2 = "fermyon:spin/sqlite@2.0.0"
SQLITE_V3 = "spin:sqlite/sqlite@3.0.0"


def _rows(result: Ok[Any]) -> list[list[Any]]:
    assert isinstance(result, Ok), result
    return [[(v.tag, v.payload) for v in row["values"]] for row in result.value["rows"]]


@pytest.mark.parametrize("iface", [SQLITE_V2, SQLITE_V3])
def test_sqlite_open_follows_spins_access_rules(services: SpinServices, iface: str):
    assert isinstance(call(iface, "[static]connection.open", context(services), "default"), Ok)
    denied = call(iface, "[static]connection.open", context(services), "analytics")  # not in sqlite_databases
    assert denied == Err(Variant("access-denied", None))
    other = call(iface, "[static]connection.open", context(services, "other"), "default")
    assert other == Err(Variant("access-denied", None))
    assert call(iface, "[static]connection.open", context(None), "default").value.tag == "io"


def test_sqlite_execute_binds_and_returns_every_value_type(services: SpinServices):
    ctx = context(services)
    conn = rep_of(call(SQLITE_V3, "[static]connection.open", ctx, "default"))
    created = call(SQLITE_V3, "[method]connection.execute", ctx, conn,
                   "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n)", [])
    assert created == Ok({"columns": [], "rows": []})
    params = [Variant("integer", -(2**63)), Variant("real", 1.5), Variant("text", "héllo"),
              Variant("blob", b"\x00\xff"), Variant("null", None)]
    inserted = call(SQLITE_V3, "[method]connection.execute", ctx, conn,
                    "INSERT INTO t (i, r, s, b, n) VALUES (?, ?, ?, ?, ?)", params)
    assert inserted == Ok({"columns": [], "rows": []})
    assert call(SQLITE_V3, "[method]connection.last-insert-rowid", ctx, conn) == 1
    assert call(SQLITE_V3, "[method]connection.changes", ctx, conn) == 1
    selected = call(SQLITE_V3, "[method]connection.execute", ctx, conn,
                    "SELECT i, r, s, b, n FROM t WHERE s = ?1 AND i < ?2", [Variant("text", "héllo"),
                                                                            Variant("integer", 0)])
    assert selected.value["columns"] == ["i", "r", "s", "b", "n"]
    assert _rows(selected) == [[("integer", -(2**63)), ("real", 1.5), ("text", "héllo"), ("blob", b"\x00\xff"),
                                ("null", None)]]


def test_sqlite_errors_are_io_with_sqlites_message(services: SpinServices):
    ctx = context(services)
    conn = rep_of(call(SQLITE_V2, "[static]connection.open", ctx, "default"))
    syntax = call(SQLITE_V2, "[method]connection.execute", ctx, conn, "SELEC 1", [])
    assert isinstance(syntax, Err) and syntax.value.tag == "io" and "syntax error" in syntax.value.payload
    several = call(SQLITE_V2, "[method]connection.execute", ctx, conn, "SELECT 1; SELECT 2", [])
    assert several.value.tag == "io" and "one statement" in several.value.payload
    arity = call(SQLITE_V2, "[method]connection.execute", ctx, conn, "SELECT ?", [])
    assert arity.value.tag == "io" and "bindings" in arity.value.payload


def test_a_transaction_left_open_is_rolled_back_when_the_request_ends(services: SpinServices):
    first = context(services)
    conn = rep_of(call(SQLITE_V2, "[static]connection.open", first, "default"))
    for statement in ("CREATE TABLE IF NOT EXISTS notes (body TEXT)", "BEGIN", "INSERT INTO notes VALUES ('lost')"):
        assert isinstance(call(SQLITE_V2, "[method]connection.execute", first, conn, statement, []), Ok)
    for cleanup in first.cleanups:  # what the executor runs at the end of every request
        cleanup()
    second = context(services)
    again = rep_of(call(SQLITE_V2, "[static]connection.open", second, "default"))
    # Not locked by the first request's transaction, and its row is gone.
    assert _rows(call(SQLITE_V2, "[method]connection.execute", second, again, "SELECT count(*) FROM notes", [])) \
        == [[("integer", 0)]]
    assert isinstance(call(SQLITE_V2, "[method]connection.execute", second, again,
                           "INSERT INTO notes VALUES ('kept')", []), Ok)


def test_sqlite_connections_per_request_are_bounded(services: SpinServices):
    from runtime.spin.sqlite import MAX_OPEN_CONNECTIONS_PER_INSTANCE

    ctx = context(services)
    for _ in range(MAX_OPEN_CONNECTIONS_PER_INSTANCE):
        assert isinstance(call(SQLITE_V2, "[static]connection.open", ctx, "default"), Ok)
    assert call(SQLITE_V2, "[static]connection.open", ctx, "default") == Err(
        Variant("io", "too many connections opened"))
    for cleanup in ctx.cleanups:
        cleanup()


# ---------------------------------------------------------------------------------------------------- real WIT types


def _toolchain(name: str) -> Path:
    return Path(os.environ.get("SPIN_SHIM_CACHE", "/var/cache/containerd-shim-spin-test")) / "toolchains" / name


@pytest.fixture(scope="module")
def sdk_imports(tmp_path_factory: pytest.TempPathFactory) -> tuple[wasmtime.Engine, Component]:
    """A component importing exactly what the Spin Python SDK 3.4.1's spin-http world imports (a dummy core)."""
    tools_file = _toolchain("wasm-tools") / "WASM_TOOLS"
    wit_dirs = glob.glob(str(_toolchain("spin-py") / "lib" / "python3*" / "site-packages" / "spin_sdk" / "wit"))
    if not tools_file.is_file() or not wit_dirs:
        pytest.skip("needs the app toolchains (scripts/install_app_toolchains.sh)")
    wasm_tools = tools_file.read_text().strip()
    out = tmp_path_factory.mktemp("sdk")
    subprocess.run([wasm_tools, "component", "embed", "--dummy", wit_dirs[0], "--world", "spin-http",
                    "-o", out / "core.wasm"], check=True)
    subprocess.run([wasm_tools, "component", "new", out / "core.wasm", "-o", out / "dummy.wasm"], check=True)
    engine = wasmtime.Engine()
    return engine, Component.from_file(engine, str(out / "dummy.wasm"))


def _func_types(engine: wasmtime.Engine, component: Component, import_name: str) -> dict[str, FuncType]:
    exports = component.type.imports(engine)[import_name].ty.exports(engine)
    return {name: item.ty for name, item in exports.items() if isinstance(item.ty, FuncType)}


def _lowers(engine: wasmtime.Engine, func_type: FuncType, value: Any) -> None:
    """Lower ``value`` into the function's real result type, as the linker's callback does; raises if it won't."""
    marshal.install_tagged_lowering()
    lower = adapt.lowerer(func_type.result)
    raw = ffi.wasmtime_component_val_t()
    func_type.result.convert_to_c(wasmtime.Store(engine), lower(value) if lower else value, ctypes.pointer(raw))


def test_every_spin_import_of_the_sdk_is_served(sdk_imports):
    engine, component = sdk_imports
    plan = plan_imports(component, engine)
    assert not [m for m in plan.missing if m.split("#")[0] in SPIN_IMPORTS]
    assert {p.import_name for p in plan.interfaces} >= set(SPIN_IMPORTS)


def test_mqtt_is_served_and_its_errors_fit_the_real_types(sdk_imports, services: SpinServices):
    """fermyon:spin/mqtt is no longer denied: open is runtime.spin.bindings.mqtt's, and its error values (a
    message-carrying case and a bare one) lower into the SDK's real result type."""
    from runtime.spin.bindings import mqtt

    engine, component = sdk_imports
    func_type = _func_types(engine, component, "fermyon:spin/mqtt@2.0.0")["[static]connection.open"]
    impl = REGISTRY.find("fermyon:spin/mqtt@2.0.0").function_for_link("[static]connection.open", func_type)
    assert impl is mqtt.open_connection
    denied = impl(context(services), "mqtt://mqtt.test:1883?client_id=a", "user", "pw", 30)
    assert denied == Err(Variant("connection-failed", "address mqtt://mqtt.test:1883?client_id=a is not permitted"))
    _lowers(engine, func_type, denied)
    _lowers(engine, func_type, Err(Variant("invalid-address", None)))


def test_denied_llm_calls_return_runtime_error(sdk_imports):
    engine, component = sdk_imports
    for name, func_type in _func_types(engine, component, "fermyon:spin/llm@2.0.0").items():
        result = REGISTRY.find("fermyon:spin/llm@2.0.0").function_for_link(name, func_type)(context(None), "m", "p")
        assert result.value.tag == "runtime-error" and "fermyon:spin/llm" in result.value.payload
        _lowers(engine, func_type, result)


def test_denied_functions_without_an_error_result_trap(sdk_imports):
    """No denied function of SDK 3.4.1 lacks an error result; a future one would get the trap. The deny stub
    factory is given a real such type (sqlite's last-insert-rowid, s64) to show it."""
    engine, component = sdk_imports
    func_type = _func_types(engine, component, "spin:sqlite/sqlite@3.0.0")["[method]connection.last-insert-rowid"]
    impl = deny.deny_stub("spin:example/denied")("[method]connection.last-insert-rowid", func_type)
    assert impl is not None
    with pytest.raises(HostTrap, match="not provided by this shim"):
        impl(context(None), 1)


def test_provider_results_fit_the_real_types(sdk_imports, services: SpinServices):
    engine, component = sdk_imports
    ctx = context(services)
    kv = _func_types(engine, component, KV)
    _lowers(engine, kv["[static]store.open"], call(KV, "[static]store.open", ctx, "default"))
    _lowers(engine, kv["[static]store.open"], call(KV, "[static]store.open", ctx, "cache"))
    for value in (Ok(None), Ok(b"x"), Err(Variant("no-such-store")), Err(Variant("other", "sqlite said no"))):
        _lowers(engine, kv["[method]store.get"], value)
    _lowers(engine, kv["[method]store.get-keys"], Ok(["a", "b"]))
    variables = _func_types(engine, component, VARIABLES)["get"]
    _lowers(engine, variables, call(VARIABLES, "get", ctx, "greeting"))
    _lowers(engine, variables, call(VARIABLES, "get", ctx, "nope"))
    config = _func_types(engine, component, CONFIG)
    _lowers(engine, config["get"], call(CONFIG, "get", ctx, "nope"))
    _lowers(engine, config["get"], call(CONFIG, "get", ctx, "greeting"))
    _lowers(engine, config["get-all"], call(CONFIG, "get-all", ctx))
    wasi_store = _func_types(engine, component, WASI_STORE)
    bucket = call(WASI_STORE, "open", ctx, "default")
    _lowers(engine, wasi_store["open"], bucket)
    _lowers(engine, wasi_store["[method]bucket.list-keys"],
            call(WASI_STORE, "[method]bucket.list-keys", ctx, bucket.value.rep, None))
    atomics = _func_types(engine, component, ATOMICS)
    cas = call(ATOMICS, "[static]cas.new", ctx, bucket.value.rep, "k")
    call(WASI_STORE, "[method]bucket.set", ctx, bucket.value.rep, "k", b"moved")
    _lowers(engine, atomics["swap"], call(ATOMICS, "swap", ctx, cas.value.rep, b"v"))
    _lowers(engine, atomics["swap"], Err(Variant("store-error", Variant("other", "x"))))
    batch = _func_types(engine, component, BATCH)
    _lowers(engine, batch["get-many"], call(BATCH, "get-many", ctx, bucket.value.rep, ["k", "missing"]))
    for iface in (SQLITE_V2, SQLITE_V3):
        sqlite = _func_types(engine, component, iface)
        conn = call(iface, "[static]connection.open", ctx, "default")
        _lowers(engine, sqlite["[static]connection.open"], conn)
        _lowers(engine, sqlite["[static]connection.open"], call(iface, "[static]connection.open", ctx, "nope"))
        _lowers(engine, sqlite["[method]connection.execute"], call(
            iface, "[method]connection.execute", ctx, conn.value.rep, "SELECT 1, 2.5, 'x', x'00', NULL AS n", []))
        _lowers(engine, sqlite["[method]connection.execute"], call(
            iface, "[method]connection.execute", ctx, conn.value.rep, "nonsense", []))
    v3 = _func_types(engine, component, SQLITE_V3)
    conn = call(SQLITE_V3, "[static]connection.open", ctx, "default")
    _lowers(engine, v3["[method]connection.last-insert-rowid"],
            call(SQLITE_V3, "[method]connection.last-insert-rowid", ctx, conn.value.rep))
    _lowers(engine, v3["[method]connection.changes"],
            call(SQLITE_V3, "[method]connection.changes", ctx, conn.value.rep))


def test_deny_picks_cases_from_the_type_alone():
    assert deny.DENIAL_CASES[0] == "access-denied"
    assert deny.denial_error(None, "m") is None


# ---------------------------------------------------------------------------------------------------- the real app


@pytest.fixture(scope="module")
def py_spin_app(tmp_path_factory: pytest.TempPathFactory):
    """py-spin (Spin Python SDK 3.4.1) served by ComponentExecutor with its app's SpinServices; no HTTP."""
    from runtime.engine import shared_engine
    from runtime.host.executor import ComponentExecutor
    from runtime.manifest import load_manifest
    from tests.unit.test_host_marshal import BUILD_DIR, app_wasm, load_component

    app_wasm("py-spin")  # builds the test apps (or skips) when they are not there yet
    work_dir = tmp_path_factory.mktemp("py-spin-work")
    manifest = load_manifest(BUILD_DIR / "py-spin" / "spin.toml")
    services = SpinServices.build(manifest, {"SPIN_VARIABLE_API_TOKEN": "s3cret", "GREETING": "hi from env"},
                                  work_dir=work_dir)
    config = ComponentConfig(id="py-spin", wasm_path=app_wasm("py-spin"), executor="component",
                             environment={}, services=services)
    return ComponentExecutor(config, load_component("py-spin"), shared_engine()), work_dir


def test_py_spin_reads_variables_from_env_defaults_and_literals(py_spin_app):
    from tests.unit.test_host_executor import serve

    executor, _ = py_spin_app
    sink = serve(executor, "/vars?names=greeting,token,literal,undeclared,Bad-Name")
    assert sink.status == 200, sink.body
    values = json.loads(sink.body)
    assert values["greeting"] == "hi from env" and values["token"] == "s3cret" and values["literal"] == "fixed-value"
    assert values["undeclared"].startswith("ERROR: Error_Undefined(")
    assert values["Bad-Name"].startswith("ERROR: Error_InvalidName(")


def test_py_spin_key_value_round_trip_in_the_work_dir(py_spin_app):
    from tests.unit.test_host_executor import serve

    executor, work_dir = py_spin_app
    assert serve(executor, "/kv/colour", "PUT", b"green").status == 200
    assert serve(executor, "/kv/colour").body == b"green"
    first = int(serve(executor, "/counter").body)
    assert int(serve(executor, "/counter").body) == first + 1
    assert serve(executor, "/kv/colour", "DELETE").status == 200
    assert serve(executor, "/kv/colour").status == 404
    assert (work_dir / ".spin" / "sqlite_key_value.db").is_file()


def test_py_spin_key_value_request_cost(py_spin_app):
    """Report what a store open + get + set adds to a request (the SDK's /counter) over a plain /hello."""
    from tests.unit.test_host_executor import serve

    executor, _ = py_spin_app

    def per_request(target: str, rounds: int = 30) -> float:
        serve(executor, target)
        started = time.perf_counter()
        for _ in range(rounds):
            assert serve(executor, target).status == 200
        return (time.perf_counter() - started) / rounds

    hello, counter = per_request("/hello"), per_request("/counter")
    print(f"py-spin /hello {hello * 1e3:.2f} ms, /counter (open+get+set) {counter * 1e3:.2f} ms")
    assert counter < hello + 0.05


def test_py_spin_sqlite_through_both_interface_versions(py_spin_app):
    from tests.unit.test_host_executor import serve

    executor, work_dir = py_spin_app
    statements = [["CREATE TABLE IF NOT EXISTS pets (id INTEGER PRIMARY KEY, name TEXT, age REAL, photo BLOB, x)", []],
                  ["INSERT INTO pets (name, age, photo, x) VALUES (?, ?, ?, ?)", ["Rex", 3.5, {"blob": "00ff"}, None]],
                  ["SELECT name, age, photo, x FROM pets WHERE name = ?", ["Rex"]]]
    sink = serve(executor, "/sqlite", "POST", json.dumps(statements).encode())
    assert sink.status == 200, sink.body
    created, inserted, selected = json.loads(sink.body)
    assert (inserted["last_insert_rowid"], inserted["changes"]) == (1, 1)
    assert selected["columns"] == ["name", "age", "photo", "x"]
    assert selected["rows"] == [["Rex", 3.5, {"blob": "00ff"}, None]]
    v2 = serve(executor, "/sqlite?v=2", "POST", json.dumps([["SELECT count(*) AS n FROM pets", []]]).encode())
    assert json.loads(v2.body) == [{"columns": ["n"], "rows": [[1]]}]
    assert (work_dir / ".spin" / "sqlite_db.db").is_file()
    denied = serve(executor, "/sqlite?db=analytics", "POST", b"[]")
    assert (denied.status, denied.body) == (500, b"ERROR: Error_AccessDenied()")
    bad = serve(executor, "/sqlite", "POST", json.dumps([["SELEC 1", []]]).encode())
    assert bad.status == 500 and bad.body.startswith(b"ERROR: Error_Io(value='near \"SELEC\": syntax error")
