"""Precompiled blobs whose sha256 was checked since this boot, and the sha256 of wasm files read since this boot:
hashed once, not on every start.

A blob is machine code wasmtime maps and runs, so a corrupted one must never load (PrecompileCache verifies its
sha256 against the one recorded when it was stored). Hashing a 30 MB blob costs ~15 ms of every start, though,
and the blob cannot change unnoticed: only the shim writes the cache (root-only), and any write changes the
file's mtime and ctime, which the kernel sets (ctime cannot be set from user space). So a check is recorded as an
empty marker file named by the blob's identity (device, inode, size, mtime, ctime) and the recorded digest; a
marker counts only if it was written since this boot, because bit rot on disk changes no timestamp and a reboot
is when a node's page cache, which held the checked bytes, is gone. Markers of earlier boots are swept whenever
a new one is written.

The same holds for the wasm files an app names (KnownDigests): the precompile cache is keyed by the wasm's sha256,
and hashing js-echo's 10 MB app.wasm was 15-26 ms of each of its starts (cProfile of the load). A wasm read from
an image's rootfs is in a snapshot layer nobody writes; a write through the container's upper layer makes a new
inode (copy-up) or changes mtime and ctime. The identity leaves out st_dev: overlayfs gives each container's rootfs
mount its own device number while passing the layer file's inode, times and size through, so one image's file has
one identity in every container. An image chooses a file's content and mtime but not its inode or ctime, which the
kernel sets when containerd unpacks the layer.
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


class _BootMarks:
    """Marker files in one directory that count only if written since this boot; older ones are swept."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _sweep(self) -> None:
        booted = boot_time()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= booted:
                        os.unlink(entry.path)
                except OSError:
                    pass


class VerifiedBlobs(_BootMarks):
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


class KnownDigests(_BootMarks):
    """The sha256 of a wasm file hashed since this boot, by the file's identity (inode, size, mtime, ctime)."""

    def _marker(self, info: os.stat_result) -> Path:
        return self.directory / f"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}-{info.st_ctime_ns:x}"

    def lookup(self, info: os.stat_result) -> str | None:
        try:
            with open(self._marker(info), "rb") as marker:
                if os.fstat(marker.fileno()).st_mtime <= boot_time():
                    return None
                text = marker.read(65).decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        if len(text) != 64 or text.strip("0123456789abcdef"):
            return None
        return text

    def record(self, info: os.stat_result, sha256: str) -> None:
        """Best effort, written whole (rename) so a lookup never reads half a digest."""
        marker = self._marker(info)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sweep()
            tmp.write_bytes(sha256.encode("ascii"))
            os.replace(tmp, marker)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
