"""Refuse a WASIp3 component at Create, before the compile, with a message that says how to rebuild it.

Why before the compile (runtime.precompile calls this on a cache miss, so a warm start never pays for it): a
componentize-py app is 18-40 MB and takes 5-15 s to compile on these machines, and a WASIp3 one can never run
here (in wasmtime 50's C API, which wasmtime-py wraps, stream and future values are `todo!()` in the value
conversion, a process abort, and `async func` imports need `func_new_concurrent`, which the C API lacks). Without this check the user waited for the compile and then read "not an HTTP
component: it exports exports, ..." from the executor, which names neither the cause nor the fix.

The decision comes from the component binary alone, read here without wasmtime:

* the names of its top-level imports and exports: any ``wasi:*`` interface at version 0.3 (``@0.3.0``,
  ``@0.3.0-rc-2026-03-15``, ...) makes it WASIp3; ``wasi:http/handler`` (the p3 successor of incoming-handler)
  is one of those;
* its component-level types (top level and nested components): a function type declared ``async`` (binary
  0x43) or a ``stream``/``future`` type (0x66/0x65) can only come from the component-model async ABI.

The same scan lists every top-level export name, for the trigger's check before the compile
(runtime.wasm_binary's ExportRequirement, called by runtime.precompile): one read of the file serves both.

Only the component's own sections are read; the core modules inside it, which are nearly all of its bytes, are
skipped with a seek, so the check costs a few milliseconds on a 40 MB file. It is best-effort by design: a
construct the reader does not know (a newer binary draft) ends the type scan, never the load, and the compile
then judges the file as before. So the check can only add a refusal that has positive evidence.

The wasm is untrusted (it came with the image): every count and length is bounded by the bytes of its section,
nesting is bounded by ``MAX_DEPTH``, and no more than ``MAX_TYPE_BYTES`` of type data is read in all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from runtime.errors import WasmLoadError

#: How a user fixes it, per toolchain. spin-sdk 5's own p2 world is spin:up/http-trigger@3.4.0 (in its
#: spin_sdk/wit/deps/spin@3.4.0/world.wit); its default, spin:up/http-trigger@4.1.0, is the p3 one.
REBUILD_HINT = (
    "rebuild it for WASIp2: with the Python spin-sdk 5, `componentize-py -w spin:up/http-trigger@3.4.0 "
    "componentize app -o app.wasm` (its default world spin:up/http-trigger@4.x is WASIp3); with another "
    "language, build against its SDK's WASIp2 world (wasi:http/incoming-handler@0.2.x), as for Spin 3"
)
#: Nested components and instance/component types deeper than this end the type scan (real ones nest 2-3).
MAX_DEPTH = 16
#: Type, import, export and nested-component bytes read per file, at most (real apps: well under 1 MB).
MAX_TYPE_BYTES = 64 << 20
#: Imported interface names listed in the message, at most (a p3 Python app imports 46).
MAX_LISTED = 3

_WASI_P3_NAME = re.compile(r"^wasi:[a-z0-9-]+/[a-z0-9-]+@0\.3(\.|$|-)")
_COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"

_SECTION_CORE_MODULE, _SECTION_COMPONENT, _SECTION_TYPE, _SECTION_IMPORT, _SECTION_EXPORT = 1, 4, 7, 10, 11
_FUNC_SYNC, _FUNC_ASYNC, _COMPONENT_TYPE, _INSTANCE_TYPE = 0x40, 0x43, 0x41, 0x42
_RESOURCE, _RESOURCE_ASYNC = 0x3F, 0x3E
_STREAM, _FUTURE = 0x66, 0x65
_PRIMITIVES = frozenset(range(0x73, 0x80)) | {0x64}  # bool .. string, error-context


@dataclass
class Wasip3Evidence:
    """What in a component needs the component-model async ABI (WASIp3); empty when nothing does."""

    #: Top-level imports and exports named ``wasi:*@0.3*``, in binary order.
    p3_imports: list[str] = field(default_factory=list)
    p3_exports: list[str] = field(default_factory=list)
    #: Function types declared ``async`` and ``stream``/``future`` types, over all component-level types.
    async_functions: int = 0
    stream_future_types: int = 0
    #: False when the type scan stopped at a construct this reader does not know (names were still read).
    types_complete: bool = True
    #: Every top-level export name, in binary order (what a trigger can call: runtime.wasm_binary's
    #: ExportRequirement), and whether every export section was read to its end and the file to its last section
    #: (only then may a missing export be judged).
    exports: list[str] = field(default_factory=list)
    exports_complete: bool = False

    def __bool__(self) -> bool:
        return bool(self.p3_imports or self.p3_exports or self.async_functions or self.stream_future_types)

    def describe(self) -> str:
        """One phrase for the message: "it exports wasi:http/handler@0.3.0; imports 46 WASIp3 interface(s) (...)"."""
        parts = []
        if self.p3_exports:
            parts.append(f"exports {', '.join(self.p3_exports)}")
        if self.p3_imports:
            parts.append(f"imports {len(self.p3_imports)} WASIp3 interface(s) ({_listing(self.p3_imports)})")
        async_parts = []
        if self.async_functions:
            async_parts.append(f"{self.async_functions} async function type(s)")
        if self.stream_future_types:
            async_parts.append(f"{self.stream_future_types} stream/future type(s)")
        if async_parts:
            parts.append("declares " + " and ".join(async_parts))
        return "it " + "; ".join(parts)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown if len(names) <= MAX_LISTED else f"{shown}, ..."


def refuse_wasip3(wasm_path: Path, what: str) -> Wasip3Evidence:
    """Raise WasmLoadError naming the problem and the fix when ``wasm_path`` is a WASIp3 component; else what the
    scan found (its export names, for the trigger's check before the compile: one read of the file serves both).

    Anything that is not a readable component (a core module, a missing or unreadable file, bad bytes) passes:
    the loader's own checks and the compile report those, as before.
    """
    evidence = scan_file(wasm_path)
    if evidence:
        raise WasmLoadError(
            f"{what}: is a WASIp3 (component-model async) component: {evidence.describe()}. This shim runs "
            f"WASIp2 components only (wasi:http/incoming-handler@0.2.x for HTTP); {REBUILD_HINT}"
        )
    return evidence


def scan_file(wasm_path: Path) -> Wasip3Evidence:
    """The WASIp3 evidence in the component at ``wasm_path``; empty for anything that is not one."""
    from runtime.capped_read import CappedReadError, open_regular

    try:
        fd = open_regular(wasm_path)
    except CappedReadError:
        return Wasip3Evidence()
    if fd is None:
        return Wasip3Evidence()
    try:
        with os.fdopen(fd, "rb", closefd=False) as file:
            return _scan_top_level(file)
    finally:
        os.close(fd)


def scan_bytes(wasm: bytes) -> Wasip3Evidence:
    """``scan_file`` for a component already in memory."""
    import io

    return _scan_top_level(io.BytesIO(wasm))


# ---------------------------------------------------------------------------------------------------- reading


class _Stop(Exception):
    """The bytes end early, are malformed, or use a construct this reader does not know."""


class _Budget:
    """Bytes of component-level data still allowed to be read (``MAX_TYPE_BYTES`` per file)."""

    def __init__(self) -> None:
        self.left = MAX_TYPE_BYTES

    def take(self, size: int) -> None:
        if size > self.left:
            raise _Stop("type data over budget")
        self.left -= size


def _scan_top_level(file: BinaryIO) -> Wasip3Evidence:
    """Each top-level section on its own: one the reader cannot follow (too big, unknown construct) is skipped,
    so a nested component it cannot read never hides the import and export names that come after it."""
    evidence = Wasip3Evidence()
    if file.read(8) != _COMPONENT_HEADER:
        return evidence
    budget = _Budget()
    evidence.exports_complete = True
    try:
        for section_id, size in _file_sections(file):
            if section_id not in (_SECTION_IMPORT, _SECTION_EXPORT, _SECTION_TYPE, _SECTION_COMPONENT):
                file.seek(size, os.SEEK_CUR)
                continue
            try:
                budget.take(size)
            except _Stop:
                evidence.types_complete = False
                evidence.exports_complete = evidence.exports_complete and section_id != _SECTION_EXPORT
                file.seek(size, os.SEEK_CUR)
                continue
            payload = file.read(size)
            if len(payload) != size:
                raise _Stop("truncated section")
            try:
                _section(section_id, _Reader(payload), evidence, depth=0, budget=budget)
            except _Stop:
                evidence.types_complete = False
                evidence.exports_complete = evidence.exports_complete and section_id != _SECTION_EXPORT
        if file.tell() > file.seek(0, os.SEEK_END):  # a skipped section ran past the end: a truncated file
            evidence.exports_complete = False
    except _Stop:
        evidence.types_complete = False
        evidence.exports_complete = False
    return evidence


def _file_sections(file: BinaryIO) -> Iterator[tuple[int, int]]:
    """(id, size) of each top-level section, leaving the file at the section's payload."""
    while True:
        head = file.read(1)
        if not head:
            return
        size = 0
        for shift in range(0, 35, 7):
            byte = file.read(1)
            if not byte:
                raise _Stop("truncated section size")
            size |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                break
        else:
            raise _Stop("section size too long")
        yield head[0], size


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Stop("unexpected end")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _Stop("unexpected end")
        return self.data[self.pos]

    def u32(self) -> int:
        result = 0
        for shift in range(0, 35, 7):
            value = self.byte()
            result |= (value & 0x7F) << shift
            if value < 0x80:
                return result
        raise _Stop("u32 too long")

    def count(self) -> int:
        """A vector length: every element takes at least a byte, so more than the bytes left is malformed."""
        n = self.u32()
        if n > len(self.data) - self.pos:
            raise _Stop("vector longer than its section")
        return n

    def s33(self) -> int:
        result, shift = 0, 0
        while True:
            value = self.byte()
            result |= (value & 0x7F) << shift
            shift += 7
            if value < 0x80:
                if value & 0x40:
                    result -= 1 << shift
                return result
            if shift >= 35:
                raise _Stop("s33 too long")

    def name(self) -> str:
        size = self.u32()
        if size > len(self.data) - self.pos:
            raise _Stop("name longer than its section")
        raw = self.data[self.pos:self.pos + size]
        self.pos += size
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Stop("name is not UTF-8") from None

    def sub(self, size: int) -> _Reader:
        if size > len(self.data) - self.pos:
            raise _Stop("nested data longer than its section")
        reader = _Reader(self.data[self.pos:self.pos + size])
        self.pos += size
        return reader

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


# ---------------------------------------------------------------------------------------------------- sections


def _section(section_id: int, r: _Reader, evidence: Wasip3Evidence, *, depth: int, budget: _Budget) -> None:
    if section_id == _SECTION_IMPORT and depth == 0:
        for _ in range(r.count()):
            name = _extern_name(r)
            _externdesc(r)
            if _WASI_P3_NAME.match(name):
                evidence.p3_imports.append(name)
    elif section_id == _SECTION_EXPORT and depth == 0:
        for _ in range(r.count()):
            name = _extern_name(r)
            _sortidx(r)
            if r.byte() == 0x01:
                _externdesc(r)
            evidence.exports.append(name)
            if _WASI_P3_NAME.match(name):
                evidence.p3_exports.append(name)
    elif section_id == _SECTION_TYPE:
        for _ in range(r.count()):
            _deftype(r, evidence, depth)
    elif section_id == _SECTION_COMPONENT:
        _nested_component(r, evidence, depth + 1, budget)


def _nested_component(r: _Reader, evidence: Wasip3Evidence, depth: int, budget: _Budget) -> None:
    """A component inside the component: only its types count (its imports are its parent's business)."""
    if depth > MAX_DEPTH:
        raise _Stop("components nested too deep")
    if r.data[r.pos:r.pos + 8] != _COMPONENT_HEADER:
        raise _Stop("nested component has an unknown header")
    r.pos += 8
    while not r.at_end():
        section_id = r.byte()
        size = r.u32()
        body = r.sub(size)
        if section_id in (_SECTION_TYPE, _SECTION_COMPONENT):
            budget.take(size)
            _section(section_id, body, evidence, depth=depth, budget=budget)


def _extern_name(r: _Reader) -> str:
    kind = r.byte()
    if kind not in (0x00, 0x01):
        raise _Stop(f"unknown extern name form {kind:#x}")
    return r.name()


def _sortidx(r: _Reader) -> None:
    if r.byte() == 0x00:  # core sort: one more byte
        r.byte()
    r.u32()


def _externdesc(r: _Reader) -> None:
    kind = r.byte()
    if kind == 0x00:
        if r.byte() != 0x11:
            raise _Stop("core extern other than a module")
        r.u32()
    elif kind in (0x01, 0x04, 0x05):  # func, component, instance: a type index
        r.u32()
    elif kind == 0x02:  # value bound
        if r.byte() == 0x00:
            r.u32()
        else:
            _valtype(r, Wasip3Evidence())
    elif kind == 0x03:  # type bound
        if r.byte() == 0x00:
            r.u32()
    else:
        raise _Stop(f"unknown externdesc {kind:#x}")


# ---------------------------------------------------------------------------------------------------- types


def _deftype(r: _Reader, evidence: Wasip3Evidence, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Stop("types nested too deep")
    form = r.byte()
    if form in (_FUNC_SYNC, _FUNC_ASYNC):
        if form == _FUNC_ASYNC:
            evidence.async_functions += 1
        for _ in range(r.count()):
            r.name()
            _valtype(r, evidence)
        result_form = r.byte()
        if result_form == 0x00:
            _valtype(r, evidence)
        elif result_form == 0x01:
            for _ in range(r.count()):  # 0 today; named results in older drafts
                r.name()
                _valtype(r, evidence)
        else:
            raise _Stop(f"unknown result list {result_form:#x}")
    elif form in (_COMPONENT_TYPE, _INSTANCE_TYPE):
        for _ in range(r.count()):
            decl = r.byte()
            if decl == 0x03 and form == _COMPONENT_TYPE:  # importdecl
                _extern_name(r)
                _externdesc(r)
            elif decl == 0x01:
                _deftype(r, evidence, depth + 1)
            elif decl == 0x02:
                _alias(r)
            elif decl == 0x04:  # exportdecl
                _extern_name(r)
                _externdesc(r)
            else:  # 0x00 core types inside a component type: not produced by wit-component
                raise _Stop(f"unknown declaration {decl:#x}")
    elif form in (_RESOURCE, _RESOURCE_ASYNC):
        if r.byte() != 0x7F:
            raise _Stop("resource representation other than i32")
        _optional_u32(r)
        if form == _RESOURCE_ASYNC:
            _optional_u32(r)
    else:
        _defvaltype(form, r, evidence)


def _alias(r: _Reader) -> None:
    _sort(r)
    target = r.byte()
    if target in (0x00, 0x01):  # export of an instance / core instance
        r.u32()
        r.name()
    elif target == 0x02:  # outer
        r.u32()
        r.u32()
    else:
        raise _Stop(f"unknown alias target {target:#x}")


def _sort(r: _Reader) -> None:
    if r.byte() == 0x00:
        r.byte()


def _optional_u32(r: _Reader) -> None:
    flag = r.byte()
    if flag == 0x01:
        r.u32()
    elif flag != 0x00:
        raise _Stop("bad option flag")


def _optional_valtype(r: _Reader, evidence: Wasip3Evidence) -> None:
    flag = r.byte()
    if flag == 0x01:
        _valtype(r, evidence)
    elif flag != 0x00:
        raise _Stop("bad option flag")


def _valtype(r: _Reader, evidence: Wasip3Evidence) -> None:
    """A primitive (one byte) or a type index; ``s33`` keeps the two apart as the binary format does."""
    if r.peek() in _PRIMITIVES:
        r.byte()
        return
    if r.s33() < 0:
        raise _Stop("negative type index")


def _defvaltype(form: int, r: _Reader, evidence: Wasip3Evidence) -> None:
    if form in _PRIMITIVES:
        return
    if form == 0x72:  # record
        for _ in range(r.count()):
            r.name()
            _valtype(r, evidence)
    elif form == 0x71:  # variant
        for _ in range(r.count()):
            r.name()
            _optional_valtype(r, evidence)
            _optional_u32(r)  # `refines`: always 0x00 today
    elif form in (0x70, 0x6B):  # list, option
        _valtype(r, evidence)
    elif form == 0x67:  # fixed-size list
        _valtype(r, evidence)
        r.u32()
    elif form == 0x6F:  # tuple
        for _ in range(r.count()):
            _valtype(r, evidence)
    elif form in (0x6E, 0x6D):  # flags, enum
        for _ in range(r.count()):
            r.name()
    elif form == 0x6A:  # result
        _optional_valtype(r, evidence)
        _optional_valtype(r, evidence)
    elif form in (0x69, 0x68):  # own, borrow
        r.u32()
    elif form in (_STREAM, _FUTURE):
        evidence.stream_future_types += 1
        _optional_valtype(r, evidence)
    else:
        raise _Stop(f"unknown type form {form:#x}")


__all__ = ["REBUILD_HINT", "Wasip3Evidence", "refuse_wasip3", "scan_bytes",
           "scan_file"]
