#!/usr/bin/env python3
"""A throwaway containerd daemon (1.6, 1.7 or 2.1) whose config, sockets, state and content live in one directory.

Why it exists: the e2e tests and demos need a *real* containerd that finds our shim on its PATH, without touching
the node's /var/lib/containerd, /run/containerd/containerd.sock or /etc/containerd, and several of them may run side
by side (three containerd versions, parallel test sessions). Every containerd quirk mirrored here was met on
these machines; each is stated where it is handled.

What cannot be kept inside the work dir (containerd and its runc shim hard-code it, whatever the config says):
/run/containerd/s/<sha256> (shim sockets), /run/containerd/runc/<ns> (runc state), /run/containerd/fifo (ctr's
FIFOs) and the cgroups /sys/fs/cgroup/*/<ns>/<id>. `stop()` cleans up only the entries it can prove are this
daemon's (by its gRPC address, its state dir, or a pre-start snapshot), never another containerd's. Since
runc state and cgroups are keyed by namespace and container id only, tests that may run in parallel with other
containerds should use a namespace of their own.

For CRI tests (scripts/cri_client.py drives the CRI plugin as kubelet does), two opt-in steps: `import_pause_image()`
puts the sandbox image into namespace k8s.io (scripts/build_pause.py), and `enable_cni()` gives the daemon a bridge
and /24 of its own for pod networking (claimed under /run/containerd-shim-spin-test/cni, so concurrent daemons never
share one); `stop()` deletes that bridge and libcni's cached results for it, and releases the claim.

Use as a library::

    with PrivateContainerd("1.7", workdir, shim_dir) as ctrd:
        ctrd.ctr("images", "import", "img.tar")

or as a CLI for demos::

    python3 scripts/private_containerd.py start --version 1.7 --workdir /tmp/w --shim-dir ./bin [--cri]
    python3 scripts/private_containerd.py stop --workdir /tmp/w
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

SUPPORTED_VERSIONS: tuple[str, ...] = ("1.6", "1.7", "2.1")
DEFAULT_CACHE_ROOT = Path("/var/cache/containerd-shim-spin-test")
SYSTEM_CONTAINERD_BIN_DIR = Path("/usr/bin")  # bookworm's containerd 1.6 (Debian package containerd)

# The CRI sandbox image the tests import into namespace k8s.io; registry.k8s.io is unreachable here.
SANDBOX_IMAGE = "localhost/spin-shim-test/pause:1"
SPIN_RUNTIME_TYPE = "io.containerd.spin.v2"
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"
CNI_BIN_DIR = "/usr/lib/cni"  # where Debian's containernetworking-plugins installs them
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin keeps its images and containers in
# CNI networks of concurrently running daemons must not share a bridge or a subnet: each daemon claims a slot
# (bridge spinshim<slot>, subnet 10.<200 + slot/256>.<slot%256>.0/24) by creating a claim file exclusively.
CNI_SLOTS = 4096
CNI_BRIDGE_PREFIX = "spinshim"  # + 3 hex digits = 11 chars; Linux interface names are at most 15 (IFNAMSIZ - 1)
CNI_CLAIM_DIR = Path("/run/containerd-shim-spin-test/cni")
CNI_RESULT_CACHE = Path("/var/lib/cni/results")  # libcni's cache of ADD results: <network>-<container>-<ifname>

# Hard-coded by containerd and the runc shim, whatever the config says.
SYSTEM_RUN_DIR = Path("/run/containerd")
SHIM_SOCKET_DIR = SYSTEM_RUN_DIR / "s"
RUNC_STATE_ROOT = SYSTEM_RUN_DIR / "runc"
CGROUP_ROOT = Path("/sys/fs/cgroup")

READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0
CTR_TIMEOUT_S = 120.0
MNT_DETACH = 2
UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
LOG_TAIL_LINES = 40
# Always reachable after the caller's PATH: runc lives in /usr/sbin, which a CI environment may not list.
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class PrivateContainerdError(RuntimeError):
    """containerd could not be started, stopped or found."""


class ContainerdNotInstalledError(PrivateContainerdError):
    """The binaries of the requested containerd version are not on this machine."""


class CtrError(subprocess.CalledProcessError):
    """A ctr command failed; unlike CalledProcessError, str() shows ctr's stderr, which says why."""

    def __str__(self) -> str:
        detail = (self.stderr or self.output or "").strip()
        return f"{super().__str__()}\n{detail}" if detail else super().__str__()


def cache_root() -> Path:
    """Where scripts/install_containerd.sh unpacks containerd 1.7 and 2.1 (overridable, like the script)."""
    return Path(os.environ.get("SPIN_SHIM_CACHE", str(DEFAULT_CACHE_ROOT)))


