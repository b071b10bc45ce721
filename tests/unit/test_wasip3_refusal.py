"""A WASIp3 component is refused at load, before its compile, from its own imports, exports and types.

Real components: the test apps built from the public SDKs (spin-sdk 5.0.0 for its default p3 world and for its
p2 world, spin-sdk 3.4.1, componentize-py's proxy world, StarlingMonkey). Minimal ones: component text through
wasmtime's own `wat2wasm`, for each kind of evidence alone, and hand-made bytes for malformed input.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import wasmtime

from runtime.errors import WasmLoadError
from runtime.loader import load_app
from runtime.settings import RuntimeSettings
from runtime.wasip3 import MAX_DEPTH, refuse_wasip3, scan_bytes, scan_file

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "tests" / "apps" / "build"

P3_HTTP = '(component (import "wasi:http/handler@0.3.0" (instance (export "handle" (func async)))))'
P2_COMMAND = ('(component (import "wasi:cli/environment@0.2.6" (instance (export "get-environment" '
              '(func (result (list (tuple string string))))))))')


def _built_app(name: str) -> Path:
    """A test app's directory, building the apps (from the cache when possible) when it is not there."""
    index = BUILD_DIR / "index.json"
    apps = json.loads(index.read_text())["apps"] if index.exists() else {}
    if name not in apps:
        sys.path.insert(0, str(REPO / "scripts"))
        try:
            from build_http_apps import ToolchainMissing, build

            try:
                build()
            except ToolchainMissing as exc:
                pytest.skip(f"test apps not built and no toolchain: {exc}")
        finally:
            sys.path.remove(str(REPO / "scripts"))
    return BUILD_DIR / name


