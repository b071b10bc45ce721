"""shim/wasm/sandbox/seccomp.py: the translation of a `linux.seccomp` profile (pure) and the filter it loads (in a
forked child, which reports through a pipe and leaves with os._exit, so the test process itself stays unfiltered).

The fixture data/containerd-2.1-ctr-run-seccomp.json is containerd's own default profile as a real run writes it:
a private containerd 2.1.9 (scripts/private_containerd.py, PrivateContainerd("2.1", ..., spin_runtime=False)) ran
`ctr run -d --seccomp --runtime io.containerd.runc.v2 --rootfs <busybox rootfs> seccomp-fixture /bin/busybox sleep
30` on x86_64, and the file is the `linux.seccomp` object of the bundle's config.json
(<state>/io.containerd.runtime.v2.task/<ns>/seccomp-fixture/config.json), re-indented. The spec's capabilities
were ctr's defaults (no CAP_SYS_ADMIN), so the profile denies mount, unshare and namespace flags of clone.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from shim.kernel import linux
from shim.wasm.sandbox import seccomp
from shim.wasm.sandbox.seccomp import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    ACT_KILL_THREAD,
    ACT_LOG,
    ACT_TRAP,
    ARCHES,
    CMP_EQ,
    CMP_MASKED_EQ,
    CMP_NE,
    ArgComparison,
    SeccompError,
    SeccompPlan,
    SeccompRule,
    act_errno,
    act_trace,
    apply_seccomp,
    build_filter,
    compile_rules,
)

DEFAULT_PROFILE_PATH = Path(__file__).parent / "data" / "containerd-2.1-ctr-run-seccomp.json"
CLONE_NEWNS = 0x00020000
CLONE_NS_FLAGS = 2114060288  # containerd's mask: every CLONE_NEW* flag


@pytest.fixture(scope="module")
def default_profile() -> dict[str, Any]:
    return json.loads(DEFAULT_PROFILE_PATH.read_text())


# -- compile_rules: the translation ------------------------------------------------------------------------------

def _rules_for(plan: SeccompPlan, name: str) -> list[SeccompRule]:
    return [rule for rule in plan.rules if rule.syscall == name]


def test_containerds_default_profile_compiles_as_runc_reads_it(default_profile):
    plan = compile_rules(default_profile)
    assert plan.default_action == act_errno(errno.EPERM)  # SCMP_ACT_ERRNO without defaultErrnoRet
    assert plan.arches == (ARCHES["SCMP_ARCH_X86_64"], ARCHES["SCMP_ARCH_X86"], ARCHES["SCMP_ARCH_X32"])
    assert plan.spec_allow and not plan.log  # no `flags`: runc's default SPEC_ALLOW
    assert plan.optimize  # 366 names > 32
    names = [name for entry in default_profile["syscalls"] for name in entry["names"]]
    assert len(plan.rules) == len(names) == 366  # one rule per name, none redundant with the default
    assert _rules_for(plan, "mkdir") == [SeccompRule("mkdir", ACT_ALLOW)]
    assert _rules_for(plan, "socket") == [SeccompRule("socket", ACT_ALLOW, (ArgComparison(0, CMP_NE, 40),))]
    assert [rule.comparisons for rule in _rules_for(plan, "personality")] == [
        (ArgComparison(0, CMP_EQ, value),) for value in (0, 8, 131072, 131080, 4294967295)]
    assert _rules_for(plan, "clone") == [
        SeccompRule("clone", ACT_ALLOW, (ArgComparison(0, CMP_MASKED_EQ, CLONE_NS_FLAGS, 0),))]
    assert _rules_for(plan, "clone3") == [SeccompRule("clone3", act_errno(errno.ENOSYS))]
    assert not _rules_for(plan, "mount") and not _rules_for(plan, "unshare")  # no CAP_SYS_ADMIN in the spec


def test_each_name_is_a_rule_and_rules_repeating_the_default_action_are_dropped():
    plan = compile_rules({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getpid", "getppid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        {"names": ["rmdir"], "action": "SCMP_ACT_KILL"},
    ]})
    assert plan.default_action == ACT_ALLOW
    eacces = act_errno(errno.EACCES)
    assert plan.rules == (SeccompRule("mkdir", eacces), SeccompRule("mkdirat", eacces),
                          SeccompRule("rmdir", ACT_KILL_THREAD))
    assert not plan.optimize and plan.arches == ()


def test_comparisons_of_different_arguments_are_anded_and_of_one_argument_split_as_runc_does():
    anded = {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [
        {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
        {"index": 1, "value": 0xF, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"}]}
    split = {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [
        {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]}
    plan = compile_rules({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [anded, split]})
    assert plan.rules == (
        SeccompRule("socket", act_errno(errno.EPERM), (
            ArgComparison(0, CMP_EQ, socket.AF_INET), ArgComparison(1, CMP_MASKED_EQ, 0xF, socket.SOCK_DGRAM))),
        SeccompRule("kill", act_errno(errno.EPERM), (ArgComparison(1, CMP_EQ, 9),)),
        SeccompRule("kill", act_errno(errno.EPERM), (ArgComparison(1, CMP_EQ, 15),)),
    )


@pytest.mark.parametrize(("name", "errno_ret", "expected"), [
    ("SCMP_ACT_ERRNO", None, act_errno(errno.EPERM)),
    ("SCMP_ACT_ERRNO", errno.ENOSYS, act_errno(errno.ENOSYS)),
    ("SCMP_ACT_ERRNO", 0, act_errno(0)),
    ("SCMP_ACT_TRACE", None, act_trace(errno.EPERM)),
    ("SCMP_ACT_TRACE", errno.EACCES, act_trace(errno.EACCES)),
    ("SCMP_ACT_KILL", None, ACT_KILL_THREAD),
    ("SCMP_ACT_KILL_THREAD", None, ACT_KILL_THREAD),
    ("SCMP_ACT_KILL_PROCESS", None, ACT_KILL_PROCESS),
    ("SCMP_ACT_TRAP", None, ACT_TRAP),
    ("SCMP_ACT_LOG", None, ACT_LOG),
])
def test_actions_and_their_errno(name, errno_ret, expected):
    assert compile_rules({"defaultAction": name, "defaultErrnoRet": errno_ret}).default_action == expected
    rule = {"names": ["getpid"], "action": name, "errnoRet": errno_ret}
    assert compile_rules({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}).rules == (
        SeccompRule("getpid", expected),)
    assert expected == {"SCMP_ACT_ERRNO": 0x00050000 | (errno_ret if errno_ret is not None else errno.EPERM),
                        "SCMP_ACT_TRACE": 0x7FF00000 | (errno_ret if errno_ret is not None else errno.EPERM),
                        "SCMP_ACT_KILL": 0, "SCMP_ACT_KILL_THREAD": 0, "SCMP_ACT_KILL_PROCESS": 0x80000000,
                        "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_LOG": 0x7FFC0000}[name]  # seccomp.h's values


@pytest.mark.parametrize(("flags", "log", "spec_allow"), [
    (None, False, True),
    ([], False, False),
    (["SECCOMP_FILTER_FLAG_LOG"], True, False),
    (["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"], False, True),
])
def test_flags(flags, log, spec_allow):
    plan = compile_rules({"defaultAction": "SCMP_ACT_ALLOW", "flags": flags})
    assert (plan.log, plan.spec_allow) == (log, spec_allow)


_ALLOW = "SCMP_ACT_ALLOW"


@pytest.mark.parametrize(("profile", "message"), [
    ({}, "no defaultAction"),
    ({"defaultAction": "SCMP_ACT_FOO"}, "unknown seccomp action 'SCMP_ACT_FOO'"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY is not supported"),
    ({"defaultAction": _ALLOW, "defaultErrnoRet": 1}, "SCMP_ACT_ALLOW takes no errno"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "errnoRet must be an integer"),
    ({"defaultAction": _ALLOW, "architectures": ["SCMP_ARCH_VAX"]}, "unknown seccomp architecture 'SCMP_ARCH_VAX'"),
    ({"defaultAction": _ALLOW, "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "unknown seccomp flag"),
    ({"defaultAction": _ALLOW, "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}, "only affects SCMP_ACT_NOTIFY"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": [], "action": _ALLOW}]}, "syscalls[0]: names must be"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]},
     "syscalls[0].action: SCMP_ACT_NOTIFY"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]},
     "SCMP_ACT_KILL takes no errno"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [
        {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "args[0]: index must be 0..5"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [
        {"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}, "unknown seccomp operator 'SCMP_CMP_LIKE'"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [
        {"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "value must be a uint64"),
    ({"defaultAction": _ALLOW, "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [
        {"index": 0, "value": 1, "valueTwo": 2**64, "op": "SCMP_CMP_EQ"}]}]}, "valueTwo must be a uint64"),
])
def test_profiles_a_runtime_must_refuse(profile, message):
    with pytest.raises(SeccompError, match=re.escape(message)):
        compile_rules(profile)


def test_seccomp_error_is_a_value_error():
    assert issubclass(SeccompError, ValueError)  # shim/wasm/sandbox/credentials.py's step wrapper reports ValueErrors


def test_an_architecture_libseccomp_cannot_add_is_an_error_naming_it():
    with pytest.raises(SeccompError, match="architecture 0x1234 is not supported by libseccomp"):
        build_filter(SeccompPlan(default_action=ACT_ALLOW, arches=(0x1234,), rules=()))


def test_unknown_syscall_names_are_skipped_by_the_filter_builder():
    plan = compile_rules({"defaultAction": _ALLOW, "syscalls": [
        {"names": ["no_such_syscall_xyz", "mkdir", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO"}]})
    _, skipped = build_filter(plan)  # built, not loaded
    assert skipped == ["no_such_syscall_xyz"]


# -- apply_seccomp: in a forked child ----------------------------------------------------------------------------

def _in_child(body: Callable[[], Any], *, no_new_privs: bool = True) -> tuple[dict[str, Any] | None, int]:
    """Run `body` in a forked child (after no_new_privs, as the sandbox sets it); its JSON result or error comes
    back through a pipe. Returns (the report or None if the child died first, the wait status)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_fd)
        try:
            if no_new_privs:
                linux.set_no_new_privs()
            report = {"value": body()}
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            report = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read():
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return (json.loads(b"".join(chunks)) if chunks else None), status