def _check_version(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported containerd version {version!r}; choose one of {', '.join(SUPPORTED_VERSIONS)}")


def bin_dir_for(version: str) -> Path:
    """The directory holding `containerd` and `ctr` of a version (1.6: the system's; 1.7/2.1: the unpacked debs).

    Raises ContainerdNotInstalledError naming the script to run, because a missing binary is a set-up step that
    was skipped, not a test failure.
    """
    _check_version(version)
    if version == "1.6":
        bin_dir, remedy = SYSTEM_CONTAINERD_BIN_DIR, "run scripts/setup.sh (apt-get install containerd runc)"
    else:
        bin_dir = cache_root() / "containerd" / version / "usr" / "bin"
        remedy = "run scripts/install_containerd.sh (as root)"
    missing = [name for name in ("containerd", "ctr") if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise ContainerdNotInstalledError(
            f"containerd {version}: {', '.join(missing)} not found in {bin_dir}; {remedy}"
        )
    return bin_dir


def _toml_str(value: str | Path) -> str:
    """A TOML basic string; JSON's escaping is a subset TOML accepts."""
    return json.dumps(str(value))


def _dedupe(items: Iterable[str]) -> list[str]:
    return [item for item in dict.fromkeys(items) if item]  # dicts keep insertion order


def _env_with_standard_path(env: Mapping[str, str], first: Iterable[str] = ()) -> dict[str, str]:
    """A copy of env whose PATH is `first`, then env's PATH, then STANDARD_PATH (for /usr/sbin/runc)."""
    path = env.get("PATH", os.defpath).split(os.pathsep)
    return {**env, "PATH": os.pathsep.join(_dedupe([*first, *path, *STANDARD_PATH]))}


def _read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def _all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(pids: Iterable[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while pending:
        pending = {pid for pid in pending if _is_alive(pid)}
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rmdir_quietly(path: Path) -> bool:
    """rmdir only succeeds on an empty directory (for a cgroup: no processes, no children), which is the point."""
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory` (from /proc/self/mountinfo), deepest first, ready to unmount."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # mountinfo escapes space, tab, newline and backslash as \ooo octal.
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if mount_point == prefix[:-1] or mount_point.startswith(prefix):
            found.append(Path(mount_point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unmount(path: Path) -> None:
    """umount2(2) through libc, lazily (MNT_DETACH) if the mount is still busy."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), 0) == 0:
        return
    if ctypes.get_errno() == errno.EBUSY:
        libc.umount2(os.fsencode(path), MNT_DETACH)


def cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies: every v1 controller dir plus cgroup2 (`unified` here, or the root on v2 hosts)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


@dataclass(frozen=True)
class CniNetwork:
    """One daemon's pod network: a bridge and a /24, both derived from a slot number."""

    slot: int

    @property
    def name(self) -> str:
        """The bridge's name, also used as the CNI network name (so libcni's cache files are recognisably ours)."""
        return f"{CNI_BRIDGE_PREFIX}{self.slot:03x}"

    @property
    def subnet(self) -> str:
        return f"10.{200 + self.slot // 256}.{self.slot % 256}.0/24"

    @property
    def gateway(self) -> str:
        """The bridge's own address (isGateway): the host reaches pod IPs through it."""
        return self.subnet.rsplit(".", 1)[0] + ".1"

    def contains(self, ip: str) -> bool:
        return ip.rsplit(".", 1)[0] == self.subnet.rsplit(".", 1)[0] and ip != self.gateway


def render_cni_conflist(network: CniNetwork, ipam_data_dir: Path) -> str:
    """The bridge conflist CRI loads from `cni_conf_dir` (isGateway true: tests curl pod IPs).

    No loopback entry: the CRI plugin always adds its own loopback network (go-cni WithLoNetwork, using
    /usr/lib/cni/loopback) and loads only the first conflist of the dir (max_conf_num = 1); and the loopback plugin
    chained after the bridge would act on eth0, not lo. cniVersion 0.4.0 is understood by all three containerds'
    libcni and by the plugins 1.1.1.
    """
    conflist = {
        "cniVersion": "0.4.0",
        "name": network.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.name,
                "isGateway": True,
                "ipMasq": False,  # pods need not reach out; masquerading would add iptables rules to clean up
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.subnet, "gateway": network.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_data_dir),
                },
            }
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"


def cni_slot_order(workdir: Path) -> list[int]:
    """Every slot, starting from one derived from the workdir, so a daemon usually gets the same slot each run."""
    start = int(hashlib.sha256(str(workdir).encode()).hexdigest()[:8], 16) % CNI_SLOTS
    return [(start + offset) % CNI_SLOTS for offset in range(CNI_SLOTS)]


def _routed_ipv4_prefixes() -> set[str]:
    """The first three octets of every IPv4 route's destination on the host (/proc/net/route is little-endian)."""
    prefixes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] != "00000000":
                octets = int(fields[1], 16).to_bytes(4, "little")
                prefixes.add(".".join(str(o) for o in octets[:3]))
    return prefixes


def _process_alive(pid: object) -> bool:
    return isinstance(pid, int) and _is_alive(pid)


class PrivateContainerd:
    """One containerd daemon of a given version, confined to `workdir`, with `shim_dir` first on its PATH.

    The shim is looked up on the *daemon's* PATH (ctr's PATH does not matter), so `shim_dir` comes first; then
    the version's own bin dir, so that 1.7 and 2.1 use their own containerd-shim-runc-v2 rather than bookworm's;
    then the caller's PATH.
    """

    def __init__(
        self,
        version: str,
        workdir: Path,
        shim_dir: Path,
        *,
        debug: bool = False,
        extra_env: Mapping[str, str] | None = None,
        extra_toml: str = "",
        spin_runtime: bool = True,
    ) -> None:
        """`extra_toml` is appended to the generated config.toml (new tables only, e.g. an extra CRI runtime).

        `spin_runtime=False` leaves our runtime out of the CRI runtimes (only runc), as a node's config is before
        the node installer (`containerd-shim-spin-v2 install`) adds it.
        """
        _check_version(version)
        self.version = version
        self.workdir = Path(workdir).absolute()
        self.shim_dir = Path(shim_dir).absolute()
        self.debug = debug
        self.extra_env = dict(extra_env or {})
        self.extra_toml = extra_toml
        self.spin_runtime = spin_runtime
        self._process: subprocess.Popen[bytes] | None = None
        self._version_string: str | None = None

    # ---- paths (all under workdir) -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """containerd's gRPC socket path (what `ctr --address` and CONTAINERD_ADDRESS take)."""
        return str(self.workdir / "run" / "containerd.sock")

    @property
    def ttrpc_address(self) -> str:
        """containerd's ttrpc socket; shims get it as TTRPC_ADDRESS to publish events."""
        return str(self.workdir / "run" / "containerd.sock.ttrpc")

    @property
    def root_dir(self) -> Path:
        return self.workdir / "root"

    @property
    def state_dir(self) -> Path:
        """Holds the task bundles: state_dir/io.containerd.runtime.v2.task/<ns>/<id>."""
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "containerd.pid"

    @property
    def certs_dir(self) -> Path:
        """Registry hosts dir (`<host>/hosts.toml`), used by CRI pulls and the 1.7+ transfer service."""
        return self.workdir / "certs.d"

    @property
    def fifo_dir(self) -> Path:
        """Pass as `ctr run -d --fifo-dir` (also `tasks exec`/`start`): ctr's stdio FIFOs otherwise go to
        /run/containerd/fifo, and a detached task whose daemon died leaves them there for good."""
        return self.workdir / "fifo"

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni" / "net.d"

    @property
    def cni_state_path(self) -> Path:
        """Records the CNI slot this daemon claimed (enable_cni), so stop() in another process can release it."""
        return self.workdir / "cni" / "network.json"

    @property
    def bin_dir(self) -> Path:
        return bin_dir_for(self.version)

    @property
    def _instance_path(self) -> Path:
        return self.workdir / "instance.json"

    @property
    def version_string(self) -> str:
        """The daemon's own version, e.g. `1.7.24~ds1` (third field of `containerd --version`)."""
        if self._version_string is None:
            out = subprocess.run(
                [str(self.bin_dir / "containerd"), "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if len(out) < 3:
                raise PrivateContainerdError(f"cannot parse `containerd --version` output: {' '.join(out)!r}")
            self._version_string = out[2]
        return self._version_string

    @property
    def pid(self) -> int | None:
        """The daemon's pid if it is running (checked against /proc, so a stale pid file gives None)."""
        return self._running_pid()

    # ---- config ----------------------------------------------------------------------------------------------
    def render_config(self) -> str:
        """config.toml text: version = 2 layout for 1.6/1.7, version = 3 (CRI split in two plugins) for 2.1."""
        return self._config_v3() if self.version == "2.1" else self._config_v2()

    def _config_common(self, schema: int) -> list[str]:
        lines = [
            f"version = {schema}",
            f"root = {_toml_str(self.root_dir)}",
            f"state = {_toml_str(self.state_dir)}",
            # Temporary mounts (image unpack) go here instead of /tmp.
            f"temp = {_toml_str(self.workdir / 'tmp')}",
            "",
            "[grpc]",
            f"  address = {_toml_str(self.address)}",
            "",
            "[ttrpc]",
            f"  address = {_toml_str(self.ttrpc_address)}",
            "",
            "[debug]",
            # Debug level also makes containerd pass -debug to shims.
            f"  level = {_toml_str('debug' if self.debug else 'info')}",
            "",
            "[plugins]",
            # Without this containerd creates /opt/containerd/{bin,lib} at its first start.
            '  [plugins."io.containerd.internal.v1.opt"]',
            f"    path = {_toml_str(self.workdir / 'opt')}",
        ]
        if self.version != "1.6":
            lines += [
                # NRI listens on the system-wide /var/run/nri/nri.sock (on by default in 2.x): two daemons would
                # fight over it.
                '  [plugins."io.containerd.nri.v1.nri"]',
                "    disable = true",
                '  [plugins."io.containerd.transfer.v1.local"]',
                f"    config_path = {_toml_str(self.certs_dir)}",
            ]
        return lines

    def _runtime_tables(self, prefix: str) -> list[str]:
        """runtimes.runc must be defined whenever another runtime is, or the 1.7 CRI plugin fails ("no
        corresponding runtime configured ... default_runtime_name = "runc"", then every CRI call is UNIMPLEMENTED)."""
        # 2.1 moved the CRI snapshotter setting to the images plugin.
        snapshotter = ['      snapshotter = "overlayfs"'] if self.version != "2.1" else []
        return [
            f"    [{prefix}.containerd]",
            *snapshotter,
            '      default_runtime_name = "runc"',
            f"      [{prefix}.containerd.runtimes.runc]",
            f"        runtime_type = {_toml_str(RUNC_RUNTIME_TYPE)}",
            *([f"      [{prefix}.containerd.runtimes.spin]",
               f"        runtime_type = {_toml_str(SPIN_RUNTIME_TYPE)}"] if self.spin_runtime else []),
        ]

    def _config_v2(self) -> str:
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        cri_key = 'plugins."io.containerd.grpc.v1.cri"'
        lines = self._config_common(2) + [
            f"  {cri}",
            "    disable_tcp_service = true",
            # No CAP_SYS_RESOURCE here: without this the CRI sandbox fails in runc's nsexec (oom_score_adj -998).
            "    restrict_oom_score_adj = true",
            # Pod network namespaces under state_dir instead of /var/run/netns.
            "    netns_mounts_under_state_dir = true",
            f"    sandbox_image = {_toml_str(SANDBOX_IMAGE)}",
            *self._runtime_tables(cri_key),
            f"    [{cri_key}.registry]",
            f"      config_path = {_toml_str(self.certs_dir)}",
            f"    [{cri_key}.cni]",
            f"      bin_dir = {_toml_str(CNI_BIN_DIR)}",
            f"      conf_dir = {_toml_str(self.cni_conf_dir)}",
        ]
        return self._finish_config(lines)

    def _config_v3(self) -> str:
        images = 'plugins."io.containerd.cri.v1.images"'
        runtime = 'plugins."io.containerd.cri.v1.runtime"'
        lines = self._config_common(3) + [
            '  [plugins."io.containerd.image-verifier.v1.bindir"]',
            f"    bin_dir = {_toml_str(self.workdir / 'opt' / 'image-verifier' / 'bin')}",
            '  [plugins."io.containerd.grpc.v1.cri"]',
            "    disable_tcp_service = true",
            f"  [{images}]",
            '    snapshotter = "overlayfs"',
            f"    [{images}.pinned_images]",
            f"      sandbox = {_toml_str(SANDBOX_IMAGE)}",
            f"    [{images}.registry]",
            f"      config_path = {_toml_str(self.certs_dir)}",
            f"  [{runtime}]",
            "    restrict_oom_score_adj = true",
            "    netns_mounts_under_state_dir = true",
            *self._runtime_tables(runtime),
            f"    [{runtime}.cni]",
            # 2.1 replaced bin_dir by the list bin_dirs.
            f"      bin_dirs = [{_toml_str(CNI_BIN_DIR)}]",
            f"      conf_dir = {_toml_str(self.cni_conf_dir)}",
        ]
        return self._finish_config(lines)

    def _finish_config(self, lines: list[str]) -> str:
        text = "\n".join(lines) + "\n"
        extra = self.extra_toml.strip()
        return text + (f"\n{extra}\n" if extra else "")

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def write_config(self) -> Path:
        """Write the rendered config.toml (start() does this unless told to keep one edited since)."""
        self._make_dirs()
        self.config_path.write_text(self.render_config())
        return self.config_path

    def start(self, *, keep_config: bool = False) -> None:
        """Write config.toml, start containerd in the background and return once `ctr version` answers.

        `keep_config=True` starts with the config.toml already in the workdir (written by write_config() and then
        edited, e.g. by the node installer) instead of rendering it anew.
        Raises PrivateContainerdError with the tail of containerd.log when the daemon exits or is not ready
        within 20 s (the daemon is killed then, so nothing leaks).
        """
        running_pid = self._running_pid()
        if running_pid is not None:
            raise PrivateContainerdError(f"containerd already running for {self.workdir} (pid {running_pid})")
        self._check_socket_paths()
        bin_dir = self.bin_dir
        if not self.version_string.startswith(self.version + "."):
            raise ContainerdNotInstalledError(
                f"{bin_dir / 'containerd'} is {self.version_string}, not containerd {self.version}"
            )
        if keep_config and self.config_path.exists():
            self._make_dirs()
        else:
            self.write_config()
        system_paths_before = self._snapshot_system_paths()
        self._spawn_daemon()
        self._write_instance(system_paths_before)
        self._wait_ready()

    def restart_daemon(self) -> None:
        """Stop the daemon alone (SIGTERM, as `systemctl restart containerd` does) and start it again with the same
        config: shims and their tasks keep running, and containerd reconnects to them on start.

        The pre-start snapshot of the first start() is kept, so stop() still knows which system paths are ours.
        """
        pid = self._running_pid()
        if pid is None:
            raise PrivateContainerdError(f"containerd for {self.workdir} is not running")
        self._terminate(pid)
        self._spawn_daemon()
        record = self._read_instance()
        record["pid"] = self._process.pid if self._process else None
        self._instance_path.write_text(json.dumps(record, indent=2) + "\n")
        self._wait_ready()

    def _spawn_daemon(self) -> None:
        bin_dir = self.bin_dir
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(bin_dir / "containerd"), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._daemon_env(),
                # Own session: a Ctrl-C in the test terminal must not reach the daemon before stop() does.
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, SIGKILL after 10 s) and clean up what it left in system paths.

        Before that, every task is killed and deleted through ctr: shims outlive containerd by design, so
        stopping the daemon alone would leave shims and containers running. Afterwards, leftovers are removed only
        when provably ours: shim processes started with our `-address`, runc state whose bundle is in our state
        dir, mounts inside workdir, shim sockets whose name hashes our address, and cgroup / runc namespace dirs
        that did not exist before start() (rmdir only, so a cgroup with processes is never touched). Safe to call
        twice, or after the daemon died on its own.
        """
        owned_ids: set[tuple[str, str]] = set()
        pid = self._running_pid()
        if pid is not None:
            owned_ids |= self._teardown_tasks()
            self._terminate(pid)
        owned_ids |= self._bundle_ids()
        self._cleanup_system_paths(owned_ids)
        self._cleanup_cni()
        self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def is_running(self) -> bool:
        return self._running_pid() is not None

    # ---- CRI: sandbox image and pod network ------------------------------------------------------------------
    def import_pause_image(self) -> None:
        """Import the sandbox image (scripts/build_pause.py) into namespace k8s.io, where CRI looks for it.

        Without it every RunPodSandbox fails with "failed to get sandbox image". Idempotent: an image
        already listed is not imported again. Call it only for CRI tests; plain ctr tests do not need it.
        """
        if SANDBOX_IMAGE in self.ctr("images", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split():
            return
        if str(Path(__file__).resolve().parent) not in sys.path:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
        from build_pause import PAUSE_IMAGE, pause_image_tar  # deferred: compiles C on first use

        assert PAUSE_IMAGE == SANDBOX_IMAGE, (PAUSE_IMAGE, SANDBOX_IMAGE)
        self.ctr("images", "import", str(pause_image_tar()), namespace=CRI_NAMESPACE)

    @property
    def cni_network(self) -> CniNetwork | None:
        """The pod network enable_cni() set up for this workdir, if any."""
        try:
            return CniNetwork(int(json.loads(self.cni_state_path.read_text())["slot"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def enable_cni(self) -> CniNetwork:
        """Give CRI pods a network: claim a free bridge/subnet slot and write its conflist into cni_conf_dir.

        Works before or after start() (CRI watches conf_dir). The bridge itself is created by the bridge
        plugin at the first pod; stop() deletes it, libcni's cached results for it and the claim. Idempotent.
        """
        existing = self.cni_network
        if existing is not None:
            return existing
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        network = self._claim_cni_slot()
        ipam_dir = self.workdir / "cni" / "ipam"
        ipam_dir.mkdir(parents=True, exist_ok=True)
        self.cni_state_path.write_text(json.dumps({"slot": network.slot, "bridge": network.name}) + "\n")
        conflist = self.cni_conf_dir / f"10-{network.name}.conflist"
        partial = conflist.with_suffix(".tmp")  # CRI reads *.conf, *.conflist, *.json: never a half-written file
        partial.write_text(render_cni_conflist(network, ipam_dir))
        partial.replace(conflist)
        return network

    def _claim_cni_slot(self) -> CniNetwork:
        CNI_CLAIM_DIR.mkdir(parents=True, exist_ok=True)
        taken_interfaces = set(os.listdir("/sys/class/net"))
        routed = _routed_ipv4_prefixes()
        record = json.dumps({"workdir": str(self.workdir), "pid": os.getpid()})
        for slot in cni_slot_order(self.workdir):
            network = CniNetwork(slot)
            if network.name in taken_interfaces or network.subnet.rsplit(".", 1)[0] in routed:
                continue
            claim = CNI_CLAIM_DIR / network.name
            self._drop_stale_claim(claim)
            try:
                fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(record + "\n")
            return network
        raise PrivateContainerdError(f"no free CNI slot: all {CNI_SLOTS} bridges/subnets are in use or claimed")

    @staticmethod
    def _drop_stale_claim(claim: Path) -> None:
        """A claim is stale once neither its claimant process nor a containerd of its workdir is alive."""
        try:
            record = json.loads(claim.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            record = {}
        workdir = Path(str(record.get("workdir", "/nonexistent")))
        try:
            daemon_pid: object = int((workdir / "containerd.pid").read_text().strip())
        except (OSError, ValueError):
            daemon_pid = None
        daemon_alive = _process_alive(daemon_pid) and str(workdir / "config.toml") in _read_cmdline(int(daemon_pid))
        if not _process_alive(record.get("pid")) and not daemon_alive:
            claim.unlink(missing_ok=True)

    def _cleanup_cni(self) -> None:
        """Delete this daemon's bridge, libcni's cache entries for its network, its conflist and its claim.

        Pod netns live under state_dir (netns_mounts_under_state_dir), so the mount cleanup already released them;
        the bridge outlives its last veth, hence `ip link del`.
        """
        network = self.cni_network
        if network is None:
            return
        if Path("/sys/class/net", network.name).exists():
            subprocess.run(["ip", "link", "del", network.name], capture_output=True, timeout=30, check=False,
                           env=_env_with_standard_path(os.environ))
        # A pod still up when the daemon stopped never got its CNI DEL: drop its cached results, for our network
        # and for CRI's loopback network (named by pod id, so only pods of our network are touched).
        for cached in CNI_RESULT_CACHE.glob(f"{network.name}-*"):
            pod_id = cached.name[len(network.name) + 1 :].rsplit("-", 1)[0]
            (CNI_RESULT_CACHE / f"cni-loopback-{pod_id}-lo").unlink(missing_ok=True)
            cached.unlink(missing_ok=True)
        for conflist in self.cni_conf_dir.glob(f"*{network.name}.conflist"):
            conflist.unlink(missing_ok=True)
        claim = CNI_CLAIM_DIR / network.name
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.read_text()).get("workdir") == str(self.workdir):
                claim.unlink()
        self.cni_state_path.unlink(missing_ok=True)

    # ---- ctr -------------------------------------------------------------------------------------------------
    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float | None = CTR_TIMEOUT_S,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run this version's ctr against this daemon (text mode); with check=True a failure raises CtrError."""
        argv = [str(self.bin_dir / "ctr"), "--address", self.address, "--namespace", namespace, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, env=env, check=False
        )
        if check and result.returncode != 0:
            raise CtrError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def owned_pids(self) -> list[int]:
        """Live processes of this daemon: containerd run with our config, or a shim given our `-address`."""
        config, address = str(self.config_path), self.address
        owned = []
        for pid in _all_pids():
            argv = _read_cmdline(pid)
            if not argv or pid == os.getpid():
                continue
            is_daemon = config in argv and Path(argv[0]).name == "containerd"
            is_shim = any(flag == "-address" and value == address for flag, value in zip(argv, argv[1:]))
            if (is_daemon or is_shim) and _is_alive(pid):
                owned.append(pid)
        return sorted(owned)

    # ---- internals: start ------------------------------------------------------------------------------------
    def _check_socket_paths(self) -> None:
        for path in (self.address, self.ttrpc_address):
            if len(path.encode()) > UNIX_SOCKET_PATH_MAX:
                raise ValueError(f"socket path too long for AF_UNIX ({len(path)} bytes): {path}; use a shorter workdir")

    def _make_dirs(self) -> None:
        for path in (
            self.workdir / "run",
            self.root_dir,
            self.state_dir,
            self.workdir / "tmp",
            self.workdir / "opt",
            self.certs_dir,
            self.cni_conf_dir,
            self.fifo_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)

    def _daemon_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env.update(self.extra_env)
        return _env_with_standard_path(env, first=(str(self.shim_dir), str(self.bin_dir)))

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                self.pid_path.unlink(missing_ok=True)
                raise PrivateContainerdError(
                    f"containerd {self.version} exited with status {returncode} while starting; "
                    f"{self.log_path} ends with:\n{self._log_tail()}"
                )
            if Path(self.address).exists() and self._answers():
                return
            if time.monotonic() > deadline:
                self._terminate(self._process.pid)
                self.pid_path.unlink(missing_ok=True)
                raise PrivateContainerdError(
                    f"containerd {self.version} did not answer `ctr version` within {READY_TIMEOUT_S:.0f} s; "
                    f"{self.log_path} ends with:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return self.ctr("version", check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(cannot read log: {error})"

    def _snapshot_system_paths(self) -> dict[str, list[str]]:
        """Which system dirs existed before start, so stop() removes only dirs this daemon created."""
        snapshot: dict[str, list[str]] = {}
        for hierarchy in cgroup_hierarchies():
            snapshot[str(hierarchy)] = sorted(p.name for p in hierarchy.iterdir() if p.is_dir())
        for directory in (SYSTEM_RUN_DIR, RUNC_STATE_ROOT):
            snapshot[str(directory)] = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        snapshot["existed"] = [str(d) for d in (SYSTEM_RUN_DIR, RUNC_STATE_ROOT) if d.is_dir()]
        return snapshot

    def _write_instance(self, system_paths_before: dict[str, list[str]]) -> None:
        """instance.json lets a later process (the CLI's `stop`) know the version and the pre-start snapshot."""
        record = {
            "version": self.version,
            "shim_dir": str(self.shim_dir),
            "address": self.address,
            "pid": self._process.pid if self._process else None,
            "system_paths_before": system_paths_before,
        }
        self._instance_path.write_text(json.dumps(record, indent=2) + "\n")

    def _read_instance(self) -> dict[str, object]:
        try:
            record = json.loads(self._instance_path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _system_paths_before(self) -> dict[str, set[str]]:
        """The pre-start snapshot as sets; empty (treat everything as new, rmdir stays safe) if unrecorded."""
        snapshot = self._read_instance().get("system_paths_before")
        if not isinstance(snapshot, dict):
            return {}
        return {str(key): set(value) for key, value in snapshot.items() if isinstance(value, list)}

    # ---- internals: stop -------------------------------------------------------------------------------------
    def _running_pid(self) -> int | None:
        """The daemon pid from the pid file, only if /proc shows containerd with our config (no pid reuse)."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        argv = _read_cmdline(pid)
        if argv and str(self.config_path) in argv and _is_alive(pid):
            return pid
        return None

    def _teardown_tasks(self) -> set[tuple[str, str]]:
        """Kill and delete every task (all namespaces) while containerd still answers; return (ns, id) seen."""
        seen: set[tuple[str, str]] = set()
        with contextlib.suppress(subprocess.TimeoutExpired):
            listed = self.ctr("namespaces", "list", "-q", check=False, timeout=15)
            for namespace in listed.stdout.split():
                tasks = self.ctr("tasks", "list", "-q", namespace=namespace, check=False, timeout=15)
                for task_id in tasks.stdout.split():
                    seen.add((namespace, task_id))
                    self.ctr("tasks", "kill", "-s", "SIGKILL", task_id, namespace=namespace, check=False, timeout=15)
                    self.ctr("tasks", "delete", "-f", task_id, namespace=namespace, check=False, timeout=30)
        return seen

    def _terminate(self, pid: int) -> None:
        _signal(pid, signal.SIGTERM)
        if not self._wait_exit(pid, STOP_GRACE_S):
            _signal(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 5.0):
                raise PrivateContainerdError(f"containerd pid {pid} survived SIGKILL")
        self._process = None

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        """Reap our own child (else it stays a zombie); a daemon started by another process is polled in /proc."""
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_gone([pid], timeout_s)

    def _bundle_ids(self) -> set[tuple[str, str]]:
        """(namespace, id) of task bundles still in our state dir: tasks that were never deleted."""
        task_root = self.state_dir / "io.containerd.runtime.v2.task"
        if not task_root.is_dir():
            return set()
        return {(ns.name, b.name) for ns in task_root.iterdir() if ns.is_dir() for b in ns.iterdir() if b.is_dir()}

    def _cleanup_system_paths(self, owned_ids: set[tuple[str, str]]) -> None:
        owned_ids |= self._delete_owned_runc_containers()
        self._kill_owned_shims()
        # A shim that did not get to its cleanup leaves the task rootfs (overlay) mounted in its bundle, and CRI
        # may leave pod netns bind mounts in the state dir; anything mounted inside workdir is ours.
        for mount_point in mounts_under(self.workdir):
            _unmount(mount_point)
        self._remove_shim_sockets(owned_ids)
        before = self._system_paths_before()
        namespaces = {ns for ns, _ in owned_ids} | self._namespaces_on_disk()
        self._remove_cgroups(owned_ids, namespaces, before)
        self._remove_run_dirs(namespaces, before)

    def _namespaces_on_disk(self) -> set[str]:
        task_root = self.state_dir / "io.containerd.runtime.v2.task"
        return {p.name for p in task_root.iterdir() if p.is_dir()} if task_root.is_dir() else set()

    def _delete_owned_runc_containers(self) -> set[tuple[str, str]]:
        """`runc delete --force` containers whose runc state names a bundle inside our state dir."""
        deleted: set[tuple[str, str]] = set()
        if not RUNC_STATE_ROOT.is_dir():
            return deleted
        for state_file in RUNC_STATE_ROOT.glob("*/*/state.json"):
            if not self._runc_bundle_is_ours(state_file):
                continue
            namespace, container_id = state_file.parent.parent.name, state_file.parent.name
            subprocess.run(
                ["runc", "--root", str(state_file.parent.parent), "delete", "--force", container_id],
                capture_output=True,
                timeout=30,
                check=False,
                env=_env_with_standard_path(os.environ),
            )
            deleted.add((namespace, container_id))
        return deleted

    def _runc_bundle_is_ours(self, state_file: Path) -> bool:
        try:
            labels = json.loads(state_file.read_text()).get("config", {}).get("labels", [])
        except (OSError, ValueError, AttributeError):
            return False
        state_prefix = str(self.state_dir) + os.sep
        return any(isinstance(l, str) and l.startswith("bundle=" + state_prefix) for l in labels)

    def _kill_owned_shims(self) -> None:
        shims = self.owned_pids()  # the daemon itself is gone by now
        for pid in shims:
            _signal(pid, signal.SIGTERM)
        if not _wait_gone(shims, 5.0):
            for pid in shims:
                _signal(pid, signal.SIGKILL)
            _wait_gone(shims, 5.0)

    def _remove_shim_sockets(self, owned_ids: set[tuple[str, str]]) -> None:
        """Shim sockets are /run/containerd/s/sha256(<grpc address>/<ns>/<group id>) (containerd's
        shim.SocketAddress), so a name computed from our address cannot be another daemon's."""
        for namespace, group_id in owned_ids:
            digest = hashlib.sha256(os.path.join(self.address, namespace, group_id).encode()).hexdigest()
            for name in (digest, digest + ".debug"):
                path = SHIM_SOCKET_DIR / name
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()

    def _remove_cgroups(
        self, owned_ids: set[tuple[str, str]], namespaces: set[str], before: Mapping[str, set[str]]
    ) -> None:
        """ctr puts a container in <hierarchy>/<ns>/<id>; runc removes the leaf, never the <ns> parent."""
        for hierarchy in cgroup_hierarchies():
            for namespace, container_id in owned_ids:
                _rmdir_quietly(hierarchy / namespace / container_id)
            for namespace in namespaces - before.get(str(hierarchy), set()):
                _rmdir_quietly(hierarchy / namespace)

    def _remove_run_dirs(self, namespaces: set[str], before: Mapping[str, set[str]]) -> None:
        """Empty dirs under /run/containerd that appeared after start(); rmdir fails on anything still in use."""
        for namespace in namespaces - before.get(str(RUNC_STATE_ROOT), set()):
            _rmdir_quietly(RUNC_STATE_ROOT / namespace)
        for leftover in (SHIM_SOCKET_DIR, RUNC_STATE_ROOT, SYSTEM_RUN_DIR / "fifo"):
            if leftover.name not in before.get(str(SYSTEM_RUN_DIR), set()):
                _rmdir_quietly(leftover)
        if str(SYSTEM_RUN_DIR) not in before.get("existed", set()):
            _rmdir_quietly(SYSTEM_RUN_DIR)


# ---- CLI -----------------------------------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a private containerd and print shell-evaluable variables")
    start.add_argument("--version", required=True, choices=SUPPORTED_VERSIONS)
    start.add_argument("--workdir", required=True, type=Path)
    start.add_argument("--shim-dir", required=True, type=Path)
    start.add_argument("--debug", action="store_true", help="containerd log level debug (shims get -debug)")
    start.add_argument("--cri", action="store_true", help="import the pause image and give pods a CNI bridge network")
    stop = sub.add_parser("stop", help="stop the private containerd of a workdir and clean up after it")
    stop.add_argument("--version", choices=SUPPORTED_VERSIONS, help="default: the one recorded by start")
    stop.add_argument("--workdir", required=True, type=Path)
    stop.add_argument("--shim-dir", type=Path, help="ignored; accepted for symmetry with start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return _start_cli(args) if args.command == "start" else _stop_cli(args)


def _start_cli(args: argparse.Namespace) -> int:
    """Print `export K=V` lines so a demo can `eval "$(private_containerd.py start ...)"` and use ctr directly."""
    ctrd = PrivateContainerd(args.version, args.workdir, args.shim_dir, debug=args.debug)
    ctrd.start()
    if args.cri:
        ctrd.import_pause_image()
        ctrd.enable_cni()
    exports = {
        "CONTAINERD_ADDRESS": ctrd.address,
        "CONTAINERD_TTRPC_ADDRESS": ctrd.ttrpc_address,
        "CONTAINERD_PID": str(ctrd.pid),
        "CONTAINERD_LOG": str(ctrd.log_path),
        "CONTAINERD_VERSION": ctrd.version_string,
        "CTR": str(ctrd.bin_dir / "ctr"),
    }
    if ctrd.cni_network is not None:
        exports["CNI_BRIDGE"], exports["CNI_SUBNET"] = ctrd.cni_network.name, ctrd.cni_network.subnet
    print("\n".join(f"export {key}={shlex.quote(value)}" for key, value in exports.items()))
    return 0


def _stop_cli(args: argparse.Namespace) -> int:
    """`stop` may run in another process than `start`: version and shim dir come from instance.json."""
    instance_path = args.workdir / "instance.json"
    recorded = json.loads(instance_path.read_text()) if instance_path.exists() else {}
    version = args.version or recorded.get("version")
    if version is None:
        print(f"no instance.json in {args.workdir}; pass --version", file=sys.stderr)
        return 2
    shim_dir = Path(recorded.get("shim_dir") or args.shim_dir or args.workdir)
    ctrd = PrivateContainerd(version, args.workdir, shim_dir)
    was_running = ctrd.is_running()
    ctrd.stop()
    print(f"containerd {version} in {args.workdir.absolute()}: {'stopped' if was_running else 'was not running'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PrivateContainerdError as error:
        print(f"private_containerd: {error}", file=sys.stderr)
        sys.exit(1)
