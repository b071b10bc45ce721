"""Load the OCI spec's `linux.seccomp` profile into the calling process, as runc does.

Translation (`compile_rules`) follows runc's libcontainer/specconv SetupSeccomp and libcontainer/seccomp
seccomp_linux.go InitSeccomp, so a profile behaves here as it does in a runc container:

* actions and operators are the spec's libseccomp names; `SCMP_ACT_KILL` is KILL_THREAD (as in libseccomp and
  runc); `errnoRet` / `defaultErrnoRet` give ERRNO's and TRACE's return code, EPERM when absent. The spec says a
  runtime MUST fail on an errno for an action that takes none, so that is an error here (runc ignores it);
* one rule per name of each `syscalls[]` entry; a rule whose action is the default action is dropped (libseccomp
  refuses it); a name libseccomp does not know is skipped, as runc does (a profile lists syscalls of newer
  kernels), and `apply_seccomp` returns the skipped names and logs them at debug level;
* an entry whose `args` compare one argument index twice becomes one rule per comparison (runc's fallback, so the
  comparisons are OR-ed); otherwise the comparisons of an entry are AND-ed in one rule;
* flags: SECCOMP_FILTER_FLAG_LOG and _SPEC_ALLOW map to libseccomp's CTL_LOG and CTL_SSB attributes; a spec
  without `flags` gets SPEC_ALLOW as under runc; TSYNC is always on (below); WAIT_KILLABLE_RECV (only meaningful
  with notify) and unknown flags are errors;
* `defaultAction` empty with no `syscalls` means no filter, as in runc.

Threads: the filter is loaded with libseccomp's CTL_TSYNC attribute (seccomp(2) SECCOMP_FILTER_FLAG_TSYNC), so it
applies to every thread of the process, including native threads Python does not know about (grpc's, wasmtime's);
runc gets the same from libseccomp-golang. Loading fails rather than leaving a thread unfiltered.

Privilege: the kernel loads a filter only if no_new_privs is set or the thread has CAP_SYS_ADMIN. The caller
(shim/wasm/sandbox/credentials.py, in runc's order) sets no_new_privs itself when the spec asks for it, so libseccomp's
CTL_NNP attribute is turned off (as runc does) and `apply_seccomp` checks the precondition first to fail with a
clear message instead of a bare EACCES.

Not done: SCMP_ACT_NOTIFY (needs a seccomp agent at `listenerPath`: an error); runc's patchbpf stub, which makes
syscalls newer than every syscall the profile names fail with ENOSYS instead of the default action (here they get
the default action, as with plain libseccomp; containerd's and Docker's profiles already answer clone3 with ENOSYS
explicitly, which is the case that matters for glibc).

Binding: PyPI's pyseccomp (0.1.2, a ctypes wrapper of the system libseccomp.so.2; Debian's libseccomp2 2.5.4 here,
scripts/setup.sh installs it). Checked against this libseccomp: every action constant we need (ERRNO/TRACE with a
code, KILL_PROCESS, KILL_THREAD, TRAP, LOG), seccomp_rule_add_array with up to six comparisons including
SCMP_CMP_MASKED_EQ (datum_a = mask = the spec's `value`, datum_b = `valueTwo`), the CTL_TSYNC / CTL_LOG / CTL_SSB /
CTL_NNP / CTL_OPTIMIZE attributes, seccomp_arch_add/exist and name resolution. What it lacks (architecture names,
value range checks) is a table and checks here, not a second binding.

Import: pyseccomp loads libseccomp when imported, finding it through the node's ld cache (`ldconfig -p`), so this
module must be imported before pivot_root (shim/wasm/instance_process.py does, before it enters the root); after the
pivot neither the library nor ldconfig may exist. It is imported only by an instance process whose spec has a
profile. Measured marginal cost in an instance process (ctypes and subprocess already imported): about 13 ms with
cached bytecode (20 ms compiling from source), ~7 ms of it pyseccomp's ldconfig run.
"""

from __future__ import annotations

import ctypes
import errno
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyseccomp  # loads libseccomp.so.2 now, while the node's files are still visible

log = logging.getLogger("shim.wasm.sandbox")

# -- libseccomp's action values (seccomp.h), which are the kernel's SECCOMP_RET_* ---------------------------------

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO_BASE = 0x00050000
_ACT_TRACE_BASE = 0x7FF00000
_RET_DATA = 0x0000FFFF


