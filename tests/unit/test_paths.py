"""runtime.paths.resolve_in_root on paths the kernel refuses to look up: image content, so the image's error
(PathEscapeError, which every caller turns into a ManifestError / AppNotFoundError), never an OSError that the
instance process would report as its own failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.paths import PathEscapeError, resolve_in_root


def test_a_name_over_255_bytes_is_the_paths_error(tmp_path: Path) -> None:
    with pytest.raises(PathEscapeError) as caught:
        resolve_in_root(tmp_path, "x" * 300 + ".wasm")
    assert str(caught.value) == "'" + "x" * 160 + "'... (305 characters): File name too long"
    (tmp_path / "dir").mkdir()
    with pytest.raises(PathEscapeError) as caught:
        resolve_in_root(tmp_path, "dir/" + "y" * 300 + "/app.wasm")
    assert str(caught.value).endswith(" (looking up 'dir/" + "y" * 156 + "'... (304 characters)): File name too long")


def test_a_path_over_path_max_is_refused_before_any_lookup_without_quoting_it(tmp_path: Path) -> None:
    with pytest.raises(PathEscapeError) as caught:
        resolve_in_root(tmp_path, "a/" * 300_000 + "app.wasm")
    assert str(caught.value) == "a path of 600008 bytes is longer than Linux allows (4095)"


def test_a_long_path_within_path_max_is_still_looked_up(tmp_path: Path) -> None:
    deep = "/".join(["d" * 254] * 16)[:3800]  # with the root's own path still under PATH_MAX; names within NAME_MAX
    assert resolve_in_root(tmp_path, deep) == tmp_path.resolve().joinpath(*deep.split("/"))


def test_ordinary_paths_resolve_as_before(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "app.wasm").write_bytes(b"")
    (tmp_path / "app.wasm").symlink_to("/bin/app.wasm")  # absolute: from the image's root
    assert resolve_in_root(tmp_path, "/app.wasm") == tmp_path.resolve() / "bin" / "app.wasm"
    with pytest.raises(PathEscapeError, match="outside the app root"):
        resolve_in_root(tmp_path, "../etc/passwd")
