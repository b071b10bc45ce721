"""Precompiled blobs whose sha256 was checked since this boot: checked once, not on every start.

A blob is machine code wasmtime maps and runs, so a corrupted one must never load (PrecompileCache verifies its
sha256 against the one recorded when it was stored). Hashing a 30 MB blob costs ~15 ms of every start, though,
and the blob cannot change unnoticed: only the shim writes the cache (root-only), and any write changes the
file's mtime and ctime, which the kernel sets (ctime cannot be set from user space). So a check is recorded as an
empty marker file named by the blob's identity (device, inode, size, mtime, ctime) and the recorded digest; a
marker counts only if it was written since this boot, because bit rot on disk changes no timestamp and a reboot
is when a node's page cache, which held the checked bytes, is gone. Markers of earlier boots are swept whenever
a new one is written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Under the precompile cache's directory, beside the fingerprint directories.
VERIFIED_DIR_NAME = "verified"


def boot_time() -> float:
    """Wall-clock time of this boot (CLOCK_BOOTTIME needs no /proc, which the sandbox lacks)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class VerifiedBlobs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _marker(self, info: os.stat_result, sha256: str) -> Path:
        return self.directory / (f"{info.st_dev:x}-{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}-"
                                 f"{info.st_ctime_ns:x}-{sha256}")

    def verified(self, info: os.stat_result, sha256: str) -> bool:
        """Whether the file ``info`` describes was found to have ``sha256`` since this boot."""
        try:
            return self._marker(info, sha256).stat().st_mtime > boot_time()
        except OSError:
            return False

    def record(self, info: os.stat_result, sha256: str) -> None:
        """Best effort: a marker that cannot be written only means the next start hashes again."""
        marker = self._marker(info, sha256)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sweep()
            marker.touch()
            os.utime(marker)  # an existing marker of an earlier boot counts from now
        except OSError:
            pass

    def _sweep(self) -> None:
        booted = boot_time()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= booted:
                        os.unlink(entry.path)
                except OSError:
                    pass
