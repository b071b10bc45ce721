"""scripts/build_http_apps.py's bookkeeping: cache keys, manifest outputs, the index and the cached-copy step.

No toolchain, network or wasm build: the keys and copies are checked on small trees made here, and the recipes
against the sources in tests/apps/src/.
"""

from __future__ import annotations

import importlib
import sys
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    # Imported by name from scripts/, as tests/e2e/conftest.py and scripts/bench_http.py do, so one module
    # object serves the whole session (its dataclasses need to be registered in sys.modules anyway).
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("build_http_apps")


bha = _load()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the real sources and pins, which the test may edit."""
    src, pins = tmp_path / "src", tmp_path / "pins"
    shutil.copytree(bha.SRC_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    shutil.copytree(bha.PINS_DIR, pins)
    return src, pins


def _recipe(app: str):
    return next(recipe for recipe in bha.RECIPES if recipe.app == app)


def _key(app: str, tree: tuple[Path, Path], deps: dict[str, str] | None = None) -> str:
    src, pins = tree
    return bha.cache_key(_recipe(app), src_dir=src, pins_dir=pins, dependency_keys=deps)


def test_key_is_stable_for_unchanged_inputs(tree: tuple[Path, Path]) -> None:
    assert _key("py-spin", tree) == _key("py-spin", tree)


def test_key_ignores_bytecode_caches(tree: tuple[Path, Path]) -> None:
    before = _key("py-spin", tree)
    (tree[0] / "py-spin" / "__pycache__").mkdir()
    (tree[0] / "py-spin" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"stale")
    assert _key("py-spin", tree) == before


def test_key_changes_with_a_source_edit(tree: tuple[Path, Path]) -> None:
    before = _key("py-spin", tree)
    app = tree[0] / "py-spin" / "app.py"
    app.write_text(app.read_text() + "\n# edited\n")
    assert _key("py-spin", tree) != before


def test_key_changes_with_an_added_static_file(tree: tuple[Path, Path]) -> None:
    before = _key("py-spin", tree)
    (tree[0] / "py-spin" / "static" / "new.txt").write_text("new")
    assert _key("py-spin", tree) != before


def test_key_changes_with_the_apps_own_toolchain_pins_only(tree: tuple[Path, Path]) -> None:
    spin_before, js_before = _key("py-spin", tree), _key("js-echo", tree)
    (tree[1] / "spin-py.txt").write_text("componentize-py==0.17.3\nspin-sdk==3.4.1\n")
    assert _key("py-spin", tree) != spin_before
    assert _key("js-echo", tree) == js_before


def test_proxy_key_follows_spin_py_pins_because_its_wit_comes_from_spin_sdk(tree: tuple[Path, Path]) -> None:
    before = _key("py-proxy", tree)
    (tree[1] / "spin-py.txt").write_text("componentize-py==0.17.2\nspin-sdk==3.4.0\n")
    assert _key("py-proxy", tree) != before


def test_js_key_follows_the_lock_file(tree: tuple[Path, Path]) -> None:
    before = _key("js-echo", tree)
    lock = tree[1] / "js" / "package-lock.json"
    lock.write_text(lock.read_text().replace('"lockfileVersion": 3', '"lockfileVersion": 3 '))
    assert _key("js-echo", tree) != before


def test_reusing_app_key_follows_the_reused_apps_key(tree: tuple[Path, Path]) -> None:
    assert _key("multi", tree, {"js-echo": "a" * 64}) != _key("multi", tree, {"js-echo": "b" * 64})


def test_apps_with_the_same_sources_get_different_keys(tree: tuple[Path, Path]) -> None:
    keys = {_key(recipe.app, tree, {"js-echo": "a" * 64}) for recipe in bha.RECIPES}
    assert len(keys) == len(bha.RECIPES)


def test_every_recipe_has_a_manifest_known_toolchains_and_builds_after_what_it_reuses() -> None:
    seen: list[str] = []
    for recipe in bha.RECIPES:
        assert (bha.SRC_DIR / recipe.app / "spin.toml").is_file(), recipe.app
        assert set(recipe.toolchains) <= set(bha.TOOLCHAINS), recipe.app
        assert recipe.reuses is None or recipe.reuses in seen, recipe.app
        assert bool(recipe.command) != bool(recipe.reuses), recipe.app
        seen.append(recipe.app)
    assert seen[:4] == ["py-spin", "py-proxy", "js-echo", "multi"]


def test_every_pin_file_exists() -> None:
    for toolchain in bha.TOOLCHAINS.values():
        assert toolchain.pins_text(), toolchain.name


def test_manifest_outputs_of_py_spin_are_its_wasm_and_static_files() -> None:
    assert bha.manifest_outputs(bha.SRC_DIR / "py-spin" / "spin.toml") == (["app.wasm"], ["static"])


def test_manifest_outputs_of_multi_name_the_shared_wasm_once() -> None:
    assert bha.manifest_outputs(bha.SRC_DIR / "multi" / "spin.toml") == (["app.wasm"], [])


def test_manifest_outputs_accept_glob_and_table_files(tmp_path: Path) -> None:
    manifest = tmp_path / "spin.toml"
    manifest.write_text(
        'spin_manifest_version = 2\n[application]\nname = "x"\n'
        '[component.a]\nsource = "a.wasm"\nfiles = ["assets/*", { source = "s", destination = "/d" }]\n'
        '[component.b]\nsource = "b.wasm"\n'
    )
    assert bha.manifest_outputs(manifest) == (["a.wasm", "b.wasm"], ["assets/*", "s"])


def _meta(app: str = "py-spin", key: str = "k1") -> dict:
    return {"app": app, "key": key, "build_seconds": 1.5, "wasm": ["app.wasm"], "sha256": {"app.wasm": "ab"},
            "size": {"app.wasm": 4}, "exports": ["wasi:http/incoming-handler@0.2.0"]}


def test_index_entry_names_dir_wasm_hashes_and_exports() -> None:
    assert bha.index_entry(_meta()) == {
        "dir": "py-spin", "wasm": ["app.wasm"], "sha256": {"app.wasm": "ab"}, "size": {"app.wasm": 4},
        "exports": ["wasi:http/incoming-handler@0.2.0"], "key": "k1", "build_seconds": 1.5,
    }


def _cache_entry(tmp_path: Path) -> Path:
    entry = tmp_path / "cache" / "py-spin-k1"
    (entry / "static").mkdir(parents=True)
    (entry / "spin.toml").write_text("manifest")
    (entry / "app.wasm").write_bytes(b"\0asm")
    (entry / "static" / "hello.txt").write_text("hi")
    (entry / bha.META_NAME).write_text("{}")
    return entry


def test_installed_app_dir_has_the_outputs_but_no_build_metadata(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    bha._install_app(_cache_entry(tmp_path), _meta(), out, None)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "py-spin", "py-spin/app.wasm", "py-spin/spin.toml", "py-spin/static", "py-spin/static/hello.txt"]


def test_install_skips_the_copy_when_the_index_already_has_this_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    entry = _cache_entry(tmp_path)
    bha._install_app(entry, _meta(), out, None)
    (out / "py-spin" / "marker").write_text("kept")
    bha._install_app(entry, _meta(), out, bha.index_entry(_meta()))
    assert (out / "py-spin" / "marker").exists()


def test_install_replaces_the_dir_when_the_key_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    entry = _cache_entry(tmp_path)
    bha._install_app(entry, _meta(), out, None)
    (out / "py-spin" / "marker").write_text("stale")
    bha._install_app(entry, _meta(key="k2"), out, bha.index_entry(_meta()))
    assert not (out / "py-spin" / "marker").exists()
    assert (out / "py-spin" / "app.wasm").read_bytes() == b"\0asm"


def test_missing_toolchain_says_to_run_the_install_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bha, "TOOLCHAINS_DIR", tmp_path)
    with pytest.raises(bha.ToolchainMissing, match="install_app_toolchains.sh"):
        bha.TOOLCHAINS["spin-py"].require()


def test_toolchain_installed_from_other_pins_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bha, "TOOLCHAINS_DIR", tmp_path)
    (tmp_path / "spin-py").mkdir()
    (tmp_path / "spin-py" / ".pins").write_text("componentize-py==0.25.1\nspin-sdk==5.0.0\n")
    with pytest.raises(bha.ToolchainMissing, match="other pins"):
        bha.TOOLCHAINS["spin-py"].require()


def test_toolchain_with_matching_stamp_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bha, "TOOLCHAINS_DIR", tmp_path)
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / ".pins").write_text(bha.TOOLCHAINS["js"].pins_text())
    assert bha.TOOLCHAINS["js"].require() == tmp_path / "js"
