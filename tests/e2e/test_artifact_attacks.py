"""Hostile Spin OCI artifacts through containerd's CRI plugin: regression tests for two security-review findings.

Each image here is crafted by hand (manifest, locked app, layers) and pushed to the test registry: it is untrusted
input whose whole point is to be malformed (README "Security model").

1. A `spin.lock` whose component id is a path: absolute (`/tmp/<unique>`) or climbing (`../../.../tmp/<unique>`),
   the component carrying inline `files`. The shim lays a component's files out under `files/<component id>/`, so
   an unchecked id once made directories, deleted an existing file and hard-linked the image's bytes over it on
   the node, before Create failed. A canary at the target node path must come out byte-for-byte and mtime the
   same, nothing may appear beside it, and Create must fail naming the id. A non-kebab id (`Bad_ID`) is refused
   with the same kind of message, as Spin refuses it.
2. A decompression bomb: a files-archive layer (gzipped tar, Spin's media type) of a few MB that expands far past
   the shim's cap. Create must fail naming the layer's digest and the cap, the shim's processes must not have
   held the expanded bytes (their RSS is sampled while Create runs), no file larger than the cap nor any partial
   file may be left in the shim's cache dir, and the pod must leave nothing behind.

CRI creates the task (the shim's Create) in StartContainer, so "Create fails" is StartContainer raising.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import oci.source
from cri_client import CriError
from oci import media_types as mt
from oci.push import Blob
from runtime.capped_read import describe_cap
from tests.e2e.pod_checks import assert_pod_left_nothing
from tests.e2e.registry_support import Registry, registry  # noqa: F401  (`registry`: a fixture)
from tests.e2e.support import shim_processes
from tests.e2e.test_oci_artifacts import Cluster, cluster, push_modified

pytestmark = pytest.mark.e2e

MiB = 1 << 20
GiB = 1 << 30

#: The bomb's one member, all zeros: 1.5 GiB, unless the shim's cap asks for more.
DEFAULT_BOMB_SIZE = 3 * GiB // 2
#: What any shim process may reach (VmHWM) while Create reads the bomb: a Python interpreter with wasmtime loaded is
#: ~100 MiB; holding the expanded member (or a cap's worth of it) is far above this.
RSS_BOUND = 400 * MiB
CANARY = b"canary: the node's own file, which no image may replace\n"
CANARY_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09, far from any write this test could cause
#: Enough `..` to climb from any app directory the shim may make to `/`.
CLIMB = "../" * 24


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=("1.7", "2.1"))
def attack_cluster(request, tmp_path_factory, shim_dir, registry: Registry) -> Iterator[Cluster]:  # noqa: F811
    workdir = tmp_path_factory.mktemp(f"attacks-{request.param}")
    cache_dir = tmp_path_factory.mktemp("shim-cache")
    try:
        with cluster(request.param, workdir, shim_dir, cache_dir, registry) as c:
            yield c
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)  # a shim that keeps a bomb's expansion leaves GiBs here


def _version(c: Cluster) -> str:
    return c.ctrd.version


@dataclass
class Outcome:
    """One StartContainer of a crafted image: the CRI error (None if it started), the container's stderr log."""

    container: str
    error: CriError | None
    log: list[str]
    sandbox_pid: int


def start_once(c: Cluster, image: str, pod_name: str, rss_sampler: RssSampler | None = None) -> Outcome:
    """A pod running the image's container once: CreateContainer + StartContainer, then the pod torn down and
    checked for leftovers (processes, mounts, cgroups, network) as kubelet's deletion would leave none."""
    c.cri.pull_image(image)
    with c.cri.pod(pod_name, runtime_handler="spin") as pod:
        sandbox_pid = int(c.cri.pod_info(pod.id)["pid"])
        container = c.cri.create_container(pod, "app", image, command=["/"])
        error = None
        if rss_sampler is not None:
            rss_sampler.start()
        try:
            c.cri.start_container(container)
        except CriError as exc:
            error = exc
        finally:
            if rss_sampler is not None:
                rss_sampler.stop()
        try:
            log = c.cri.container_log(container, "stderr")
        except (OSError, CriError):
            log = []
    assert_pod_left_nothing(c.ctrd, c.cri, pod, [container], sandbox_pid)
    return Outcome(container, error, log, sandbox_pid)


