"""Which tasks run natively through runc (pause, sidecars) and which stay Wasm: shim/service/workload.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim.oci_spec import RuntimeSpec, parse_spec
from shim.service.workload import find_executable, is_native

ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56
WASM = b"\x00asm\x01\x00\x00\x00"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def spec(*args: str, env: tuple[str, ...] = (DEFAULT_PATH,), cwd: str = "/",
         annotations: dict[str, str] | None = None) -> RuntimeSpec:
    return parse_spec({"process": {"args": list(args), "env": list(env), "cwd": cwd},
                       "annotations": annotations or {}})


def put(rootfs: Path, path: str, content: bytes, mode: int = 0o755) -> Path:
    target = rootfs / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode)
    return target


def test_cri_sandbox_is_native_whatever_the_rootfs_holds(tmp_path):
    sandbox = spec("/pause", annotations={"io.kubernetes.cri.container-type": "sandbox"})
    assert is_native(sandbox, tmp_path)


def test_cri_app_container_is_judged_by_its_rootfs(tmp_path):
    container = spec("/app.wasm", annotations={"io.kubernetes.cri.container-type": "container"})
    put(tmp_path, "/app.wasm", WASM)
    assert not is_native(container, tmp_path)


def test_elf_executable_is_native(tmp_path):
    put(tmp_path, "/bin/busybox", ELF)
    assert is_native(spec("/bin/busybox", "echo", "hi"), tmp_path)


def test_shebang_script_is_native(tmp_path):
    put(tmp_path, "/entrypoint.sh", b"#!/bin/sh\necho hi\n")
    assert is_native(spec("/entrypoint.sh"), tmp_path)


def test_rootfs_with_spin_toml_is_wasm_even_with_an_elf_arg(tmp_path):
    put(tmp_path, "/spin.toml", b"spin_manifest_version = 2\n", 0o644)
    put(tmp_path, "/bin/sh", ELF)
    assert not is_native(spec("/bin/sh"), tmp_path)


def test_wasm_module_arg_is_wasm_even_when_executable(tmp_path):
    put(tmp_path, "/hello.wasm", WASM)
    assert not is_native(spec("/hello.wasm"), tmp_path)


def test_missing_file_is_wasm(tmp_path):
    assert not is_native(spec("/bin/nope"), tmp_path)


def test_empty_rootfs_of_a_spin_oci_artifact_is_wasm(tmp_path):
    assert not is_native(spec("/"), tmp_path)
    assert not is_native(spec(), tmp_path)


def test_elf_without_execute_permission_is_wasm(tmp_path):
    put(tmp_path, "/bin/tool", ELF, mode=0o644)
    assert not is_native(spec("/bin/tool"), tmp_path)


def test_directory_named_by_args_is_wasm(tmp_path):
    (tmp_path / "app").mkdir()
    assert not is_native(spec("/app"), tmp_path)


def test_bare_name_is_found_through_the_spec_path(tmp_path):
    put(tmp_path, "/usr/bin/sleep", ELF)
    assert is_native(spec("sleep", "1000"), tmp_path)


def test_bare_name_uses_the_spec_path_in_order_not_the_hosts(tmp_path):
    put(tmp_path, "/opt/tools/runme", ELF)
    assert not is_native(spec("runme"), tmp_path)
    assert is_native(spec("runme", env=("PATH=/opt/tools",)), tmp_path)
    put(tmp_path, "/first/runme", WASM)
    assert find_executable(tmp_path, "runme", "/", "/first:/opt/tools") == tmp_path / "first" / "runme"


def test_bare_name_without_path_in_env_is_wasm(tmp_path):
    put(tmp_path, "/bin/sh", ELF)
    assert not is_native(spec("sh", env=()), tmp_path)


def test_relative_path_entries_are_ignored(tmp_path):
    put(tmp_path, "/tool", ELF)
    assert not is_native(spec("tool", env=("PATH=.:bin",)), tmp_path)


def test_name_with_a_slash_is_relative_to_the_process_cwd(tmp_path):
    put(tmp_path, "/srv/app/run", b"#!/bin/sh\n")
    assert is_native(spec("./run", cwd="/srv/app"), tmp_path)
    assert not is_native(spec("./run", cwd="/"), tmp_path)


def test_symlink_inside_the_rootfs_is_followed_inside_it(tmp_path):
    put(tmp_path, "/bin/busybox", ELF)
    (tmp_path / "bin" / "sh").symlink_to("busybox")
    (tmp_path / "bin" / "ash").symlink_to("/bin/busybox")  # absolute: from the image's root
    assert is_native(spec("/bin/sh"), tmp_path)
    assert is_native(spec("/bin/ash"), tmp_path)


def test_symlink_escaping_the_rootfs_is_wasm(tmp_path):
    outside = put(tmp_path, "/host/bin/tool", ELF)
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").symlink_to(os.path.relpath(outside, rootfs / "bin"))
    assert (rootfs / "bin" / "tool").exists()  # on the host the link resolves...
    assert not is_native(spec("/bin/tool"), rootfs)  # ...but not inside the image


def test_absolute_symlink_is_resolved_in_the_rootfs_not_on_the_host(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    host_sh = Path("/bin/sh").resolve()
    (rootfs / "bin" / "sh").symlink_to(host_sh)  # exists on the host, not in the image
    assert not is_native(spec("/bin/sh"), rootfs)


@pytest.mark.parametrize("content", [b"", b"#", b"\x7fEL", b"MZ\x90\x00"])
def test_short_or_foreign_files_are_wasm(tmp_path, content):
    put(tmp_path, "/bin/tool", content)
    assert not is_native(spec("/bin/tool"), tmp_path)
