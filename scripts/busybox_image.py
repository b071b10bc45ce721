"""A busybox-static Linux image whose httpd serves a page: the runc reference workload of CRI tests and benchmarks.

Why in scripts/: the density benchmark (bench_density.py) compares Spin pods with busybox httpd pods and must not
import tests/e2e (which drags pytest in); tests/e2e/cri_support.py re-exports this builder so the CRI tests and the
benchmark run the very same image. busybox-static is a static ELF, so the rootfs needs no libc and the image is
built from the host's /bin/busybox in well under a second, without a registry or Docker.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from mkoci import build_image_tar  # scripts/ is on sys.path: the importer's (conftest, or a script run directly)

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (scripts/setup.sh installs it)
MOUNT_POINTS = ("bin", "etc", "proc", "sys", "dev", "tmp", "root")
BUSYBOX_REF = "docker.io/spin-shim-test/busybox-cri:latest"
BUSYBOX_APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "false", "httpd", "ip", "wget", "env", "hostname",
                   "dd", "head", "yes")
HTTPD_ROOT = "/www"
HTTPD_INDEX = "hello from busybox httpd\n"


def httpd_command(port: int) -> list[str]:
    """httpd serving HTTPD_ROOT in the foreground: a container's main process must not detach (-f)."""
    return ["httpd", "-f", "-p", str(port), "-h", HTTPD_ROOT]


class BusyboxMissingError(FileNotFoundError):
    """/bin/busybox is absent: a set-up step was skipped (the message names it)."""


def busybox_rootfs(rootfs: Path, applets: Iterable[str], extra_dirs: Iterable[str] = ()) -> Path:
    """A Linux rootfs of busybox-static: /bin/busybox, applet symlinks, the usual empty mount points."""
    if not BUSYBOX.exists():
        raise BusyboxMissingError(f"{BUSYBOX} missing: run scripts/setup.sh (busybox-static)")
    if rootfs.exists():
        shutil.rmtree(rootfs)
    for directory in (*MOUNT_POINTS, *extra_dirs):
        (rootfs / directory).mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in applets:
        (rootfs / "bin" / applet).symlink_to("busybox")
    return rootfs


def build_busybox_tar(directory: Path) -> Path:
    """A busybox-static image (BUSYBOX_REF) whose httpd serves HTTPD_ROOT (index.html = HTTPD_INDEX)."""
    rootfs = busybox_rootfs(directory / "rootfs", BUSYBOX_APPLETS, extra_dirs=[HTTPD_ROOT.lstrip("/")])
    (rootfs / HTTPD_ROOT.lstrip("/") / "index.html").write_text(HTTPD_INDEX)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    tar = directory / "busybox-cri.tar"
    build_image_tar(rootfs, tar, BUSYBOX_REF, entrypoint=["/bin/sh"])
    return tar
