#!/usr/bin/env python3
"""Build the node bundle: one tarball holding the shim, its own CPython and every dependency, so a node needs none.

    .venv/bin/python scripts/build_bundle.py [--out dist]   # -> dist/containerd-shim-spin-<version>-linux-<arch>.tar.gz
    tar -C /opt -xzf containerd-shim-spin-0.1.0-linux-amd64.tar.gz
    /opt/containerd-shim-spin/bin/containerd-shim-spin-v2 install    # links /usr/local/bin/containerd-shim-spin-v2

Why this shape: only PyPI, Debian, crates.io, the Go module proxy and npm are reachable from the machines that
build it (no python-build-standalone), so the interpreter is the one the venv runs on (its base prefix, a plain
CPython install: pyenv here), copied with its stdlib, plus the shared libraries it and the wheels link that are
not glibc's own (libssl, libsqlite3, libffi, libstdc++, libgcc_s, ...: found with ldd, copied into lib/). The
interpreter gets a DT_RPATH of ``$ORIGIN/../lib`` (patchelf): an executable's DT_RPATH is searched for every
library the process loads whose loader has no DT_RUNPATH (glibc's _dl_map_object), which covers libpython, the
stdlib's extensions, ctypes' loads of libwasmtime, and the wheels' extensions (none of grpcio's, protobuf's or
wasmtime's has a RUNPATH) - without LD_LIBRARY_PATH, which runc and every other child would inherit.

Layout (under the tarball's top directory ``containerd-shim-spin/``):

    bin/containerd-shim-spin-v2     the entry point (a sh/Python polyglot: sh finds the interpreter beside the
                                    real file, Python runs the same file; see ENTRY_POINT)
    bin/python3.11                  the interpreter (sys.executable, so `install` links the entry point beside it)
    lib/libpython3.11.so.1.0, lib/lib*.so*   libpython and the bundled native libraries
    lib/python3.11/                 the stdlib (less tests, tkinter, idle, curses), lib-dynload, site-packages
                                    (this project and its pyproject.toml dependencies, no dev extras)
    BUNDLE.json                     version, source hash, Python version, glibc minimum, bundled libraries

Every module is precompiled with unchecked-hash pycs: the bundle is immutable, its pycs are valid whatever mtimes
the copy onto the node (a DaemonSet's cp) leaves, and the sandbox reads site-packages through a read-only bind,
where a missing pyc would be recompiled in memory on every import. Dependency versions are those of the venv the
tests ran (pip freeze as constraints), so the bundle runs what was tested.

The source hash (`source_hash`) covers everything that goes into the bundle from the checkout plus this script
and the interpreter's version; tests cache bundles under it (tests/e2e/bundle_support.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What `pip install` of the project needs from the checkout: pyproject.toml, its readme and script-files, and
#: its packages.
SOURCE_FILES = ("pyproject.toml", "README.md", "bin/containerd-shim-spin-v2")
SOURCE_PACKAGES = ("shim", "runtime", "oci", "proto")
TOP_DIR = "containerd-shim-spin"
ENTRY_NAME = "containerd-shim-spin-v2"
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
PY_NAME = f"python{PY_VERSION}"

#: Parts of the stdlib a shim never imports: tests (~600 MB with pyenv's pycs), GUI and terminal front ends,
#: the bundled pip wheels, the static libpython of config-*, and the base install's own site-packages.
STDLIB_EXCLUDED_DIRS = frozenset({"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages",
                                  "lib2to3/tests", "unittest/test", "ctypes/test", "sqlite3/test", "distutils/tests"})
STDLIB_EXCLUDED_PREFIXES = ("config-",)
#: lib-dynload extensions a shim never imports, which would pull in X11, Tcl/Tk, ncurses, readline or NIS.
DYNLOAD_EXCLUDED = re.compile(r"^(_tkinter|_curses|_curses_panel|readline|nis|ossaudiodev|spwd|_crypt|_dbm|_gdbm|"
                              r"_test\w*|_ctypes_test|_xxtestfuzz|xxlimited\w*|xxsubtype)\.")
#: glibc's own libraries: every glibc node has them, and mixing a copied libc with the node's ld.so breaks.
GLIBC_CORE = re.compile(r"^(libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libanl|libnsl|"
                        r"libBrokenLocale|libnss_\w+|libthread_db|libc_malloc_debug|ld-linux[\w.-]*|"
                        r"linux-vdso|linux-gate)\.so")
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}

#: The entry point. containerd execs it by the path it found on PATH (a symlink `install` made), with its
#: flags; sh resolves that symlink only to find the interpreter, then Python runs this same file as the script
#: ("$0", so sys.argv[0] is what containerd ran and the fork server re-executes the same command). The command
#: line is `<python> <script> <args>`, as a venv's script's is (what ps and the tests' process matching see), so
#: isolation comes from the environment, not from -I: none of the node's PYTHON* settings that change what is
#: imported or how, no user site, no script directory on sys.path (PYTHONSAFEPATH, 3.11). In Python the sh
#: part is a string expression; in sh, ''':' is the `:` builtin.
ENTRY_POINT = f"""#!/bin/sh
''':'
self=$0
[ -L "$self" ] && self=$(readlink -f -- "$self")
unset PYTHONHOME PYTHONPATH PYTHONPLATLIBDIR PYTHONSTARTUP PYTHONINSPECT PYTHONOPTIMIZE PYTHONUSERBASE
PYTHONSAFEPATH=1 PYTHONNOUSERSITE=1 exec "${{self%/*}}/{PY_NAME}" "$0" "$@"
'''
# containerd-shim-spin-v2 (as the checkout's bin/containerd-shim-spin-v2), run by the bundle's own interpreter.
import sys

