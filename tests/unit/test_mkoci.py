"""Unit tests of scripts/mkoci.py: the tarball must be a valid OCI image layout whose digests all check out,
because containerd verifies every one of them on import, and it must be byte-for-byte reproducible."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mkoci.py"
REF = "docker.io/library/mkoci-test:latest"


# scripts/ is not a package; mkoci.py is stdlib-only and importable from its directory.
sys.path.insert(0, str(SCRIPT.parent))
import mkoci  # noqa: E402


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A small tree with what real rootfs have: executables, private files, symlinks, empty and nested dirs."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "app").mkdir(parents=True)
    (root / "tmp").mkdir()  # empty dir
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF fake binary")
    tool.chmod(0o755)
    secret = root / "etc" / "app" / "secret.conf"
    secret.write_text("k=v\n")
    secret.chmod(0o600)
    (root / "bin" / "sh").symlink_to("tool")
    (root / "etc" / "dangling").symlink_to("/does/not/exist")
    return root


def _outer(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    algorithm, hex_digest = digest.split(":")
    assert algorithm == "sha256"
    data = files[f"blobs/sha256/{hex_digest}"]
    assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} content does not match its name"
    return data


def _image(files: dict[str, bytes]) -> tuple[dict, dict, dict, bytes]:
    """(index, manifest, config, layer) after checking every descriptor's digest and size."""
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    manifest_bytes = _blob(files, entry["digest"])
    assert len(manifest_bytes) == entry["size"]
    manifest = json.loads(manifest_bytes)
    config_bytes = _blob(files, manifest["config"]["digest"])
    assert len(config_bytes) == manifest["config"]["size"]
    (layer_desc,) = manifest["layers"]
    layer = _blob(files, layer_desc["digest"])
    assert len(layer) == layer_desc["size"]
    return index, manifest, json.loads(config_bytes), layer


