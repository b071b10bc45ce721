"""`containerd-shim-spin-v2`: the command containerd runs, with containerd's exact contract.

containerd execs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID [-debug]
start|delete` with the bundle as cwd (containerd pkg/shim/util.go Command; `delete` adds
`-bundle`), and Go's flag syntax: one or two dashes, `-flag value` or `-flag=value`,
booleans without a value, flags stop at the first positional word. `start` runs on the
path of every `ctr run` and pod start, so this module and `shim.cli.start` import almost
nothing (measured by scripts/bench_start.py).

`push <app> <registry/repo:tag>` is the command for developers: it pushes a Spin app to a
registry the way `spin registry push` does (oci.push, imported only for it). `install` is the
one for operators: it puts the shim on a node and adds its runtime to containerd's config.toml
(shim.install.command, imported only for it); `uninstall` reverts what it recorded. `-h`/`-help`/`--help` (or
`help`) print USAGE, as Go's flag package answers -h with exit status 0; the text is a constant here so that the
start path imports nothing more for it.
"""

from __future__ import annotations

import sys

from shim.cli.flags import RUNTIME_NAME, VERSION, UsageError, asks_for_help, parse_flags

USAGE = """\
usage: containerd-shim-spin-v2 [containerd's flags] start|delete    run by containerd, not by people
       containerd-shim-spin-v2 install [options]                     put the shim on this node (operators)
       containerd-shim-spin-v2 uninstall [options]                   revert what install did (operators)
       containerd-shim-spin-v2 push [--insecure] <app> <reference>   push a Spin app to a registry (developers)
       containerd-shim-spin-v2 -v | -info | -h

commands:
  start       containerd runs it (the bundle as cwd) to get the shim daemon for a task; prints its address
  delete      containerd runs it to clean up after a task whose daemon is gone; prints a DeleteResponse (protobuf)
  install     link the shim into a directory on containerd's PATH and add its runtime to config.toml
  uninstall   put back what install changed (the config, the binary it replaced), as its record says
  push        push a Spin app (spin.toml and what it names) to an OCI registry, as `spin registry push` does
  <command> --help says more about each.

containerd's flags (Go syntax: one or two dashes, -flag value or -flag=value):
  -namespace NS          the containerd namespace of the task
  -address SOCK          containerd's socket (ttrpc events are published through it)
  -publish-binary BIN    the containerd binary (containerd passes it; events go through -address)
  -id ID                 the task id
  -bundle DIR            the task's bundle (default: the current directory)
  -socket PATH           accepted for containerd's compatibility
  -debug                 shim diagnostics at debug level (to the bundle's log)
  -v, -version           print the version and exit
  -info                  print the runtime's RuntimeInfo (protobuf, containerd 2.x) and exit
  -h, -help, --help      print this help and exit
"""

START_USAGE = """\
usage: containerd-shim-spin-v2 -namespace NS -address SOCK -publish-binary BIN -id ID [-debug] start

containerd runs this in the task's bundle directory, with the task's options on stdin, and reads the shim
daemon's address from stdout; the daemon serves containerd's Task API for the pod (or ctr container).
People have no reason to run it.
"""

DELETE_USAGE = """\
usage: containerd-shim-spin-v2 -namespace NS -address SOCK -id ID [-bundle DIR] delete

containerd runs this after a task ends or its shim daemon died: it kills what is left of the task, removes its
cgroup, rootfs mounts and stale socket, and writes a DeleteResponse (protobuf bytes) to stdout for containerd.
To clean up a bundle by hand, run it with stdout redirected (e.g. `> /dev/null`); with stdout on a terminal it
refuses, since the bytes mean nothing there.
"""


def _print_version() -> None:
    try:
        import wasmtime

        engine = f"wasmtime-py {wasmtime.__version__}" if hasattr(wasmtime, "__version__") else "wasmtime-py"
    except Exception:  # noqa: BLE001
        engine = "wasmtime-py (not importable)"
    print(f"containerd-shim-spin-v2:\n  Runtime: {RUNTIME_NAME}\n  Version: {VERSION}\n"
          f"  Engine: {engine}\n  Python: {sys.version.split()[0]}")


def _print_info() -> None:
    """containerd 2.x introspection (`-info`): a protobuf RuntimeInfo on stdout."""
    from proto.containerd.types import introspection_pb2

    info = introspection_pb2.RuntimeInfo(name=RUNTIME_NAME)
    info.version.version = VERSION
    sys.stdout.buffer.write(info.SerializeToString())
    sys.stdout.buffer.flush()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["help"]:
        sys.stdout.write(USAGE)
        sys.exit(0)
    if args[:1] == ["push"]:
        # A developer's command, not containerd's: its own argparse syntax, and oras imported only here.
        from oci.push import main as push_main

        sys.exit(push_main(args[1:]))
    if args[:1] == ["fork-server"] and len(args) in (2, 3):
        # Spawned by `start` (shim/forkserver/client.py), never by containerd or people; the third argument is
        # room for its daemons' command lines.
        from shim.forkserver.server import run_server

        sys.exit(run_server(args[1]))
    if args[:1] == ["install"]:
        # An operator's command, not containerd's: argparse syntax too, and tomlkit imported only here.
        from shim.install.command import main as install_main

        sys.exit(install_main(args[1:]))
    if args[:1] == ["uninstall"]:
        from shim.install.uninstall import main as uninstall_main

        sys.exit(uninstall_main(args[1:]))
    try:
        flags = parse_flags(args)
    except UsageError as exc:
        sys.stderr.write(f"containerd-shim-spin-v2: {exc}\n(containerd-shim-spin-v2 --help lists the commands "
                         "and flags)\n")
        sys.exit(2)
    if flags.help or (flags.action in ("start", "delete") and asks_for_help(flags.after_action)):
        sys.stdout.write({"start": START_USAGE, "delete": DELETE_USAGE}.get(flags.action, USAGE))
        sys.exit(0)
    if flags.version:
        _print_version()
        return
    if flags.info:
        _print_info()
        return
    if flags.action == "start":
        from shim.cli.start import run_start

        sys.exit(run_start(flags))
    if flags.action == "delete":
        if sys.stdout.isatty():
            # containerd reads delete's stdout through a pipe; a terminal would get raw protobuf bytes, and the
            # cleanup would run on whatever directory the person stands in.
            sys.stderr.write("containerd-shim-spin-v2: delete is run by containerd (it cleans up a task's bundle and "
                             "writes a protobuf DeleteResponse to stdout); stdout is a terminal, so nothing was "
                             "done. To run it by hand anyway, redirect stdout (> /dev/null).\n\n" + DELETE_USAGE)
            sys.exit(2)
        from shim.cli.delete import run_delete

        sys.exit(run_delete(flags))
    if not flags.action:
        sys.stderr.write(USAGE)
        sys.exit(2)
    sys.stderr.write(f"containerd-shim-spin-v2: unknown command {flags.action!r}; containerd runs this binary with "
                     "`start` or `delete` (and people with `install`, `uninstall` or `push`): --help lists them\n")
    sys.exit(2)
