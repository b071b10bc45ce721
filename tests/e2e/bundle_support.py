"""The node bundle (scripts/build_bundle.py) as the e2e tests use it: cached per source tree, and a node made of
nothing but glibc, sh, containerd, runc and the bundle, to prove the bundle needs nothing else.

`cached_bundle()` builds the tarball once per source hash under /var/cache/containerd-shim-spin-test/bundle/<hash>/
(~30 s on 2 cores; the three newest hashes are kept), as the other caches there are keyed.

`NodeRoot` is a directory laid out as a node's root filesystem (merged /usr, as Debian 12): glibc's libraries,
ld.so and its cache (`ldconfig -r`; all of glibc's libraries, build_bundle.GLIBC_CORE), /bin/sh and readlink (which the bundle's entry point runs), containerd 2.1,
its runc shim, runc and the libraries ldd says they need (runc: libseccomp). No Python anywhere: not the repo,
not the venv, not /usr/lib/python3*. `command()` runs a program inside it the way the node would: in a mount
namespace of its own (private propagation: nothing mounted there reaches the host, and everything mounted there
goes with its last process), with the host's /proc, /sys (cgroups) and /dev bound in, the root bound onto itself
(so it is a mount point: the shim's sandbox pivot_roots inside it, and pivot_root refuses a root that is not one),
then chroot. The private containerd's work dir is bound at its own path, so its config, sockets and state are
the same paths inside and out: the test drives that containerd with the host's ctr, as an operator's ctr on the
node would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import build_bundle  # noqa: E402  (scripts/ is on sys.path via conftest)
from private_containerd import PrivateContainerd, bin_dir_for, cache_root  # noqa: E402

BUNDLE_CACHE_KEEP = 3
#: Where the bundle is unpacked on the node, as the README and the DaemonSet put it.
BUNDLE_DIR = Path("/opt") / build_bundle.TOP_DIR
#: What every node has besides containerd: a POSIX sh and readlink (the entry point's), ldconfig (glibc's).
NODE_TOOLS = (Path("/bin/sh"), Path("/usr/bin/readlink"), Path("/sbin/ldconfig"))
CONTAINERD_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr")
RUNC = Path("/usr/sbin/runc")
#: Debian 12's merged /usr: these are symlinks into usr/ on the node, as on this machine.
MERGED_USR = ("bin", "sbin", "lib", "lib64")
NODE_DIRS = ("proc", "sys", "dev", "run", "tmp", "etc/containerd", "usr/local/bin", "var/lib", "opt", "root")
PYTHON_PATTERN = re.compile(r"(^|/)(python3[\w.]*|lib/python3[\w.]*)(/|$)")
STOP_TIMEOUT_S = 10.0


def bundle_cache_dir() -> Path:
    return cache_root() / "bundle"


def cached_bundle() -> Path:
    """The bundle of this source tree, built if the cache has none (the caller holds the e2e lock)."""
    key = build_bundle.source_hash()
    directory = bundle_cache_dir() / key
    tarball = directory / build_bundle.bundle_name()
    if not tarball.exists():
        build_bundle.build_bundle(directory)
        _prune_cache(keep=directory)
    return tarball


def _prune_cache(keep: Path) -> None:
    entries = sorted((entry for entry in bundle_cache_dir().iterdir() if entry.is_dir() and entry != keep),
                     key=lambda entry: entry.stat().st_mtime, reverse=True)
    for stale in entries[BUNDLE_CACHE_KEEP - 1:]:
        shutil.rmtree(stale, ignore_errors=True)


def _ldd_paths(binary: Path) -> list[Path]:
    """The libraries (and the dynamic loader) a dynamic ELF loads, as ldd resolves them; [] for a static one."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    paths = []
    for line in result.stdout.splitlines():
        match = re.search(r"(?:=> )?(/\S+) \(0x", line)
        if match:
            paths.append(Path(match.group(1)))
    return paths


