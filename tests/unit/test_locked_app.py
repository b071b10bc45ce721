"""Locked apps (runtime.locked_app, runtime.loader.load_locked_app): how Spin OCI artifacts reach the runtime.

The app directories are built here the way oci/source.py lays them out (spin.lock + blobs/sha256/<hex>), around
the readfile/hello guests of scripts/build_guests.py, and run for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from runtime.errors import ManifestError, UnsupportedTriggerError
from runtime.loader import load_locked_app
from runtime.locked_app import parse_locked_app
from runtime.settings import RuntimeSettings
from tests.unit.guest_fixtures import built_guests

LOCK = Path("/apps/x/spin.lock")


@pytest.fixture(scope="module")
def guests() -> Path:
    return built_guests()


@pytest.fixture
def settings(tmp_path) -> RuntimeSettings:
    return RuntimeSettings(cache_dir=tmp_path / "cache")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_blob(app_dir: Path, data: bytes) -> str:
    blobs = app_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest(data).partition(":")[2]).write_bytes(data)
    return digest(data)


def command_lock(wasm_digest: str, files: list[dict] | None = None, **extra) -> dict:
    return {
        "spin_lock_version": 1,
        "metadata": {"name": "locked", "trigger": {"type": "command"}},
        "variables": {"greeting": {"default": "hi"}, "token": {"secret": True}},
        "triggers": [{"id": "t1", "trigger_type": "command", "trigger_config": {"component": "reader"}}],
        "components": [{
            "id": "reader",
            "source": {"content_type": "application/wasm", "digest": wasm_digest},
            "env": {"FROM_LOCK": "yes"},
            "files": files or [],
            "metadata": {"allowed_outbound_hosts": ["http://127.0.0.1:1"], "key_value_stores": ["default"]},
        }],
        **extra,
    }


def write_lock(app_dir: Path, lock: dict) -> None:
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "spin.lock").write_text(json.dumps(lock))


def run(app, capfd) -> tuple[int, str, str]:
    capfd.readouterr()
    code = app.run()
    out, err = capfd.readouterr()
    return code, out, err


def test_parse_maps_the_lock_onto_the_manifest_model():
    wasm = "sha256:" + "a" * 64
    locked = parse_locked_app(json.dumps(command_lock(wasm, [{"digest": "sha256:" + "b" * 64, "path": "s/a.txt"}])),
                              LOCK)
    manifest = locked.manifest
    assert manifest.application.name == "locked"
    assert manifest.trigger_types == ("command",)
    assert manifest.variables["greeting"].default == "hi" and not manifest.variables["greeting"].required
    assert manifest.variables["token"].required and manifest.variables["token"].secret
    component = manifest.components["reader"]
    assert component.source.path == "blobs/sha256/" + "a" * 64
    assert component.environment == {"FROM_LOCK": "yes"}
    assert component.allowed_outbound_hosts == ("http://127.0.0.1:1",)
    assert component.key_value_stores == ("default",)
    assert locked.files["reader"][0].guest_path == "s/a.txt"


def test_files_from_blobs_and_inline_are_what_the_guest_sees(guests, tmp_path, settings, capfd):
    app_dir = tmp_path / "app"
    wasm = add_blob(app_dir, (guests / "readfile.wasm").read_bytes())
    big = b"x" * 300
    files = [
        {"digest": add_blob(app_dir, big), "path": "static/big.txt"},
        {"digest": digest(b"tiny\n"), "inline": base64.b64encode(b"tiny\n").decode(), "path": "etc/tiny.txt"},
    ]
    write_lock(app_dir, command_lock(wasm, files))
    app = load_locked_app(app_dir, ["/", "/etc/tiny.txt"], {}, settings, work_dir=tmp_path, name="the lock")
    assert run(app, capfd)[:2] == (0, "tiny\n")
    app = load_locked_app(app_dir, ["/", "/static/big.txt"], {}, settings, work_dir=tmp_path, name="the lock")
    assert run(app, capfd)[:2] == (0, "x" * 300)
    # Files are hard links to the blobs, not copies.
    blob = app_dir / "blobs" / "sha256" / digest(big).partition(":")[2]
    assert (app_dir / "files" / "reader" / "static" / "big.txt").stat().st_ino == blob.stat().st_ino


def test_a_second_load_hits_the_precompile_cache(guests, tmp_path, settings):
    app_dir = tmp_path / "app"
    wasm = add_blob(app_dir, (guests / "hello.wasm").read_bytes())
    write_lock(app_dir, command_lock(wasm))
    first = load_locked_app(app_dir, ["/"], {}, settings, work_dir=tmp_path, name="lock")
    first.close()
    shutil.rmtree(app_dir / "files", ignore_errors=True)
    second = load_locked_app(app_dir, ["/"], {}, settings, work_dir=tmp_path, name="lock")
    second.close()
    assert first.loads[0].cache.outcome == "compiled"
    assert second.loads[0].cache.outcome == "hit"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spin_lock_version": 7}, "unknown spin_lock_version 7"),
        ({"must_understand": ["teleport"]}, "does not understand: 'teleport'"),
        ({"host_requirements": {"local_service_chaining": "required"}}, "local service chaining"),
        ({"triggers": [{"id": "t", "trigger_type": "command", "trigger_config": {"component": "nope"}}]},
         "runs component 'nope', which the app does not contain (components: reader)"),
        ({"components": "x"}, "`components` must be a list"),
    ],
)
def test_bad_locks_name_the_problem(change, message):
    lock = command_lock("sha256:" + "a" * 64) | change
    with pytest.raises(ManifestError, match=None) as info:
        parse_locked_app(json.dumps(lock), LOCK, "the locked app of image x")
    assert str(info.value).startswith("the locked app of image x: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"digest": "sha256:" + "b" * 64, "path": "../etc/passwd"}, "must be a relative path without '..'"),
        ({"digest": "sha256:" + "b" * 64, "path": "/etc/passwd"}, "must be a relative path"),
        ({"inline": "***", "path": "a"}, "`inline` is not base64"),
        ({"source": "file:///home/me/a.txt", "path": "a"}, "neither a digest nor inline content"),
        ({"digest": "md5:00", "path": "a"}, "is not sha256:<64 hex digits>"),
    ],
)
def test_bad_file_entries_are_refused(entry, message):
    with pytest.raises(ManifestError) as info:
        parse_locked_app(json.dumps(command_lock("sha256:" + "a" * 64, [entry])), LOCK)
    assert message in str(info.value)


def test_content_missing_from_the_image_is_named(tmp_path, settings):
    app_dir = tmp_path / "app"
    absent = "sha256:" + "c" * 64
    write_lock(app_dir, command_lock(absent))
    with pytest.raises(ManifestError) as info:
        load_locked_app(app_dir, ["/"], {}, settings, work_dir=tmp_path, name="the locked app of image x")
    assert str(info.value) == (
        f"the locked app of image x: component 'reader' source: content {absent} is not in the image"
    )


def test_inline_content_must_match_its_digest(tmp_path, settings, guests):
    app_dir = tmp_path / "app"
    wasm = add_blob(app_dir, (guests / "hello.wasm").read_bytes())
    files = [{"digest": digest(b"other"), "inline": base64.b64encode(b"tiny").decode(), "path": "a"}]
    write_lock(app_dir, command_lock(wasm, files))
    with pytest.raises(ManifestError, match="inline content does not match its digest"):
        load_locked_app(app_dir, ["/"], {}, settings, work_dir=tmp_path, name="lock")


def test_unknown_trigger_in_a_lock_is_refused_at_load(tmp_path, settings, guests):
    app_dir = tmp_path / "app"
    wasm = add_blob(app_dir, (guests / "hello.wasm").read_bytes())
    lock = command_lock(wasm)
    lock["triggers"] = [{"id": "t", "trigger_type": "kafka", "trigger_config": {"component": "reader"}}]
    write_lock(app_dir, lock)
    with pytest.raises(UnsupportedTriggerError) as info:
        load_locked_app(app_dir, ["/"], {}, settings, work_dir=tmp_path, name="the locked app of image x")
    assert "unknown trigger type 'kafka'" in str(info.value)
    assert str(app_dir) not in str(info.value)


# ---------------------------------------------------------------------------------------------------- hostile locks
# The lock is image content: its component ids name directories under files/, so an unchecked id once made the
# shim create directories, delete a file and hard-link the image's bytes over it anywhere on the node.


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry under ``root`` with its inode, link count, mtime and (for files) bytes."""
    tree = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        tree[str(path.relative_to(root))] = (st.st_ino, st.st_nlink, st.st_mtime_ns,
                                             path.read_bytes() if path.is_file() and not path.is_symlink() else None)
    return tree


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory beside the app dir, holding a canary where a bad id or a planted symlink would write."""
    directory = tmp_path / "outside"
    (directory / "sub").mkdir(parents=True)
    (directory / "canary.txt").write_bytes(b"the node's own file\n")
    (directory / "sub" / "keep.txt").write_bytes(b"keep\n")
    return directory


def lock_with_files(component_id: str) -> dict:
    """One component named ``component_id`` with inline files at the canary's name and in a new sub-directory."""
    files = [
        {"inline": base64.b64encode(b"the image's bytes\n").decode(), "path": "canary.txt"},
        {"inline": base64.b64encode(b"made\n").decode(), "path": "sub/new.txt"},
    ]
    lock = command_lock("sha256:" + "a" * 64, files)
    lock["components"][0]["id"] = component_id
    lock["triggers"][0]["trigger_config"]["component"] = component_id
    return lock


