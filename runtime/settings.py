"""Runtime settings: what the caller (the shim) decides, as opposed to what the app declares in its manifest.

Kept as one frozen dataclass so a LoadedApp can never see settings change under it, and so the shim can build it
once per instance process from its own config plus the task's environment (see ``with_task_env``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runtime.errors import InvalidSettingError

#: Spin knob (containerd-shim-spin constants.rs): per-instance linear-memory cap in bytes, read from the task env.
MAX_INSTANCE_MEMORY_ENV = "SPIN_MAX_INSTANCE_MEMORY"


@dataclass(frozen=True)
class RuntimeSettings:
    #: Root of the precompile cache and of per-task staging dirs for Spin ``files`` globs.
    #: Must be on a local filesystem that supports rename(2) atomically (any local fs does).
    cache_dir: Path
    #: Bytes; applied with ``Store.set_limits(memory_size=...)`` to every Store. None = no cap beyond wasmtime's.
    max_instance_memory: int | None = None
    #: How a cached precompiled blob is checked before it is mmapped and executed.
    #: "full": size + sha256 of the whole blob, once per blob per boot (runtime.verified_blobs; about 16 ms for a
    #: 33 MB blob on a SHA-NI CPU; the default,
    #: because a silently corrupted blob would be executed as machine code and crash every start of the task).
    #: "size": only the size recorded in the blob's name (about 0.05 ms; catches truncation, not bit rot).
    cache_verify: Literal["full", "size"] = "full"
    #: Where compiled blobs are kept, given the engine fingerprint's digest (runtime.precompile.StoreFactory).
    #: None: the node-local directory under ``cache_dir``. The shim passes containerd's content store here for
    #: apps that came as OCI artifacts, so the blobs live and die with their image.
    precompiled_store: Callable[[str], Any] | None = None
    #: A private directory (a tmpfs) for the files wasmtime must open by path, such as a WAGI module's stdout.
    #: None: /proc/self/fd paths, which need /proc (the shim's sandbox has none and passes its own tmpfs).
    scratch_dir: Path | None = None
    #: The CPUs the container may use (its CPU limit, else its request), for the default HTTP worker count.
    #: None: it named none.
    cpus: float | None = None

    def with_task_env(self, env: Mapping[str, str]) -> RuntimeSettings:
        """Apply the Spin knobs a task sets through its environment, as containerd-shim-spin reads them.

        Raises InvalidSettingError (an AppError, so it surfaces at Create) for a value that is not a byte count.
        """
        raw = env.get(MAX_INSTANCE_MEMORY_ENV)
        if raw is None or raw.strip() == "":
            return self
        try:
            limit = int(raw.strip(), 10)
        except ValueError:
            raise InvalidSettingError(
                f"{MAX_INSTANCE_MEMORY_ENV}={raw!r} is not a number of bytes (e.g. 134217728 for 128 MiB)"
            ) from None
        if limit <= 0:
            raise InvalidSettingError(f"{MAX_INSTANCE_MEMORY_ENV}={raw!r} must be a positive number of bytes")
        return dataclasses.replace(self, max_instance_memory=limit)
