"""The installer's writes on the node: the shim's symlink (and the backup of what it replaces), atomic file writes.

Every replacement is a rename, so containerd starting a pod meanwhile sees the old binary or the new one, the old
config or the new one, never none and never half a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIM_BINARY_NAME = "containerd-shim-spin-v2"
# A pip console script of this package ends with `from shim.cli.main import main`; the first few KiB say it.
OUR_ENTRY_POINT = b"shim.cli.main"
SNIFF_BYTES = 4096


class InstallError(Exception):
    """The shim binary cannot be put in place (or taken away)."""


@dataclass(frozen=True)
class LinkPlan:
    """What is at `<bin-dir>/containerd-shim-spin-v2` and what install will do about it."""

    link: Path
    target: Path
    present: str | None  # a description of what is there now, None: nothing
    ours: bool  # what is there is this package's shim (or nothing is there)
    unchanged: bool  # it already is the symlink install would make

    def describe(self) -> str:
        if self.unchanged:
            return f"{self.link} already points to {self.target}: unchanged"
        if self.present is None:
            return f"installed {self.link} -> {self.target}"
        return f"replaced {self.link} ({self.present}) by a symlink to {self.target}"


def describe_path(path: Path) -> str | None:
    if path.is_symlink():
        return f"a symlink to {os.readlink(path)}"
    if path.is_dir():
        return "a directory"
    if path.exists():
        return "a file"
    return None


def is_our_shim_script(path: Path) -> bool:
    """A console script of this package (another venv, an older checkout): replacing it is an upgrade."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return head.startswith(b"#!") and OUR_ENTRY_POINT in head


def plan_link(bin_dir: Path, shim_binary: Path, recorded_target: str | None) -> LinkPlan:
    """Ours: nothing there, our symlink, the symlink a recorded install made, or a symlink to one of this package's
    console scripts. Anything else (the Rust shim's binary of the same name, any other file, a dangling or foreign
    symlink) is the operator's, which install replaces only with --force."""
    if not (shim_binary.is_file() and os.access(shim_binary, os.X_OK)):
        raise InstallError(f"{shim_binary} is missing or not executable: install the package first (pip install .)")
    if not bin_dir.is_dir():
        raise InstallError(f"{bin_dir} is not a directory")
    link = bin_dir / SHIM_BINARY_NAME
    present = describe_path(link)
    if link.is_dir() and not link.is_symlink():
        raise InstallError(f"{link} is a directory")
    if present is None:
        return LinkPlan(link, shim_binary, None, True, False)
    if not link.is_symlink():
        return LinkPlan(link, shim_binary, present, False, False)
    pointed = os.readlink(link)
    if pointed == str(shim_binary):
        return LinkPlan(link, shim_binary, present, True, True)
    ours = pointed == recorded_target or is_our_shim_script(link)
    return LinkPlan(link, shim_binary, present, ours, False)


def keep_backup(path: Path, backup: Path) -> None:
    """A second name for what is at `path` (a hard link: same inode, mode and owner; a symlink is copied as a
    symlink), so that putting it back is one rename. Never overwrites an earlier backup: that one is the original."""
    if backup.exists() or backup.is_symlink():
        raise InstallError(f"{backup} already exists (an earlier backup): move it away first")
    if path.is_symlink():
        os.symlink(os.readlink(path), backup)
        return
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:
        import shutil

        shutil.copy2(path, backup)


def replace_with_symlink(link: Path, target: Path) -> None:
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(str(target), temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes, *, like: Path | None = None) -> None:
    """containerd (or a config manager) reading meanwhile sees the old file or the new one; the mode and owner are
    those of `like` (default: the file replaced), else 0644."""
    like = like or path
    try:
        previous: os.stat_result | None = like.stat()
    except FileNotFoundError:
        previous = None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, stat.S_IMODE(previous.st_mode) if previous else 0o644)
        if previous is not None and os.geteuid() == 0:
            os.chown(temporary, previous.st_uid, previous.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