@pytest.mark.parametrize(
    "make_id",
    [
        pytest.param(lambda outside: str(outside), id="absolute"),
        pytest.param(lambda outside: "../" * 32 + str(outside).lstrip("/"), id="climbing"),
        pytest.param(lambda outside: "../outside", id="dotdot"),
        pytest.param(lambda outside: "reader/../../outside", id="slash"),
        pytest.param(lambda outside: "Reader", id="uppercase"),
        pytest.param(lambda outside: "bad_id", id="underscore"),
        pytest.param(lambda outside: "", id="empty"),
        pytest.param(lambda outside: "reader\n", id="trailing-newline"),
        pytest.param(lambda outside: ".", id="dot"),
    ],
)
def test_a_component_id_that_is_not_a_kebab_id_is_refused_and_touches_nothing(tmp_path, outside, make_id):
    from runtime.locked_app import load_locked_app as lay_out

    component_id = make_id(outside)
    app_dir = tmp_path / "app"
    write_lock(app_dir, lock_with_files(component_id))
    before = snapshot_tree(outside)
    with pytest.raises(ManifestError) as info:
        lay_out(app_dir, "the locked app of image x")
    assert str(info.value) == (
        f"the locked app of image x: component id {component_id!r} must be lower-kebab-case (letters and digits, "
        "words joined by '-'), as Spin requires"
    )
    assert snapshot_tree(outside) == before
    assert sorted(p.name for p in app_dir.iterdir()) == ["spin.lock"]  # nothing laid out before the refusal


