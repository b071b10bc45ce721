#!/usr/bin/env python3
"""Build the node-installer OCI image: busybox, deploy/node-installer's scripts and the node bundle.

    .venv/bin/python scripts/build_installer_image.py REF [--bundle dist/containerd-shim-spin-...tar.gz] [--out DIR]
    # -> DIR/containerd-shim-spin-installer.tar (an OCI image layout tar); then, e.g.
    ctr images import DIR/containerd-shim-spin-installer.tar && ctr images push REF

deploy/node-installer/daemonset.yaml runs it: its init container (install.sh) copies the bundle onto the node
and runs the bundle's own `install` there (chroot into the node's root), its long-running container (idle.sh)
only keeps the pod alive. The image needs a shell, tar and a few tools for that and nothing else: busybox-static
(a static ELF: no libc in the image), as scripts/busybox_image.py builds the tests' runc image. The bundle is the
tarball scripts/build_bundle.py writes (built here first if --bundle is not given), stored as is: install.sh
unpacks it on the node, where its pycs, symlinks and modes must survive, which the image layer's own
normalisation (mkoci: fixed mtimes) would not keep for an unpacked tree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from build_bundle import REPO, build_bundle  # scripts/ is on sys.path: this script's own directory
from busybox_image import busybox_rootfs
from mkoci import build_image_tar

INSTALLER_DIR = REPO / "deploy" / "node-installer"
SCRIPTS = ("install.sh", "idle.sh")
IMAGE_NAME = "containerd-shim-spin-installer.tar"
#: What install.sh and idle.sh run.
APPLETS = ("sh", "tar", "gzip", "sed", "cat", "cp", "mv", "rm", "rmdir", "mkdir", "chroot", "readlink", "basename",
           "dirname", "tr", "kill", "ls", "tail", "awk", "echo", "sleep", "test", "[", "true", "false", "date")


def build_installer_image(ref: str, bundle: Path, out_dir: Path) -> Path:
    """The image tar, named `ref`, holding `bundle` under /installer/; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spin-shim-installer.") as scratch:
        rootfs = busybox_rootfs(Path(scratch) / "rootfs", APPLETS, extra_dirs=("installer", "host"))
        for script in SCRIPTS:
            shutil.copy2(INSTALLER_DIR / script, rootfs / "installer" / script)
            (rootfs / "installer" / script).chmod(0o755)
        shutil.copy2(bundle, rootfs / "installer" / bundle.name)
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        image = out_dir / IMAGE_NAME
        build_image_tar(rootfs, image, ref, entrypoint=["/bin/sh", "/installer/install.sh"],
                        labels={"org.opencontainers.image.title": "containerd-shim-spin node installer"})
    return image


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the containerd-shim-spin node-installer OCI image tar.")
    parser.add_argument("ref", help="the image's name, e.g. registry.example.com/containerd-shim-spin-installer:0.1.0")
    parser.add_argument("--bundle", type=Path, help="the bundle tarball (default: build it into --out)")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output directory (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    bundle = args.bundle or build_bundle(args.out)
    image = build_installer_image(args.ref, bundle, args.out)
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
