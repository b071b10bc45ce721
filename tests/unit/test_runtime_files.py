"""Path resolution inside an image root (runtime.paths) and Spin `files` placement (runtime.files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.errors import ManifestError
from runtime.files import StagedFiles, plan_component_files, stage_component_files, sweep_stale_staging
from runtime.manifest import Component, GlobFiles, LocalSource, MappedFiles
from runtime.paths import PathEscapeError, resolve_in_root
from runtime.wasm_binary import WasmKind, detect_kind
from runtime.errors import WasmLoadError


def test_relative_and_absolute_paths_resolve_under_the_root(tmp_path):
    (tmp_path / "a").mkdir()
    root = tmp_path.resolve()
    assert resolve_in_root(tmp_path, "a/b.wasm") == root / "a" / "b.wasm"
    assert resolve_in_root(tmp_path, "/a/./b.wasm") == root / "a" / "b.wasm"
    assert resolve_in_root(tmp_path, "a/../c") == root / "c"


def test_dotdot_above_the_root_is_rejected(tmp_path):
    with pytest.raises(PathEscapeError, match="outside the app root"):
        resolve_in_root(tmp_path, "../etc/passwd")
    with pytest.raises(PathEscapeError):
        resolve_in_root(tmp_path, "/a/../../x")


def test_absolute_symlinks_resolve_from_the_image_root(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "app.wasm").write_text("x")
    (tmp_path / "link.wasm").symlink_to("/bin/app.wasm")
    (tmp_path / "dir").symlink_to("/bin")
    assert resolve_in_root(tmp_path, "/link.wasm") == tmp_path.resolve() / "bin" / "app.wasm"
    assert resolve_in_root(tmp_path, "dir/app.wasm") == tmp_path.resolve() / "bin" / "app.wasm"


def test_relative_symlink_escapes_are_rejected(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("../../outside")
    with pytest.raises(PathEscapeError, match="symlink 'sub/up' -> '../../outside'"):
        resolve_in_root(tmp_path, "sub/up")


def test_symlink_loops_are_rejected(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(PathEscapeError, match="too many levels"):
        resolve_in_root(tmp_path, "a")


def test_wasm_kind_comes_from_the_header_layer():
    assert detect_kind(b"\0asm\x01\0\0\0", name="m") is WasmKind.CORE_MODULE
    assert detect_kind(b"\0asm\x0d\0\x01\0", name="c") is WasmKind.COMPONENT
    with pytest.raises(WasmLoadError, match="only 3 bytes"):
        detect_kind(b"\0as", name="x")
    with pytest.raises(WasmLoadError, match="WebAssembly text"):
        detect_kind(b"(module)\n", name="x.wat")
    with pytest.raises(WasmLoadError, match="version 2 / layer 0"):
        detect_kind(b"\0asm\x02\0\0\0", name="x")


# ---------------------------------------------------------------------------------------------------- files


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    for name in ["static/a.txt", "static/sub/deep.txt", "static/skip.md", "assets/x.txt", "assets/y.txt",
                 "private/key", "one.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    return tmp_path


def component(*files, exclude=()) -> Component:
    return Component(id="c", source=LocalSource("c.wasm"), files=tuple(files), exclude_files=tuple(exclude))


def plan(app_dir: Path, comp: Component):
    return plan_component_files(app_dir, app_dir / "spin.toml", comp)


def test_glob_places_matching_files_at_their_relative_path(app_dir):
    direct, staged = plan(app_dir, component(GlobFiles("static/*.txt")))
    assert direct == [] and sorted(staged) == ["/static/a.txt"]
    _, staged = plan(app_dir, component(GlobFiles("static/**/*.txt")))
    assert sorted(staged) == ["/static/a.txt", "/static/sub/deep.txt"]


def test_exclude_files_removes_matches(app_dir):
    _, staged = plan(app_dir, component(GlobFiles("static/**/*"), exclude=["static/sub/*", "**/*.md"]))
    assert sorted(staged) == ["/static/a.txt"]


def test_directory_mapping_is_direct_unless_something_inside_is_excluded(app_dir):
    direct, staged = plan(app_dir, component(MappedFiles("assets", "/data")))
    assert [(d.host_path, d.guest_path) for d in direct] == [((app_dir / "assets").resolve(), "/data")]
    assert staged == {}
    direct, staged = plan(app_dir, component(MappedFiles("assets", "/data"), exclude=["assets/y.txt"]))
    assert direct == [] and sorted(staged) == ["/data/x.txt"]


def test_single_file_mapping_is_staged_at_its_destination(app_dir):
    _, staged = plan(app_dir, component(MappedFiles("one.json", "/etc/one.json")))
    assert staged == {"/etc/one.json": (app_dir / "one.json").resolve()}


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (GlobFiles("../*"), "must not use '..'"),
        (GlobFiles("/etc/*"), "must be relative"),
        (MappedFiles("../outside", "/x"), "outside the app root"),
        (MappedFiles("nope", "/x"), "source 'nope' not found"),
        (MappedFiles("one.json", "/"), "cannot be placed at '/'"),
    ],
)
def test_bad_files_entries_are_manifest_errors(app_dir, mount, message):
    with pytest.raises(ManifestError, match=message):
        plan(app_dir, component(mount))


def test_globbed_symlink_leaving_the_app_is_rejected(app_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret"
    outside.write_text("secret")
    (app_dir / "static" / "evil.txt").symlink_to(os.path.relpath(outside, app_dir / "static"))
    with pytest.raises(ManifestError, match="outside the app root"):
        plan(app_dir, component(GlobFiles("static/*.txt")))


def test_staging_hard_links_into_the_cache_dir_and_cleans_up(app_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    staged = stage_component_files(app_dir, app_dir / "spin.toml", component(
        GlobFiles("static/*.txt"), MappedFiles("assets", "/assets")), cache_dir)
    root = staged.preopens[0]
    assert root.guest_path == "/" and root.host_path.parent == cache_dir / "staging"
    assert root.host_path.name.startswith(f"{os.getpid()}-c-")
    staged_file = root.host_path / "static" / "a.txt"
    assert staged_file.read_text() == "static/a.txt"
    assert staged_file.stat().st_ino == (app_dir / "static" / "a.txt").stat().st_ino  # a hard link, not a copy
    assert [p.guest_path for p in staged.preopens[1:]] == ["/assets"]
    staged.cleanup()
    assert not root.host_path.exists()
    staged.cleanup()  # idempotent


def test_no_staging_dir_when_everything_is_direct(app_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    staged = stage_component_files(app_dir, app_dir / "spin.toml", component(MappedFiles("assets", "/a")), cache_dir)
    assert staged.staging_dir is None and not (cache_dir / "staging").exists()


def test_stale_staging_dirs_of_dead_processes_are_swept(tmp_path):
    staging = tmp_path / "staging"
    dead_pid = 2**22 + 1  # above the default pid_max: never a live process
    for name in [f"{dead_pid}-c-abc", f"{os.getpid()}-c-mine", "1-c-init"]:
        (staging / name).mkdir(parents=True)
    sweep_stale_staging(tmp_path)
    assert {p.name for p in staging.iterdir()} == {f"{os.getpid()}-c-mine", "1-c-init"}


def test_staged_files_cleanup_without_a_staging_dir_is_a_no_op():
    StagedFiles(preopens=()).cleanup()


def test_the_runtimes_own_directory_inside_the_app_is_never_the_guests(tmp_path):
    """In the shim's sandbox the cache dir (/.spin-shim) is inside the container's root, the app dir of a
    spin.toml app: it holds other apps' compiled blobs while the app loads."""
    app_dir = tmp_path / "app"
    cache_dir = app_dir / ".spin-shim"
    (cache_dir / "precompiled").mkdir(parents=True)
    (cache_dir / "precompiled" / "other-app.cwasm").write_bytes(b"\0asm")
    (app_dir / "static").mkdir()
    (app_dir / "static" / "page.html").write_text("<p>")
    with pytest.raises(ManifestError, match="runtime's own directory"):
        stage_component_files(app_dir, app_dir / "spin.toml",
                              component(MappedFiles(".spin-shim/precompiled", "/x")), cache_dir)
    staged = stage_component_files(app_dir, app_dir / "spin.toml", component(GlobFiles("**/*")), cache_dir)
    try:
        seen = {str(p.relative_to(staged.preopens[0].host_path)) for p in staged.preopens[0].host_path.rglob("*")
                if p.is_file()}
        assert "static/page.html" in seen and not any(name.startswith(".spin-shim") for name in seen)
    finally:
        staged.cleanup()
    whole = stage_component_files(app_dir, app_dir / "spin.toml", component(MappedFiles(".", "/app")), cache_dir)
    try:
        assert whole.staging_dir is not None  # the root holds the private dir: staged without it, not preopened
        assert [p.guest_path for p in whole.preopens] == ["/"]
        staged_files = {str(p.relative_to(whole.staging_dir)) for p in whole.staging_dir.rglob("*") if p.is_file()}
        assert staged_files == {"app/static/page.html"}
    finally:
        whole.cleanup()