@pytest.mark.parametrize("component_id", ["reader", "a", "my-app-2", "x1-y2"])
def test_kebab_ids_are_accepted(component_id):
    locked = parse_locked_app(json.dumps(lock_with_files(component_id)), LOCK)
    assert list(locked.manifest.components) == [component_id]


def test_the_regex_is_the_manifest_one():
    import runtime.ids
    import runtime.manifest

    assert runtime.manifest._KEBAB_ID is runtime.ids.KEBAB_ID


@pytest.mark.parametrize("trigger_id", ["", "t\n1", "\x00"])
def test_trigger_ids_must_be_printable(trigger_id):
    lock = command_lock("sha256:" + "a" * 64)
    lock["triggers"][0]["id"] = trigger_id
    with pytest.raises(ManifestError, match="must be a non-empty printable string"):
        parse_locked_app(json.dumps(lock), LOCK)


@pytest.mark.parametrize("path", ["a\x00b", "x/" * 2049 + "y"])
def test_file_paths_with_nul_or_too_long_are_refused(path):
    entry = {"inline": base64.b64encode(b"x").decode(), "path": path}
    with pytest.raises(ManifestError, match="file path"):
        parse_locked_app(json.dumps(command_lock("sha256:" + "a" * 64, [entry])), LOCK)


def laid_out_app(tmp_path: Path) -> tuple[Path, dict]:
    """An app dir with the wasm blob present and a lock whose component 'reader' has inline files."""
    app_dir = tmp_path / "app"
    wasm = add_blob(app_dir, b"\0asm not really")
    lock = lock_with_files("reader")
    lock["components"][0]["source"]["digest"] = wasm
    write_lock(app_dir, lock)
    return app_dir, lock


