"""runtime.compiled maps each compiled blob once per process: the components of one app that share a wasm get the
same object (each mapping counted in full against the load's RLIMIT_DATA, shim.wasm.load_memory), and a blob that
changed on disk since is mapped again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import wasmtime

from runtime.compiled import compile_wasm
from runtime.settings import RuntimeSettings

WAT = '(module (func (export "_start")) (memory (export "memory") 1))'


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "a.wasm").write_bytes(wasmtime.wat2wasm(WAT))
    shutil.copyfile(app / "a.wasm", app / "b.wasm")  # another component's file, the same wasm
    return app


def test_components_sharing_a_wasm_share_one_mapping(tmp_path: Path) -> None:
    app = _app(tmp_path)
    settings = RuntimeSettings(cache_dir=tmp_path / "cache")
    first, first_load, _ = compile_wasm(app / "a.wasm", "component 'a' (a.wasm)", "a", settings)
    second, second_load, _ = compile_wasm(app / "b.wasm", "component 'b' (b.wasm)", "b", settings)
    assert first_load.cache.outcome == "compiled" and second_load.cache.outcome == "hit"
    assert second is first
    assert second_load.cache.blob_path == first_load.cache.blob_path


def test_a_blob_changed_on_disk_is_mapped_again(tmp_path: Path) -> None:
    app = _app(tmp_path)
    settings = RuntimeSettings(cache_dir=tmp_path / "cache")
    first, load, _ = compile_wasm(app / "a.wasm", "a", "a", settings)
    blob = load.cache.blob_path
    assert blob is not None
    data = blob.read_bytes()
    os.unlink(blob)
    blob.write_bytes(data)  # the same bytes, a new inode: the cache's view changed, so the memo does not answer
    again, again_load, _ = compile_wasm(app / "a.wasm", "a", "a", settings)
    assert again is not first and again_load.cache.outcome == "hit"


def test_another_cache_dir_is_another_mapping(tmp_path: Path) -> None:
    app = _app(tmp_path)
    first, _, _ = compile_wasm(app / "a.wasm", "a", "a", RuntimeSettings(cache_dir=tmp_path / "one"))
    other, load, _ = compile_wasm(app / "a.wasm", "a", "a", RuntimeSettings(cache_dir=tmp_path / "two"))
    assert other is not first and load.cache.outcome == "compiled"


def test_each_app_load_starts_without_the_previous_loads_mappings(tmp_path: Path) -> None:
    from runtime.loader import load_app

    app = _app(tmp_path)
    settings = RuntimeSettings(cache_dir=tmp_path / "cache")
    first, _, _ = compile_wasm(app / "a.wasm", "a", "a", settings)
    load_app(app, ["/a.wasm"], {}, settings)  # a bare-wasm app: its own load, through the cache
    again, load, _ = compile_wasm(app / "a.wasm", "a", "a", settings)
    assert again is not first and load.cache.outcome == "hit"