def test_layout_is_parsable_and_digests_are_consistent(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    manifest_digest = mkoci.build_image_tar(rootfs, out, REF)

    files = _outer(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index, manifest, config, layer = _image(files)

    entry = index["manifests"][0]
    assert entry["digest"] == manifest_digest
    assert entry["mediaType"] == mkoci.MEDIA_TYPE_MANIFEST
    assert entry["annotations"] == {
        "org.opencontainers.image.ref.name": REF,
        "io.containerd.image.name": REF,
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == mkoci.MEDIA_TYPE_CONFIG
    assert manifest["layers"][0]["mediaType"] == mkoci.MEDIA_TYPE_LAYER_GZIP
    # diff_id is the digest of the *uncompressed* layer; containerd checks it after unpacking.
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()],
    }
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_layer_keeps_modes_symlinks_and_empty_dirs_with_neutral_owner_and_time(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    mkoci.build_image_tar(rootfs, out, REF)
    *_, layer = _image(_outer(out))

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["bin/tool"]).read() == b"\x7fELF fake binary"  # type: ignore[union-attr]

    assert sorted(members) == [
        "bin", "bin/sh", "bin/tool", "etc", "etc/app", "etc/app/secret.conf", "etc/dangling", "tmp",
    ]
    assert members["bin/tool"].mode == 0o755
    assert members["etc/app/secret.conf"].mode == 0o600
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert members["etc/dangling"].issym() and members["etc/dangling"].linkname == "/does/not/exist"
    assert members["tmp"].isdir()
    for member in members.values():
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
    # Parents come before their children, so an unpacker never has to invent a directory.
    names = [m.name for m in members.values()]
    assert names.index("etc") < names.index("etc/app") < names.index("etc/app/secret.conf")


def test_output_is_deterministic(rootfs: Path, tmp_path: Path) -> None:
    first = tmp_path / "a" / "img.tar"
    second = tmp_path / "b" / "img.tar"
    digest_first = mkoci.build_image_tar(rootfs, first, REF, cmd=["/bin/sh"], env=["A=1"])
    # Times and ownership of the source tree must not leak into the image.
    for path in rootfs.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    digest_second = mkoci.build_image_tar(rootfs, second, REF, cmd=["/bin/sh"], env=["A=1"])

    assert digest_first == digest_second
    assert first.read_bytes() == second.read_bytes()


def test_config_carries_runtime_settings(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    mkoci.build_image_tar(
        rootfs, out, REF, os_="wasip1", arch="wasm", entrypoint=["/app.wasm"], cmd=["--flag"],
        env=["GREETING=hi"], labels={"org.example": "x"}, workdir="/srv",
    )
    index, _, config, _ = _image(_outer(out))

    assert index["manifests"][0]["platform"] == {"architecture": "wasm", "os": "wasip1"}
    assert (config["os"], config["architecture"]) == ("wasip1", "wasm")
    assert config["config"] == {
        "Entrypoint": ["/app.wasm"],
        "Cmd": ["--flag"],
        "Env": ["GREETING=hi"],
        "Labels": {"org.example": "x"},
        "WorkingDir": "/srv",
    }


def test_linux_image_gets_default_path_when_env_not_given(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    mkoci.build_image_tar(rootfs, out, REF)
    *_, config, _ = _image(_outer(out))
    assert config["config"]["Env"] == [mkoci.DEFAULT_LINUX_PATH]


def test_cli_prints_manifest_digest_and_rejects_bad_json(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.tar"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(rootfs), str(out), REF, "--cmd", '["/bin/sh", "-c", "true"]',
         "--env", "A=1", "B=2", "--workdir", "/"],
        capture_output=True, text=True, check=True,
    )
    index, _, config, _ = _image(_outer(out))
    assert result.stdout.strip() == index["manifests"][0]["digest"]
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", "true"]
    assert config["config"]["Env"] == ["A=1", "B=2"]

    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(rootfs), str(tmp_path / "bad.tar"), REF, "--cmd", "/bin/sh"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "JSON" in bad.stderr
    assert not (tmp_path / "bad.tar").exists()


def test_missing_rootfs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        mkoci.build_image_tar(tmp_path / "nope", tmp_path / "x.tar", REF)


def _layer_names(tar_path: Path) -> set[str]:
    *_, layer = _image(_outer(tar_path))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def js_app_dir(tmp_path: Path) -> Path:
    """A JS app's directory as a developer has it: the built wasm beside node_modules, sources and build files."""
    app = tmp_path / "app"
    (app / "dist").mkdir(parents=True)
    (app / "dist" / "app.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (app / "static" / "css").mkdir(parents=True)
    (app / "static" / "index.html").write_text("<html></html>")
    (app / "static" / "css" / "site.css").write_text("body {}")
    (app / "static" / "notes.tmp").write_text("excluded by the manifest")
    (app / "node_modules" / "big-dependency").mkdir(parents=True)
    (app / "node_modules" / "big-dependency" / "index.js").write_text("x" * 10_000)
    (app / "src").mkdir()
    (app / "src" / "index.js").write_text("addEventListener('fetch', ...)")
    (app / "package.json").write_text("{}")
    (app / "runtime-config.toml").write_text('[key_value_store.default]\ntype = "spin"\n')
    (app / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "js-app"\n'
        '[[trigger.http]]\nroute = "/..."\ncomponent = "web"\n'
        '[component.web]\nsource = "dist/app.wasm"\n'
        'files = [{ source = "static", destination = "/" }]\nexclude_files = ["**/*.tmp"]\n')
    return app


def test_a_spin_app_directory_is_packed_with_only_what_its_manifest_uses(js_app_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.tar"
    result = subprocess.run([sys.executable, str(SCRIPT), str(js_app_dir), str(out), REF, "--os", "wasip1",
                             "--arch", "wasm", "--entrypoint", '["/"]'], capture_output=True, text=True, check=True)
    assert _layer_names(out) == {"spin.toml", "runtime-config.toml", "dist/app.wasm", "static/index.html",
                                 "static/css/site.css"}
    assert "left out 4 other file(s)" in result.stderr and "--whole-dir" in result.stderr

    whole = tmp_path / "whole.tar"
    subprocess.run([sys.executable, str(SCRIPT), str(js_app_dir), str(whole), REF, "--whole-dir"],
                   capture_output=True, text=True, check=True)
    assert "node_modules/big-dependency/index.js" in _layer_names(whole)


def test_a_spin_app_whose_source_is_missing_or_outside_its_directory_is_an_error(js_app_dir: Path,
                                                                                 tmp_path: Path) -> None:
    (js_app_dir / "dist" / "app.wasm").unlink()
    missing = subprocess.run([sys.executable, str(SCRIPT), str(js_app_dir), str(tmp_path / "a.tar"), REF],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "app.wasm" in missing.stderr and "not found" in missing.stderr
    outside = tmp_path / "elsewhere.wasm"
    outside.write_bytes(b"\0asm\x01\0\0\0")
    (js_app_dir / "dist" / "app.wasm").symlink_to(outside)
    escaped = subprocess.run([sys.executable, str(SCRIPT), str(js_app_dir), str(tmp_path / "b.tar"), REF],
                             capture_output=True, text=True)
    assert escaped.returncode == 1 and not (tmp_path / "b.tar").exists()
