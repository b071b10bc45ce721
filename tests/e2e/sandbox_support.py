"""What the sandbox e2e tests read back: a process's /proc status, its children, the bundle's spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shim.kernel import linux
from tests.e2e.http_support import HttpTask


def process_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def bundle_spec(daemon, task_id: str) -> dict:
    return json.loads((daemon.state_dir / "io.containerd.runtime.v2.task" / "default" / task_id /
                       "config.json").read_text())


def _cap_hex(names: list[str]) -> str:
    return f"{linux.capability_mask(names):016x}"


def assert_specs_identity(task: HttpTask, pid: int) -> dict[str, str]:
    """/proc/<pid>/status shows the bundle spec's user, groups and all five capability sets."""
    status = process_status(pid)
    spec = bundle_spec(task.daemon, task.task_id)["process"]
    user = spec["user"]
    assert status["Uid"].split() == [str(user["uid"])] * 4
    assert status["Gid"].split() == [str(user["gid"])] * 4
    assert sorted(status["Groups"].split()) == sorted(str(g) for g in user.get("additionalGids", []))
    caps = spec["capabilities"]
    for key, field in (("bounding", "CapBnd"), ("effective", "CapEff"), ("permitted", "CapPrm"),
                       ("inheritable", "CapInh"), ("ambient", "CapAmb")):
        assert status[field] == _cap_hex(caps.get(key, [])), field
    assert status["NoNewPrivs"] == ("1" if spec.get("noNewPrivileges") else "0")
    return status
