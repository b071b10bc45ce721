"""Files archives unpacked once per node and kept apart from content-store blobs (oci/mirror.py, oci/source.py).

An archive layer's files go to ``<mirror>/archives/<layer hex>/`` (by digest, with ``unpacked.json`` written last),
unpacked in a staging dir named with the unpacking process's pid and renamed into place whole. These tests run
find_image_app against a fake containerd, and the sweeps "another pod" runs in a forked child process (a different
pid, as a concurrent pod's instance process is): a later start reuses the unpacked files (same inodes, no unpack),
a sweep during a layout cannot take a file the app needs, a refused archive leaves nothing, and the sweep removes an
unpacked archive only once containerd no longer has its layer, and a staging dir only once its process is gone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oci.source
from oci import media_types as mt
from oci.client import Descriptor
from oci.errors import ArtifactError, ContentStoreError
from oci.mirror import UNPACKED_MARKER, BlobMirror
from oci.source import find_image_app
from runtime.locked_app import blob_path
from tests.archives import targz

IMAGE = "example.com/files:1"
KiB = 1 << 10


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


class FakeContainerd:
    """The content store find_image_app and BlobMirror read, from a dict; ``gone`` digests are NOT_FOUND."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.images: dict[str, str] = {}
        self.gone: set[str] = set()
        self.reads: list[str] = []

    def push(self, image: str, archives: list[bytes], wasm: bytes = b"\0asm component") -> list[str]:
        """An image of one wasm layer, the archives and a locked app; the archive layers' digests."""
        layers = [(mt.WASM_LAYER, wasm), *((mt.ARCHIVE_LAYER, data) for data in archives),
                  (mt.SPIN_APPLICATION, json.dumps({"image": image}).encode())]
        for _, data in layers:
            self.blobs[sha(data)] = data
        manifest = json.dumps({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(b"{}"), "size": 2},
            "layers": [{"mediaType": media_type, "digest": sha(data), "size": len(data)}
                       for media_type, data in layers],
        }).encode()
        self.blobs[sha(manifest)] = manifest
        self.images[image] = sha(manifest)
        return [sha(data) for data in archives]

    def _blob(self, digest: str) -> bytes:
        if digest in self.gone or digest not in self.blobs:
            raise ContentStoreError(f"{digest}: not found", code="NOT_FOUND")
        return self.blobs[digest]

    def container_image(self, container_id: str) -> str:
        raise AssertionError("the tests name the image")

    def image_target(self, name: str) -> Descriptor:
        digest = self.images[name]
        return Descriptor(mt.OCI_MANIFEST, digest, len(self.blobs[digest]))

    def read(self, digest: str, max_bytes: int = 64 << 20) -> bytes:
        self.reads.append(digest)
        return self._blob(digest)

    def read_into(self, digest: str, target: Path) -> None:
        self.reads.append(digest)
        target.write_bytes(self._blob(digest))

    def info(self, digest: str) -> None:
        self._blob(digest)


class EverythingGone(FakeContainerd):
    """A containerd that has dropped every blob (what a sweep sees once all images are removed)."""

    def _blob(self, digest: str) -> bytes:
        raise ContentStoreError(f"{digest}: not found", code="NOT_FOUND")


def sweep_elsewhere(mirror: BlobMirror, client: FakeContainerd, keep: tuple[str, ...] = ()) -> list[str]:
    """``mirror.sweep`` run by another process (another pod's instance process); what it removed."""
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def run() -> None:
        results.put(mirror.sweep(client, keep))  # type: ignore[arg-type]

    child = context.Process(target=run)
    child.start()
    child.join(30)
    assert child.exitcode == 0, f"the sweeping process failed ({child.exitcode})"
    return results.get()


@pytest.fixture
def mirror(tmp_path) -> BlobMirror:
    return BlobMirror(tmp_path / "mirror")


@pytest.fixture
def unpacks(monkeypatch) -> list[str]:
    """The layers oci.source unpacks, in order."""
    calls: list[str] = []
    original = oci.source._unpack_archive

    def counted(archive, layer, *args, **kwargs):
        calls.append(layer)
        return original(archive, layer, *args, **kwargs)

    monkeypatch.setattr(oci.source, "_unpack_archive", counted)
    return calls