def act_errno(code: int) -> int:
    """SCMP_ACT_ERRNO(code): the syscall is not run and fails with `code`."""
    return _ACT_ERRNO_BASE | (code & _RET_DATA)


def act_trace(code: int) -> int:
    """SCMP_ACT_TRACE(code): a ptrace tracer is told; without one the syscall fails with ENOSYS."""
    return _ACT_TRACE_BASE | (code & _RET_DATA)


#: Actions that take an errno (the spec's errnoRet); the value is the libseccomp macro.
_ERRNO_ACTIONS = {"SCMP_ACT_ERRNO": act_errno, "SCMP_ACT_TRACE": act_trace}
_PLAIN_ACTIONS = {
    "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_KILL": ACT_KILL_THREAD,  # libseccomp's SCMP_ACT_KILL is KILL_THREAD; runc maps it the same
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_LOG": ACT_LOG,
}

# -- comparison operators (enum scmp_compare) ----------------------------------------------------------------------

CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = 1, 2, 3, 4, 5, 6, 7
_OPERATORS = {
    "SCMP_CMP_NE": CMP_NE, "SCMP_CMP_LT": CMP_LT, "SCMP_CMP_LE": CMP_LE, "SCMP_CMP_EQ": CMP_EQ,
    "SCMP_CMP_GE": CMP_GE, "SCMP_CMP_GT": CMP_GT, "SCMP_CMP_MASKED_EQ": CMP_MASKED_EQ,
}

# -- architectures: SCMP_ARCH_* tokens are the kernel's AUDIT_ARCH_* values (EM_* | 64-bit | little-endian) --------

_64BIT, _LE, _MIPS_N32 = 0x80000000, 0x40000000, 0x20000000
_EM = {"386": 3, "68K": 4, "MIPS": 8, "PARISC": 15, "PPC": 20, "PPC64": 21, "S390": 22, "ARM": 40, "SH": 42,
       "X86_64": 62, "AARCH64": 183, "RISCV": 243, "LOONGARCH": 258}
#: Every architecture the runtime spec lists (libseccomp 2.6's); the installed libseccomp may know fewer, which
#: `apply_seccomp` reports by name.
ARCHES: Mapping[str, int] = {
    "SCMP_ARCH_X86": _EM["386"] | _LE,
    "SCMP_ARCH_X86_64": _EM["X86_64"] | _64BIT | _LE,
    "SCMP_ARCH_X32": _EM["X86_64"] | _LE,
    "SCMP_ARCH_ARM": _EM["ARM"] | _LE,
    "SCMP_ARCH_AARCH64": _EM["AARCH64"] | _64BIT | _LE,
    "SCMP_ARCH_MIPS": _EM["MIPS"],
    "SCMP_ARCH_MIPS64": _EM["MIPS"] | _64BIT,
    "SCMP_ARCH_MIPS64N32": _EM["MIPS"] | _64BIT | _MIPS_N32,
    "SCMP_ARCH_MIPSEL": _EM["MIPS"] | _LE,
    "SCMP_ARCH_MIPSEL64": _EM["MIPS"] | _64BIT | _LE,
    "SCMP_ARCH_MIPSEL64N32": _EM["MIPS"] | _64BIT | _LE | _MIPS_N32,
    "SCMP_ARCH_PPC": _EM["PPC"],
    "SCMP_ARCH_PPC64": _EM["PPC64"] | _64BIT,
    "SCMP_ARCH_PPC64LE": _EM["PPC64"] | _64BIT | _LE,
    "SCMP_ARCH_S390": _EM["S390"],
    "SCMP_ARCH_S390X": _EM["S390"] | _64BIT,
    "SCMP_ARCH_PARISC": _EM["PARISC"],
    "SCMP_ARCH_PARISC64": _EM["PARISC"] | _64BIT,
    "SCMP_ARCH_RISCV64": _EM["RISCV"] | _64BIT | _LE,
    "SCMP_ARCH_LOONGARCH64": _EM["LOONGARCH"] | _64BIT | _LE,
    "SCMP_ARCH_M68K": _EM["68K"],
    "SCMP_ARCH_SH": _EM["SH"] | _LE,
    "SCMP_ARCH_SHEB": _EM["SH"],
}

FLAG_TSYNC = "SECCOMP_FILTER_FLAG_TSYNC"
FLAG_LOG = "SECCOMP_FILTER_FLAG_LOG"
FLAG_SPEC_ALLOW = "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
FLAG_WAIT_KILLABLE_RECV = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"

