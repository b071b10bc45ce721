"""`containerd-shim-spin-v2`: the command containerd runs, with containerd's exact contract.

containerd execs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID [-debug]
start|delete` with the bundle as cwd (reference §1.2), and Go's flag syntax: one or two
dashes, `-flag value` or `-flag=value`, booleans without a value, flags stop at the first
positional word. `start` runs on the path of every `ctr run` and pod start, so this
module and `shim.cli.start` import almost nothing (measured by scripts/bench_start.py).

`push <app> <registry/repo:tag>` is the command for developers: it pushes a Spin app to a
registry the way `spin registry push` does (oci.push, imported only for it). `install` is the
one for operators: it puts the shim on a node and adds its runtime to containerd's config.toml
(shim.install.command, imported only for it).
"""

from __future__ import annotations

import sys

from shim.cli.flags import RUNTIME_NAME, VERSION, UsageError, parse_flags


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
    try:
        flags = parse_flags(args)
    except UsageError as exc:
        sys.stderr.write(f"containerd-shim-spin-v2: {exc}\n")
        sys.exit(2)
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
        from shim.cli.delete import run_delete

        sys.exit(run_delete(flags))
    sys.stderr.write(f"containerd-shim-spin-v2: unknown action {flags.action!r}; "
                     "containerd runs this binary with `start` or `delete` (and people with `push` or `install`)\n")
    sys.exit(2)
