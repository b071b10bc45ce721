"""Native libraries inside the sandbox: loaded from the node before the pivot, never from the image after it.

After pivot_root the dynamic loader resolves a library name (``libssl.so.3``) in the *container's* /lib and
/usr/lib, that is in files the image chose: a C extension imported lazily after the pivot (``_ssl`` on the first
outbound HTTPS request, ``_lzma`` for an xz archive) would run the image's native code in the privileged
instance process. Two rules close that:

* before the pivot, the extensions the runtime may need later are dlopen'ed from the node (``preload``): their
  libraries are then in the process, and a later ``import`` of the same extension through the read-only bind of
  its directory gets the loaded copy (glibc matches the file's device and inode), without the module's Python
  init, which is the expensive part (``import ssl`` measured 36 ms in an instance process, the dlopen 2 ms);
* after the pivot, an import of any other extension whose ELF ``DT_NEEDED`` names a library not yet loaded is
  refused with ImportError (``check_extension``, called by python_paths' finder), rather than letting the loader
  search the image.

ctypes' ``find_library`` (which runs ``ldconfig``) is never called after the pivot for the same reason.

OpenSSL reads its configuration file once per process, on first use, and a configuration can name provider and
engine modules to load: left to itself it would read the image's /usr/lib/ssl/openssl.cnf on the first HTTPS
request. ``load_openssl_config`` makes it read the node's before the pivot, and the module directories are
pointed at a path that does not exist, for any later explicit load.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Iterable

#: The largest section header table, dynamic section or string table read (extensions are node files, but a
#: corrupt one must not make the guard read without bound).
_MAX_SECTION_BYTES = 16 * 1024 * 1024

_DT_NEEDED = 1
_SHT_DYNAMIC = 6


class NativeImportRefused(ImportError):
    """An extension needs a library the shim did not load before entering the container."""


def preload(module_names: Iterable[str]) -> None:
    """dlopen each named extension module's shared object (not its Python init); skip names that are not
    extensions (built into this interpreter) or not installed."""
    for name in module_names:
        origin = extension_file(name)
        if origin is not None:
            ctypes.CDLL(origin)  # the handle is dropped, the library stays: ctypes never dlcloses


def extension_file(name: str) -> str | None:
    """The shared object of extension module ``name``, or None when it is not an installed extension.

    A dotted name is looked up under its top-level package's directories without importing any package:
    ``find_spec("grpc._cython.cygrpc")`` would import ``grpc`` (its ``__init__`` imports the extension, with
    its Python init: ~140 ms), where the dlopen alone is all the sandbox needs (~7 ms)."""
    top, _, rest = name.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if not rest:
        if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) and spec.origin:
            return spec.origin
        return None
    *packages, leaf = rest.split(".")
    for location in spec.submodule_search_locations or ():
        directory = os.path.join(location, *packages)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = os.path.join(directory, leaf + suffix)
            if os.path.isfile(candidate):
                return candidate
    return None


#: OPENSSL_init_crypto's flag for "load the configuration file now" (openssl/crypto.h).
_OPENSSL_INIT_LOAD_CONFIG = 0x40
#: Where OpenSSL looks for provider and engine modules from then on: nothing is there, in or out of the sandbox.
NO_OPENSSL_MODULES = "/.spin-shim/no-openssl-modules"


def load_openssl_config() -> None:
    """If libcrypto is loaded (preload of _ssl or _hashlib), load its configuration from the node now."""
    os.environ["OPENSSL_MODULES"] = os.environ["OPENSSL_ENGINES"] = NO_OPENSSL_MODULES
    if "libcrypto.so.3" not in loaded_libraries():
        return
    libcrypto = ctypes.CDLL("libcrypto.so.3")  # the loaded copy, matched by soname: no search
    init = libcrypto.OPENSSL_init_crypto
    init.argtypes, init.restype = (ctypes.c_uint64, ctypes.c_void_p), ctypes.c_int
    if init(_OPENSSL_INIT_LOAD_CONFIG, None) != 1:
        raise OSError(0, "OpenSSL could not load the node's configuration")


class _PhdrInfo(ctypes.Structure):
    """The head of glibc's struct dl_phdr_info: all dl_iterate_phdr's callback here reads."""

    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]


_PHDR_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p)


def loaded_libraries() -> frozenset[str]:
    """The names of the shared objects loaded in this process now: the basename of the path each was loaded by,
    which for a library loaded as a dependency is its soname (the loader found ``libsqlite3.so.0`` by that name,
    whatever file the name links to). From the dynamic loader itself, so it works without /proc."""
    names: set[str] = set()

    def collect(info, _size, _data):  # type: ignore[no-untyped-def]
        name = info.contents.dlpi_name
        if name:
            names.add(os.path.basename(name).decode("utf-8", "surrogateescape"))
        return 0

    ctypes.CDLL(None).dl_iterate_phdr(_PHDR_CALLBACK(collect), None)
    return frozenset(names)


def needed_libraries(path: str) -> tuple[str, ...]:
    """The ``DT_NEEDED`` entries of an ELF shared object, reading only its headers, dynamic section and string
    table. Raises ValueError for anything it cannot parse."""
    with open(path, "rb") as elf:
        def read(offset: int, size: int) -> bytes:
            if size > _MAX_SECTION_BYTES:
                raise ValueError(f"{path}: ELF table of {size} bytes")
            elf.seek(offset)
            chunk = elf.read(size)
            if len(chunk) != size:
                raise ValueError(f"{path}: truncated ELF file")
            return chunk

        header = read(0, 64)
        if header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
            raise ValueError(f"{path}: not an ELF file")
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:
            (shoff,), (shentsize, shnum) = struct.unpack_from(order + "Q", header, 0x28), \
                struct.unpack_from(order + "HH", header, 0x3A)
            section, dyn = order + "IIQQQQIIQQ", order + "qQ"
        else:
            (shoff,), (shentsize, shnum) = struct.unpack_from(order + "I", header, 0x20), \
                struct.unpack_from(order + "HH", header, 0x2E)
            section, dyn = order + "IIIIIIIIII", order + "iI"
        if shentsize < struct.calcsize(section):
            raise ValueError(f"{path}: ELF section header of {shentsize} bytes")
        table = read(shoff, shnum * shentsize)
        sections = [struct.unpack_from(section, table, index * shentsize) for index in range(shnum)]
        needed: list[str] = []
        for fields in sections:
            if fields[1] != _SHT_DYNAMIC:
                continue
            offset, size, link = fields[4], fields[5], fields[6]
            strings_fields = sections[link]
            strings = read(strings_fields[4], strings_fields[5])
            entries = read(offset, size)
            for tag, value in struct.iter_unpack(dyn, entries[:len(entries) - len(entries) % struct.calcsize(dyn)]):
                if tag == 0:
                    break
                if tag == _DT_NEEDED:
                    needed.append(strings[value:strings.index(b"\0", value)].decode("utf-8", "surrogateescape"))
        return tuple(needed)


def check_extension(spec: importlib.machinery.ModuleSpec) -> None:
    """Raise NativeImportRefused if ``spec`` is an extension module linking a library not loaded yet."""
    if not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        return
    origin = spec.origin or ""
    try:
        needed = needed_libraries(origin)
    except (OSError, ValueError, struct.error, IndexError) as exc:
        raise NativeImportRefused(f"sandbox: cannot check the libraries of {origin}: {exc}", name=spec.name) from None
    loaded = loaded_libraries() if needed else frozenset()
    missing = [lib for lib in needed if lib not in loaded]
    if missing:
        raise NativeImportRefused(
            f"sandbox: module {spec.name} needs {', '.join(missing)}, which the shim did not load before it "
            f"entered the container (inside, the dynamic loader would search the image)", name=spec.name)
