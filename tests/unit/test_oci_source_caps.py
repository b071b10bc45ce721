"""Bounded reads of untrusted image content in oci/source.py (and the mirror and client halves they use).

Files archives (gzipped tars) are built here, small, and the caps are lowered by patching oci.source's constants, so
each test attacks one cap the way a hostile image would: a file declaring more than a cap, entries past the count,
tar headers whose data tarfile would read whole, sparse files, and a stream that expands past the archive's or the
image's cap. Every refusal must name the image, the layer and the cap, and leave nothing in the mirror (the
archive is unpacked into a staging dir, removed on refusal); and the memory a 64 MiB member costs must stay a few
chunks, not the member.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

import oci.source
from oci import media_types as mt
from oci.client import ContainerdClient, Descriptor
from oci.errors import ArtifactError, BlobTooLargeError
from oci.mirror import UNPACKED_MARKER, BlobMirror
from oci.source import _ImageBudget, _unpack_archive, find_image_app

IMAGE = "example.com/bomb:1"
LAYER = "sha256:" + "1" * 64
MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def archive(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]],
            tar_format: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=tar_format) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def raw_archive(path: Path, tar_bytes: bytes) -> Path:
    """A gzipped tar stream written byte for byte (for headers tarfile would not write itself)."""
    with gzip.open(path, "wb") as out:
        out.write(tar_bytes + bytes(2 * tarfile.BLOCKSIZE))
    return path


@pytest.fixture
def mirror(tmp_path) -> BlobMirror:
    return BlobMirror(tmp_path / "mirror")


def mirrored(mirror: BlobMirror) -> dict[str, bytes]:
    """The files LAYER left in the mirror, by name (none when it was refused); every one must be whole (named by its
    own digest), and nothing else may be there: no staging dir, no partial or tmp file, no file among the blobs."""
    assert not mirror.blobs.exists() or list(mirror.blobs.iterdir()) == [], "an archive's file among the blobs"
    left = sorted(p.name for p in mirror.archives.iterdir()) if mirror.archives.exists() else []
    layer_dir = mirror.archive_dir(LAYER)
    assert left in ([], [layer_dir.name]), f"a staging dir or another archive is left in the mirror: {left}"
    if not left:
        return {}
    files = {p.name: p.read_bytes() for p in layer_dir.iterdir() if p.name != UNPACKED_MARKER}
    assert (layer_dir / UNPACKED_MARKER).is_file()
    for name, data in files.items():
        assert name == hashlib.sha256(data).hexdigest(), f"a partial or tmp file is left in the mirror: {name}"
    return files


def refused(path: Path, mirror: BlobMirror, budget: _ImageBudget | None = None) -> str:
    with pytest.raises(ArtifactError) as info:
        _unpack_archive(path, LAYER, mirror, IMAGE, budget)
    message = str(info.value)
    assert message.startswith(f"image {IMAGE}: files archive layer {LAYER}")
    return message


# ---------------------------------------------------------------------------------------------------- archives


def test_files_are_mirrored_under_their_digests_and_the_rest_is_skipped(tmp_path, mirror):
    directory = tarfile.TarInfo("static")
    directory.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("static/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    path = archive(tmp_path / "a.tar.gz", [
        (directory, None), file_entry("static/index.html", b"<h1>hi</h1>"), (link, None), file_entry("empty", b""),
    ])
    digests = _unpack_archive(path, LAYER, mirror, IMAGE)
    assert digests == [sha(b"<h1>hi</h1>"), sha(b"")]
    assert mirrored(mirror) == {d.partition(":")[2]: data for d, data in zip(digests, [b"<h1>hi</h1>", b""])}
    mode = (mirror.archive_dir(LAYER) / digests[0].partition(":")[2]).stat().st_mode & 0o777
    assert mode == 0o644  # a non-root task reads the hard link of it


def test_a_file_declaring_more_than_the_file_cap_is_refused_before_it_is_written(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_MEMBER_BYTES", 4096)
    path = archive(tmp_path / "a.tar.gz", [file_entry("small", b"ok"), file_entry("big.bin", bytes(4097))])
    message = refused(path, mirror)
    assert message.endswith(
        "file 'big.bin' is 4097 bytes, more than 4096 bytes, the most one file of a files archive may be")
    assert mirrored(mirror) == {}  # not even the whole file before it


def test_files_expanding_past_the_archive_cap_are_refused(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_EXPANDED_BYTES", MiB)
    path = archive(tmp_path / "a.tar.gz", [file_entry(f"f{i}", bytes([i]) * (300 << 10)) for i in range(4)])
    message = refused(path, mirror)
    assert message.endswith(f"file 'f3' ({300 << 10} bytes) expands past 1 MiB, the most one files archive may "
                            "expand to")
    assert mirrored(mirror) == {}


def test_the_stream_itself_is_capped_whatever_its_bytes_are(tmp_path, mirror, monkeypatch):
    """Data tarfile skips (an unknown entry type) is never written, but it is still expansion to pay for."""
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_EXPANDED_BYTES", MiB)
    odd = tarfile.TarInfo("odd")
    odd.type, odd.size = b"Z", 2 * MiB
    path = raw_archive(tmp_path / "a.tar.gz", odd.tobuf(tarfile.GNU_FORMAT) + bytes(2 * MiB))
    assert refused(path, mirror).endswith(": expands past 1 MiB, the most one files archive may expand to")
    assert mirrored(mirror) == {}


def test_too_many_entries_are_refused(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_MEMBERS", 10)
    entries = []
    for i in range(11):
        info = tarfile.TarInfo(f"d{i}")
        info.type = tarfile.DIRTYPE
        entries.append((info, None))
    assert refused(archive(tmp_path / "a.tar.gz", entries), mirror).endswith(
        ": holds more than 10 entries, the most a files archive may hold")
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_MEMBERS", 11)
    assert _unpack_archive(tmp_path / "a.tar.gz", LAYER, mirror, IMAGE) == []


def test_the_image_cap_spans_its_archives(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "IMAGE_MAX_EXPANDED_BYTES", MiB)
    budget = _ImageBudget(MiB)
    first = archive(tmp_path / "a.tar.gz", [file_entry("a", b"a" * (600 << 10))])
    second = archive(tmp_path / "b.tar.gz", [file_entry("b", b"b" * (600 << 10))])
    _unpack_archive(first, LAYER, mirror, IMAGE, budget)
    assert refused(second, mirror, budget).endswith(
        f"file 'b' ({600 << 10} bytes) expands past 1 MiB with the image's other files archives, the most all "
        "files archives of an image may expand to")
    assert mirrored(mirror) == {sha(b"a" * (600 << 10)).partition(":")[2]: b"a" * (600 << 10)}  # the first only


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu-longname", "pax"])
def test_a_header_too_big_is_refused_before_tarfile_reads_it(tmp_path, mirror, monkeypatch, tar_format):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_HEADER_BYTES", 4096)
    path = archive(tmp_path / "a.tar.gz", [file_entry("x" * 5000, b"data")], tar_format)
    message = refused(path, mirror)
    assert ": a tar header holds 50" in message and message.endswith("more than the 4096 bytes a tar header may hold")
    assert mirrored(mirror) == {}


def test_a_long_name_bomb_is_not_read_into_memory(tmp_path, mirror):
    """A GNU long-name header of 64 MiB (tarfile would read it whole): refused at the default 1 MiB cap, with a
    traced peak far below the header's size."""
    longname = tarfile.TarInfo("././@LongLink")
    longname.type, longname.size = tarfile.GNUTYPE_LONGNAME, 64 * MiB
    path = tmp_path / "a.tar.gz"
    with gzip.open(path, "wb") as out:
        out.write(longname.tobuf(tarfile.GNU_FORMAT))
        for _ in range(64):
            out.write(b"x" * MiB)
        out.write(tarfile.TarInfo("f").tobuf(tarfile.GNU_FORMAT) + bytes(2 * tarfile.BLOCKSIZE))
    tracemalloc.start()
    try:
        message = refused(path, mirror)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.endswith(f"a tar header holds {64 * MiB} bytes, more than the 1 MiB a tar header may hold")
    assert peak < 8 * MiB


