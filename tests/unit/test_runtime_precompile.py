"""The precompile cache (runtime.precompile) and the engine fingerprint (runtime.engine).

"No compile on a warm start" is proven by counting calls to the cache's compile step and by the outcome the
loader reports, never by timing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from runtime import engine as engine_module
from runtime.engine import ENGINE_SETTINGS, cpu_description, engine_fingerprint, fingerprint_digest, shared_engine
from runtime.loader import load_app
from runtime.precompile import PrecompileCache
from runtime.settings import RuntimeSettings
from runtime.wasm_binary import WasmKind
from tests.unit.guest_fixtures import build_dir, compiles  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]


def blobs(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("precompiled/*/*/*.cwasm"))


@pytest.mark.parametrize("wasm", ["/hello.wasm", "/hello-component.wasm"])
def test_second_load_does_not_compile(build_dir, tmp_path, compiles, wasm):
    settings = RuntimeSettings(cache_dir=tmp_path)
    first = load_app(build_dir, [wasm], {}, settings)
    assert first.loads[0].cache.outcome == "compiled"
    assert compiles == [wasm.lstrip("/")]
    second = load_app(build_dir, [wasm], {}, settings)
    assert second.loads[0].cache.outcome == "hit"
    assert compiles == [wasm.lstrip("/")]  # unchanged: the warm load only deserialized
    assert second.loads[0].cache.blob_path == first.loads[0].cache.blob_path
    assert second.run() == 0


def test_blob_name_records_its_size_and_sha256(build_dir, tmp_path):
    import hashlib

    app = load_app(build_dir, ["/hello.wasm"], {}, RuntimeSettings(cache_dir=tmp_path))
    blob = app.loads[0].cache.blob_path
    assert blob is not None
    size, sha = blob.stem.split("-")
    data = blob.read_bytes()
    assert int(size) == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert blob.parent.name == app.loads[0].cache.wasm_sha256
    assert blob.parent.parent.name == fingerprint_digest()
    assert (blob.parent.parent / "FINGERPRINT").read_text().strip() == engine_fingerprint()
    assert not [p for p in blob.parent.iterdir() if p.name.startswith(".tmp-")]


def test_truncated_blob_is_dropped_and_rebuilt(build_dir, tmp_path, compiles):
    settings = RuntimeSettings(cache_dir=tmp_path)
    blob = load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.blob_path
    assert blob is not None
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    app = load_app(build_dir, ["/hello.wasm"], {}, settings)
    assert app.loads[0].cache.outcome == "rebuilt"
    assert compiles == ["hello.wasm", "hello.wasm"]
    assert blobs(tmp_path) == [blob] and blob.read_bytes() == data
    assert app.run() == 0


def test_same_size_corruption_is_caught_by_the_full_digest(build_dir, tmp_path, compiles):
    settings = RuntimeSettings(cache_dir=tmp_path)  # cache_verify="full" is the default
    blob = load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.blob_path
    assert blob is not None
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle: code or data, same size
    blob.write_bytes(bytes(data))
    assert load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.outcome == "rebuilt"
    assert len(compiles) == 2


def test_size_only_verification_still_rejects_a_blob_wasmtime_cannot_read(build_dir, tmp_path, compiles):
    settings = RuntimeSettings(cache_dir=tmp_path, cache_verify="size")
    blob = load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.blob_path
    assert blob is not None
    data = blob.read_bytes()
    blob.write_bytes(b"\0" * 64 + data[64:])  # header destroyed, size kept
    app = load_app(build_dir, ["/hello.wasm"], {}, settings)
    assert app.loads[0].cache.outcome == "rebuilt"
    assert app.run() == 0


def test_unwritable_cache_still_loads(build_dir, tmp_path, compiles):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "precompiled").write_text("not a directory")  # every write under it fails
    app = load_app(build_dir, ["/hello.wasm"], {}, RuntimeSettings(cache_dir=cache_dir))
    assert app.loads[0].cache.outcome == "compiled" and app.loads[0].cache.blob_path is None
    assert app.run() == 0


def test_concurrent_first_loads_never_leave_a_partial_blob(build_dir, tmp_path):
    engine = shared_engine()
    results = []

    def load():
        cache = PrecompileCache(tmp_path, engine)
        results.append(cache.load(build_dir / "hello-component.wasm", WasmKind.COMPONENT, name="c")[1])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    found = blobs(tmp_path)
    assert found, "no blob written"
    for blob in found:
        size, _sha = blob.stem.split("-")
        assert blob.stat().st_size == int(size)
    assert not list(tmp_path.glob("precompiled/*/*/.tmp-*"))
    assert PrecompileCache(tmp_path, engine).load(build_dir / "hello-component.wasm", WasmKind.COMPONENT,
                                                  name="c")[1].outcome == "hit"


def test_fingerprint_change_gives_a_different_key(build_dir, tmp_path, compiles):
    engine = shared_engine()
    wasm = build_dir / "hello.wasm"
    ours = PrecompileCache(tmp_path, engine)
    other = PrecompileCache(tmp_path, engine, fingerprint=engine_fingerprint().replace("cpu ", "cpu other-"))
    assert ours.root != other.root
    assert ours.entry_dir("ab" * 32) != other.entry_dir("ab" * 32)
    ours.load(wasm, WasmKind.CORE_MODULE, name="hello")
    assert other.load(wasm, WasmKind.CORE_MODULE, name="hello")[1].outcome == "compiled"
    assert ours.load(wasm, WasmKind.CORE_MODULE, name="hello")[1].outcome == "hit"
    assert compiles == ["hello.wasm", "hello.wasm"]


def test_fingerprint_covers_version_settings_and_cpu(monkeypatch):
    from importlib.metadata import version

    fingerprint = engine_fingerprint()
    assert f"wasmtime-py {version('wasmtime')}" in fingerprint
    for name, value in ENGINE_SETTINGS.items():
        assert f"{name}={value}" in fingerprint
    assert f"cpu {cpu_description()}" in fingerprint

    engine_module._process_fingerprint.cache_clear()
    try:
        monkeypatch.setitem(ENGINE_SETTINGS, "cranelift_opt_level", "none")
        assert engine_fingerprint() != fingerprint
        monkeypatch.setitem(ENGINE_SETTINGS, "cranelift_opt_level", "speed")
        engine_module._process_fingerprint.cache_clear()
        monkeypatch.setattr(engine_module, "cpu_description", lambda: "x86_64:sse3")
        assert engine_fingerprint() != fingerprint
    finally:
        engine_module._process_fingerprint.cache_clear()


def test_cpu_description_reads_relevant_flags_of_the_first_processor(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse3 avx2 bmi2 ht\n\nprocessor\t: 1\nflags\t\t: avx512f\n")
    monkeypatch.setattr(engine_module.platform, "machine", lambda: "x86_64")
    assert cpu_description(cpuinfo) == "x86_64:avx2,bmi2,sse3"
    assert cpu_description(tmp_path / "missing") == "x86_64:"


def test_shared_engine_is_one_per_process():
    assert shared_engine() is shared_engine()
    assert os.getpid() == engine_module._engine_pid


@pytest.fixture
def blob_hashes(monkeypatch) -> list[str]:
    """Names of the precompiled blobs whose sha256 was computed during the test."""
    from runtime import precompile

    seen: list[str] = []
    original = precompile.sha256_file

    def counting(path):
        if str(path).endswith(".cwasm"):
            seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(precompile, "sha256_file", counting)
    return seen


def test_a_blob_is_hashed_once_per_boot_not_on_every_start(build_dir, tmp_path, blob_hashes):
    settings = RuntimeSettings(cache_dir=tmp_path)
    for _ in range(4):
        assert load_app(build_dir, ["/hello.wasm"], {}, settings).run() == 0
    assert len(blob_hashes) == 1  # the first hit checked it; compiling stored it without a check
    assert len(list((tmp_path / "precompiled" / "verified").iterdir())) == 1


def test_corruption_after_a_recorded_check_is_still_caught(build_dir, tmp_path, compiles, blob_hashes):
    settings = RuntimeSettings(cache_dir=tmp_path)
    load_app(build_dir, ["/hello.wasm"], {}, settings)
    blob = load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.blob_path  # checked and recorded
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = blob.stat()
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its mtime put back: the ctime moved
    assert load_app(build_dir, ["/hello.wasm"], {}, settings).loads[0].cache.outcome == "rebuilt"
    assert len(compiles) == 2


def test_a_check_recorded_before_this_boot_does_not_count(build_dir, tmp_path, blob_hashes):
    from runtime.verified_blobs import boot_time

    settings = RuntimeSettings(cache_dir=tmp_path)
    load_app(build_dir, ["/hello.wasm"], {}, settings)
    load_app(build_dir, ["/hello.wasm"], {}, settings)
    (marker,) = (tmp_path / "precompiled" / "verified").iterdir()
    before_boot = boot_time() - 60
    os.utime(marker, (before_boot, before_boot))
    load_app(build_dir, ["/hello.wasm"], {}, settings)
    assert len(blob_hashes) == 2
    (renewed,) = (tmp_path / "precompiled" / "verified").iterdir()
    assert renewed.stat().st_mtime > boot_time()


def test_the_cache_salt_is_read_on_every_call_as_a_fork_of_a_warm_parent_has_its_own_environment(monkeypatch):
    monkeypatch.delenv(engine_module.CACHE_SALT_ENV, raising=False)
    unsalted = engine_fingerprint()
    monkeypatch.setenv(engine_module.CACHE_SALT_ENV, "node-a")
    assert engine_fingerprint() == f"{unsalted}|salt node-a"