def lay_out(client: FakeContainerd, mirror: BlobMirror, app_dir: Path, image: str = IMAGE):
    return find_image_app(client, "c1", image, mirror, app_dir)  # type: ignore[arg-type]


def app_file(app_dir: Path, data: bytes) -> Path:
    return blob_path(app_dir, hex_of(sha(data)))


def archive_entries(mirror: BlobMirror) -> list[str]:
    return sorted(p.name for p in mirror.archives.iterdir()) if mirror.archives.exists() else []


INDEX, STYLE = b"<h1>hi</h1>", b"body { color: red }"


# ---------------------------------------------------------------------------------------------------- reuse


def test_an_archive_is_unpacked_once_and_later_starts_link_the_same_files(tmp_path, mirror, unpacks):
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"static/index.html": INDEX, "static/style.css": STYLE})])
    lay_out(client, mirror, tmp_path / "app1")
    reads_after_first = len(client.reads)
    lay_out(client, mirror, tmp_path / "app2")

    assert unpacks == [layer]
    assert client.reads[reads_after_first:] == [client.images[IMAGE], sha(json.dumps({"image": IMAGE}).encode())]
    for data in (INDEX, STYLE):
        first, second = app_file(tmp_path / "app1", data), app_file(tmp_path / "app2", data)
        unpacked = mirror.archive_dir(layer) / hex_of(sha(data))
        assert first.read_bytes() == data
        assert first.stat().st_ino == second.stat().st_ino == unpacked.stat().st_ino
        assert not (mirror.blobs / hex_of(sha(data))).exists()  # kept apart from content-store blobs
    assert archive_entries(mirror) == [hex_of(layer)]  # no staging dir left
    marker = json.loads((mirror.archive_dir(layer) / UNPACKED_MARKER).read_text())
    assert marker["files"] == [sha(INDEX), sha(STYLE)] and marker["layer"] == layer


def test_two_archives_holding_the_same_file_each_have_it(tmp_path, mirror, unpacks):
    client = FakeContainerd()
    layers = client.push(IMAGE, [targz({"a/index.html": INDEX}), targz({"b/index.html": INDEX, "b/s.css": STYLE})])
    lay_out(client, mirror, tmp_path / "app")
    assert unpacks == layers
    assert app_file(tmp_path / "app", INDEX).read_bytes() == INDEX
    assert app_file(tmp_path / "app", STYLE).read_bytes() == STYLE
    assert archive_entries(mirror) == sorted(hex_of(layer) for layer in layers)


def test_a_reused_archive_still_counts_against_the_image_cap(tmp_path, mirror, monkeypatch):
    """Whether an image runs must not depend on what the node's mirror holds: a reused archive costs what it cost
    to unpack."""
    monkeypatch.setattr(oci.source, "IMAGE_MAX_EXPANDED_BYTES", 1 << 20)
    client = FakeContainerd()
    first, second = targz({"a": b"a" * (600 * KiB)}), targz({"b": b"b" * (600 * KiB)})
    [first_layer] = client.push("example.com/one:1", [first])
    lay_out(client, mirror, tmp_path / "one", "example.com/one:1")
    client.push("example.com/two:1", [second, first])
    with pytest.raises(ArtifactError) as info:
        lay_out(client, mirror, tmp_path / "two", "example.com/two:1")
    assert str(info.value) == (
        f"image example.com/two:1: files archive layer {first_layer}: expands past 1 MiB with the image's other "
        "files archives, the most all files archives of an image may expand to")


# ------------------------------------------------------------------------------------------ sweeps during a start


