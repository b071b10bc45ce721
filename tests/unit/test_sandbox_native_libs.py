"""The ELF reading and the import guard of shim/wasm/sandbox/native_libs.py (the pivot itself: test_sandbox_process)."""

from __future__ import annotations

import importlib.util
import struct

import pytest

from shim.wasm.sandbox import native_libs


def _origin(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin
    return spec.origin


def test_needed_libraries_of_the_interpreters_ssl_extension():
    needed = native_libs.needed_libraries(_origin("_ssl"))
    assert "libssl.so.3" in needed and "libcrypto.so.3" in needed


def test_an_extension_without_libraries_of_its_own_needs_at_most_libc():
    assert set(native_libs.needed_libraries(_origin("_json"))) <= {"libc.so.6", "libpthread.so.0"}


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\n", b"\x7fELF\x09\x01" + b"\0" * 58])
def test_what_is_not_an_elf_file_is_refused(tmp_path, content):
    path = tmp_path / "x.so"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        native_libs.needed_libraries(str(path))


def test_a_truncated_or_oversized_section_table_is_refused_without_reading_it(tmp_path):
    header = bytearray(open(_origin("_ssl"), "rb").read(64))
    truncated = tmp_path / "truncated.so"
    truncated.write_bytes(bytes(header))  # the section table it points at is not there
    with pytest.raises(ValueError, match="truncated"):
        native_libs.needed_libraries(str(truncated))
    struct.pack_into("<HH", header, 0x3A, 0xFFFF, 0xFFFF)  # 4 GiB of section headers
    huge = tmp_path / "huge.so"
    huge.write_bytes(bytes(header))
    with pytest.raises(ValueError, match="ELF table of"):
        native_libs.needed_libraries(str(huge))


def test_loaded_libraries_name_what_the_loader_found_by_soname():
    importlib.import_module("_ssl")
    loaded = native_libs.loaded_libraries()
    assert {"libc.so.6", "libssl.so.3", "libcrypto.so.3"} <= loaded


def test_check_extension_passes_pure_modules_and_extensions_whose_libraries_are_loaded():
    importlib.import_module("_ssl")
    native_libs.check_extension(importlib.util.find_spec("colorsys"))
    native_libs.check_extension(importlib.util.find_spec("_ssl"))


def test_check_extension_refuses_an_extension_it_cannot_read(tmp_path):
    fake = tmp_path / "_fake.cpython-311-x86_64-linux-gnu.so"
    fake.write_bytes(b"not an ELF")
    spec = importlib.util.spec_from_file_location("_fake", fake)
    with pytest.raises(native_libs.NativeImportRefused, match="cannot check the libraries of"):
        native_libs.check_extension(spec)


def test_extension_file_finds_a_packaged_extension_without_importing_its_package():
    import subprocess
    import sys

    script = ("import sys; from shim.wasm.sandbox import native_libs; "
              "print(native_libs.extension_file('grpc._cython.cygrpc')); print('grpc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith(".so") and "/grpc/_cython/cygrpc" in out[0]
    assert out[1] == "False"
    assert native_libs.extension_file("grpc._cython.no_such_module") is None
    assert native_libs.extension_file("no_such_package.module") is None


_PRELOAD_SCRIPT = """
import json, sys
from shim.wasm.sandbox import native_libs, python_paths
before = native_libs.loaded_libraries()
python_paths.import_before_pivot(content_store=False, grpc=sys.argv[1] == "grpc")
print(json.dumps({"new": sorted(native_libs.loaded_libraries() - before), "grpc_imported": "grpc" in sys.modules}))
"""


@pytest.mark.parametrize("grpc", [False, True])
def test_grpcs_core_is_loaded_before_the_pivot_only_for_a_task_exporting_over_grpc(grpc):
    """OTLP/gRPC (runtime.telemetry.needs_grpc): grpcio's core and its libstdc++ are dlopen'ed, grpc is not
    imported; any other task's start loads neither."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PRELOAD_SCRIPT, "grpc" if grpc else "none"],
                         capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert not seen["grpc_imported"]
    assert ("libstdc++.so.6" in seen["new"]) is grpc
    assert any(name.startswith("cygrpc.") for name in seen["new"]) is grpc
