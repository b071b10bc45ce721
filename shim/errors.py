"""The shim's one exception family, each class carrying the gRPC code containerd expects.

containerd turns a ttrpc status into its own error kinds with `errdefs.FromGRPC`
(InvalidArgument, AlreadyExists, NotFound, FailedPrecondition, Unimplemented, ...), and
CRI and ctr branch on those kinds: `WithProcessKill` tolerates NotFound and
FailedPrecondition, CRI ignores NotFound on Kill of an exited task, and the runtime README
requires Unimplemented for unsupported RPCs (containerd client/task_opts.go,
internal/cri/server/container_stop.go, docs/runtime-v2.md "Unsupported rpcs"). So the code
is decided here, once, by the class a failure is raised as; the ttrpc server maps it onto
the wire.
"""

from __future__ import annotations

from shim.ttrpc.status import Code, RpcError


class NotFound(RpcError):
    code = Code.NOT_FOUND


class AlreadyExists(RpcError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(RpcError):
    code = Code.FAILED_PRECONDITION


class InvalidArgument(RpcError):
    code = Code.INVALID_ARGUMENT


class Unimplemented(RpcError):
    code = Code.UNIMPLEMENTED


class Internal(RpcError):
    code = Code.INTERNAL


__all__ = [
    "AlreadyExists",
    "Code",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "RpcError",
    "Unimplemented",
]
