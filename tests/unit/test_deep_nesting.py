"""Image documents nested deeper than Python's recursion limit (spin.toml, runtime-config.toml, spin.lock, an
artifact's manifest): tomllib and json parse nesting recursively, so such a file raised RecursionError, which no
error path of the instance process expected (Create failed as "instance process exited during create", a
traceback in the container log). Each is now the file's own error, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from oci.artifact import parse_manifest_json
from oci.errors import ArtifactError
from runtime.errors import ManifestError
from runtime.locked_app import parse_locked_app
from runtime.manifest import parse_manifest
from runtime.spin.runtime_config import RuntimeConfigError, parse_runtime_config

DEPTH = 100_000  # well past sys.getrecursionlimit() (1000), well within the 1 MiB file caps
DEEP_TOML = "spin_manifest_version = 2\na = " + "[" * DEPTH + "]" * DEPTH + "\n"
DEEP_JSON = "[" * DEPTH + "]" * DEPTH


def test_spin_toml() -> None:
    with pytest.raises(ManifestError, match=r"^/app/spin\.toml: invalid TOML: arrays or inline tables nested too "
                                            r"deeply$"):
        parse_manifest(DEEP_TOML, "/app/spin.toml")


def test_runtime_config_toml(tmp_path: Path) -> None:
    deep = "x = " + "{ a = " * DEPTH + "1" + " }" * DEPTH + "\n"
    with pytest.raises(RuntimeConfigError, match="runtime-config.toml: invalid TOML: .* nested too deeply"):
        parse_runtime_config(deep, tmp_path / "runtime-config.toml", tmp_path)


def test_spin_lock(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_locked_app(DEEP_JSON, tmp_path / "spin.lock")


def test_artifact_manifest() -> None:
    with pytest.raises(ArtifactError, match="^image example.com/app:v1: its manifest is not JSON"):
        parse_manifest_json(DEEP_JSON.encode(), "example.com/app:v1")
