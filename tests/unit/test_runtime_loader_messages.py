"""Load errors name files as the image has them, never by the node path of the rootfs."""

from pathlib import Path

import pytest

from runtime.errors import AppNotFoundError, ManifestError
from runtime.loader import load_app
from runtime.settings import RuntimeSettings


def test_missing_wasm_is_named_by_its_image_path(tmp_path: Path):
    rootfs = tmp_path / "bundle" / "rootfs"
    rootfs.mkdir(parents=True)
    with pytest.raises(AppNotFoundError) as info:
        load_app(rootfs, ["/app/nope.wasm"], {}, RuntimeSettings(cache_dir=tmp_path / "cache"))
    message = str(info.value)
    assert "/app/nope.wasm" in message
    assert str(tmp_path) not in message


def test_manifest_errors_name_spin_toml_by_its_image_path(tmp_path: Path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "spin.toml").write_text("spin_manifest_version = 2\n[application\n")
    with pytest.raises(ManifestError) as info:
        load_app(rootfs, ["/"], {}, RuntimeSettings(cache_dir=tmp_path / "cache"))
    message = str(info.value)
    assert message.startswith("/spin.toml")
    assert str(tmp_path) not in message
