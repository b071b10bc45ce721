"""`containerd-shim-spin-v2 install`: put the shim on a node and register it in containerd's config.toml.

The edit itself is shim.install.containerd_config's (pure, text in and text out); this module is the I/O around it:
read the file, ask which containerd reads it (shim.install.containerd_version), link the shim into a directory on
containerd's PATH, keep backups, write the new text atomically, write down what it did (shim.install.install_record)
so that `uninstall` can revert exactly that, and say each step. Nothing that is the operator's is replaced without
`--force`: a file at the shim's name that is not this package's shim, or a runtime of the same name with another
runtime_type. A config that cannot be edited safely is left as it was, and nothing on the node changes then.
`--dry-run` says all of it, with the config's diff, and changes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from shim.install import install_record
from shim.install.config_revert import hunks_of
from shim.install.containerd_config import (
    DEFAULT_RUNTIME_NAME,
    RUNTIME_NAME_RE,
    SPIN_RUNTIME_TYPE,
    ConfigError,
    ConfigEdit,
    RuntimeSettings,
    edit_config,
    is_empty_config,
)
from shim.install.containerd_version import ContainerdVersion, detect, from_flag
from shim.install.install_record import InstallRecord, RecordError, RuntimeEntry, sha256_of
from shim.install.node_files import (
    SHIM_BINARY_NAME,
    InstallError,
    LinkPlan,
    keep_backup,
    plan_link,
    replace_with_symlink,
    write_atomically,
)

__all__ = ["DEFAULT_BIN_DIR", "DEFAULT_CONFIG", "NOTHING_CHANGED", "RESTART_HINT", "SHIM_BINARY_NAME",
           "SHIM_ONLY_CHANGED", "InstallError", "default_shim_binary", "main"]

DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_BIN_DIR = Path("/usr/local/bin")
RESTART_HINT = "containerd reads config.toml only when it starts: restart it (systemctl restart containerd)"
NOTHING_CHANGED = "nothing changed: containerd needs no restart"
# containerd execs the shim binary at each pod start: a new binary needs no restart (running pods keep theirs).
SHIM_ONLY_CHANGED = "config unchanged: containerd needs no restart (pods started from now on use the new shim)"
DRY_RUN_HEADER = "dry run: what install would do; nothing is changed"
DRY_RUN_PREFIX = "[dry run] "


def default_shim_binary() -> Path:
    """This installation's console script: its shebang names this venv's python, so it runs from any PATH."""
    return Path(sys.executable).parent / SHIM_BINARY_NAME


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"{SHIM_BINARY_NAME} install",
        description="Install the shim on this node and add its runtime to containerd's config.toml (idempotent). "
                    "Keeps a backup of the config (<config>.before-spin-install) and a record of what it did "
                    "(<config>.spin-install.json), which `uninstall` reverts.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="containerd's config (default: %(default)s)")
    parser.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN_DIR,
                        help="a directory on containerd's PATH for the shim symlink (default: %(default)s)")
    parser.add_argument("--runtime-name", default=DEFAULT_RUNTIME_NAME,
                        help="the CRI runtime name = the RuntimeClass handler (default: %(default)s)")
    parser.add_argument("--containerd-version", choices=("auto", "1", "2"), default="auto",
                        help="the major version of the containerd that reads the config; it picks the schema of an "
                             "empty config and refuses a version 3 file for 1.x (auto: run `containerd --version` "
                             "from PATH; without containerd on PATH this flag is required)")
    parser.add_argument("--systemd-cgroup", choices=("auto", "true", "false"), default="auto",
                        help="options.SystemdCgroup of the runtime (auto: as runc's, if the config sets it)")
    parser.add_argument("--force", action="store_true",
                        help="replace what is the operator's: a file at <bin-dir>/containerd-shim-spin-v2 that is not "
                             "this package's shim (kept as <that path>.before-spin-install), a runtime of the same "
                             "name with another runtime_type")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change (files, the config's diff) and change nothing")
    args = parser.parse_args(list(argv))
    if not RUNTIME_NAME_RE.fullmatch(args.runtime_name):
        parser.error(f"--runtime-name {args.runtime_name!r} is not a DNS label (what a RuntimeClass handler must be)")
    return args


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # whatever the parser's message holds


def read_config(config: Path) -> tuple[bytes, str]:
    raw = config.read_bytes() if config.exists() else b""
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 ({error})") from None


def config_diff(config: Path, before: str, after: str, after_label: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), fromfile=str(config),
        tofile=f"{config} ({after_label})")]


def schema_warnings(text: str, version: ContainerdVersion) -> list[str]:
    schema = tomllib.loads(text).get("version")
    if version.major == 1 and schema == 3:
        return [f"warning: `version = 3` is a containerd 2.x config, but the containerd found is {version.major}.x, "
                "which cannot start on it: if that is the containerd that reads this file, fix the file first; "
                "left as it is"]
    return []


def _next_record(record: InstallRecord | None, config: Path, raw: bytes, text: str, edit: ConfigEdit,
                 plan: LinkPlan) -> tuple[InstallRecord, str | None, Path | None]:
    """The record after this install, the config backup to write (None: none) and the binary backup to make."""
    record = record or InstallRecord(config=str(config), config_existed=config.exists())
    config_backup = None
    if edit.changes:
        if record.config_written_sha256 is None:  # install's first edit of this file
            if record.config_existed:
                config_backup = str(install_record.config_backup_path(config))
                record.config_backup = config_backup
            record.added_version = any(change.startswith("set version") for change in edit.changes)
        elif sha256_of(raw) != record.config_written_sha256:
            # The operator changed the file after install wrote it: the backup no longer is "this file minus ours".
            record.backup_restores_all = False
            config_backup = f"{install_record.config_backup_path(config)}.{len(record.config_extra_backups) + 2}"
            record.config_extra_backups.append(config_backup)
        record.edits.append(hunks_of(text, edit.text))
        record.config_written_sha256 = sha256_of(edit.text.encode("utf-8"))
        if record.runtime(edit.runtime_path) is None:
            previous = _lookup(tomllib.loads(text) if text.strip() else {}, edit.runtime_path)
            record.runtimes.append(RuntimeEntry(list(edit.runtime_path), edit.runtime_table,
                                                previous if isinstance(previous, dict) else None))
    binary_backup = None
    if not plan.unchanged:
        if plan.present is not None and not plan.ours:
            binary_backup = install_record.binary_backup_path(plan.link)
            record.binary_backup = str(binary_backup)
        record.binary_link, record.binary_target = str(plan.link), str(plan.target)
    return record, config_backup, binary_backup


def _lookup(tree: object, path: Sequence[str]) -> object:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def main(argv: Sequence[str], *, shim_binary: Path | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Exit status 0 (done, or nothing to do), 1 (nothing changed: refused, or the config or the binary could not
    be handled)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = _parse_args(argv)
    # Edit through a symlinked config (config managers do that): the rename must replace the target, not the link.
    config = Path(os.path.realpath(args.config))
    try:
        record = install_record.load(config)
        raw, text = read_config(config)
        version: ContainerdVersion = detect() if args.containerd_version == "auto" else \
            from_flag(args.containerd_version)
        systemd = {"auto": None, "true": True, "false": False}[args.systemd_cgroup]
        # A non-empty file's own `version` decides its schema; what PATH's containerd says only warns then (the
        # operator's file was unreadable for it before install touched it, and PATH may name another containerd
        # than the service's). The flag is the operator's word and is enforced.
        trust_file = args.containerd_version == "auto" and not is_empty_config(text)
        edit = edit_config(text, RuntimeSettings(args.runtime_name, systemd, None if trust_file else version.major,
                                                 args.force))
        if trust_file:
            edit.notes += schema_warnings(text, version)
    except (ConfigError, RecordError, OSError) as error:
        err.write(f"{SHIM_BINARY_NAME} install: {args.config}: {one_line(error)}; left unchanged\n")
        return 1
    try:
        plan = plan_link(args.bin_dir, shim_binary or default_shim_binary(),
                         record.binary_target if record else None)
    except InstallError as error:
        err.write(f"{SHIM_BINARY_NAME} install: {error}; nothing changed\n")
        return 1
    if record and record.binary_link and record.binary_link != str(plan.link) and \
            os.path.islink(record.binary_link) and os.readlink(record.binary_link) == record.binary_target:
        err.write(f"{SHIM_BINARY_NAME} install: install already put the shim at {record.binary_link} (recorded in "
                  f"{install_record.record_path(config)}): run uninstall first, or --bin-dir "
                  f"{Path(record.binary_link).parent}; nothing changed\n")
        return 1
    if not plan.ours and not args.force:
        err.write(f"{SHIM_BINARY_NAME} install: {plan.link} is {plan.present}, not this package's shim (the Rust "
                  "containerd-shim-spin installs a binary of the same name): pass --force to replace it (it is kept "
                  f"as {install_record.binary_backup_path(plan.link)}); nothing changed\n")
        return 1
    recorded = record.to_json() if record else None
    new_record, config_backup, binary_backup = _next_record(record, config, raw, text, edit, plan)
    # No record for a node where install finds everything in place and changes nothing (idempotence).
    record_changed = new_record.to_json() != recorded and (record is not None or bool(edit.changes)
                                                            or not plan.unchanged)
    prefix = DRY_RUN_PREFIX if args.dry_run else ""
    lines = [f"containerd version: {version.how}", plan.describe()]
    if binary_backup is not None:
        lines.append(f"kept the replaced {plan.link} as {binary_backup}")
    if config_backup is not None:
        lines.append(f"backed up {args.config} to {config_backup}")
    lines += [f"{args.config}: {change}" for change in edit.changes]
    if not edit.changes:
        lines.append(f'{args.config}: {edit.runtime_table} already has runtime_type = "{SPIN_RUNTIME_TYPE}": '
                     "unchanged")
    lines += [f"{args.config}: {note}" for note in edit.notes]
    if record_changed:
        lines.append(f"recorded what install did in {install_record.record_path(config)} (uninstall reverts it)")
    if args.dry_run:
        print(DRY_RUN_HEADER, file=out)
        for line in lines:
            print(prefix + line, file=out)
        for line in config_diff(args.config, text, edit.text, "after install"):
            print(line, file=out)
        return 0
    try:
        if config_backup is not None:
            write_atomically(Path(config_backup), raw, like=config)
        if binary_backup is not None:
            keep_backup(plan.link, binary_backup)
        if not plan.unchanged:
            replace_with_symlink(plan.link, plan.target)
        if edit.changes:
            write_atomically(config, edit.text.encode("utf-8"))
        if record_changed:
            write_atomically(install_record.record_path(config), new_record.to_json().encode(), like=config)
    except (InstallError, OSError) as error:
        err.write(f"{SHIM_BINARY_NAME} install: {error}\n")
        return 1
    for line in lines:
        print(line, file=out)
    if edit.changes:
        print(RESTART_HINT, file=out)
    elif not plan.unchanged:
        print(SHIM_ONLY_CHANGED, file=out)
    else:
        print(NOTHING_CHANGED, file=out)
    return 0
