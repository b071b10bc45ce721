"""The e2e tests' registry fixture: one real `docker-registry` on 127.0.0.1 per session (scripts/local_registry.py).

Test modules use the fixture by importing it::

    from tests.e2e.registry_support import registry  # noqa: F401
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_registry import Registry, RegistryError, trust_registry  # noqa: E402  (scripts/ is on sys.path)


@contextlib.contextmanager
def running_registry(workdir: Path) -> Iterator[Registry]:
    registry = Registry(workdir)
    try:
        registry.start()
    except RegistryError as exc:
        pytest.fail(str(exc))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for the session (repositories keep tests apart); stopped at the session's end."""
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        yield started


__all__ = ["Registry", "RegistryError", "registry", "running_registry", "trust_registry"]
