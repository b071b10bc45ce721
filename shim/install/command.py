"""`containerd-shim-spin-v2 install`: put the shim on a node and register it in containerd's config.toml.

The edit itself is shim.install.containerd_config's (pure, text in and text out); this module is the I/O around it: read
the file, link the shim into a directory on containerd's PATH, write the new text atomically, say what changed.
A config that cannot be edited safely is left as it was, and nothing on the node changes then.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from shim.install.containerd_config import (
    DEFAULT_RUNTIME_NAME,
    RUNTIME_NAME_RE,
    SPIN_RUNTIME_TYPE,
    ConfigError,
    RuntimeSettings,
    containerd_major_from_version_output,
    edit_config,
    is_empty_config,
)

SHIM_BINARY_NAME = "containerd-shim-spin-v2"
DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_BIN_DIR = Path("/usr/local/bin")
RESTART_HINT = "containerd reads config.toml only when it starts: restart it (systemctl restart containerd)"
NOTHING_CHANGED = "nothing changed: containerd needs no restart"
# containerd execs the shim binary at each pod start: a new binary needs no restart (running pods keep theirs).
SHIM_ONLY_CHANGED = "config unchanged: containerd needs no restart (pods started from now on use the new shim)"


class InstallError(Exception):
    """The shim binary cannot be put in place."""


def default_shim_binary() -> Path:
    """This installation's console script: its shebang names this venv's python, so it runs from any PATH."""
    return Path(sys.executable).parent / SHIM_BINARY_NAME


def link_shim(bin_dir: Path, shim_binary: Path) -> tuple[bool, str]:
    """Make `<bin_dir>/containerd-shim-spin-v2` a symlink to the shim; replace anything else there atomically,
    so containerd starting a pod meanwhile sees the old binary or the new one, never none."""
    if not (shim_binary.is_file() and os.access(shim_binary, os.X_OK)):
        raise InstallError(f"{shim_binary} is missing or not executable: install the package first (pip install .)")
    if not bin_dir.is_dir():
        raise InstallError(f"{bin_dir} is not a directory")
    link = bin_dir / SHIM_BINARY_NAME
    target = str(shim_binary)
    if link.is_symlink():
        previous = os.readlink(link)
        if previous == target:
            return False, f"{link} already points to {target}: unchanged"
        done = f"replaced {link} (a symlink to {previous}) by a symlink to {target}"
    elif link.is_dir():
        raise InstallError(f"{link} is a directory")
    elif link.exists():
        done = f"replaced {link} (a file) by a symlink to {target}"
    else:
        done = f"installed {link} -> {target}"
    temporary = bin_dir / f".{SHIM_BINARY_NAME}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return True, done


def write_atomically(path: Path, data: bytes) -> None:
    """containerd (or a config manager) reading meanwhile sees the old file or the new one; mode and owner stay."""
    try:
        previous: os.stat_result | None = path.stat()
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


def detect_containerd_major() -> int:
    executable = shutil.which("containerd")
    if executable is None:
        raise ConfigError("the config is empty and `containerd` is not on PATH to tell its version: "
                          "pass --containerd-version 1|2")
    try:
        result = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(f"`{executable} --version` failed ({error}): pass --containerd-version 1|2") from None
    return containerd_major_from_version_output(result.stdout)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"{SHIM_BINARY_NAME} install",
        description="Install the shim on this node and add its runtime to containerd's config.toml (idempotent).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="containerd's config (default: %(default)s)")
    parser.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN_DIR,
                        help="a directory on containerd's PATH for the shim symlink (default: %(default)s)")
    parser.add_argument("--runtime-name", default=DEFAULT_RUNTIME_NAME,
                        help="the CRI runtime name = the RuntimeClass handler (default: %(default)s)")
    parser.add_argument("--containerd-version", choices=("auto", "1", "2"), default="auto",
                        help="only used to create a missing or empty config (auto: `containerd --version`)")
    parser.add_argument("--systemd-cgroup", choices=("auto", "true", "false"), default="auto",
                        help="options.SystemdCgroup of the runtime (auto: as runc's, if the config sets it)")
    args = parser.parse_args(list(argv))
    if not RUNTIME_NAME_RE.fullmatch(args.runtime_name):
        parser.error(f"--runtime-name {args.runtime_name!r} is not a DNS label (what a RuntimeClass handler must be)")
    return args


def main(argv: Sequence[str], *, shim_binary: Path | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Exit status 0 (done, or nothing to do), 1 (nothing changed: the config or the binary could not be handled)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = _parse_args(argv)
    # Edit through a symlinked config (config managers do that): the rename must replace the target, not the link.
    config = Path(os.path.realpath(args.config))
    try:
        raw = config.read_bytes() if config.exists() else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"not UTF-8 ({error})") from None
        major = None if args.containerd_version == "auto" else int(args.containerd_version)
        if major is None and is_empty_config(text):
            major = detect_containerd_major()
        systemd = {"auto": None, "true": True, "false": False}[args.systemd_cgroup]
        edit = edit_config(text, RuntimeSettings(args.runtime_name, systemd, major))
    except (ConfigError, OSError) as error:
        message = " ".join(str(error).split())  # one line, whatever the parser's message holds
        err.write(f"{SHIM_BINARY_NAME} install: {args.config}: {message}; left unchanged\n")
        return 1
    try:
        linked, link_message = link_shim(args.bin_dir, shim_binary or default_shim_binary())
        if edit.changes:
            write_atomically(config, edit.text.encode("utf-8"))
    except (InstallError, OSError) as error:
        err.write(f"{SHIM_BINARY_NAME} install: {error}\n")
        return 1
    print(link_message, file=out)
    for change in edit.changes:
        print(f"{args.config}: {change}", file=out)
    if not edit.changes:
        print(f'{args.config}: {edit.runtime_table} already has runtime_type = "{SPIN_RUNTIME_TYPE}": unchanged',
              file=out)
    for note in edit.notes:
        print(f"{args.config}: {note}", file=out)
    if edit.changes:
        print(RESTART_HINT, file=out)
    elif linked:
        print(SHIM_ONLY_CHANGED, file=out)
    else:
        print(NOTHING_CHANGED, file=out)
    return 0
