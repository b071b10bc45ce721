"""`containerd-shim-spin-v2 uninstall`: revert exactly what `install` recorded, and nothing else.

- config.toml: while it is still the text install wrote, it is put back byte for byte from the backup (or removed, if
  install created it). If the operator changed it since, only install's runtime tables are taken out
  (shim.install.config_revert), everything else stays as the operator left it, and the command says so. A runtime
  table that no longer names this shim's runtime_type is the operator's now and stays.
- the shim's symlink: removed, and what `install --force` replaced put back (a rename of the backup), but only while
  the symlink is still install's; something else there now is left alone.
- the record and the config backup are removed last, so a failed uninstall can be run again.
It never restarts containerd; containerd reads the config when it starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from shim.install import install_record
from shim.install.command import DEFAULT_CONFIG, NOTHING_CHANGED, RESTART_HINT, config_diff, one_line, read_config
from shim.install.config_revert import remove_runtimes
from shim.install.containerd_config import SPIN_RUNTIME_TYPE, ConfigError
from shim.install.install_record import InstallRecord, RecordError, RuntimeEntry, sha256_of
from shim.install.node_files import SHIM_BINARY_NAME, describe_path, write_atomically

DRY_RUN_HEADER = "dry run: what uninstall would do; nothing is changed"


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"{SHIM_BINARY_NAME} uninstall",
        description="Revert what `install` did on this node, as its record (<config>.spin-install.json) says: the "
                    "config back byte for byte if nobody changed it since (else only install's runtime tables "
                    "removed), the shim's symlink removed and the binary it replaced put back.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the config install edited (default: %(default)s); the record sits beside it")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change (files, the config's diff) and change nothing")
    return parser.parse_args(list(argv))


@dataclass(frozen=True)
class _ConfigPlan:
    """What uninstall does to the config (new bytes, or remove the file, or leave it), the text it starts from
    (for --dry-run's diff) and the lines that say so."""

    lines: list[str]
    new_bytes: bytes | None = None
    remove: bool = False
    unchanged: bool = True
    before: str = ""
    from_backup: bool = False


def _plan_config(record: InstallRecord, config: Path, label: Path) -> _ConfigPlan:
    if record.config_written_sha256 is None:
        return _ConfigPlan([f"{label}: install did not change it: unchanged"])
    if not config.exists():
        return _ConfigPlan([f"{label}: gone since install: nothing to revert there"])
    raw, text = read_config(config)
    if sha256_of(raw) == record.config_written_sha256 and record.backup_restores_all:
        if not record.config_existed:
            return _ConfigPlan([f"{label}: removed (install created it)"], remove=True, unchanged=False, before=text)
        backup = Path(record.config_backup or install_record.config_backup_path(config))
        try:
            original = backup.read_bytes()
        except OSError as error:
            raise ConfigError(f"the backup {backup} cannot be read ({error})") from None
        return _ConfigPlan([f"{label}: restored byte for byte from {backup}"], original, unchanged=False, before=text,
                           from_backup=True)
    ours, lines = _still_ours(record.runtimes, text, label)
    if not ours:
        return _ConfigPlan(lines + [f"{label}: changed since install and holds none of install's runtime tables: "
                                    "unchanged"])
    new_text, how = remove_runtimes(text, ours, record.edits if len(ours) == len(record.runtimes) else [],
                                    record.added_version)
    tables = ", ".join(entry.table for entry in ours)
    lines.append(f"{label}: changed since install (not by install): removed only install's runtime table(s) "
                 f"{tables} ({how}); the rest stays as it is now")
    return _ConfigPlan(lines, new_text.encode("utf-8"), unchanged=new_text == text, before=text)


def _still_ours(entries: list[RuntimeEntry], text: str, label: Path) -> tuple[list[RuntimeEntry], list[str]]:
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML ({error}): remove {', '.join(e.table for e in entries)} by hand") from None
    ours, lines = [], []
    for entry in entries:
        table: object = tree
        for key in entry.path:
            table = table.get(key) if isinstance(table, dict) else None
        if isinstance(table, dict) and table.get("runtime_type") == SPIN_RUNTIME_TYPE:
            ours.append(entry)
        elif table is None:
            lines.append(f"{label}: {entry.table} is gone already")
        else:
            lines.append(f"{label}: {entry.table} no longer has runtime_type = \"{SPIN_RUNTIME_TYPE}\": it is the "
                         "operator's now, left as it is")
    return ours, lines


def _plan_binary(record: InstallRecord) -> tuple[list[str], str]:
    """(messages, action): action is "restore" (rename the backup over the link), "remove", or "keep"."""
    if record.binary_link is None:
        return [], "keep"
    link = Path(record.binary_link)
    backup = Path(record.binary_backup) if record.binary_backup else None
    has_backup = backup is not None and (backup.exists() or backup.is_symlink())
    ours = link.is_symlink() and os.readlink(link) == record.binary_target
    if not ours and (link.exists() or link.is_symlink()):
        kept = f"; the file install replaced is still at {backup}" if has_backup else ""
        return [f"{link} is no longer install's symlink ({describe_path(link)}): left as it is{kept}"], "keep"
    if has_backup:
        return [f"put back {link} from {backup} ({describe_path(backup)})"], "restore"
    if backup is not None:
        return [f"removed {link}; the backup {backup} of what install replaced is gone, so nothing is put back"], \
            "remove" if ours else "keep"
    return ([f"removed {link}"], "remove") if ours else ([f"{link} is gone already"], "keep")


def main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Exit status 0 (reverted, or the record said nothing was left to do), 1 (refused: nothing changed)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = _parse_args(argv)
    config = Path(os.path.realpath(args.config))
    try:
        record = install_record.load(config)
        if record is None:
            raise RecordError(f"no install record ({install_record.record_path(config)}): uninstall reverts only what "
                              "install recorded")
        config_plan = _plan_config(record, config, args.config)
    except (ConfigError, RecordError, OSError) as error:
        err.write(f"{SHIM_BINARY_NAME} uninstall: {args.config}: {one_line(error)}; nothing changed\n")
        return 1
    binary_lines, binary_action = _plan_binary(record)
    record_file = install_record.record_path(config)
    backup = Path(record.config_backup) if record.config_backup else None
    lines = config_plan.lines + binary_lines
    if backup is not None and backup.exists() and not config_plan.from_backup:
        lines.append(f"removed {backup} (the config as it was before install, now out of date)")
    lines += [f"removed {extra} (the config before a later install, now out of date)"
              for extra in record.config_extra_backups if Path(extra).exists()]
    lines.append(f"removed the install record {record_file}")
    if args.dry_run:
        print(DRY_RUN_HEADER, file=out)
        for line in lines:
            print(f"[dry run] {line}", file=out)
        if not config_plan.unchanged:
            after = "" if config_plan.remove else (config_plan.new_bytes or b"").decode("utf-8")
            for line in config_diff(args.config, config_plan.before, after, "after uninstall"):
                print(line, file=out)
        return 0
    try:
        if config_plan.remove:
            config.unlink()
        elif not config_plan.unchanged and config_plan.new_bytes is not None:
            write_atomically(config, config_plan.new_bytes)
        if binary_action == "restore" and record.binary_link and record.binary_backup:
            os.replace(record.binary_backup, record.binary_link)
        elif binary_action == "remove" and record.binary_link:
            os.unlink(record.binary_link)
        for install_backup in ([backup] if backup else []) + [Path(extra) for extra in record.config_extra_backups]:
            install_backup.unlink(missing_ok=True)
        record_file.unlink()
    except OSError as error:
        err.write(f"{SHIM_BINARY_NAME} uninstall: {error} (run it again to finish)\n")
        return 1
    for line in lines:
        print(line, file=out)
    print(RESTART_HINT if not config_plan.unchanged else NOTHING_CHANGED.replace("nothing changed", "config unchanged"),
          file=out)
    return 0
