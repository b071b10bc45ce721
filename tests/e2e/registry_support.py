"""The e2e tests' registry fixture: one real `docker-registry` on 127.0.0.1 per session (scripts/local_registry.py).

Test modules use the fixture by importing it::

    from tests.e2e.registry_support import registry  # noqa: F401
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import started_or_failed

from local_registry import Registry, RegistryError, trust_registry  # noqa: E402  (scripts/ is on sys.path)


def running_registry(workdir: Path) -> contextlib.AbstractContextManager[Registry]:
    return started_or_failed(Registry(workdir), RegistryError)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for the session (repositories keep tests apart); stopped at the session's end."""
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        yield started


def push_app(app: Path, ref: str) -> str:
    """`containerd-shim-spin-v2 push`, as a user runs it; the manifest digest it printed."""
    shim = Path(sys.executable).parent / "containerd-shim-spin-v2"
    result = subprocess.run([str(shim), "push", str(app), ref], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().rsplit(" ", 1)[-1]


__all__ = ["Registry", "RegistryError", "push_app", "registry", "running_registry", "trust_registry"]
