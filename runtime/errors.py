"""The one exception family for problems a user must fix in their app or image.

The shim maps ``AppError`` (and only it) to a gRPC error at task Create with ``str(err)`` as the message a user
reads in ``kubectl describe`` / ``ctr`` output; anything else escaping ``runtime`` is a bug in this project.
So every message here names the file / component / import involved and says what is wrong, in one or two lines.
"""

from __future__ import annotations


def quoted(text: str, limit: int) -> str:
    """``text`` (a key, a path: image content) quoted for a message, cut to ``limit`` characters with its length
    said, so one error line stays readable and the words after it survive the Create error's cut."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class AppError(Exception):
    """A problem the user must fix in their app/image; ``str()`` is the user-facing message."""


class ManifestError(AppError):
    """A broken or invalid ``spin.toml`` (the message names the file, the line when known, and what is wrong)."""


class AppNotFoundError(AppError):
    """Nothing runnable: no ``spin.toml`` and the entrypoint is not a ``.wasm`` file, or a wasm file is missing."""


class WasmLoadError(AppError):
    """Corrupt/invalid wasm, or a wasm that is neither a WASI p1 command module nor a WASI p2 command component."""


class WasmResourceError(WasmLoadError):
    """The system refused what loading a (valid) compiled wasm needs: memory for its mapping, a file descriptor.
    ``errno``: the refusal's error number (ENOMEM when a memory cap of the load was reached)."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class UnsupportedTriggerError(AppError):
    """A trigger type this build cannot run (unknown, or not implemented yet)."""


class MissingImportError(WasmLoadError):
    """The guest imports something this host does not provide; the message names the import(s)."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The missing import names (``module::name`` for core modules, the interface name for components),
        #: so callers and tests need not parse the message.
        self.missing = missing


class InvalidSettingError(AppError):
    """A runtime knob taken from the task's environment (e.g. ``SPIN_MAX_INSTANCE_MEMORY``) has a bad value."""