def assert_refused(outcome: Outcome, *needles: str) -> str:
    """Create failed, with a message (in the CRI error, and in the container's log) naming each
    needle, phrased as a refusal of the image rather than an OS error escaping from the shim."""
    assert outcome.error is not None, (
        f"StartContainer succeeded: the shim ran an image it must refuse (expected an error naming {needles})")
    message = outcome.error.details
    for needle in needles:
        assert needle in message, f"the CRI error does not name {needle!r}: {message}"
    assert "Errno" not in message, f"an OS error escaped instead of the image being refused: {message}"
    # ... and the user sees it in the container's log too (kubectl logs), not only in the CRI error.
    joined = "\n".join(outcome.log)
    for needle in needles:
        assert needle in joined, f"the container's log does not name {needle!r}:\n{joined}"
    return message


# ---------------------------------------------------------------------------------------------------- 1. ids


def assert_id_refused(outcome: Outcome, component_id: str) -> None:
    """Create failed saying the component id is not one Spin accepts, and naming it."""
    message = assert_refused(outcome, component_id)
    assert re.search(r"(?i)\bcomponent id\b", message), f"the error does not say the component id is bad: {message}"


@dataclass(frozen=True)
class HostTarget:
    """A unique directory on the node, with a canary where an unchecked id would have the shim write."""

    directory: Path
    canary: Path

    @classmethod
    def make(cls) -> HostTarget:
        directory = Path("/tmp") / f"spin-attack-{uuid.uuid4().hex}"
        directory.mkdir()
        canary = directory / "canary.txt"
        canary.write_bytes(CANARY)
        os.utime(canary, ns=(CANARY_MTIME_NS, CANARY_MTIME_NS))
        return cls(directory, canary)

    def snapshot(self) -> tuple[Any, ...]:
        st = self.canary.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink, self.canary.read_bytes()

    def assert_untouched(self, before: tuple[Any, ...]) -> None:
        assert self.canary.read_bytes() == CANARY, "the canary on the node was overwritten"
        assert self.snapshot() == before, "the canary on the node was replaced, relinked or touched"
        created = sorted(str(p.relative_to(self.directory)) for p in self.directory.rglob("*") if p != self.canary)
        assert created == [], f"the shim created files on the node under {self.directory}: {created}"

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _inline(path: str, data: bytes) -> dict[str, str]:
    return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "inline": base64.b64encode(data).decode("ascii"), "path": path}


def push_with_component_id(image: str, app: Path, component_id: str) -> None:
    """js-echo's artifact, its one component renamed to ``component_id`` and given inline files: one at the
    canary's name, one in a sub-directory the shim would have to make."""

    def rename(lock: dict[str, Any], layers: list[Blob]) -> None:
        [component] = lock["components"]
        component["id"] = component_id
        component["files"] = [_inline("canary.txt", b"the image's bytes\n"), _inline("sub/new.txt", b"made\n")]
        for trigger in lock["triggers"]:
            trigger["trigger_config"]["component"] = component_id

    push_modified(app, image, rename)


@pytest.mark.parametrize("kind", ["absolute", "climbing"])
def test_a_component_id_naming_a_node_path_is_refused_and_touches_nothing(
        registry: Registry, attack_cluster: Cluster, http_apps, kind):  # noqa: F811
    c = attack_cluster
    target = HostTarget.make()
    try:
        component_id = str(target.directory) if kind == "absolute" else CLIMB + str(target.directory).lstrip("/")
        before = target.snapshot()
        image = registry.ref(f"spin-attack/id-{kind}", f"v{_version(c)}-{target.directory.name[-8:]}")
        push_with_component_id(image, http_apps["js-echo"], component_id)

        outcome = start_once(c, image, f"id-{kind}")

        target.assert_untouched(before)
        assert_id_refused(outcome, component_id)
        _assert_no_app_dirs_left(c)
    finally:
        target.remove()