def _value(report: dict[str, Any] | None, status: int) -> Any:
    assert report is not None, f"child died: wait status {status:#x}"
    assert "error" not in report, report["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return report["value"]


def _seccomp_mode(status_path: str = "/proc/self/status") -> str:
    for line in Path(status_path).read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    raise AssertionError("no Seccomp: line")


def _errno_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


_libc = ctypes.CDLL(None, use_errno=True)


def _unshare_errno() -> int:
    if _libc.unshare(CLONE_NEWNS) == 0:
        return 0
    return ctypes.get_errno()


def test_containerds_default_profile_filters_every_thread_and_python_still_runs(default_profile, tmp_path):
    def body() -> dict[str, Any]:
        # A thread started before the filter: TSYNC must put it under the filter too.
        go, done = threading.Event(), threading.Event()
        seen: dict[str, Any] = {}

        def early_thread() -> None:
            go.wait()
            seen["mode"] = _seccomp_mode("/proc/thread-self/status")
            seen["unshare"] = _unshare_errno()
            done.set()

        threading.Thread(target=early_thread).start()
        skipped = apply_seccomp(default_profile)
        go.set()
        done.wait(10)

        target = tmp_path / "made-under-the-filter"
        target.mkdir()  # allowed by the profile
        (target / "f").write_text("written")
        with tempfile.TemporaryFile() as handle:
            handle.write(b"x")
        late = threading.Thread(target=lambda: seen.setdefault("late", _seccomp_mode("/proc/thread-self/status")))
        late.start()
        late.join()
        worker = os.fork()  # clone without CLONE_NEW* flags: allowed by the MASKED_EQ rule
        if worker == 0:
            os._exit(0 if _seccomp_mode() == "2" else 1)
        _, worker_status = os.waitpid(worker, 0)
        true = subprocess.run(["/bin/true"], check=False).returncode
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM):
            pass
        return {
            "skipped": skipped, "mode": _seccomp_mode(), "early": seen, "read": (target / "f").read_text(),
            "unshare": _unshare_errno(),
            "vsock": _errno_of(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)),
            "worker": os.waitstatus_to_exitcode(worker_status), "true": true,
        }

    result = _value(*_in_child(body))
    assert result["mode"] == "2"  # SECCOMP_MODE_FILTER
    assert result["early"] == {"mode": "2", "unshare": errno.EPERM, "late": "2"}
    assert result["unshare"] == errno.EPERM  # not in the profile: the default action, ERRNO(EPERM)
    assert result["vsock"] == errno.EPERM  # socket(AF_VSOCK=40) fails the arg0 != 40 condition
    assert result["read"] == "written"
    assert result["worker"] == 0 and result["true"] == 0
    assert result["skipped"] == []  # Debian's libseccomp 2.5.4 knows every name containerd 2.1 lists


