"""The sha256 of a wasm file is computed once per file identity and boot (runtime.verified_blobs.KnownDigests,
runtime.compiled._sniff): a warm start does not hash the app's wasm again, and a file whose bytes changed never
gets the digest of what it held before (the precompile cache is keyed by that digest: a stale one would run the
machine code compiled from other bytes)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from runtime import compiled
from runtime.verified_blobs import KnownDigests, boot_time

REPO = Path(__file__).resolve().parents[2]
#: The smallest valid wasm module: the header alone.
EMPTY_MODULE = b"\0asm\x01\0\0\0"


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """Sizes of the files _sniff read in full during the test."""
    from runtime import capped_read  # _sniff imports read_chunks from it on each call

    sizes: list[int] = []

    real = capped_read.read_chunks

    def counting(fd, cap):
        sizes.append(os.fstat(fd).st_size)
        return real(fd, cap)

    monkeypatch.setattr(capped_read, "read_chunks", counting)
    return sizes


def wasm_file(path: Path, padding: bytes = b"") -> Path:
    # A custom section (id 0) holding the padding keeps it a valid module of any size.
    body = b"\x04pad!" + padding
    size = len(body)
    leb = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    path.write_bytes(EMPTY_MODULE + b"\0" + bytes(leb) + body)
    return path


def test_a_file_is_hashed_once_and_its_digest_is_the_real_one(tmp_path, hashed):
    wasm = wasm_file(tmp_path / "app.wasm", b"x" * 100_000)
    first = compiled._sniff(wasm, "app", tmp_path / "cache")
    second = compiled._sniff(wasm, "app", tmp_path / "cache")
    assert first == second
    assert first[1] == hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert len(hashed) == 1  # the second call read only the header


def test_new_bytes_in_the_same_inode_with_size_and_mtime_put_back_are_hashed_again(tmp_path, hashed):
    """What a container's process can do to a file in its writable layer: rewrite it in place and set its mtime
    back. The kernel moves the ctime, so the identity differs and the new bytes get their own digest."""
    wasm = wasm_file(tmp_path / "app.wasm", b"a" * 4096)
    _, before = compiled._sniff(wasm, "app", tmp_path / "cache")
    stat = wasm.stat()
    with open(wasm, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"b")
    os.utime(wasm, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (wasm.stat().st_ino, wasm.stat().st_size, wasm.stat().st_mtime_ns) == (
        stat.st_ino, stat.st_size, stat.st_mtime_ns)
    _, after = compiled._sniff(wasm, "app", tmp_path / "cache")
    assert after == hashlib.sha256(wasm.read_bytes()).hexdigest() != before
    assert len(hashed) == 2


def test_a_copy_has_its_own_identity(tmp_path, hashed):
    wasm = wasm_file(tmp_path / "app.wasm", b"c" * 4096)
    compiled._sniff(wasm, "app", tmp_path / "cache")
    copy = tmp_path / "copy.wasm"
    shutil.copy2(wasm, copy)  # same size and mtime, another inode
    assert compiled._sniff(copy, "copy", tmp_path / "cache")[1] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert len(hashed) == 2


def test_a_digest_recorded_before_this_boot_does_not_count(tmp_path, hashed):
    wasm = wasm_file(tmp_path / "app.wasm")
    compiled._sniff(wasm, "app", tmp_path / "cache")
    (marker,) = (tmp_path / "cache" / "precompiled" / compiled.DIGESTS_DIR_NAME).iterdir()
    before_boot = boot_time() - 60
    os.utime(marker, (before_boot, before_boot))
    compiled._sniff(wasm, "app", tmp_path / "cache")
    assert len(hashed) == 2
    (renewed,) = (tmp_path / "cache" / "precompiled" / compiled.DIGESTS_DIR_NAME).iterdir()
    assert renewed.stat().st_mtime > boot_time()


@pytest.mark.parametrize("content", [b"", b"f" * 63, b"g" * 64, b"0" * 63 + b"\n", b"\xff" * 64])
def test_a_marker_that_is_not_a_digest_is_ignored(tmp_path, content):
    wasm = wasm_file(tmp_path / "app.wasm")
    digests = KnownDigests(tmp_path / "digests")
    digests.record(wasm.stat(), "0" * 64)
    assert digests.lookup(wasm.stat()) == "0" * 64
    (marker,) = (tmp_path / "digests").iterdir()
    marker.write_bytes(content)
    assert digests.lookup(wasm.stat()) is None


def test_an_unwritable_cache_only_means_hashing_again(tmp_path, hashed):
    wasm = wasm_file(tmp_path / "app.wasm")
    (tmp_path / "cache").write_text("not a directory")
    for _ in range(2):
        assert compiled._sniff(wasm, "app", tmp_path / "cache")[1] == hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert len(hashed) == 2