def test_a_sweep_between_unpacking_and_linking_takes_nothing_the_app_needs(tmp_path, mirror, monkeypatch):
    """Another pod sweeps, with containerd reporting every blob gone, after this start unpacked its archive and
    before it links the files: the staging dir is this live process's, so the sweep leaves it."""
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"static/index.html": INDEX, "static/style.css": STYLE})])
    original = oci.source._link
    swept: list[list[str]] = []

    def link_after_a_sweep(source: Path, app_dir: Path, digest: str) -> None:
        if mirror.archives in source.parents and not swept:
            assert source.parent.name.startswith(f".tmp-{os.getpid()}-")  # linked before it is renamed into place
            swept.append(sweep_elsewhere(mirror, EverythingGone()))
        original(source, app_dir, digest)

    monkeypatch.setattr(oci.source, "_link", link_after_a_sweep)
    lay_out(client, mirror, tmp_path / "app")

    assert sorted(swept[0]) == sorted([layer, sha(b"\0asm component")])  # the blobs; not the staging dir
    assert app_file(tmp_path / "app", INDEX).read_bytes() == INDEX
    assert app_file(tmp_path / "app", STYLE).read_bytes() == STYLE
    assert mirror.unpacked(layer) is not None and archive_entries(mirror) == [hex_of(layer)]


def test_a_sweep_removing_a_reused_archive_while_it_is_linked_unpacks_it_again(tmp_path, mirror, monkeypatch,
                                                                              unpacks):
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"static/index.html": INDEX, "static/style.css": STYLE})])
    lay_out(client, mirror, tmp_path / "app1")
    original = oci.source._link
    swept: list[list[str]] = []

    def link_after_a_sweep(source: Path, app_dir: Path, digest: str) -> None:
        if source.parent == mirror.archive_dir(layer) and not swept:
            swept.append(sweep_elsewhere(mirror, EverythingGone()))
            assert not mirror.archive_dir(layer).exists()
        original(source, app_dir, digest)

    monkeypatch.setattr(oci.source, "_link", link_after_a_sweep)
    lay_out(client, mirror, tmp_path / "app2")

    assert layer in swept[0]
    assert unpacks == [layer, layer]
    assert app_file(tmp_path / "app2", INDEX).read_bytes() == INDEX
    assert app_file(tmp_path / "app2", STYLE).read_bytes() == STYLE
    assert app_file(tmp_path / "app1", INDEX).read_bytes() == INDEX  # the first app's links keep their files
    assert archive_entries(mirror) == [hex_of(layer)]


def test_a_sweep_while_the_layer_is_in_containerd_keeps_the_archive(tmp_path, mirror, unpacks):
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"static/index.html": INDEX})])
    lay_out(client, mirror, tmp_path / "app1")
    assert sweep_elsewhere(mirror, client) == []
    lay_out(client, mirror, tmp_path / "app2")
    assert unpacks == [layer]


def test_two_starts_unpacking_the_same_layer_at_once_both_finish(tmp_path, mirror):
    layer = sha(b"some archive")
    first, second = mirror.stage_archive(layer), mirror.stage_archive(layer)
    digests = [first.add_stream(iter([INDEX])), second.add_stream(iter([INDEX]))]
    assert digests == [sha(INDEX), sha(INDEX)]
    linked = tmp_path / "linked"
    os.link(second.path(sha(INDEX)), linked)
    won = first.commit([sha(INDEX)], 100)
    lost = second.commit([sha(INDEX)], 100)
    assert lost == won and won.directory == mirror.archive_dir(layer)
    assert archive_entries(mirror) == [hex_of(layer)]  # the second staging dir is gone
    assert linked.read_bytes() == INDEX  # what was linked from it is still there


def test_an_incomplete_dir_in_the_layers_place_is_not_used_and_is_replaced(tmp_path, mirror, unpacks):
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"static/index.html": INDEX})])
    mirror.archive_dir(layer).mkdir(parents=True)
    (mirror.archive_dir(layer) / hex_of(sha(INDEX))).write_bytes(b"half")  # no marker: not complete
    assert mirror.unpacked(layer) is None
    lay_out(client, mirror, tmp_path / "app")
    assert unpacks == [layer]
    assert app_file(tmp_path / "app", INDEX).read_bytes() == INDEX
    assert mirror.unpacked(layer) is not None and archive_entries(mirror) == [hex_of(layer)]


# ---------------------------------------------------------------------------------------------------- refusals