#: Linux syscalls take at most six arguments (seccomp_data.args).
MAX_ARGS = 6
#: runc turns on libseccomp's binary-tree optimisation above this many rules (libseccomp <= 2.5.4 misbehaves with
#: it on an empty rule set).
_OPTIMIZE_ABOVE = 32
_U64_MAX = 2**64 - 1

# libseccomp's filter attributes (enum scmp_filter_attr).
_ATTR_CTL_NNP = pyseccomp.Attr.CTL_NNP
_ATTR_CTL_TSYNC = pyseccomp.Attr.CTL_TSYNC
_ATTR_CTL_LOG = pyseccomp.Attr.CTL_LOG
_ATTR_CTL_SSB = pyseccomp.Attr.CTL_SSB
_ATTR_CTL_OPTIMIZE = pyseccomp.Attr.CTL_OPTIMIZE

# For the privilege check: prctl(PR_GET_NO_NEW_PRIVS) and capget(2), with no /proc (it may be gone after the pivot).
_libc = ctypes.CDLL(None, use_errno=True)
_PR_GET_NO_NEW_PRIVS = 39
_CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class SeccompError(ValueError):
    """The profile cannot be honoured (unknown action, architecture, operator or flag; a malformed entry), or the
    filter could not be loaded; the message says which part of the profile and why."""


@dataclass(frozen=True)
class ArgComparison:
    """One `args[]` entry: seccomp_data.args[index] compared by `op` (CMP_*) with `value` (for CMP_MASKED_EQ:
    `(arg & value) == value_two`)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class SeccompRule:
    """One libseccomp rule: `action` (a libseccomp action value) for `syscall` when all `comparisons` hold."""

    syscall: str
    action: int
    comparisons: tuple[ArgComparison, ...] = ()


@dataclass(frozen=True)
class SeccompPlan:
    """What `apply_seccomp` loads: the filter's default action, the architectures added beside the native one,
    the rules in profile order, and the filter attributes the spec's flags turn on."""

    default_action: int
    arches: tuple[int, ...]
    rules: tuple[SeccompRule, ...]
    log: bool = False  # SECCOMP_FILTER_FLAG_LOG: log every action but ALLOW
    spec_allow: bool = False  # SECCOMP_FILTER_FLAG_SPEC_ALLOW: no speculative store bypass mitigation
    optimize: bool = False  # libseccomp's binary-tree dispatch (runc: above 32 rules)


def is_disabled(profile: Mapping[str, Any]) -> bool:
    """runc's "no default action and no syscalls: seccomp disabled" (specconv SetupSeccomp)."""
    return not profile.get("defaultAction") and not profile.get("syscalls")


def compile_rules(profile: Mapping[str, Any]) -> SeccompPlan:
    """Translate a `linux.seccomp` object into a SeccompPlan without touching libseccomp or the process.

    Raises SeccompError for anything a runtime must refuse; syscall names are kept as written (whether this
    kernel and libseccomp know them is found out when the filter is built).
    """
    if not isinstance(profile, Mapping):
        raise SeccompError(f"seccomp profile is {type(profile).__name__}, not an object")
    default_name = profile.get("defaultAction")
    if not default_name:
        raise SeccompError("seccomp profile has no defaultAction")
    default_action = _action(default_name, profile.get("defaultErrnoRet"), "defaultAction")

    arches = []
    for name in _list(profile, "architectures", "seccomp architectures"):
        if name not in ARCHES:
            raise SeccompError(f"unknown seccomp architecture {name!r} (known: {', '.join(ARCHES)})")
        if ARCHES[name] not in arches:
            arches.append(ARCHES[name])

    log_flag, spec_allow = _flags(profile.get("flags"))

    rules: list[SeccompRule] = []
    name_count = 0
    for position, entry in enumerate(_list(profile, "syscalls", "seccomp syscalls")):
        where = f"seccomp syscalls[{position}]"
        if not isinstance(entry, Mapping):
            raise SeccompError(f"{where} is not an object")
        names = entry.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise SeccompError(f"{where}: names must be a non-empty list of syscall names, got {names!r}")
        action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action")
        comparisons = tuple(_comparison(arg, f"{where}.args[{i}]")
                            for i, arg in enumerate(_list(entry, "args", f"{where}.args")))
        name_count += len(names)
        if action == default_action:
            continue  # redundant, and libseccomp rejects a rule whose action is the default (runc skips it too)
        indexes = [c.index for c in comparisons]
        if len(set(indexes)) < len(indexes):
            # libseccomp-golang (hence runc) cannot AND two comparisons of one argument: one rule each, OR-ed.
            groups: list[tuple[ArgComparison, ...]] = [(c,) for c in comparisons]
        else:
            groups = [comparisons]
        for name in names:
            rules.extend(SeccompRule(name, action, group) for group in groups)
    return SeccompPlan(default_action=default_action, arches=tuple(arches), rules=tuple(rules), log=log_flag,
                       spec_allow=spec_allow, optimize=name_count > _OPTIMIZE_ABOVE)


