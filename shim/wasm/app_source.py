"""Where a Wasm task's app comes from: the rootfs (spin.toml or a .wasm entrypoint), else the image's Spin layers.

Two halves, on either side of the sandbox's pivot_root:

* `lay_out_image_app` runs on the node, before the instance process enters the container. Only when the rootfs
  holds no app (judged from names alone: lexists, never following an image symlink) does it import grpc and ask
  containerd for the container's image: an artifact's layers are in containerd's content store, not in the rootfs
  (containerd >= 1.7 unpacks only tar layers: containerd client/image.go getLayers). It lays out the locked app from
  digest-checked blobs of the node's mirror into a directory the shim made (oci/source.py: component ids checked,
  archives streamed with bounded expansion), which the sandbox binds read-only at /.spin-shim/app.
* `load_task_app` runs inside the sandbox, where `/` is the container's root: every path the image names
  (spin.toml, runtime-config.toml, files, key-value stores) is resolved by the kernel there. An artifact's compiled
  components are kept in containerd's content store (oci/precompiled.py), reached through the socket the sandbox
  binds for the load only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.files import STAGING_DIR_NAME, sweep_stale_staging
from runtime.loader import MANIFEST_FILE_NAME, load_app, load_locked_app
from runtime.settings import RuntimeSettings
from shim.wasm.sandbox.root import APP, CONTAINERD_SOCKET, MIRROR_DIR_NAME, SHIM_DIR

if TYPE_CHECKING:
    from oci.source import ImageApp
    from shim.wasm.instance_process import InstancePlan

log = logging.getLogger("shim.wasm.app_source")

#: The container's root, seen from inside the sandbox.
CONTAINER_ROOT = Path("/")


@dataclass(frozen=True)
class LaidOutImageApp:
    """An artifact's app, laid out on the node; the sandbox binds `app_dir` in."""

    app_dir: Path
    image: ImageApp
    #: The staging directory holding `app_dir`, open: a load that fails inside the sandbox, where the node's
    #: paths are gone, still removes what it laid out.
    staging_fd: int

    def discard(self) -> None:
        shutil.rmtree(self.app_dir.name, dir_fd=self.staging_fd, ignore_errors=True)


def rootfs_may_hold_app(rootfs: Path, args: list[str]) -> bool:
    """Whether the app is to be looked for in the rootfs; names only, so no image symlink is followed here."""
    return os.path.lexists(rootfs / MANIFEST_FILE_NAME) or bool(args and args[0].endswith(".wasm"))


def needs_content_store(plan: InstancePlan) -> bool:
    return bool(plan.containerd_address) and not rootfs_may_hold_app(plan.rootfs, plan.args)


def lay_out_image_app(plan: InstancePlan) -> LaidOutImageApp | None:
    """On the node: the image's Spin app in a fresh directory, or None (a rootfs app, or no Spin layers).

    Raises ArtifactError, ContentStoreError."""
    if not needs_content_store(plan):
        return None
    from oci.client import ContainerdClient
    from oci.mirror import BlobMirror
    from oci.source import find_image_app

    mirror = BlobMirror(plan.cache_dir / MIRROR_DIR_NAME / plan.namespace)
    # The per-task locked-app directory lives with the runtime's staging dirs: named "<pid>-...", it is swept by
    # sweep_stale_staging once its instance process is gone (the next load on the node does it).
    sweep_stale_staging(plan.cache_dir)
    staging = plan.cache_dir / STAGING_DIR_NAME
    staging.mkdir(parents=True, exist_ok=True)
    app_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-oci-", dir=staging))
    os.chmod(app_dir, 0o755)  # a non-root task reads it through the sandbox's bind
    try:
        with ContainerdClient(plan.containerd_address, plan.namespace) as client:
            image_app = find_image_app(client, plan.task_id, plan.image_name, mirror, app_dir)
            if image_app is None:
                shutil.rmtree(app_dir, ignore_errors=True)
                return None
            swept = mirror.sweep(client, keep=image_app.digests)
    except BaseException:
        shutil.rmtree(app_dir, ignore_errors=True)
        raise
    if swept:
        log.debug("dropped %d mirrored blobs containerd no longer has", len(swept))
    return LaidOutImageApp(app_dir, image_app, os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def load_task_app(plan: InstancePlan, laid_out: LaidOutImageApp | None, settings: RuntimeSettings) -> Any:
    """Inside the sandbox: the loaded app (runtime.loader's LoadedApp or HttpApp), with `settings.cache_dir` the
    sandbox's view of the cache (shim.wasm.sandbox.root.SHIM_DIR).

    Raises AppError, ArtifactError, ContentStoreError."""
    if laid_out is None:
        return load_app(CONTAINER_ROOT, plan.args, plan.env, settings)
    from oci.client import ContainerdClient
    from oci.mirror import BlobMirror
    from oci.precompiled import ContentStoreBlobs

    image_app = laid_out.image
    mirror = BlobMirror(Path(SHIM_DIR) / MIRROR_DIR_NAME / plan.namespace)
    with ContainerdClient(CONTAINERD_SOCKET, plan.namespace) as client:
        store_settings = dataclasses.replace(settings, precompiled_store=lambda key: ContentStoreBlobs(
            client, mirror, key, image_app.manifest_digest, image_app.wasm_layers))
        return load_locked_app(Path(APP), plan.args, plan.env, store_settings, work_dir=CONTAINER_ROOT,
                               name=f"the locked app of image {image_app.image}")