def test_a_refused_archive_leaves_nothing(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(oci.source, "ARCHIVE_MAX_MEMBER_BYTES", 4096)
    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"small": b"ok", "big.bin": bytes(4097)})])
    with pytest.raises(ArtifactError) as info:
        lay_out(client, mirror, tmp_path / "app")
    assert str(info.value) == (f"image {IMAGE}: files archive layer {layer}: file 'big.bin' is 4097 bytes, more "
                               "than 4096 bytes, the most one file of a files archive may be")
    assert archive_entries(mirror) == []  # no unpacked dir, no staging dir
    assert sorted(p.name for p in mirror.blobs.iterdir()) == sorted(  # the layers themselves, no file of them
        hex_of(d) for d in (layer, sha(b"\0asm component")))


def test_a_corrupt_archive_leaves_nothing(tmp_path, mirror):
    client = FakeContainerd()
    whole = targz({"random": os.urandom(256 * KiB)})
    [layer] = client.push(IMAGE, [whole[: len(whole) // 2]])
    with pytest.raises(ArtifactError, match="is not a gzipped tar"):
        lay_out(client, mirror, tmp_path / "app")
    assert archive_entries(mirror) == []


# ---------------------------------------------------------------------------------------------------- the sweep


def test_sweep_drops_an_unpacked_archive_only_once_its_layer_is_gone(tmp_path, mirror):
    client = FakeContainerd()
    kept_layer, gone_layer, keep_layer = client.push(
        IMAGE, [targz({"a": b"a"}), targz({"b": b"b"}), targz({"c": b"c"})])
    lay_out(client, mirror, tmp_path / "app")
    client.gone |= {gone_layer, keep_layer}
    removed = mirror.sweep(client, keep=[keep_layer])  # type: ignore[arg-type]
    assert removed == [gone_layer]  # its mirrored blob and its unpacked dir
    assert sorted(archive_entries(mirror)) == sorted(hex_of(d) for d in (kept_layer, keep_layer))
    assert not (mirror.blobs / hex_of(gone_layer)).exists()
    assert app_file(tmp_path / "app", b"b").read_bytes() == b"b"  # a running app's links keep their files


def test_sweep_stops_at_a_containerd_error_and_removes_nothing_then(tmp_path, mirror):
    class Unavailable(FakeContainerd):
        def _blob(self, digest: str) -> bytes:
            raise ContentStoreError("containerd is down", code="UNAVAILABLE")

    client = FakeContainerd()
    [layer] = client.push(IMAGE, [targz({"a": b"a"})])
    lay_out(client, mirror, tmp_path / "app")
    assert mirror.sweep(Unavailable()) == []  # type: ignore[arg-type]
    assert mirror.unpacked(layer) is not None


def test_sweep_removes_staging_dirs_of_dead_processes_only(tmp_path, mirror):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mirror.archives.mkdir(parents=True)
        names = [f".tmp-{live.pid}-abc", f".tmp-{os.getpid()}-def", f".tmp-{dead_pid}-ghi", ".tmp-notapid-x"]
        for name in names:
            (mirror.archives / name).mkdir()
            (mirror.archives / name / "file").write_bytes(b"x")
        assert sweep_elsewhere(mirror, FakeContainerd()) == []
        assert archive_entries(mirror) == sorted(n for n in names if n != f".tmp-{dead_pid}-ghi")
    finally:
        live.kill()
        live.wait()
    assert sweep_elsewhere(mirror, FakeContainerd()) == []
    assert archive_entries(mirror) == sorted([f".tmp-{os.getpid()}-def", ".tmp-notapid-x"])


def test_unpacked_ignores_a_marker_for_another_layer_or_garbled(mirror):
    layer = sha(b"x")
    directory = mirror.archive_dir(layer)
    directory.mkdir(parents=True)
    (directory / UNPACKED_MARKER).write_text(json.dumps({"layer": sha(b"y"), "files": [], "expanded": 0}))
    assert mirror.unpacked(layer) is None
    (directory / UNPACKED_MARKER).write_bytes(gzip.compress(b"not json"))
    assert mirror.unpacked(layer) is None
    (directory / UNPACKED_MARKER).write_text(json.dumps({"layer": layer, "files": [], "expanded": 0}))
    assert mirror.unpacked(layer) is not None