def test_a_denied_syscall_fails_with_the_profiles_errno_and_the_rest_is_allowed(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}

    def body() -> dict[str, Any]:
        apply_seccomp(profile)
        (tmp_path / "file").write_text("ok")
        return {"mkdir": _errno_of(lambda: (tmp_path / "dir").mkdir()), "read": (tmp_path / "file").read_text(),
                "exists": (tmp_path / "dir").exists()}

    assert _value(*_in_child(body)) == {"mkdir": errno.EACCES, "read": "ok", "exists": False}


def test_comparisons_on_two_arguments_must_all_hold(tmp_path):
    # Python passes SOCK_CLOEXEC in the type: the mask keeps only the socket type.
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT, "args": [
            {"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 0xF, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"}]}]}

    def body() -> dict[str, int]:
        apply_seccomp(profile)
        return {kind: _errno_of(lambda f=family, t=type_: socket.socket(f, t).close())
                for kind, family, type_ in (("unix-dgram", socket.AF_UNIX, socket.SOCK_DGRAM),
                                            ("unix-stream", socket.AF_UNIX, socket.SOCK_STREAM),
                                            ("inet-dgram", socket.AF_INET, socket.SOCK_DGRAM))}

    assert _value(*_in_child(body)) == {"unix-dgram": errno.EAFNOSUPPORT, "unix-stream": 0, "inet-dgram": 0}


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_kill_and_trap_end_the_process_with_sigsys(action):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": action}]}

    def body() -> int:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS dumps core by default
        apply_seccomp(profile)
        return os.getppid()

    report, status = _in_child(body)
    assert report is None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_log_action_and_log_flag_let_the_syscall_run():
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
               "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_LOG"}]}
    parent = os.getpid()
    assert _value(*_in_child(lambda: (apply_seccomp(profile), os.getppid(), _seccomp_mode())[1:])) == [parent, "2"]


