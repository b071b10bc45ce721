"""Fixtures for tests that drive containerd's CRI plugin (scripts/cri_client.py), as kubelet would.

Import the fixtures you use into the test module (pytest finds fixtures by name in the module's namespace):

    from tests.e2e.cri_support import cri_busybox, cri_containerd  # noqa: F401

`cri_containerd` is a private containerd (1.6, 1.7, 2.1; the shim from conftest's `shim_dir` on its PATH) with the
pause image imported and a CNI bridge of its own, yielding (ctrd, CriClient). Whatever pods a test leaves behind
(a failed assertion skips the test's own teardown) are stopped and removed before the daemon stops, so nothing
leaks into the next test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import VERSIONS, running_containerd
from cri_client import CriClient

# The image builder lives in scripts/ so that bench_density.py can build the same image without pytest.
from busybox_image import (  # noqa: E402, F401  (scripts/ is on sys.path via conftest; re-exported for the tests)
    BUSYBOX_APPLETS,
    BUSYBOX_REF,
    HTTPD_INDEX,
    HTTPD_ROOT,
    BusyboxMissingError,
)
from busybox_image import build_busybox_tar as _build_busybox_tar  # noqa: E402
from private_containerd import CRI_NAMESPACE, PrivateContainerd  # noqa: E402

NETWORK_READY_TIMEOUT_S = 30.0


def network_ready(client: CriClient) -> bool:
    return client.status().get("NetworkReady", (False, ""))[0]


def wait_network_ready(client: CriClient, timeout: float = NETWORK_READY_TIMEOUT_S) -> None:
    """CRI loads the conflist asynchronously (it watches conf_dir); RunPodSandbox before that fails."""
    deadline = time.monotonic() + timeout
    while not network_ready(client):
        if time.monotonic() > deadline:
            raise AssertionError(f"CRI network not ready after {timeout:.0f} s: {client.status()}")
        time.sleep(0.1)


def build_busybox_tar(directory: Path) -> Path:
    """A busybox-static image whose httpd serves HTTPD_ROOT (index.html = HTTPD_INDEX).

    A missing busybox-static fails the test with the set-up step to run (as tests/e2e/support.busybox_rootfs
    does), rather than erroring it with a traceback.
    """
    try:
        return _build_busybox_tar(directory)
    except BusyboxMissingError as error:
        pytest.fail(str(error))


def import_image(ctrd: PrivateContainerd, tar: Path, *, all_platforms: bool = False) -> None:
    """Import an OCI tar where CRI sees it (namespace k8s.io); wasm images need --all-platforms (without it ctr
    imports only the node's platform, and a wasip1/wasm image fails with "image might be filtered out")."""
    ctrd.ctr("images", "import", *(["--all-platforms"] if all_platforms else []), str(tar), namespace=CRI_NAMESPACE)


@contextlib.contextmanager
def cri_ready(ctrd: PrivateContainerd) -> Iterator[CriClient]:
    """A running daemon made ready for pods as a node is (CNI bridge, pause image, network ready); the client's
    leftover pods are torn down when the block ends (a failed assertion skips a test's own teardown)."""
    ctrd.enable_cni()
    ctrd.import_pause_image()
    client = CriClient(ctrd)
    try:
        wait_network_ready(client)
        yield client
    finally:
        try:
            client.teardown_all()
        finally:
            client.close()


@pytest.fixture(scope="module", params=VERSIONS)
def cri_containerd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shim_dir: Path,
                   shim_cache_dir: Path) -> Iterator[tuple[PrivateContainerd, CriClient]]:
    """(ctrd, client) for containerd 1.6, 1.7 and 2.1, with the pause image and a CNI bridge network."""
    workdir = tmp_path_factory.mktemp(f"cri-{request.param}")
    with running_containerd(request.param, workdir, shim_dir, shim_cache_dir) as ctrd, cri_ready(ctrd) as client:
        yield ctrd, client


@pytest.fixture(scope="module")
def cri_busybox(cri_containerd: tuple[PrivateContainerd, CriClient],
                tmp_path_factory: pytest.TempPathFactory) -> str:
    """BUSYBOX_REF, imported into the module's CRI containerd."""
    ctrd, _ = cri_containerd
    import_image(ctrd, build_busybox_tar(tmp_path_factory.mktemp("busybox-cri")))
    return BUSYBOX_REF
