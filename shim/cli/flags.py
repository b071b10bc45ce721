"""containerd's command line for a shim: `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID [-debug]
start|delete`, in Go's flag syntax (one or two dashes, `-flag value` or `-flag=value`, booleans without a value,
flags stop at the first positional word). A leaf module: `start`, `delete` and the daemon read what it parsed,
and the CLI dispatches on it.
"""

from __future__ import annotations

from shim import RUNTIME_NAME, VERSION
from shim.record import Record

__all__ = ["RUNTIME_NAME", "VERSION", "Flags", "UsageError", "asks_for_help", "parse_flags"]


_VALUE_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v", "version", "info", "h", "help"}


class UsageError(Exception):
    pass


class Flags(Record):
    namespace: str = ""
    address: str = ""
    publish_binary: str = ""
    id: str = ""
    bundle: str = ""
    socket: str = ""
    debug: bool = False
    version: bool = False
    info: bool = False
    help: bool = False
    action: str = ""
    after_action: tuple[str, ...] = ()  # containerd passes nothing after the action; people may (`delete --help`)


def parse_flags(argv: list[str]) -> Flags:
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            enabled = value.lower() not in ("false", "0") if has_value else True
            if name in ("v", "version"):
                flags.version = enabled
            elif name in ("h", "help"):  # Go's flag package answers -h and -help with the usage, exit status 0
                flags.help = enabled
            else:
                setattr(flags, name, enabled)
        elif name in _VALUE_FLAGS:
            if not has_value:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    if i < len(argv):
        flags.action = argv[i]
        flags.after_action = tuple(argv[i + 1:])
    return flags


def asks_for_help(words: tuple[str, ...] | list[str]) -> bool:
    return any(word in ("-h", "-help", "--help") for word in words)
