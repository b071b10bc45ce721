#!/usr/bin/env python3
"""Build the CRI sandbox ("pause") image the e2e tests import into containerd's `k8s.io` namespace.

Why: containerd's CRI plugin runs every pod's sandbox from `sandbox_image`, and registry.k8s.io is unreachable here
(without a local one every RunPodSandbox fails: `failed to get sandbox image "registry.k8s.io/pause:3.x"`). So we
compile a tiny static pause binary (gcc -static -Os; gcc and
libc.a come from scripts/setup.sh) and pack it with mkoci.py as `localhost/spin-shim-test/pause:1`, entrypoint
`/pause`. The tar is cached under /var/cache/containerd-shim-spin-test/pause/<key>/ where the key hashes the C
source, the compiler flags and mkoci.py, so an edit to any of them rebuilds and an unchanged tree never does.

CLI:  build_pause.py [--print-path]     builds if needed and prints the OCI tar's path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))  # mkoci is a sibling script, not a package

import mkoci  # noqa: E402

PAUSE_IMAGE = "localhost/spin-shim-test/pause:1"  # must equal private_containerd.SANDBOX_IMAGE
DEFAULT_CACHE_ROOT = Path("/var/cache/containerd-shim-spin-test")
CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Werror")

# PID 1 of the pod: it holds the namespaces open, so it must block until stopped and exit 0 on SIGTERM/SIGINT (CRI
# stops the sandbox with SIGTERM; a non-zero exit is reported as a failed sandbox). As PID 1 it also inherits every
# orphan of the pod (shared PID namespace), so it reaps them or they stay zombies.
PAUSE_C = r"""
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) { (void)signo; _exit(0); }

static void on_child(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");
    if (sigaction(SIGINT, &stop, NULL) || sigaction(SIGTERM, &stop, NULL) || sigaction(SIGCHLD, &child, NULL)) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) pause();
}
"""


def cache_root() -> Path:
    return Path(os.environ.get("SPIN_SHIM_CACHE", str(DEFAULT_CACHE_ROOT)))


def cache_key() -> str:
    """Changes whenever the image bytes could: the C source, the flags, the packer."""
    digest = hashlib.sha256()
    for part in (PAUSE_C.encode(), " ".join(CFLAGS).encode(), PAUSE_IMAGE.encode(), Path(mkoci.__file__).read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def compile_pause(binary: Path) -> None:
    """gcc the pause source into `binary` (static, so the image needs nothing but this one file)."""
    source = binary.with_name(binary.name + ".c")
    source.write_text(PAUSE_C)
    result = subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(source)], capture_output=True, text=True,
                            check=False)
    source.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"gcc failed to build pause (run scripts/setup.sh for gcc/libc6-dev):\n{result.stderr}")
    os.chmod(binary, 0o755)


def pause_image_tar() -> Path:
    """The cached OCI tar of the pause image, built first if missing.

    Concurrent builders (parallel test sessions) are safe: each builds in its own temp dir and the final tar is
    renamed into place, so a reader sees either no tar or a whole one.
    """
    out_dir = cache_root() / "pause" / cache_key()
    tar = out_dir / "pause-oci.tar"
    if tar.is_file():
        return tar
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as scratch_name:
        scratch = Path(scratch_name)
        rootfs = scratch / "rootfs"
        rootfs.mkdir()
        compile_pause(rootfs / "pause")
        built = scratch / "pause-oci.tar"
        mkoci.build_image_tar(rootfs, built, PAUSE_IMAGE, entrypoint=["/pause"])
        os.replace(built, tar)
    return tar


def main() -> int:
    print(pause_image_tar())
    return 0


if __name__ == "__main__":
    sys.exit(main())