from shim.cli.main import main

sys.exit(main())
"""


class BundleError(RuntimeError):
    """The bundle cannot be built on this machine (the message says what is missing)."""


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def machine_arch() -> str:
    machine = platform.machine()
    return GO_ARCH.get(machine, machine)


def bundle_name(version: str | None = None, arch: str | None = None) -> str:
    return f"{TOP_DIR}-{version or project_version()}-linux-{arch or machine_arch()}.tar.gz"


def _source_paths() -> Iterator[Path]:
    for name in SOURCE_FILES:
        yield REPO / name
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield path
    yield Path(__file__).resolve()


def source_hash() -> str:
    """sha256 over the bundle's inputs from the checkout (names and contents), this script and the Python."""
    digest = hashlib.sha256(f"{sys.version}\0{base_prefix()}\0".encode())
    for path in _source_paths():
        digest.update(f"{path.relative_to(REPO)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def base_prefix() -> Path:
    """The install the venv runs on: a CPython prefix with bin/pythonX.Y and lib/pythonX.Y/os.py."""
    return Path(sys.base_prefix)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BundleError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def _check_tools() -> None:
    for tool, package in (("patchelf", "patchelf"), ("ldd", "libc-bin"), ("objdump", "binutils"), ("strip", "binutils")):
        if shutil.which(tool) is None:
            raise BundleError(f"`{tool}` not found: apt-get install {package}")


def copy_interpreter(prefix: Path, root: Path) -> Path:
    """bin/pythonX.Y, libpython if the build is shared, and the stdlib without STDLIB_EXCLUDED_*."""
    executable = prefix / "bin" / PY_NAME
    stdlib = prefix / "lib" / PY_NAME
    if not executable.is_file() or not (stdlib / "os.py").is_file():
        raise BundleError(f"{prefix} is not a CPython prefix install ({executable}, {stdlib}/os.py): build from a "
                          f"venv whose base is one (pyenv, python.org); a distribution's /usr layout is not relocatable")
    if "dist-packages" in (stdlib / "site.py").read_text():
        raise BundleError(f"{stdlib}/site.py is a distribution's (dist-packages): its site-packages would be ignored")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(executable, root / "bin" / PY_NAME)
    (root / "lib").mkdir()
    if (sysconfig.get_config_var("LDLIBRARY") or "").endswith(".so"):  # a shared build: bin/ links libpython
        for candidate in sorted((prefix / "lib").glob(f"lib{PY_NAME}*.so.*")):
            shutil.copy2(candidate.resolve(), root / "lib" / candidate.name)

    def ignore(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(stdlib)
        skipped = {name for name in names
                   if name == "__pycache__" or name.endswith(".pyc")
                   or (relative / name).as_posix() in STDLIB_EXCLUDED_DIRS
                   or (relative == Path(".") and name.startswith(STDLIB_EXCLUDED_PREFIXES))}
        if relative == Path("lib-dynload"):
            skipped |= {name for name in names if DYNLOAD_EXCLUDED.match(name)}
        return skipped

    shutil.copytree(stdlib, root / "lib" / PY_NAME, ignore=ignore, symlinks=False)
    return root / "bin" / PY_NAME


def pip_install(root: Path, work: Path) -> Path:
    """This project (a copy of the checkout's files: no build/ or egg-info left in the shared tree) and its
    dependencies into site-packages, at the versions this venv has (no dev extras: they are not requested)."""
    source = work / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for package in SOURCE_PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).stdout
    constraints = work / "constraints.txt"
    constraints.write_text("".join(line + "\n" for line in frozen.splitlines()
                                   if line and not line.startswith(("-e ", "#")) and " @ " not in line))
    site = root / "lib" / PY_NAME / "site-packages"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location",
          "--no-build-isolation", "--no-compile", "--target", str(site), "-c", str(constraints), str(source)])
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts whose shebang names this venv's python
    return site