def test_global_pax_headers_are_capped_together(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_HEADER_BYTES", 4096)
    headers = b"".join(
        tarfile.TarInfo.create_pax_global_header({f"key{i}": "v" * 3000}) for i in range(3))
    path = raw_archive(tmp_path / "a.tar.gz", headers)
    assert refused(path, mirror).endswith(
        ": its global pax headers hold more than 4096 bytes, the most a tar header may hold")


def sparse_gnu() -> bytes:
    info = tarfile.TarInfo("holes")
    info.type = tarfile.GNUTYPE_SPARSE
    return info.tobuf(tarfile.GNU_FORMAT)


def sparse_pax(headers: dict[str, str]) -> bytes:
    info = tarfile.TarInfo("holes")
    info.pax_headers = headers
    return info.tobuf(tarfile.PAX_FORMAT) + bytes(tarfile.BLOCKSIZE)


@pytest.mark.parametrize("tar_bytes", [
    pytest.param(sparse_gnu(), id="gnu"),
    pytest.param(sparse_pax({"GNU.sparse.map": "0,1", "GNU.sparse.realsize": "1"}), id="pax-0.1"),
    pytest.param(sparse_pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "holes",
                             "GNU.sparse.realsize": "1"}), id="pax-1.0"),
])
def test_sparse_files_are_refused(tmp_path, mirror, tar_bytes):
    path = raw_archive(tmp_path / "a.tar.gz", tar_bytes)
    assert refused(path, mirror).endswith(": holds a sparse file, which Spin's push never makes; refusing it")