def _component(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


# ---------------------------------------------------------------------------------------------- real components


def test_spin_sdk5_default_build_is_wasip3_by_names_and_types():
    evidence = scan_file(_built_app("py-spin5-p3") / "app.wasm")
    assert evidence.p3_exports == ["wasi:http/handler@0.3.0"]
    assert "wasi:http/types@0.3.0" in evidence.p3_imports
    assert "wasi:http/client@0.3.0-rc-2026-03-15" in evidence.p3_imports
    assert not [name for name in evidence.p3_imports if "@0.2" in name]
    assert evidence.async_functions > 0 and evidence.stream_future_types > 0
    assert evidence.types_complete


@pytest.mark.parametrize("app", ["py-spin5", "py-spin", "py-proxy", "js-echo"])
def test_real_wasip2_components_show_no_evidence_and_are_read_to_the_end(app):
    evidence = scan_file(_built_app(app) / "app.wasm")
    assert not evidence, evidence
    assert evidence.types_complete  # the whole type scan ran: the absence of evidence means something


def test_the_p3_app_is_refused_by_load_app_quickly_and_uncompiled(tmp_path: Path):
    cache = tmp_path / "cache"
    started = time.perf_counter()
    with pytest.raises(WasmLoadError) as info:
        load_app(_built_app("py-spin5-p3"), ["/"], {}, RuntimeSettings(cache_dir=cache))
    seconds = time.perf_counter() - started
    message = str(info.value)
    assert message.startswith("component 'py-spin5-p3' (app.wasm): is a WASIp3"), message
    assert "exports wasi:http/handler@0.3.0" in message
    assert "imports 46 WASIp3 interface(s)" in message
    assert "This shim runs WASIp2 components only" in message
    assert "`componentize-py -w spin:up/http-trigger@3.4.0 componentize app -o app.wasm`" in message
    assert "other language" in message
    assert not _compiled_entries(cache), "compiled before it was refused"
    assert seconds < 2.0, f"refusal took {seconds:.2f} s (a compile takes ~13 s)"


# ---------------------------------------------------------------------------------------------- minimal components


@pytest.mark.parametrize("text, field, expected", [
    (P3_HTTP, "p3_imports", ["wasi:http/handler@0.3.0"]),
    ('(component (instance $i) (export "wasi:http/handler@0.3.0" (instance $i)))', "p3_exports",
     ["wasi:http/handler@0.3.0"]),
    ('(component (import "wasi:cli/environment@0.3.0-rc-2026-03-15" (instance)))', "p3_imports",
     ["wasi:cli/environment@0.3.0-rc-2026-03-15"]),
    ('(component (import "wasi:clocks/types@0.3" (instance)))', "p3_imports", ["wasi:clocks/types@0.3"]),
    ('(component (import "f" (func async (param "x" u32))))', "async_functions", 1),
    ('(component (import "spin:key-value/key-value@3.0.0" (instance (export "get" '
     '(func async (param "k" string) (result (option (list u8))))))))', "async_functions", 1),
    ('(component (type $s (stream u8)) (import "f" (func (param "x" $s))))', "stream_future_types", 1),
    ('(component (type $f (future)) (import "i" (instance (export "f" (func (result $f))))))',
     "stream_future_types", 1),
    ('(component (component (import "f" (func async))))', "async_functions", 1),  # in a nested component
])
def test_each_kind_of_evidence_alone_is_enough(text, field, expected):
    evidence = scan_bytes(_component(text))
    assert getattr(evidence, field) == expected
    assert evidence and evidence.types_complete


@pytest.mark.parametrize("text", [
    P2_COMMAND,
    '(component (import "wasi:http/incoming-handler@0.2.0" (instance)))',
    '(component (import "wasi:http/types@0.2.9" (instance)))',
    '(component (import "fermyon:spin/key-value@2.0.0" (instance)))',
    '(component (import "wasi:keyvalue/store@0.2.0-draft2" (instance)))',
    '(component (import "wasi:config/store@0.2.0-draft-2024-09-27" (instance)))',
    '(component (import "example:thing/iface@0.3.0" (instance)))',  # 0.3 of a non-wasi package: not WASIp3
    '(component (import "wasi:cli/environment@0.30.0" (instance)))',
    '(component (type (resource (rep i32))) (type (variant (case "a" u8) (case "b"))) (type (enum "x" "y")) '
    '(type (flags "f")) (type (record (field "a" u32))) (type (result u32 (error string))) '
    '(type (tuple u8 s64)) (type (list char)) (type (option f64)))',
])
def test_wasip2_shapes_show_no_evidence(text):
    evidence = scan_bytes(_component(text))
    assert not evidence, evidence
    assert evidence.types_complete


def test_core_modules_and_non_wasm_show_no_evidence():
    assert not scan_bytes(bytes(wasmtime.wat2wasm("(module)")))
    assert not scan_bytes(b"")
    assert not scan_bytes(b"(component)")
    assert not scan_bytes(b"\0asm\x0d\x00\x01\x00\x07\xff")  # a type section whose size runs past the file


def test_every_truncation_of_a_p3_component_is_read_without_an_exception():
    wasm = _component(P3_HTTP)
    for cut in range(len(wasm)):
        scan_bytes(wasm[:cut])  # never raises; evidence only when the import section is whole
    assert scan_bytes(wasm)


def test_a_vector_count_larger_than_its_section_stops_the_scan():
    header = b"\0asm\x0d\x00\x01\x00"
    section = b"\xff\xff\xff\xff\x0f"  # 2**32-1 types in a 5-byte section
    evidence = scan_bytes(header + b"\x07" + bytes([len(section)]) + section)
    assert not evidence and not evidence.types_complete


def _nested(levels: int) -> bytes:
    """A component whose async function type sits `levels` components deep, under a p3 import name."""
    inner = _component('(component (import "f" (func async)))')
    for _ in range(levels - 1):
        inner = b"\0asm\x0d\x00\x01\x00" + b"\x04" + _leb(len(inner)) + inner
    named = _component('(component (import "wasi:cli/exit@0.3.0" (instance)))')
    return named + b"\x04" + _leb(len(inner)) + inner


def test_nested_components_are_scanned_to_the_depth_limit():
    evidence = scan_bytes(_nested(MAX_DEPTH))
    assert evidence.async_functions == 1 and evidence.types_complete


def test_nesting_past_the_limit_stops_the_scan_but_keeps_the_names():
    evidence = scan_bytes(_nested(MAX_DEPTH + 1))
    assert evidence.p3_imports == ["wasi:cli/exit@0.3.0"]
    assert evidence.async_functions == 0 and not evidence.types_complete


def test_an_unreadable_section_does_not_hide_the_names_after_it():
    header = b"\0asm\x0d\x00\x01\x00"
    unknown_type = b"\x07\x02\x01\x5a"  # one type of a form no draft has (0x5a)
    names = _component('(component (import "wasi:cli/exit@0.3.0" (instance)))')[8:]
    evidence = scan_bytes(header + unknown_type + names)
    assert evidence.p3_imports == ["wasi:cli/exit@0.3.0"] and not evidence.types_complete


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# ---------------------------------------------------------------------------------------------- where it is called


def _compiled_entries(cache: Path) -> list[Path]:
    """runtime.precompile's blobs (<fingerprint>/<sha256>/); beside them locks/ (the compile locks, taken first),
    verified/ and wasm-digests/ (runtime.verified_blobs' markers: the wasm was hashed, not compiled)."""
    return [path for path in cache.glob("precompiled/*/*")
            if path.parent.name not in ("locks", "verified", "wasm-digests")]


def test_a_bare_p3_wasm_is_refused_before_its_compile(tmp_path: Path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "app.wasm").write_bytes(_component('(component (import "wasi:cli/run@0.3.0" (instance)))'))
    cache = tmp_path / "cache"
    with pytest.raises(WasmLoadError) as info:
        load_app(rootfs, ["/app.wasm"], {}, RuntimeSettings(cache_dir=cache))
    assert str(info.value).startswith("app.wasm: is a WASIp3 (component-model async) component: it imports 1 "
                                      "WASIp3 interface(s) (wasi:cli/run@0.3.0)"), info.value
    assert not _compiled_entries(cache)


def test_a_p2_component_passes_the_check(tmp_path: Path):
    wasm = tmp_path / "p2.wasm"
    wasm.write_bytes(_component(P2_COMMAND))
    refuse_wasip3(wasm, "p2.wasm")  # no exception
    refuse_wasip3(tmp_path / "missing.wasm", "missing.wasm")  # left to the loader's own "no such file"


def test_an_http_app_is_refused_at_its_p3_component_before_that_is_compiled(tmp_path: Path):
    """The check runs on the precompile cache's miss path, for every loader (http, command, OCI artifacts)."""
    from runtime.loader import load_app
    from runtime.settings import RuntimeSettings

    (tmp_path / "p3.wasm").write_bytes(_component(P3_HTTP))
    (tmp_path / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "two"\n'
        '[[trigger.http]]\nroute = "/new/..."\ncomponent = "new"\n'
        '[component.new]\nsource = "p3.wasm"\n'
    )
    cache = tmp_path / "cache"
    with pytest.raises(WasmLoadError, match=r"^component 'new' \(p3\.wasm\): is a WASIp3"):
        load_app(tmp_path, ["/"], {}, RuntimeSettings(cache_dir=cache))
    assert not _compiled_entries(cache)
