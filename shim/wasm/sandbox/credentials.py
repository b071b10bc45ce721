"""Become the spec's process identity: rlimits, user and groups, all five capability sets, no_new_privs, umask,
and the seccomp filter last, in runc's order (libcontainer/init_linux.go finalizeNamespace, standard_init_linux.go):

1. rlimits (while still allowed to raise them);
2. seccomp now if no_new_privs is off: loading a filter then needs CAP_SYS_ADMIN, which step 4 may drop;
3. the bounding set (PR_CAPBSET_DROP needs CAP_SETPCAP, so before anything else drops it);
4. PR_SET_KEEPCAPS, setgroups/setgid/setuid, KEEPCAPS off: the permitted set survives the change of user, so
   that a non-root task holds exactly the capabilities its spec grants (usually none), as under runc;
5. effective, permitted and inheritable with capset, then ambient;
6. umask, no_new_privs, and seccomp if not done in 2.

A spec without a `capabilities` object leaves the sets as they are (runc does the same); setuid to non-root then
clears them as the kernel does.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.kernel import linux
from shim.oci_spec import Rlimit
from shim.wasm.sandbox.steps import SandboxError, step

#: runc's umask when the spec gives none.
DEFAULT_UMASK = 0o022


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    #: The spec's process.capabilities: bounding, effective, permitted, inheritable, ambient (absent = unchanged).
    capabilities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    no_new_privileges: bool = False
    rlimits: tuple[Rlimit, ...] = ()
    umask: int | None = None
    seccomp: Mapping[str, Any] | None = None


def apply_credentials(credentials: Credentials) -> None:
    step("set rlimits", _set_rlimits, credentials.rlimits)
    if credentials.seccomp is not None and not credentials.no_new_privileges:
        _load_seccomp(credentials.seccomp)
    caps = credentials.capabilities
    if caps:
        step("drop the bounding capabilities", linux.drop_bounding_capabilities, list(caps.get("bounding", ())))
    step("keep capabilities across setuid", linux.set_keep_capabilities, True)
    step(f"set groups {list(credentials.additional_gids)}", os.setgroups, list(credentials.additional_gids))
    step(f"set gid {credentials.gid}", os.setgid, credentials.gid)
    step(f"set uid {credentials.uid}", os.setuid, credentials.uid)
    step("stop keeping capabilities", linux.set_keep_capabilities, False)
    if caps:
        step("set the capability sets", linux.set_capabilities, caps.get("effective", ()),
              caps.get("permitted", ()), caps.get("inheritable", ()))
        step("raise the ambient capabilities", linux.raise_ambient_capabilities, caps.get("ambient", ()))
    elif credentials.uid != 0:
        # keepcaps kept the permitted set through setuid; without a spec'd set there is nothing to keep.
        step("clear the capability sets", linux.set_capabilities, (), (), ())
    os.umask(credentials.umask if credentials.umask is not None else DEFAULT_UMASK)
    if credentials.no_new_privileges:
        step("set no_new_privs", linux.set_no_new_privs)
        if credentials.seccomp is not None:
            _load_seccomp(credentials.seccomp)


def _set_rlimits(rlimits: tuple[Rlimit, ...]) -> None:
    for rlimit in rlimits:
        number = getattr(resource, rlimit.type, None)
        if not isinstance(number, int) or not rlimit.type.startswith("RLIMIT_"):
            raise SandboxError(0, f"unknown rlimit {rlimit.type!r}")
        resource.setrlimit(number, (_unlimited(rlimit.soft), _unlimited(rlimit.hard)))


def _unlimited(value: int) -> int:
    # The spec writes RLIM_INFINITY as 2**64-1 (Go's uint64); Python's resource wants -1 for it.
    return resource.RLIM_INFINITY if value >= 2**63 else value


def _load_seccomp(profile: Mapping[str, Any]) -> None:
    from shim.wasm.sandbox.seccomp import (
        apply_seccomp,  # libseccomp's binding: only tasks with a profile pay for it
    )

    step("load the seccomp profile", apply_seccomp, profile)