def test_a_corrupt_archive_leaves_no_partial_file(tmp_path, mirror):
    whole = archive(tmp_path / "a.tar.gz", [file_entry("random", os.urandom(3 * MiB))]).read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert "is not a gzipped tar" in refused(path, mirror)
    assert mirrored(mirror) == {}  # not even the tmp file of the half-read member
    assert list(mirror.archives.iterdir()) == []


def test_a_big_member_costs_a_few_chunks_of_memory(tmp_path, mirror):
    """64 MiB of zeros (about 64 KiB of gzip), mirrored with a traced peak of a few MiB: the member is streamed."""
    size = 64 * MiB
    path = tmp_path / "zeros.tar.gz"
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    with gzip.open(path, "wb") as out:
        out.write(info.tobuf(tarfile.GNU_FORMAT))
        for _ in range(size // MiB):
            out.write(bytes(MiB))
        out.write(bytes(2 * tarfile.BLOCKSIZE))
    assert path.stat().st_size < 512 << 10
    tracemalloc.start()
    try:
        digests = _unpack_archive(path, LAYER, mirror, IMAGE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digests == [sha(bytes(size))]
    assert peak < 8 * MiB, f"unpacking a {size >> 20} MiB member peaked at {peak >> 20} MiB"


def test_the_tarfile_internals_the_caps_hook_are_still_there():
    """_BoundedTarInfo overrides tarfile internals; a Python release that renames them must fail here, loudly,
    rather than silently read header data unbounded again."""
    for name in ("_proc_member", "_proc_gnusparse_10", "_proc_gnulong", "_proc_pax", "_proc_sparse"):
        assert callable(getattr(tarfile.TarInfo, name, None)), name
    assert isinstance(tarfile.TarFile.tarinfo, type)


# ---------------------------------------------------------------------------------------------------- mirror


def test_add_stream_removes_its_tmp_file_whatever_stops_the_stream(mirror):
    def chunks():
        yield b"part"
        raise RuntimeError("cap")

    with pytest.raises(RuntimeError):
        mirror.add_stream(chunks())
    assert list(mirror.blobs.iterdir()) == []
    assert mirror.add_stream(iter([b"a", b"b"])) == sha(b"ab")
    assert mirror.add_stream(iter([b"ab"])) == sha(b"ab")  # already there: kept, tmp removed
    assert {p.name: p.read_bytes() for p in mirror.blobs.iterdir()} == {sha(b"ab").partition(":")[2]: b"ab"}


# ---------------------------------------------------------------------------------------------------- whole reads


class FakeClient:
    """What find_image_app asks of containerd, from dicts; records every read and its cap."""

    def __init__(self, blobs: dict[str, bytes], target: Descriptor) -> None:
        self.blobs = blobs
        self.target = target
        self.reads: list[tuple[str, int]] = []

    def container_image(self, container_id: str) -> str:
        return IMAGE

    def image_target(self, name: str) -> Descriptor:
        return self.target

    def read(self, digest: str, max_bytes: int = 64 << 20) -> bytes:
        self.reads.append((digest, max_bytes))
        data = self.blobs[digest]
        if len(data) > max_bytes:
            raise BlobTooLargeError(f"Content/Read {digest}: larger than {max_bytes} bytes", max_bytes)
        return data


def manifest_with_lock(lock_size: int) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64,
                   "size": 2},
        "layers": [{"mediaType": mt.SPIN_APPLICATION,
                    "digest": "sha256:" + "d" * 64, "size": lock_size}],
    }).encode()