def test_a_component_id_that_is_not_kebab_case_is_refused(registry: Registry, attack_cluster: Cluster,  # noqa: F811
                                                          http_apps):
    c = attack_cluster
    image = registry.ref("spin-attack/id-upper", f"v{_version(c)}")
    push_with_component_id(image, http_apps["js-echo"], "Bad_ID")

    outcome = start_once(c, image, "id-upper")

    assert_id_refused(outcome, "Bad_ID")
    _assert_no_app_dirs_left(c)


# ---------------------------------------------------------------------------------------------------- 2. bombs


@dataclass(frozen=True)
class Caps:
    """The shim's caps on a files archive (oci/source.py): constants, which no image or task env can raise."""

    expanded: int  # the bytes one archive's tar stream may expand to
    member: int  # the bytes of one file in it
    members: int  # its entries


def archive_caps() -> Caps:
    names = ("ARCHIVE_MAX_EXPANDED_BYTES", "ARCHIVE_MAX_MEMBER_BYTES", "ARCHIVE_MAX_MEMBERS")
    missing = [name for name in names if not isinstance(getattr(oci.source, name, None), int)]
    if missing:
        pytest.fail(f"oci/source.py has no cap on what a files archive expands to ({', '.join(missing)} missing)")
    return Caps(*(getattr(oci.source, name) for name in names))


def write_bomb(path: Path, members: list[tuple[str, int]], directories: int = 0) -> dict[str, str]:
    """A gzipped tar (as Spin's push makes archive layers) of ``directories`` empty directory entries and then
    files of zeros (name, size), streamed to ``path`` a MiB at a time; each file's sha256 digest."""
    zeros = bytes(MiB)
    digests: dict[int, str] = {}
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as out:
        for i in range(directories):
            info = tarfile.TarInfo(f"d{i}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.write(info.tobuf(format=tarfile.GNU_FORMAT))
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            out.write(info.tobuf(format=tarfile.GNU_FORMAT))
            sha = hashlib.sha256() if size not in digests else None
            left = size
            while left:
                chunk = zeros if left >= MiB else zeros[:left]
                out.write(chunk)
                if sha is not None:
                    sha.update(chunk)
                left -= len(chunk)
            if sha is not None:
                digests[size] = "sha256:" + sha.hexdigest()
            out.write(bytes(-size % tarfile.BLOCKSIZE))
        out.write(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
    return {name: digests[size] for name, size in members}


@dataclass(frozen=True)
class Bomb:
    layer: Path
    #: What the whole tar stream expands to.
    expanded: int
    #: file name -> digest, for the lock's `files` (as Spin's lock names an archive's files).
    files: dict[str, str]
    #: The caps the shim may name when it refuses the layer (any one of them is right).
    cap_texts: tuple[str, ...]

    @property
    def blob(self) -> Blob:
        return Blob.of_file(mt.ARCHIVE_LAYER, self.layer)


def make_bomb(kind: str, directory: Path) -> Bomb:
    caps = archive_caps()
    layer = directory / f"{kind}.tar.gz"
    if kind == "one-file":  # one file of zeros past the per-file cap and the archive's
        size = max(DEFAULT_BOMB_SIZE, caps.expanded + 512 * MiB)
        members, directories, cap_texts = [("zeros.bin", size)], 0, (describe_cap(caps.member),
                                                                      describe_cap(caps.expanded))
    elif kind == "many-files":  # files each under the per-file cap, together past the archive's
        size = caps.member * 3 // 4
        count = caps.expanded // size + 1
        members, directories, cap_texts = [(f"zeros-{i}.bin", size) for i in range(count)], 0, \
            (describe_cap(caps.expanded),)
    else:  # "many-entries": more entries than an archive may hold (directories: no file written for them)
        members, directories, cap_texts = [("last.bin", 1)], caps.members, (str(caps.members),)
    files = write_bomb(layer, members, directories)
    expanded = sum(tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE) for _, size in members) \
        + tarfile.BLOCKSIZE * (directories + 2)
    return Bomb(layer, expanded, files, cap_texts)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Iterator[Any]:
    """kind -> Bomb, each written once for the module (both containerd versions push the same layer)."""
    directory = tmp_path_factory.mktemp("bombs")
    made: dict[str, Bomb] = {}

    def get(kind: str) -> Bomb:
        if kind not in made:
            made[kind] = make_bomb(kind, directory)
        return made[kind]

    yield get
    shutil.rmtree(directory, ignore_errors=True)


class RssSampler:
    """The largest VmHWM/VmRSS any of this containerd's shim processes (daemon, instance) showed while it ran:
    the instance process dies with Create's failure, so its peak is read while it lives, every few ms."""

    def __init__(self, ctrd: Any, interval: float = 0.005) -> None:
        self._ctrd = ctrd
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peaks: dict[int, int] = {}
        self.samples = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def _run(self) -> None:
        # The instance process may live for less than a tenth of a second: /proc is listed every tick, and only
        # the pids not seen before are read, so a tick stays cheap and a new process is seen within one.
        pids: set[int] = set()
        seen: set[int] = set()
        while not self._stop.is_set():
            listed = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
            pids = (pids & listed) | set(shim_processes(self._ctrd, listed - seen))
            seen = listed
            for pid in pids:
                kib = _status_kib(pid, ("VmHWM:", "VmRSS:"))
                if kib:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), kib * 1024)
            self.samples += 1
            self._stop.wait(self._interval)


