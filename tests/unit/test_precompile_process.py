"""The compile of a cache miss runs in a short-lived child (runtime.compile_process), and a component is checked
for its trigger's export before any compile (runtime.wasm_binary's ExportRequirement over runtime.wasip3's scan).

The real compiles here are of the small test guests (scripts/build_guests.py); the memory figures of real apps are
the e2e test's (tests/e2e/test_precompile_memory.py) and scripts/bench_cold_warm.py's.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest
import wasmtime

from runtime import compile_process
from runtime.byte_settings import parse_bytes
from runtime.compile_process import (
    COMPILE_MEMORY_ENV,
    DEFAULT_COMPILE_MEMORY_MAX,
    child_outcome,
    compile_memory_max,
)
from runtime.engine import shared_engine
from runtime.errors import WasmLoadError
from runtime.loader import load_app
from runtime.precompile import PrecompileCache
from runtime.settings import RuntimeSettings
from runtime.wasip3 import scan_bytes
from runtime.wasm_binary import (
    HTTP_HANDLER_EXPORT,
    MQTT_HANDLER_EXPORT,
    REDIS_HANDLER_EXPORT,
    WASI_COMMAND_EXPORT,
    WasmKind,
)
from tests.unit.guest_fixtures import build_dir, compiles  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    """Pids of the compile processes started during the test."""
    seen: list[int] = []
    original = os.fork

    def counting() -> int:
        pid = original()
        if pid:
            seen.append(pid)
        return pid

    monkeypatch.setattr(compile_process.os, "fork", counting)
    return seen


def _component(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def _exporting(*names: str) -> bytes:
    """A component that re-exports one imported instance under each of ``names``."""
    exports = " ".join(f'(export "{name}" (instance $x))' for name in names)
    return _component(f'(component (import "example:x/x" (instance $x)) {exports})')


def reaped(pids: list[int]) -> bool:
    """Every compile process of the test was reaped: none is running or a zombie. (Only these pids: a full run's
    session fixtures keep other children of this process, real servers, alive.)"""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return bool(pids)


# ---------------------------------------------------------------------------------------------- the compile process


def test_a_miss_compiles_in_a_child_that_is_reaped_and_loads_the_stored_blob(build_dir, tmp_path, forks):
    settings = RuntimeSettings(cache_dir=tmp_path)
    app = load_app(build_dir, ["/hello-component.wasm"], {}, settings)
    cache = app.loads[0].cache
    assert cache.outcome == "compiled" and cache.blob_path is not None and cache.blob_path.is_file()
    assert len(forks) == 1
    assert reaped(forks)
    assert not list(tmp_path.glob("precompiled/.compiling-*"))  # the child's output file was unlinked from the start
    assert app.run() == 0  # the object came from the stored blob, as on a warm start
    warm = load_app(build_dir, ["/hello-component.wasm"], {}, settings)
    assert warm.loads[0].cache.outcome == "hit" and len(forks) == 1


def test_a_core_module_compiles_in_a_child_too(build_dir, tmp_path, forks):
    app = load_app(build_dir, ["/hello.wasm"], {}, RuntimeSettings(cache_dir=tmp_path))
    assert app.loads[0].cache.outcome == "compiled" and len(forks) == 1
    assert app.run() == 0


def test_invalid_wasm_is_reported_from_the_child_in_wasmtimes_words(build_dir, tmp_path, forks):
    with pytest.raises(WasmLoadError, match=r"^corrupt\.wasm: invalid WebAssembly module: "):
        load_app(build_dir, ["/corrupt.wasm"], {}, RuntimeSettings(cache_dir=tmp_path))
    assert not list(tmp_path.glob("precompiled/*/*/*.cwasm"))
    assert reaped(forks)


def test_a_compile_over_the_memory_cap_fails_clearly_and_stores_nothing(build_dir, tmp_path, monkeypatch, forks):
    """A cap below what this process already holds makes the child's first big allocation fail."""
    used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    monkeypatch.setattr(compile_process, "MIN_COMPILE_MEMORY_MAX", 1 << 20)
    monkeypatch.setenv(COMPILE_MEMORY_ENV, str(max(2 << 20, used // 8)))
    cache = PrecompileCache(tmp_path, shared_engine())
    with pytest.raises(WasmLoadError) as info:
        cache.load(build_dir / "hello-component.wasm", WasmKind.COMPONENT, name="c")
    # Where the cap bites decides whether wasmtime reports ENOMEM or Rust aborts; both say what happened.
    assert str(info.value).startswith(("c: its compile ran out of memory: it needs more than the compile memory cap",
                                       "c: its compile stopped with SIGABRT")), info.value
    assert f"({COMPILE_MEMORY_ENV})" in str(info.value) and "nothing was cached" in str(info.value)
    assert not list(tmp_path.glob("precompiled/*/*/*.cwasm"))
    assert reaped(forks)


def test_no_writable_cache_compiles_in_process(build_dir, tmp_path, forks):
    cache_dir = tmp_path / "cache"
    cache_dir.write_text("not a directory")  # neither precompiled/ nor the cache dir can hold the output file
    app = load_app(build_dir, ["/hello-component.wasm"], {}, RuntimeSettings(cache_dir=cache_dir))
    assert app.loads[0].cache.outcome == "compiled" and app.loads[0].cache.blob_path is None
    assert forks == []
    assert app.run() == 0


def test_after_an_in_process_compile_the_child_compiles_serially_and_is_never_stuck(build_dir, tmp_path):
    """wasmtime's rayon pool, once this process has one, does not survive fork: a parallel compile in the child
    would wait for its threads forever. The blob a serial compile makes loads in the parallel Engine."""
    wasmtime.Module(shared_engine(), (build_dir / "hello.wasm").read_bytes())  # this process now has the pool
    assert not compile_process.parallel_compile_is_safe()
    signal.alarm(60)  # a stuck child would hang the suite: fail it instead
    try:
        app = load_app(build_dir, ["/hello-component.wasm"], {}, RuntimeSettings(cache_dir=tmp_path))
    finally:
        signal.alarm(0)
    assert app.loads[0].cache.outcome == "compiled" and app.run() == 0


@pytest.mark.parametrize(("status", "report", "expected"), [
    (0, b"ok", None),
    (1 << 8, b"error:invalid WebAssembly component: bad", "invalid WebAssembly component: bad"),
    (signal.SIGKILL, b"", "its compile was killed by SIGKILL after 2.0 s, most likely for memory"),
    (signal.SIGABRT, b"", "its compile stopped with SIGABRT after 2.0 s: wasmtime aborts so when the compile needs "
                          "more memory than the compile memory cap of 2048 MiB (SPIN_SHIM_COMPILE_MEMORY_MAX)"),
    (0, b"", "its compile process failed (exit status 0); nothing was cached"),  # success without its report
    (7 << 8, b"garbage", "its compile process failed (exit status 7: garbage)"),
])
def test_every_end_of_the_child_has_one_message(status, report, expected):
    problem = child_outcome(status, report, seconds=2.0, memory_max=DEFAULT_COMPILE_MEMORY_MAX,
                            kind=WasmKind.COMPONENT)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected), problem


@pytest.mark.parametrize(("text", "expected"), [
    ("2147483648", 2147483648), ("512Mi", 512 << 20), ("2G", 2 * 1000**3), ("1gi", 1 << 30), (" 300 Mi ", 300 << 20),
    ("-1", None), ("lots", None), ("1.5Gi", None), ("", None),
])
def test_byte_counts_are_read_as_kubernetes_quantities(text, expected):
    assert parse_bytes(text) == expected


def test_the_cap_defaults_when_unset_invalid_or_too_small():
    assert compile_memory_max({}) == DEFAULT_COMPILE_MEMORY_MAX
    assert compile_memory_max({COMPILE_MEMORY_ENV: "1Gi"}) == 1 << 30
    assert compile_memory_max({COMPILE_MEMORY_ENV: "a lot"}) == DEFAULT_COMPILE_MEMORY_MAX
    assert compile_memory_max({COMPILE_MEMORY_ENV: "1Mi"}) == DEFAULT_COMPILE_MEMORY_MAX


# ---------------------------------------------------------------------------------------------- exports before compile


def test_the_scan_lists_every_top_level_export():
    evidence = scan_bytes(_exporting("wasi:http/incoming-handler@0.2.3", "example:y/y"))
    assert evidence.exports == ["wasi:http/incoming-handler@0.2.3", "example:y/y"]
    assert evidence.exports_complete
    nothing = scan_bytes(_component("(component)"))
    assert nothing.exports == [] and nothing.exports_complete


def test_a_truncated_component_leaves_its_exports_unjudged():
    wasm = _exporting("wasi:cli/run@0.2.0")
    assert not scan_bytes(wasm[:-3]).exports_complete
    assert not scan_bytes(wasm + b"\x0b\x40").exports_complete  # a section that runs past the end of the file


def test_the_export_requirements_match_the_executors_rules():
    assert not HTTP_HANDLER_EXPORT.missing(["wasi:http/incoming-handler@0.2.0"])
    assert not HTTP_HANDLER_EXPORT.missing(["x", "wasi:http/incoming-handler@0.2.10"])
    assert HTTP_HANDLER_EXPORT.missing(["wasi:http/handler@0.3.0", "wasi:http/incoming-handler@0.2"])
    assert not WASI_COMMAND_EXPORT.missing(["wasi:cli/run@0.2.6"])
    assert WASI_COMMAND_EXPORT.missing(["wasi:cli/run@0.3.0"])
    assert not REDIS_HANDLER_EXPORT.missing(["fermyon:spin/inbound-redis"])
    assert REDIS_HANDLER_EXPORT.missing(["spin:redis/inbound-redis@3.0.0"])
    assert not MQTT_HANDLER_EXPORT.missing(["spin:mqtt-trigger/spin-mqtt-types", "handle-message"])
    assert MQTT_HANDLER_EXPORT.missing(["handle-message-async"])


def test_the_built_trigger_apps_pass_their_own_export_check():
    """The real SDK builds (scripts/build_http_apps.py), read by the scan: each has what its trigger calls."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from build_http_apps import ToolchainMissing, build

    try:
        built = build()
    except ToolchainMissing as exc:
        pytest.skip(str(exc))
    import json

    from runtime.wasip3 import scan_file

    apps = {name: built / entry["dir"] for name, entry in json.loads((built / "index.json").read_text())["apps"].items()}
    for app, requirement in (("js-echo", HTTP_HANDLER_EXPORT), ("py-spin", HTTP_HANDLER_EXPORT),
                             ("py-redis", REDIS_HANDLER_EXPORT), ("py-mqtt", MQTT_HANDLER_EXPORT)):
        evidence = scan_file(apps[app] / "app.wasm")
        assert evidence.exports_complete, app
        assert not requirement.missing(evidence.exports), (app, evidence.exports)


def test_a_missing_export_names_what_the_component_exports():
    with pytest.raises(WasmLoadError) as info:
        HTTP_HANDLER_EXPORT.check([f"example:n/i{i}" for i in range(10)], "component 'x' (x.wasm)")
    assert str(info.value).startswith(
        "component 'x' (x.wasm): not an HTTP component: it exports `example:n/i0`, `example:n/i1`, `example:n/i2`, "
        "`example:n/i3`, `example:n/i4`, `example:n/i5`, `example:n/i6`, `example:n/i7`, ... (10 names), not "
        "wasi:http/incoming-handler@0.2.x (")
    with pytest.raises(WasmLoadError, match="it exports nothing, not wasi:cli/run@0.2.x"):
        WASI_COMMAND_EXPORT.check([], "app.wasm")


def test_an_http_trigger_on_a_command_component_fails_before_its_compile(build_dir, tmp_path, compiles):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "hello.wasm").write_bytes((build_dir / "hello-component.wasm").read_bytes())
    (app_dir / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "wrong"\n'
        '[[trigger.http]]\nroute = "/..."\ncomponent = "hello"\n[component.hello]\nsource = "hello.wasm"\n')
    with pytest.raises(WasmLoadError, match=r"^component 'hello' \(hello\.wasm\): not an HTTP component: it exports "
                                            r"`wasi:cli/run@0\.2\.\d+`, not wasi:http/incoming-handler@0\.2\.x"):
        load_app(app_dir, ["/"], {}, RuntimeSettings(cache_dir=tmp_path / "cache"))
    assert compiles == []


def test_a_bare_http_component_fails_as_a_command_before_its_compile(tmp_path, compiles):
    (tmp_path / "app.wasm").write_bytes(_exporting("wasi:http/incoming-handler@0.2.0"))
    with pytest.raises(WasmLoadError, match=r"^app\.wasm: not a WASI command component: it exports "
                                            r"`wasi:http/incoming-handler@0\.2\.0`, not wasi:cli/run@0\.2\.x"):
        load_app(tmp_path, ["/app.wasm"], {}, RuntimeSettings(cache_dir=tmp_path / "cache"))
    assert compiles == []


def test_a_warm_start_does_not_scan_the_exports(build_dir, tmp_path, monkeypatch):
    settings = RuntimeSettings(cache_dir=tmp_path)
    load_app(build_dir, ["/hello-component.wasm"], {}, settings)
    from runtime import wasip3

    def no_scan(*_args: object) -> None:
        raise AssertionError("scanned on a warm start")

    monkeypatch.setattr(wasip3, "scan_file", no_scan)
    assert load_app(build_dir, ["/hello-component.wasm"], {}, settings).loads[0].cache.outcome == "hit"
