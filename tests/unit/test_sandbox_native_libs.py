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
