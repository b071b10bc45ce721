"""Tell a core module from a component by the 8-byte wasm header, without wasmtime.

Both start with ``\\0asm``; the next 4 bytes are a u16 version and a u16 *layer*: layer 0 is a core module
(version 1), layer 1 is a component (version 0x0d and later drafts). Reading it ourselves lets the loader give
one precise error ("not a wasm file", "truncated", "unknown layer") before paying for a compile, and choose
Module vs Component without trying both as containerd-shim-spin's command trigger does.
"""

from __future__ import annotations

import enum
import struct

from runtime.errors import WasmLoadError

_MAGIC = b"\0asm"


class WasmKind(enum.Enum):
    CORE_MODULE = "module"  # WASI preview 1 command module (exports _start)
    COMPONENT = "component"  # WASI preview 2 command component (exports wasi:cli/run)


def detect_kind(wasm: bytes, *, name: str) -> WasmKind:
    """Return the kind of ``wasm`` or raise WasmLoadError saying why it is not a wasm binary we can load."""
    if len(wasm) < 8:
        raise WasmLoadError(f"{name}: not a WebAssembly binary (only {len(wasm)} bytes)")
    if wasm[:4] != _MAGIC:
        hint = " (it looks like WebAssembly text; compile it to binary first)" if wasm.lstrip()[:1] == b"(" else ""
        raise WasmLoadError(f"{name}: not a WebAssembly binary (bad magic bytes {wasm[:4]!r}){hint}")
    version, layer = struct.unpack_from("<HH", wasm, 4)
    if layer == 0 and version == 1:
        return WasmKind.CORE_MODULE
    if layer == 1:
        return WasmKind.COMPONENT
    raise WasmLoadError(f"{name}: unsupported WebAssembly binary version {version} / layer {layer}")
