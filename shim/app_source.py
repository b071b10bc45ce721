"""Where a Wasm task's app comes from: the rootfs (spin.toml or a .wasm entrypoint), else the image's Spin layers.

The rootfs is looked at first because it costs nothing: an image built FROM scratch with spin.toml has it there,
and so does every image on containerd 1.6, which cannot unpack artifacts (reference/containerd-test-env.md §4).
Only when the rootfs holds no app does the instance process import grpc and ask containerd for the container's
image; an image without Spin layers then gets the same "no app found" error as before. The image's compiled
components are kept in containerd's content store (oci/precompiled.py) instead of the node-local cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.files import STAGING_DIR_NAME, sweep_stale_staging
from runtime.loader import MANIFEST_FILE_NAME, load_app, load_locked_app
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from shim.instance_process import InstancePlan

log = logging.getLogger("shim.app_source")

#: Under the cache dir, per namespace: the node's mirror of content-store blobs (oci/mirror.py).
MIRROR_DIR_NAME = "content"


def rootfs_has_app(rootfs: Path, args: list[str]) -> bool:
    return (rootfs / MANIFEST_FILE_NAME).is_file() or bool(args and args[0].endswith(".wasm"))


def load_task_app(plan: InstancePlan, settings: RuntimeSettings) -> Any:
    """The loaded app (runtime.loader's LoadedApp or HttpApp). Raises AppError, ArtifactError, ContentStoreError."""
    if rootfs_has_app(plan.rootfs, plan.args) or not plan.containerd_address:
        return load_app(plan.rootfs, plan.args, plan.env, settings)
    from oci.client import ContainerdClient
    from oci.mirror import BlobMirror
    from oci.precompiled import ContentStoreBlobs
    from oci.source import find_image_app

    mirror = BlobMirror(plan.cache_dir / MIRROR_DIR_NAME / plan.namespace)
    # The per-task locked-app directory lives with the runtime's staging dirs: named "<pid>-...", it is swept by
    # sweep_stale_staging once its instance process is gone (the next load on the node does it).
    sweep_stale_staging(plan.cache_dir)
    staging = plan.cache_dir / STAGING_DIR_NAME
    staging.mkdir(parents=True, exist_ok=True)
    app_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-oci-", dir=staging))
    try:
        with ContainerdClient(plan.containerd_address, plan.namespace) as client:
            image_app = find_image_app(client, plan.task_id, plan.image_name, mirror, app_dir)
            if image_app is None:
                shutil.rmtree(app_dir, ignore_errors=True)
                return load_app(plan.rootfs, plan.args, plan.env, settings)
            store_settings = dataclasses.replace(settings, precompiled_store=lambda key: ContentStoreBlobs(
                client, mirror, key, image_app.manifest_digest, image_app.wasm_layers))
            app = load_locked_app(app_dir, plan.args, plan.env, store_settings, work_dir=plan.rootfs,
                                  name=f"the locked app of image {image_app.image}")
            swept = mirror.sweep(client, keep=image_app.digests)
    except BaseException:
        shutil.rmtree(app_dir, ignore_errors=True)
        raise
    if swept:
        log.debug("dropped %d mirrored blobs containerd no longer has", len(swept))
    return app