def test_unknown_names_are_returned_and_logged_at_debug_level(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_syscall_xyz", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}]}

    def body() -> dict[str, Any]:
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger("shim.wasm.sandbox")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        skipped = apply_seccomp(profile)
        return {"skipped": skipped, "records": records, "mkdir": _errno_of(lambda: (tmp_path / "d").mkdir())}

    result = _value(*_in_child(body))
    assert result["skipped"] == ["no_such_syscall_xyz"]
    assert result["mkdir"] == errno.EROFS
    assert any("no_such_syscall_xyz" in message and "skipped" in message for message in result["records"])


def test_without_no_new_privs_or_cap_sys_admin_loading_is_refused_clearly():
    def body() -> dict[str, str]:
        linux.set_capabilities((), (), ())  # no CAP_SYS_ADMIN left (as a non-root task's sets)
        try:
            apply_seccomp({"defaultAction": "SCMP_ACT_ALLOW"})
        except SeccompError as exc:
            return {"error": str(exc), "mode": _seccomp_mode()}
        return {"error": "", "mode": _seccomp_mode()}

    result = _value(*_in_child(body, no_new_privs=False))
    assert "no_new_privs is not set and the process lacks CAP_SYS_ADMIN" in result["error"]
    assert result["mode"] == "0"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_SYS_ADMIN")
def test_cap_sys_admin_without_no_new_privs_may_load():
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    result = _value(*_in_child(lambda: (apply_seccomp(profile), _seccomp_mode())[1], no_new_privs=False))
    assert result == "2"


@pytest.mark.parametrize("profile", [{}, {"defaultAction": ""}, {"defaultAction": "", "syscalls": []}])
def test_a_profile_runc_treats_as_disabled_loads_nothing(profile: Mapping[str, Any]):
    assert _value(*_in_child(lambda: (apply_seccomp(profile), _seccomp_mode()))) == [[], "0"]


def test_the_module_names_every_spec_architecture():
    spec_arches = {"SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
                   "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
                   "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
                   "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
                   "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
                   "SCMP_ARCH_SH", "SCMP_ARCH_SHEB"}
    assert set(ARCHES) == spec_arches  # config-linux.md's list as of libseccomp 2.6.0
    # Where pyseccomp knows the token too, the two tables agree (they are the kernel's AUDIT_ARCH_* values).
    for name, token in ARCHES.items():
        theirs = getattr(seccomp.pyseccomp.Arch, name.removeprefix("SCMP_ARCH_"), None)
        assert theirs is None or theirs == token, name
