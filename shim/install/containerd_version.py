"""Which containerd will read the config: the installer's only question to the node, answered out loud.

The answer decides the schema of a new (empty) config and refuses a `version = 3` file for a containerd 1.x, so
a wrong answer writes a config containerd cannot use. The installer therefore always says where the answer came
from: the `--containerd-version` flag, or the binary it ran (its path, and the line it printed). With neither a
flag nor a `containerd` on PATH it stops: before this, a node without containerd on PATH (k3s embeds its own, under
/var/lib/rancher/k3s/data) got a 1.x-style edit without a word.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from shim.install.containerd_config import ConfigError, containerd_major_from_version_output

VERSION_TIMEOUT_S = 30


@dataclass(frozen=True)
class ContainerdVersion:
    """The containerd major version the config is written for, and one line saying how it was found."""

    major: int
    how: str


def from_flag(value: str) -> ContainerdVersion:
    return ContainerdVersion(int(value), f"containerd {value}.x (from --containerd-version {value}; "
                                         "`containerd --version` not run)")


def detect(path: str | None = None) -> ContainerdVersion:
    """Run the `containerd` that PATH names, as containerd's own service unit would find it."""
    search = os.environ.get("PATH", "") if path is None else path
    executable = shutil.which("containerd", path=search)
    if executable is None:
        raise ConfigError(f"`containerd` is not on PATH ({search or 'empty'}), so the version of the containerd that "
                          "reads this config is unknown: pass --containerd-version 1|2 (its major version)")
    try:
        result = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(f"`{executable} --version` failed ({error}): pass --containerd-version 1|2") from None
    printed = result.stdout.strip()
    major = containerd_major_from_version_output(printed)
    return ContainerdVersion(major, f"containerd {major}.x (ran `{executable} --version`, which printed {printed!r})")
