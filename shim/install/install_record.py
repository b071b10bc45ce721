"""What `install` changed on the node, written down so that `uninstall` can revert exactly that and nothing else.

Where things live (all named from the config file that `--config` resolves to, and from `--bin-dir`):

    <config>.spin-install.json                          this record (JSON)
    <config>.before-spin-install                        the config as it was before the first install edited it
    <config>.before-spin-install.<n>                    before a later install edited a text the operator had changed
    <bin-dir>/containerd-shim-spin-v2.before-spin-install   what `install --force` replaced at the shim's name

Next to the config rather than under /var/lib: the record describes an edit of that one file, so it lives and
dies with it (a second config, a config in a mounted root such as the node-installer DaemonSet's hostPath of
/etc/containerd, a test's temporary directory each get their own record with no naming scheme and no extra mount).
None of these names ends in `.toml`, so containerd's `imports = ["/etc/containerd/*.toml"]` globs never load
them, and none is a name containerd derives from a runtime type (`containerd-shim-<name>-v<N>`), so containerd
never runs the backed-up binary. The config backup keeps the config's mode and owner (it may hold registry
credentials).

The config can be put back byte for byte only while it is still the text install wrote (`config_written_sha256`)
and no install edited a text that the operator had changed since (`backup_restores_all`). Otherwise uninstall
reverses only its own hunks (`edits`, oldest first), the way `patch -R` would, and checks that the result differs
from the current file in our runtime tables only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".spin-install.json"
BACKUP_SUFFIX = ".before-spin-install"
RECORD_FORMAT = 1


class RecordError(Exception):
    """The record cannot be read: uninstall must not guess."""


def record_path(config: Path) -> Path:
    return config.with_name(config.name + RECORD_SUFFIX)


def config_backup_path(config: Path) -> Path:
    return config.with_name(config.name + BACKUP_SUFFIX)


def binary_backup_path(link: Path) -> Path:
    return link.with_name(link.name + BACKUP_SUFFIX)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Hunk:
    """One change of an edit, as difflib's opcodes give it: `after` replaced `before`, between the context lines."""

    before: list[str]
    after: list[str]
    context_before: list[str]
    context_after: list[str]


@dataclass
class RuntimeEntry:
    """A runtime table install registered, and what the table held before (None: it did not exist)."""

    path: list[str]
    table: str
    previous: dict[str, Any] | None


@dataclass
class InstallRecord:
    config: str
    config_existed: bool = True
    config_backup: str | None = None
    # Backups of a text the operator had changed since install wrote it, taken before install edited it again.
    config_extra_backups: list[str] = field(default_factory=list)
    config_written_sha256: str | None = None
    backup_restores_all: bool = True
    added_version: bool = False  # the config was empty and install gave it `version = N`
    runtimes: list[RuntimeEntry] = field(default_factory=list)
    edits: list[list[Hunk]] = field(default_factory=list)
    binary_link: str | None = None
    binary_target: str | None = None
    binary_backup: str | None = None
    format: int = RECORD_FORMAT

    def runtime(self, path: tuple[str, ...]) -> RuntimeEntry | None:
        return next((entry for entry in self.runtimes if tuple(entry.path) == path), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> InstallRecord:
        try:
            raw = json.loads(text)
            if raw.get("format") != RECORD_FORMAT:
                raise RecordError(f"{where}: unknown record format {raw.get('format')!r}")
            raw["runtimes"] = [RuntimeEntry(**entry) for entry in raw.get("runtimes", [])]
            raw["edits"] = [[Hunk(**hunk) for hunk in edit] for edit in raw.get("edits", [])]
            return cls(**raw)
        except (ValueError, TypeError, AttributeError) as error:
            raise RecordError(f"{where}: not a record install wrote ({error})") from None


def load(config: Path) -> InstallRecord | None:
    path = record_path(config)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return InstallRecord.from_json(text, path)
