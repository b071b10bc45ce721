"""The small test guests (scripts/build_guests.py, built once and cached) and a counter of PrecompileCache's
compiles, shared by the loader and precompile tests: import the fixtures by name where a test takes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime.precompile import PrecompileCache

REPO = Path(__file__).resolve().parents[2]


def built_guests() -> Path:
    """scripts/build_guests.py's build directory, built if needed (hello.wasm, hello-component.wasm, ...)."""
    spec = importlib.util.spec_from_file_location("build_guests", REPO / "scripts" / "build_guests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build()
    return module.BUILD_DIR


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return built_guests()


@pytest.fixture
def compiles(monkeypatch) -> list[str]:
    """Names of the wasm files PrecompileCache set out to compile during the test (the parent's side of it)."""
    seen: list[str] = []
    original = PrecompileCache._compile

    def counting(self, wasm_path, kind, *, name):
        seen.append(Path(wasm_path).name)
        return original(self, wasm_path, kind, name=name)

    monkeypatch.setattr(PrecompileCache, "_compile", counting)
    return seen
