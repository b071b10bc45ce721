"""What a wasm binary says about itself, without wasmtime: core module or component, and what a trigger needs it
to export.

Kind: both start with ``\\0asm``; the next 4 bytes are a u16 version and a u16 *layer*: layer 0 is a core module
(version 1), layer 1 is a component (version 0x0d and later drafts). Reading it ourselves lets the loader give
one precise error ("not a wasm file", "truncated", "unknown layer") before paying for a compile, and choose
Module vs Component without trying both as containerd-shim-spin's command trigger does.

Exports: a trigger calls one export of its component (``ExportRequirement``). The names are in the component's
own export section, which runtime.wasip3's scan reads without compiling (a few ms on a 40 MB file), so a
component built for the wrong trigger fails at Create before its compile (5-15 s here) with the same message the
executor gives for a loaded one.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

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


#: Export names listed in a message, at most (a componentize-py app exports a handful; a library may export many).
MAX_LISTED_EXPORTS = 8


@dataclass(frozen=True)
class ExportRequirement:
    """One top-level export a trigger calls, as a name pattern, and the message when a component lacks it."""

    #: A regular expression a top-level export name must match in full.
    pattern: str
    #: How the message names what is wanted ("wasi:http/incoming-handler@0.2.x").
    wanted: str
    #: What the component then is not ("an HTTP component").
    kind_of_component: str
    #: What to do about it.
    hint: str

    def missing(self, exports: Sequence[str]) -> bool:
        return not any(re.fullmatch(self.pattern, name) for name in exports)

    def check(self, exports: Sequence[str], what: str) -> None:
        """Raise WasmLoadError when none of ``exports`` (all of the component's top-level names) matches."""
        if self.missing(exports):
            raise WasmLoadError(
                f"{what}: not {self.kind_of_component}: it exports {_listing(exports)}, not {self.wanted} "
                f"({self.hint})"
            )


def _listing(names: Sequence[str]) -> str:
    """Quoted, since componentize-py components export an instance named `exports` ("it exports exports, ..."
    read as a garbled sentence)."""
    if not names:
        return "nothing"
    shown = ", ".join(f"`{name}`" for name in names[:MAX_LISTED_EXPORTS])
    return shown if len(names) <= MAX_LISTED_EXPORTS else f"{shown}, ... ({len(names)} names)"


#: What an http trigger calls (the rule of runtime.host.executor's ComponentExecutor).
HTTP_HANDLER_EXPORT = ExportRequirement(
    pattern=r"wasi:http/incoming-handler@0\.2\.\d+",
    wanted="wasi:http/incoming-handler@0.2.x",
    kind_of_component="an HTTP component",
    hint="a [[trigger.http]] component implements it: build it with a Spin SDK's HTTP world, or componentize-py's "
         "wasi:http/proxy world; a command component needs a [[trigger.command]]",
)
#: What a command trigger (or a bare .wasm component) runs (the rule of runtime.guest's ComponentCommand).
WASI_COMMAND_EXPORT = ExportRequirement(
    pattern=r"wasi:cli/run@0\.2\.\d+",
    wanted="wasi:cli/run@0.2.x",
    kind_of_component="a WASI command component",
    hint="an HTTP component needs an http trigger in spin.toml",
)
#: What a redis trigger calls (the rule of runtime.redis_trigger.executor; its p3 successor,
#: spin:redis/inbound-redis@3.0.0, declares async functions and is refused by runtime.wasip3 first).
REDIS_HANDLER_EXPORT = ExportRequirement(
    pattern=r"fermyon:spin/inbound-redis",
    wanted="fermyon:spin/inbound-redis",
    kind_of_component="a Redis component",
    hint="a [[trigger.redis]] component implements handle-message, e.g. built with spin-sdk 3's `spin-redis` world",
)
#: What an mqtt trigger calls: spin-trigger-mqtt's world exports the function itself, not an interface (the rule of
#: runtime.mqtt.executor).
MQTT_HANDLER_EXPORT = ExportRequirement(
    pattern=r"handle-message",
    wanted="`handle-message`",
    kind_of_component="an MQTT component",
    hint="a [[trigger.mqtt]] component implements spin-trigger-mqtt's spin-mqtt world",
)