def _status_kib(pid: int, keys: tuple[str, ...]) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return max((int(line.split()[1]) for line in text.splitlines() if line.startswith(keys)), default=0)


@pytest.mark.parametrize("kind", ["one-file", "many-files", "many-entries"])
def test_a_files_archive_bomb_is_refused_with_bounded_memory_and_disk(registry: Registry,  # noqa: F811
                                                                      attack_cluster: Cluster, http_apps, bombs, kind):
    c = attack_cluster
    bomb = bombs(kind)
    caps = archive_caps()
    image = registry.ref(f"spin-attack/archive-{kind}", f"v{_version(c)}")
    layer = bomb.blob
    assert layer.size < 16 * MiB and bomb.expanded >= 32 * layer.size  # small compressed, huge expanded

    def add_bomb(lock: dict[str, Any], layers: list[Blob]) -> None:
        layers.append(layer)
        lock["components"][0].setdefault("files", []).extend(
            {"digest": digest, "path": f"bomb/{name}"} for name, digest in bomb.files.items())

    push_modified(http_apps["js-echo"], image, add_bomb)
    sampler = RssSampler(c.ctrd)

    outcome = start_once(c, image, f"archive-{kind}", rss_sampler=sampler)

    assert sampler.samples > 3 and len(sampler.peaks) >= 2, \
        f"the RSS sampler did not see the shim daemon and its instance process: {sampler.peaks}"
    assert sampler.peak < RSS_BOUND, (
        f"a shim process reached {sampler.peak / MiB:.0f} MiB while Create read a {layer.size / MiB:.1f} MiB layer "
        f"expanding to {bomb.expanded / MiB:.0f} MiB (peaks by pid: "
        f"{ {pid: f'{v / MiB:.0f} MiB' for pid, v in sampler.peaks.items()} })")
    message = assert_refused(outcome, layer.digest)
    assert any(cap in message for cap in bomb.cap_texts), f"the error names none of the caps {bomb.cap_texts}: {message}"
    # One file in the mirror is at most the per-file cap (the layer itself is a few MiB).
    _assert_cache_holds_no_expansion(c.cache_dir, caps.member)
    _assert_no_app_dirs_left(c)


def _assert_cache_holds_no_expansion(cache_dir: Path, cap: int) -> None:
    big, partial = [], []
    for path in cache_dir.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not path.is_file():
            continue
        if st.st_size > cap:
            big.append(f"{path} ({st.st_size} bytes)")
        if path.name.startswith(".") or path.name.endswith((".tmp", ".part", ".partial")):
            partial.append(str(path))
    assert big == [], f"files larger than the cap ({cap} bytes) left in the shim's cache dir: {big}"
    assert partial == [], f"partial files left in the shim's cache dir: {partial}"


def _assert_no_app_dirs_left(c: Cluster) -> None:
    staging = c.cache_dir / "staging"
    left = [p.name for p in (staging.iterdir() if staging.exists() else [])]
    assert left == [], f"a failed create left staging/locked-app directories behind: {left}"
