#!/usr/bin/env python3
"""Build the runtime's test guests into tests/guests/build/: offline, deterministic, and a no-op when up to date.

Every guest is WebAssembly text under tests/guests/src/, assembled by wasmtime-py's own WAT parser
(``wasmtime.wat2wasm``, which also reads the component-model text format). wasmtime is already a project
dependency, so this needs no extra package, compiler or download: not wabt (it cannot write components), not
componentize-py or wasm-tools (they would add tens of MB and seconds to build a 1 KB test component).

Outputs (all listed with kind and sha256 in build/index.json):
  hello.wasm, loop.wasm, sleep.wasm, trap.wasm, readfile.wasm   WASI p1 command modules
  hello-component.wasm                                          WASI p2 command component (wasi:cli/run)
  wagi-echo.wasm, wagi-status.wasm, wagi-noheaders.wasm         WAGI (CGI over WASI p1) modules
  spin1-echo.wasm                                               Spin 1 HTTP module (wit-bindgen 0.2 ABI)
  missing-import-p1.wasm, missing-import-component.wasm         import things no host provides
  corrupt.wasm (valid header, garbage body), random.wasm (random bytes), truncated.wasm (hello.wasm cut short)
  apps/<name>/                                                  Spin apps: tests/guests/apps/<name> + their wasm

Usage: python scripts/build_guests.py [--force]   (prints the build dir; exit 1 with the missing step if any)
Tests call ``build()`` directly; it takes a file lock so parallel test processes build once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS_DIR = REPO / "tests" / "guests"
SRC_DIR = GUESTS_DIR / "src"
APPS_SRC_DIR = GUESTS_DIR / "apps"
BUILD_DIR = GUESTS_DIR / "build"
INDEX_NAME = "index.json"

#: output name -> (source .wat, kind)
WAT_GUESTS: dict[str, tuple[str, str]] = {
    "hello.wasm": ("hello.wat", "p1-module"),
    "loop.wasm": ("loop.wat", "p1-module"),
    "sleep.wasm": ("sleep.wat", "p1-module"),
    "trap.wasm": ("trap.wat", "p1-module"),
    "readfile.wasm": ("readfile.wat", "p1-module"),
    "missing-import-p1.wasm": ("missing_import_p1.wat", "p1-module"),
    "hello-component.wasm": ("hello_component.wat", "p2-component"),
    "missing-import-component.wasm": ("missing_import_component.wat", "p2-component"),
    "wagi-echo.wasm": ("wagi_echo.wat", "p1-module"),
    "wagi-status.wasm": ("wagi_status.wat", "p1-module"),
    "wagi-noheaders.wasm": ("wagi_noheaders.wat", "p1-module"),
    "spin1-echo.wasm": ("spin1_echo.wat", "spin1-module"),
}

#: app dir name -> guests copied next to its spin.toml
APPS: dict[str, tuple[str, ...]] = {
    "command-hello": ("hello.wasm",),
    "command-files": ("readfile.wasm",),
    "command-component": ("hello-component.wasm",),
    "broken-toml": ("hello.wasm",),
    "unknown-trigger": ("hello.wasm",),
    "http-trigger": ("hello.wasm",),
    "missing-source": (),
}

_INCLUDE = re.compile(r"^\s*;;\s*@include\s+(\S+)\s*$", re.MULTILINE)


def _expand_includes(text: str) -> str:
    return _INCLUDE.sub(lambda m: (SRC_DIR / m.group(1)).read_text(), text)


def _deterministic_bytes(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _inputs_digest() -> str:
    """Everything the outputs depend on: sources, app trees, this script, and the assembler's version."""
    import wasmtime  # noqa: F401  (only to fail early, with the setup hint, if it is missing)
    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update(f"wasmtime {version('wasmtime')}\n".encode())
    files = [Path(__file__).resolve(), *sorted(SRC_DIR.rglob("*")), *sorted(APPS_SRC_DIR.rglob("*"))]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _read_index(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _build_into(out_dir: Path, inputs: str) -> dict:
    import wasmtime

    entries: dict[str, dict] = {}

    def record(name: str, data: bytes, kind: str, description: str) -> None:
        _write_file(out_dir / name, data)
        entries[name] = {"kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                         "description": description}

    built: dict[str, bytes] = {}
    for name, (source, kind) in WAT_GUESTS.items():
        text = _expand_includes((SRC_DIR / source).read_text())
        try:
            data = bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            raise SystemExit(f"build_guests: {source}: {exc}") from None
        built[name] = data
        record(name, data, kind, f"assembled from tests/guests/src/{source}")

    hello = built["hello.wasm"]
    record("corrupt.wasm", b"\0asm\x01\0\0\0" + _deterministic_bytes("corrupt", 256), "broken",
           "valid wasm header followed by garbage")
    record("random.wasm", _deterministic_bytes("random", 512), "broken", "random bytes, no wasm header")
    record("truncated.wasm", hello[: len(hello) // 2], "broken", "hello.wasm cut in half")

    apps: dict[str, dict] = {}
    apps_out = out_dir / "apps"
    if apps_out.exists():
        shutil.rmtree(apps_out)
    for app, guests in APPS.items():
        shutil.copytree(APPS_SRC_DIR / app, apps_out / app)
        for guest in guests:
            shutil.copyfile(out_dir / guest, apps_out / app / guest)
        apps[app] = {"dir": f"apps/{app}", "guests": list(guests)}

    index = {"inputs_sha256": inputs, "guests": entries, "apps": apps}
    _write_file(out_dir / INDEX_NAME, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return index


def build(out_dir: Path = BUILD_DIR, *, force: bool = False) -> dict:
    """Build (or confirm up to date) and return the index. Safe to call from parallel processes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        inputs = _inputs_digest()
        index = _read_index(out_dir)
        if (
            not force
            and index is not None
            and index.get("inputs_sha256") == inputs
            and all((out_dir / name).is_file() for name in index.get("guests", {}))
            and all((out_dir / app["dir"]).is_dir() for app in index.get("apps", {}).values())
        ):
            return index
        (out_dir / INDEX_NAME).unlink(missing_ok=True)  # written last: its presence means a complete build
        return _build_into(out_dir, inputs)


def main(argv: list[str]) -> int:
    try:
        import wasmtime  # noqa: F401
    except ImportError:
        print(
            "build_guests: the Python package `wasmtime` (==50.0.1, a project dependency) is not installed; "
            "run scripts/setup.sh or `pip install -e .` in the project venv",
            file=sys.stderr,
        )
        return 1
    index = build(force="--force" in argv)
    print(f"{BUILD_DIR} ({len(index['guests'])} guests, {len(index['apps'])} apps)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