def apply_seccomp(profile: Mapping[str, Any]) -> list[str]:
    """Load `profile` into this process (all its threads) and return the syscall names it skipped as unknown.

    The caller must have set no_new_privs, or hold CAP_SYS_ADMIN; this is checked first. A profile that runc
    treats as "seccomp disabled" loads nothing. Raises SeccompError for a profile it cannot honour or a filter
    the kernel refuses.
    """
    if is_disabled(profile):
        return []
    plan = compile_rules(profile)
    _check_may_load()
    syscall_filter, skipped = build_filter(plan)
    try:
        syscall_filter.load()
    except OSError as exc:
        raise SeccompError(f"the kernel refused the seccomp filter: {exc.strerror or exc}") from None
    if skipped:
        log.debug("seccomp: %d syscall name(s) of the profile unknown to libseccomp %s, skipped: %s",
                  len(skipped), _libseccomp_version(), ", ".join(skipped))
    return skipped


def build_filter(plan: SeccompPlan) -> tuple[pyseccomp.SyscallFilter, list[str]]:
    """A libseccomp filter for `plan`, not loaded, and the syscall names libseccomp does not know (skipped)."""
    try:
        syscall_filter = pyseccomp.SyscallFilter(plan.default_action)
    except OSError as exc:
        raise SeccompError(f"libseccomp refused the default action {plan.default_action:#x}: {exc}") from None
    _set_attr(syscall_filter, _ATTR_CTL_NNP, 0, "leave no_new_privs to the caller")
    _set_attr(syscall_filter, _ATTR_CTL_TSYNC, 1, "synchronise the filter to all threads (TSYNC)")
    if plan.log:
        _set_attr(syscall_filter, _ATTR_CTL_LOG, 1, f"set {FLAG_LOG}")
    if plan.spec_allow:
        _set_attr(syscall_filter, _ATTR_CTL_SSB, 1, f"set {FLAG_SPEC_ALLOW}")
    if plan.optimize:
        try:
            syscall_filter.set_attr(_ATTR_CTL_OPTIMIZE, 2)
        except OSError:
            log.debug("seccomp: libseccomp has no binary-tree optimisation; the filter stays linear")
    for arch in plan.arches:
        name = next((n for n, token in ARCHES.items() if token == arch), hex(arch))
        try:
            if not syscall_filter.exist_arch(arch):
                syscall_filter.add_arch(arch)
        except OSError as exc:
            raise SeccompError(f"seccomp architecture {name} is not supported by libseccomp "
                               f"{_libseccomp_version()}: {exc.strerror or exc}") from None
    skipped: list[str] = []
    numbers: dict[str, int | None] = {}
    for rule in plan.rules:
        if rule.syscall not in numbers:
            numbers[rule.syscall] = _resolve(rule.syscall)
        number = numbers[rule.syscall]
        if number is None:
            if rule.syscall not in skipped:
                skipped.append(rule.syscall)
            continue
        args = [pyseccomp.Arg(c.index, c.op, c.value, c.value_two) for c in rule.comparisons]
        try:
            syscall_filter.add_rule(rule.action, number, *args)
        except OSError as exc:
            raise SeccompError(f"libseccomp refused the seccomp rule {_describe(rule)}: "
                               f"{exc.strerror or exc}") from None
    return syscall_filter, skipped


# -- helpers ---------------------------------------------------------------------------------------------------------