def _elf_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and (".so" in path.name or path.parent.name == "bin"):
            with path.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    yield path


def _ldd(path: Path) -> dict[str, Path]:
    """soname -> resolved file of every library `path` needs, transitively (ldd), that is not glibc's own."""
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    needed: dict[str, Path] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(\S+) => (\S+) \(0x", line)
        if match and not GLIBC_CORE.match(match.group(1)):
            needed[match.group(1)] = Path(match.group(2))
        elif "not found" in line:
            raise BundleError(f"{path}: {line.strip()}")
    return needed


def bundle_native_libraries(root: Path) -> list[str]:
    """Copy into lib/ every non-glibc library an ELF of the bundle needs (by soname, from the build machine)."""
    lib = root / "lib"
    ours = {path.name for path in lib.glob("libpython*")}
    copied: list[str] = []
    for elf in list(_elf_files(root)):
        for soname, resolved in _ldd(elf).items():
            if soname in ours or (lib / soname).exists():
                continue
            shutil.copy2(resolved.resolve(), lib / soname)
            copied.append(soname)
    return sorted(copied)


def set_search_paths(root: Path) -> None:
    """The interpreter searches lib/ (DT_RPATH, see the module docstring). Every other ELF loses the search
    paths that name the build machine (pyenv links libpython and each lib-dynload extension with a RUNPATH of its
    prefix, and an object with a RUNPATH of its own never sees the executable's DT_RPATH); one that keeps
    ``$ORIGIN`` entries (a wheel's vendored libraries) gets lib/ appended to them."""
    interpreter = root / "bin" / PY_NAME
    _run(["patchelf", "--force-rpath", "--set-rpath", "$ORIGIN/../lib", str(interpreter)])
    for elf in _elf_files(root):
        if elf == interpreter:
            continue
        current = [entry for entry in _run(["patchelf", "--print-rpath", str(elf)]).stdout.strip().split(":") if entry]
        if not current:
            continue
        kept = [entry for entry in current if entry.startswith("$ORIGIN")]
        if kept:
            kept.append("$ORIGIN/" + os.path.relpath(root / "lib", elf.parent))
            _run(["patchelf", "--set-rpath", ":".join(kept), str(elf)])
        else:
            _run(["patchelf", "--remove-rpath", str(elf)])


def glibc_minimum(root: Path) -> str:
    """The highest GLIBC_x.y symbol version any ELF of the bundle requires: the oldest glibc it runs on."""
    versions: set[tuple[int, ...]] = set()
    for elf in _elf_files(root):
        dump = _run(["objdump", "-p", str(elf)]).stdout
        versions.update(tuple(int(part) for part in found.split("."))
                        for found in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", dump))
    return ".".join(map(str, max(versions))) if versions else "unknown"


def strip_interpreter(root: Path) -> None:
    """Drop the debug sections of the interpreter's own ELF files (pyenv builds with -g: libpython alone is 23 MB
    with them, ~5 MB without); the wheels' and the copied system libraries ship stripped already."""
    own = [root / "bin" / PY_NAME, *(root / "lib").glob(f"lib{PY_NAME}*"),
           *(root / "lib" / PY_NAME / "lib-dynload").glob("*.so")]
    _run(["strip", "--strip-debug", *map(str, own)])


def write_entry_point(root: Path) -> Path:
    entry = root / "bin" / ENTRY_NAME
    entry.write_text(ENTRY_POINT)
    entry.chmod(0o755)
    return entry


def precompile(root: Path) -> None:
    """Compile every module with the bundle's own interpreter (which proves it starts from its new place)."""
    interpreter = root / "bin" / PY_NAME
    result = subprocess.run([str(interpreter), "-I", "-m", "compileall", "-q", "-j", "0",
                             "--invalidation-mode", "unchecked-hash", str(root / "lib" / PY_NAME)],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=False)
    # compileall exits 1 when a file does not compile: the few py2-only or template files some wheels ship.
    failed = re.findall(r"\*\*\* Error compiling '([^']+)'", result.stdout)
    if result.returncode != 0 and (not failed or "Traceback" in result.stderr):
        raise BundleError(f"compileall failed: {result.stderr.strip()[-2000:]}{result.stdout[-2000:]}")
    for path in failed:
        if f"/site-packages/{TOP_DIR}" in path or any(f"/site-packages/{p}/" in path for p in SOURCE_PACKAGES):
            raise BundleError(f"this project's module does not compile: {path}")


def smoke_test(root: Path) -> str:
    """`containerd-shim-spin-v2 --version` from the bundle, with an empty environment: it must name wasmtime."""
    result = _run([str(root / "bin" / ENTRY_NAME), "--version"], env={})
    if "wasmtime-py" not in result.stdout or "not importable" in result.stdout:
        raise BundleError(f"the bundle's shim cannot import its engine: {result.stdout}{result.stderr}")
    return result.stdout


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = info.mode & 0o755 | (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return info


def build_bundle(out_dir: Path, *, work_dir: Path | None = None) -> Path:
    """Build the bundle into out_dir/bundle_name() and return its path (atomically replaced)."""
    _check_tools()
    prefix = base_prefix()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spin-shim-bundle.", dir=work_dir) as scratch:
        work = Path(scratch)
        root = work / TOP_DIR
        copy_interpreter(prefix, root)
        pip_install(root, work)
        libraries = bundle_native_libraries(root)
        strip_interpreter(root)
        set_search_paths(root)
        write_entry_point(root)
        precompile(root)
        version_line = smoke_test(root)
        manifest = {
            "name": TOP_DIR, "version": project_version(), "arch": machine_arch(), "source_hash": source_hash(),
            "python": sys.version.split()[0], "glibc_minimum": glibc_minimum(root),
            "bundled_libraries": libraries, "entry_point": f"bin/{ENTRY_NAME}",
            "shim_version": version_line.strip().splitlines(),
        }
        (root / "BUNDLE.json").write_text(json.dumps(manifest, indent=2) + "\n")
        target = out_dir / bundle_name()
        partial = out_dir / f".{target.name}.{os.getpid()}.tmp"
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(root, arcname=TOP_DIR, filter=_tar_filter)
        os.replace(partial, target)
    return target


def read_manifest(bundle: Path) -> dict[str, object]:
    with tarfile.open(bundle) as tar:
        member = tar.extractfile(f"{TOP_DIR}/BUNDLE.json")
        assert member is not None
        return json.loads(member.read())


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the self-contained node bundle of containerd-shim-spin-v2.")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output directory (default: %(default)s)")
    parser.add_argument("--print-hash", action="store_true", help="print the source hash and exit")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.print_hash:
        print(source_hash())
        return 0
    try:
        bundle = build_bundle(args.out)
    except BundleError as error:
        print(f"build_bundle: {error}", file=sys.stderr)
        return 1
    manifest = read_manifest(bundle)
    print(f"{bundle} ({bundle.stat().st_size / 2**20:.1f} MiB; Python {manifest['python']}, "
          f"glibc >= {manifest['glibc_minimum']}, bundled: {', '.join(manifest['bundled_libraries'])})")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
