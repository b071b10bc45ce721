"""Build a Wasm task's root and move the instance process into it: the mount half of the sandbox.

The fixed sequence, after runc's rootfs_linux.go, each step one function:
1. a private mount namespace, `/` made rprivate so nothing the sandbox mounts reaches the node (nor the reverse);
2. the rootfs bound onto itself (a mount point of this namespace, nosuid and nodev: image device nodes stay inert);
3. the spec's bind and tmpfs mounts (mount_plan), each destination made and resolved inside the root (in_root);
   under a spec'd /dev tmpfs, the node's null, zero, full, random and urandom bound in, as runc's default devices;
4. the shim's own view, `/.spin-shim`: `staging/` for the guests' staged files (on the rootfs, so staging is a
   hard link), a private tmpfs `run/`, and read-only or short-lived binds of what the host side needs, which the
   image cannot redirect (no symlink may lie on the way): the precompile cache, an artifact's laid-out app,
   containerd's socket, the node's CA bundle, the interpreter's module directories;
5. pivot_root into it (runc's `pivot_root(".", ".")`, then the old root detached), cwd `/`.

`release_host_paths` later takes the node's cache and containerd's socket away again and makes an artifact's app
read-only, before the guest runs; `seal`
makes the root read-only when the spec says `root.readonly`, once the app is loaded (staging writes there).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from runtime.files import STAGING_DIR_NAME
from runtime.precompile import PRECOMPILED_DIR_NAME
from shim.kernel import linux
from shim.oci_spec import SpecMount
from shim.wasm.sandbox.in_root import fd_path, make_mount_point, open_in_root
from shim.wasm.sandbox.mount_plan import ALWAYS, PlannedMount, plan_mounts
from shim.wasm.sandbox.steps import step

log = logging.getLogger("shim.wasm.sandbox")

#: Under the node's cache dir: the shim's mirror of content-store blobs (oci/mirror.py), per namespace.
MIRROR_DIR_NAME = "content"
#: The shim's directory inside every Wasm task's root (the image's own files never live there). It is the
#: runtime's cache dir as seen from the sandbox: `precompiled/` (and an artifact's `content/` mirror) are the
#: node's, bound in for the load; `staging/` is the container's own, on its rootfs, so staged files are hard links.
SHIM_DIR = "/.spin-shim"
STAGING = f"{SHIM_DIR}/{STAGING_DIR_NAME}"
PRECOMPILED = f"{SHIM_DIR}/{PRECOMPILED_DIR_NAME}"
CONTENT = f"{SHIM_DIR}/{MIRROR_DIR_NAME}"
APP = f"{SHIM_DIR}/app"
CONTAINERD_SOCKET = f"{SHIM_DIR}/containerd.sock"
CA_BUNDLE = f"{SHIM_DIR}/ca-certificates.crt"
#: A private tmpfs for files wasmtime opens by path (a WAGI module's stdout), since the sandbox has no /proc.
SCRATCH = f"{SHIM_DIR}/run"
#: The interpreter's module directories, bound read-only (shim/wasm/sandbox/python_paths.py).
PYTHON = f"{SHIM_DIR}/python"

#: runc's default devices (libcontainer/specconv AllowedDevices minus the tty ones), bound from the node.
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom")
#: The node's CA bundle (Debian's ca-certificates), the fallback trust store for a guest's outbound TLS.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class RootPlan:
    rootfs: Path
    mounts: tuple[SpecMount, ...]
    readonly: bool
    #: The node's cache dir (the runtime's precompile cache, the shim's blob mirror).
    cache_dir: Path
    #: An OCI artifact's locked-app directory, laid out on the node by the shim (oci/source.py).
    app_dir: Path | None = None
    #: containerd's socket, for an artifact's precompiled blobs kept in the content store.
    containerd_socket: Path | None = None
    ca_bundle: Path | None = field(default_factory=lambda: HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None)
    #: The node's directories the interpreter imports from; each is bound read-only at PYTHON/<n>.
    module_dirs: tuple[str, ...] = ()

    @property
    def module_binds(self) -> dict[str, str]:
        return {host: f"{PYTHON}/{index}" for index, host in enumerate(self.module_dirs)}


def enter_root(plan: RootPlan) -> list[str]:
    """Steps 1-5; returns log lines (mounts left out). Raises SandboxError."""
    planned, skipped = plan_mounts(plan.mounts)
    step("make a private mount namespace", _private_namespace)
    root = str(plan.rootfs)
    step(f"bind the rootfs {root}", linux.mount, root, root, "none", linux.MS_BIND | linux.MS_REC)
    step(f"make the rootfs {root} nosuid,nodev", linux.mount, "none", root, "none",
          linux.MS_BIND | linux.MS_REMOUNT | ALWAYS)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for mount in planned:
            step(f"mount {mount.destination} ({mount.kind} {mount.source})", _mount, root_fd, mount)
            if mount.kind == "tmpfs" and mount.destination.rstrip("/") == "/dev":
                for name in DEFAULT_DEVICES:
                    step(f"bind /dev/{name}", _bind, root_fd, f"/dev/{name}", f"/dev/{name}", False, 0, 0)
        step(f"make {SHIM_DIR}", _shim_view, root_fd, plan)
    finally:
        os.close(root_fd)
    step(f"pivot_root into {root}", _pivot, root)
    return skipped


def release_host_paths(plan: RootPlan) -> None:
    """Take the node's cache and containerd's socket out of the root: the loaded app needs neither, and the
    guest and the code serving it never see them."""
    for path in (PRECOMPILED, CONTENT, CONTAINERD_SOCKET):
        try:
            linux.umount(path, linux.MNT_DETACH)
        except OSError:
            pass  # not mounted (a rootfs app has no socket)
    if plan.app_dir is not None:
        step(f"make {APP} read-only", linux.mount, "none", APP, "none",
              linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | ALWAYS)


#: Where a container keeps its CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL); spin-operator mounts a
#: configured CA bundle Secret at the first.
CONTAINER_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def choose_trust_store() -> str | None:
    """The CA bundle outbound TLS verifies against, exported as SSL_CERT_FILE (OpenSSL reads it whenever a
    default context loads its paths): the container's own bundle, as Spin in a container would use it; else the
    node's, bound in read-only. Inside a scratch image OpenSSL's compiled-in default (/usr/lib/ssl) finds nothing."""
    for candidate in (*CONTAINER_CA_BUNDLES, CA_BUNDLE):
        if os.path.isfile(candidate):
            os.environ["SSL_CERT_FILE"] = candidate
            return candidate
    return None


def seal(readonly: bool) -> None:
    """root.readonly: the root becomes read-only, as runc remounts it at the end."""
    if readonly:
        step("make the root read-only", linux.mount, "none", "/", "none",
              linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | ALWAYS)


def _private_namespace() -> None:
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount("none", "/", "none", linux.MS_REC | linux.MS_PRIVATE)


def _mount(root_fd: int, mount: PlannedMount) -> None:
    if mount.kind == "bind":
        directory = stat.S_ISDIR(os.stat(mount.source).st_mode)  # the node's path: trusted, may be a symlink
        _bind(root_fd, mount.source, mount.destination, directory, mount.flags & linux.MS_REC,
              mount.remount_flags)
    else:
        fd = make_mount_point(root_fd, mount.destination, directory=True)
        try:
            linux.mount("tmpfs", fd_path(fd), "tmpfs", mount.flags, mount.data)
        finally:
            os.close(fd)
    for propagation in mount.propagation:
        _on_mounted(root_fd, mount.destination, lambda target, p=propagation: linux.mount("none", target, "none", p))


def _bind(root_fd: int, source: str, destination: str, directory: bool, recursive: int,
          remount_flags: int = ALWAYS, *, follow_symlinks: bool = True) -> None:
    fd = make_mount_point(root_fd, destination, directory=directory, follow_symlinks=follow_symlinks)
    try:
        linux.mount(source, fd_path(fd), "none", linux.MS_BIND | recursive)
    finally:
        os.close(fd)
    if remount_flags:
        # The fd above holds the covered inode; the new mount is reached by resolving the path again.
        _on_mounted(root_fd, destination, lambda target: linux.mount(
            "none", target, "none", linux.MS_BIND | linux.MS_REMOUNT | remount_flags), follow_symlinks)


def _on_mounted(root_fd: int, destination: str, action, follow_symlinks: bool = True) -> None:  # noqa: ANN001
    fd = open_in_root(root_fd, destination, os.O_PATH, follow_symlinks=follow_symlinks)
    try:
        action(fd_path(fd))
    finally:
        os.close(fd)


def _shim_view(root_fd: int, plan: RootPlan) -> None:
    os.close(make_mount_point(root_fd, STAGING, directory=True, follow_symlinks=False))
    fd = make_mount_point(root_fd, SCRATCH, directory=True, follow_symlinks=False)
    try:
        # World-writable and sticky like /tmp: the workers write here as the task's user. Its pages are charged
        # to the cgroup of the worker that writes them.
        linux.mount("tmpfs", fd_path(fd), "tmpfs", ALWAYS | linux.MS_NOEXEC, "mode=1777")
    finally:
        os.close(fd)
    reserved = [(_node_dir(plan.cache_dir / PRECOMPILED_DIR_NAME), PRECOMPILED, True, ALWAYS)]
    if plan.app_dir is not None:
        reserved.append((_node_dir(plan.cache_dir / MIRROR_DIR_NAME), CONTENT, True, ALWAYS))
        # Writable while the runtime lays out the lock's inline files in it, read-only once loaded.
        reserved.append((str(plan.app_dir), APP, True, ALWAYS))
    if plan.containerd_socket is not None:
        reserved.append((str(plan.containerd_socket), CONTAINERD_SOCKET, False, ALWAYS))
    if plan.ca_bundle is not None:
        reserved.append((str(plan.ca_bundle), CA_BUNDLE, False, ALWAYS | linux.MS_RDONLY))
    for host, bound in plan.module_binds.items():
        reserved.append((host, bound, True, ALWAYS | linux.MS_RDONLY))
    for source, destination, directory, flags in reserved:
        _bind(root_fd, source, destination, directory, 0, flags, follow_symlinks=False)


def _node_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _pivot(root: str) -> None:
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