def test_a_clean_load_and_a_reload_lay_out_the_files(tmp_path):
    from runtime.locked_app import load_locked_app as lay_out

    app_dir, _ = laid_out_app(tmp_path)
    lay_out(app_dir, "lock")
    lay_out(app_dir, "lock")  # a second load of the same directory replaces its own links
    root = app_dir / "files" / "reader"
    assert (root / "canary.txt").read_bytes() == b"the image's bytes\n"
    assert (root / "sub" / "new.txt").read_bytes() == b"made\n"
    blob = app_dir / "blobs" / "sha256" / hashlib.sha256(b"made\n").hexdigest()
    assert (root / "sub" / "new.txt").stat().st_ino == blob.stat().st_ino
    assert not [p for p in (app_dir / "blobs" / "sha256").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        pytest.param(lambda app, out: (app / "files").symlink_to(out), "a symbolic link is in the way",
                     id="files-dir"),
        pytest.param(lambda app, out: ((app / "files").mkdir(), (app / "files" / "reader").symlink_to(out)),
                     "a symbolic link is in the way", id="component-dir"),
        pytest.param(lambda app, out: ((app / "files" / "reader").mkdir(parents=True),
                                       (app / "files" / "reader" / "sub").symlink_to(out / "sub")),
                     "a symbolic link is in the way", id="sub-dir"),
        pytest.param(lambda app, out: ((app / "files" / "reader").mkdir(parents=True),
                                       (app / "files" / "reader" / "sub").write_bytes(b"")),
                     "a file is in the way where a directory goes", id="file-for-dir"),
        pytest.param(lambda app, out: (app / "files" / "reader" / "canary.txt").mkdir(parents=True),
                     "it is a directory", id="dir-for-file"),
    ],
)
def test_a_planted_symlink_or_entry_is_refused_not_followed(tmp_path, outside, plant, message):
    from runtime.locked_app import load_locked_app as lay_out

    app_dir, _ = laid_out_app(tmp_path)
    plant(app_dir, outside)
    before = snapshot_tree(outside)
    with pytest.raises(ManifestError) as info:
        lay_out(app_dir, "the lock")
    assert str(info.value).startswith("the lock: component 'reader'")
    assert message in str(info.value)
    assert "Errno" not in str(info.value)
    assert snapshot_tree(outside) == before


def test_a_planted_leaf_symlink_is_replaced_and_its_target_untouched(tmp_path, outside):
    from runtime.locked_app import load_locked_app as lay_out

    app_dir, _ = laid_out_app(tmp_path)
    root = app_dir / "files" / "reader"
    root.mkdir(parents=True)
    (root / "canary.txt").symlink_to(outside / "canary.txt")
    before = snapshot_tree(outside)
    lay_out(app_dir, "lock")
    assert not (root / "canary.txt").is_symlink()
    assert (root / "canary.txt").read_bytes() == b"the image's bytes\n"
    assert snapshot_tree(outside) == before


def test_a_blob_that_is_a_symlink_is_not_content(tmp_path, outside):
    from runtime.locked_app import load_locked_app as lay_out

    app_dir = tmp_path / "app"
    (app_dir / "blobs" / "sha256").mkdir(parents=True)
    target = outside / "canary.txt"
    hex_digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (app_dir / "blobs" / "sha256" / hex_digest).symlink_to(target)
    write_lock(app_dir, command_lock("sha256:" + hex_digest))
    with pytest.raises(ManifestError, match=f"content sha256:{hex_digest} is not in the image"):
        lay_out(app_dir, "lock")


def test_an_inline_blob_is_not_written_through_a_planted_symlink(tmp_path, outside):
    from runtime.locked_app import load_locked_app as lay_out

    app_dir, _ = laid_out_app(tmp_path)
    hex_digest = hashlib.sha256(b"made\n").hexdigest()
    (app_dir / "blobs" / "sha256" / hex_digest).symlink_to(outside / "canary.txt")
    before = snapshot_tree(outside)
    lay_out(app_dir, "lock")
    blob = app_dir / "blobs" / "sha256" / hex_digest
    assert not blob.is_symlink() and blob.read_bytes() == b"made\n"
    assert snapshot_tree(outside) == before


def test_the_lock_itself_is_read_capped_and_not_through_a_symlink(tmp_path, outside, monkeypatch):
    import runtime.locked_app
    from runtime.locked_app import load_locked_app as lay_out

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "spin.lock").symlink_to(outside / "canary.txt")
    with pytest.raises(ManifestError, match="the lock: cannot read: is a symbolic link"):
        lay_out(app_dir, "the lock")
    (app_dir / "spin.lock").unlink()
    write_lock(app_dir, command_lock("sha256:" + "a" * 64))
    monkeypatch.setattr(runtime.locked_app, "LOCK_MAX_BYTES", 100)
    with pytest.raises(ManifestError, match="the lock: larger than 100 bytes"):
        lay_out(app_dir, "the lock")