def _action(name: Any, errno_ret: Any, where: str) -> int:
    if name in _ERRNO_ACTIONS:
        code = errno.EPERM if errno_ret is None else errno_ret
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= _RET_DATA:
            raise SeccompError(f"{where}: errnoRet must be an integer 0..{_RET_DATA}, got {errno_ret!r}")
        return _ERRNO_ACTIONS[name](code)
    if name in _PLAIN_ACTIONS:
        if errno_ret is not None:
            # config-linux.md: "When the action doesn't support an errno, the runtime MUST print and error and fail."
            raise SeccompError(f"{where}: {name} takes no errno, but errnoRet is {errno_ret!r}")
        return _PLAIN_ACTIONS[name]
    if name == "SCMP_ACT_NOTIFY":
        raise SeccompError(f"{where}: SCMP_ACT_NOTIFY is not supported (it needs a seccomp agent at listenerPath)")
    known = ", ".join([*_PLAIN_ACTIONS, *_ERRNO_ACTIONS])
    raise SeccompError(f"{where}: unknown seccomp action {name!r} (known: {known})")


def _comparison(arg: Any, where: str) -> ArgComparison:
    if not isinstance(arg, Mapping):
        raise SeccompError(f"{where} is not an object")
    index, op = arg.get("index"), arg.get("op")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_ARGS:
        raise SeccompError(f"{where}: index must be 0..{MAX_ARGS - 1}, got {index!r}")
    if op not in _OPERATORS:
        raise SeccompError(f"{where}: unknown seccomp operator {op!r} (known: {', '.join(_OPERATORS)})")
    values = []
    for key, default in (("value", None), ("valueTwo", 0)):
        value = arg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
            raise SeccompError(f"{where}: {key} must be a uint64, got {value!r}")
        values.append(value)
    return ArgComparison(index=index, op=_OPERATORS[op], value=values[0], value_two=values[1])


def _flags(flags: Any) -> tuple[bool, bool]:
    """(log, spec_allow). Absent flags mean runc's default, SPEC_ALLOW; an empty list means none."""
    if flags is None:
        return False, True
    if not isinstance(flags, list):
        raise SeccompError(f"seccomp flags must be a list, got {flags!r}")
    log_flag = spec_allow = False
    for flag in flags:
        if flag == FLAG_TSYNC:
            continue  # always on (see the module docstring)
        elif flag == FLAG_LOG:
            log_flag = True
        elif flag == FLAG_SPEC_ALLOW:
            spec_allow = True
        elif flag == FLAG_WAIT_KILLABLE_RECV:
            raise SeccompError(f"seccomp flag {flag} is not supported (it only affects SCMP_ACT_NOTIFY)")
        else:
            raise SeccompError(f"unknown seccomp flag {flag!r}")
    return log_flag, spec_allow


def _list(mapping: Mapping[str, Any], key: str, what: str) -> Sequence[Any]:
    value = mapping.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SeccompError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _resolve(name: str) -> int | None:
    """The native syscall number (negative for libseccomp's multiplexed pseudo-syscalls), None if unknown."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return None if number == -1 else number  # __NR_SCMP_ERROR


def _set_attr(syscall_filter: pyseccomp.SyscallFilter, attr: int, value: int, what: str) -> None:
    try:
        syscall_filter.set_attr(attr, value)
    except OSError as exc:
        raise SeccompError(f"cannot {what} with libseccomp {_libseccomp_version()}: {exc.strerror or exc}") from None


def _check_may_load() -> None:
    """The kernel's precondition for a filter (seccomp(2)): no_new_privs, or CAP_SYS_ADMIN in the effective set."""
    if _libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1:
        return
    if _has_effective_cap(_CAP_SYS_ADMIN):
        return
    raise SeccompError("cannot load the seccomp filter: no_new_privs is not set and the process lacks "
                       "CAP_SYS_ADMIN (set no_new_privs first, or load the filter before dropping capabilities)")


def _has_effective_cap(bit: int) -> bool:
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct: effective, permitted, inheritable
    if _libc.capget(header, data) != 0:
        return False
    return bool((data[0] | data[3] << 32) >> bit & 1)


def _describe(rule: SeccompRule) -> str:
    ops = {v: k for k, v in _OPERATORS.items()}
    conditions = " && ".join(f"arg{c.index} {ops[c.op]} {c.value:#x}/{c.value_two:#x}" for c in rule.comparisons)
    return f"{rule.syscall}{f' if {conditions}' if conditions else ''} -> {rule.action:#x}"


def _libseccomp_version() -> str:
    lib = pyseccomp._libseccomp  # noqa: SLF001 - pyseccomp does not export seccomp_version()
    try:
        lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
        major, minor, micro = lib.seccomp_version().contents
        return f"{major}.{minor}.{micro}"
    except (AttributeError, ValueError):
        return "(unknown version)"
