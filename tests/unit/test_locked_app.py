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
from runtime.locked_app import parse_locked_app
from runtime.loader import load_locked_app
from runtime.settings import RuntimeSettings
from tests.unit.test_runtime_command import _build_guests

LOCK = Path("/apps/x/spin.lock")


@pytest.fixture(scope="module")
def guests() -> Path:
    return _build_guests()


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