def test_a_manifest_declared_too_big_is_not_read(tmp_path, mirror):
    digest = "sha256:" + "e" * 64
    client = FakeClient({}, Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 5 * MiB))
    with pytest.raises(ArtifactError) as info:
        find_image_app(client, "c1", IMAGE, mirror, tmp_path / "app")  # type: ignore[arg-type]
    assert str(info.value) == (f"image {IMAGE}: its manifest {digest} is {5 * MiB} bytes, more than 4 MiB, the most "
                               "this shim reads of a manifest")
    assert client.reads == []


def test_a_manifest_bigger_than_declared_is_cut_off_at_the_cap(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "MANIFEST_MAX_BYTES", 1000)
    digest = "sha256:" + "e" * 64
    client = FakeClient({digest: b" " * 1001}, Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 10))
    with pytest.raises(ArtifactError, match=r"its manifest sha256:e+ is larger than 1000 bytes, the most this shim"):
        find_image_app(client, "c1", IMAGE, mirror, tmp_path / "app")  # type: ignore[arg-type]
    assert client.reads == [(digest, 1000)]


def test_a_locked_app_declared_too_big_is_not_read(tmp_path, mirror):
    digest = "sha256:" + "e" * 64
    manifest = manifest_with_lock(17 * MiB)
    client = FakeClient({digest: manifest},
                        Descriptor("application/vnd.oci.image.manifest.v1+json", digest, len(manifest)))
    with pytest.raises(ArtifactError) as info:
        find_image_app(client, "c1", IMAGE, mirror, tmp_path / "app")  # type: ignore[arg-type]
    assert str(info.value) == (f"image {IMAGE}: its locked app sha256:{'d' * 64} is {17 * MiB} bytes, more than "
                               "16 MiB, the most this shim reads of a locked app")
    assert client.reads == [(digest, 4 * MiB)]


class FakeContentStub:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list = []

    def Read(self, request, metadata, timeout):  # noqa: N802 (grpc's name)
        self.requests.append(request)
        end = len(self.data) if request.size == 0 else min(len(self.data), request.size)
        for offset in range(0, end, 3):
            yield type("Response", (), {"data": self.data[offset:min(offset + 3, end)]})()


def test_client_read_asks_containerd_for_one_byte_past_the_cap_and_refuses_more(tmp_path):
    client = ContainerdClient(str(tmp_path / "no.sock"), "default")
    try:
        client._content = FakeContentStub(b"0123456789")  # type: ignore[assignment]
        with pytest.raises(BlobTooLargeError) as info:
            client.read(sha(b"0123456789"), max_bytes=5)
        assert info.value.limit == 5
        assert [r.size for r in client._content.requests] == [6]  # type: ignore[attr-defined]
        assert client.read(sha(b"0123456789"), max_bytes=10) == b"0123456789"
    finally:
        client.close()


def test_a_bomb_member_is_named_by_the_archive_cap_and_nothing_is_written(tmp_path, mirror, monkeypatch):
    """The e2e bomb's shape, scaled down: one member declaring more than the whole archive may expand to."""
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_EXPANDED_BYTES", MiB)
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_MEMBER_BYTES", MiB // 2)
    info = tarfile.TarInfo("zeros.bin")
    info.size = 3 * MiB // 2
    path = raw_archive(tmp_path / "a.tar.gz", info.tobuf(tarfile.GNU_FORMAT) + bytes(info.size))
    assert refused(path, mirror).endswith(
        f"file 'zeros.bin' ({3 * MiB // 2} bytes) expands past 1 MiB, the most one files archive may expand to")
    assert mirrored(mirror) == {}