class NodeRoot:
    """A node's root filesystem in `root`, with containerd `version`'s binaries and a private containerd's
    `workdir` bound at its own path."""

    def __init__(self, root: Path, workdir: Path, version: str = "2.1") -> None:
        self.root = Path(root).absolute()
        self.workdir = Path(workdir).absolute()
        self.version = version

    def populate(self) -> None:
        (self.root / "usr").mkdir(parents=True)
        for name in MERGED_USR:
            (self.root / "usr" / name).mkdir(exist_ok=True)
            (self.root / name).symlink_to(f"usr/{name}")
        for name in NODE_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        for tool in NODE_TOOLS:
            self.copy_binary(tool)
        self.copy_binary(RUNC)
        for name in CONTAINERD_TOOLS:
            self.copy_binary(bin_dir_for(self.version) / name, Path("/usr/bin") / name)
        (self.root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (self.root / "etc" / "group").write_text("root:x:0:\n")
        for name in ("hosts", "resolv.conf"):  # `ctr run --net-host` binds the node's into the container
            shutil.copy2(Path("/etc") / name, self.root / "etc" / name)
        libc = next(path for path in _ldd_paths(Path("/bin/sh")) if path.name == "libc.so.6")
        for library in sorted(libc.parent.iterdir()):  # all of glibc (libm, libpthread, libnss_*, ...), no more
            if build_bundle.GLIBC_CORE.match(library.name) and library.is_file():
                self._copy_with_alias(library)
        (self.root / "etc" / "ld.so.conf").write_text(f"{os.path.realpath(libc.parent)}\n/usr/local/lib\n")
        subprocess.run(["ldconfig", "-r", str(self.root)], check=True, capture_output=True, timeout=60)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.root / self.workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)

    def copy_binary(self, source: Path, destination: Path | None = None) -> None:
        """Copy a binary (to `destination`, default its own path) and the libraries it loads, at their paths."""
        if destination is not None:
            self._copy_file(source.resolve(), destination)
        else:
            self._copy_with_alias(source)
        for library in _ldd_paths(source):
            self._copy_with_alias(library)

    def _copy_with_alias(self, path: Path) -> None:
        """The file at its real path, and the name it was reached by (/bin/sh -> dash, libseccomp.so.2 ->
        libseccomp.so.2.5.4, /lib64's ld.so) as an absolute symlink, which resolves inside the root."""
        real = Path(os.path.realpath(path))
        self._copy_file(real, real)
        alias = Path(os.path.realpath(path.parent)) / path.name
        if alias != real and not os.path.lexists(self.root / alias.relative_to("/")):
            (self.root / alias.relative_to("/")).symlink_to(real)

    def _copy_file(self, source: Path, destination: Path) -> None:
        target = self.root / destination.relative_to("/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    def unpack(self, bundle: Path) -> Path:
        """`tar -C /opt -xzf <bundle>` on the node; returns the bundle's directory as the node sees it."""
        with tarfile.open(bundle) as tar:
            tar.extractall(self.root / BUNDLE_DIR.parent.relative_to("/"), filter="tar")
        return BUNDLE_DIR

    def python_files(self) -> list[str]:
        """Paths in the root that look like a Python installation outside the bundle (none may exist)."""
        found = []
        for directory, names, files in os.walk(self.root):
            relative = "/" + os.path.relpath(directory, self.root)
            if relative.startswith(str(BUNDLE_DIR)) or relative.startswith(str(self.workdir)):
                names[:] = []
                continue
            found += [f"{relative}/{name}" for name in names + files if PYTHON_PATTERN.search(name)]
        return found

    def command(self, argv: Sequence[str]) -> list[str]:
        """The host argv that runs `argv` (paths as the node sees them) inside this root, as described above."""
        script = ('set -e; R="$1"; W="$2"; shift 2; mount --bind "$R" "$R"; '
                  'for d in proc sys dev; do mount --rbind "/$d" "$R/$d"; done; '
                  'mount --bind "$W" "$R$W"; exec chroot "$R" "$@"')
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "node-root",
                str(self.root), str(self.workdir), *argv]

    def run(self, argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})

    def processes(self) -> list[int]:
        """Live processes whose root directory is this root (everything the node's containerd started)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/root") == str(self.root):
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def stop_processes(self, pids: Iterable[int]) -> None:
        pending = set(pids)
        for pid in pending:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            pending &= set(self.processes())
            time.sleep(0.05)
        for pid in pending:
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class NodeContainerd(PrivateContainerd):
    """A PrivateContainerd whose daemon runs inside a NodeRoot (its binaries copied there, its work dir bound at
    the same path), so its shims, runc and the shim's fork server run there too. Everything else (config
    rendering, ctr, the teardown's task kills and cgroup cleanup) is PrivateContainerd's, from the host."""

    def __init__(self, node: NodeRoot, **kwargs: object) -> None:
        super().__init__(node.version, node.workdir, Path("/usr/local/bin"), **kwargs)  # type: ignore[arg-type]
        self.node = node

    def _spawn_daemon(self) -> None:
        # unshare, sh and chroot each exec the next: the pid PrivateContainerd records is containerd's.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.node.command(["/usr/bin/containerd", "--config", str(self.config_path)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                env=self._daemon_env(), start_new_session=True)
        self.pid_path.write_text(f"{self._process.pid}\n")
