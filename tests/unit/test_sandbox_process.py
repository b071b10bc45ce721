"""The sandbox applied to a real (forked) process: its root and its identity, read back from /proc and the fs.

Each test forks a child that enters the sandbox and reports what it sees through a pipe as JSON, then exits
with os._exit; the parent (root, as the test suite runs) checks the report. No containerd is involved: the
end-to-end side is tests/e2e/test_sandbox_ctr.py.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from shim.kernel import linux
from shim.kernel.cgroups import DeviceRule, device_rules
from shim.oci_spec import Rlimit, SpecMount
from shim.wasm.sandbox.credentials import Credentials, apply_credentials
from shim.wasm.sandbox.root import RootPlan, enter_root, release_host_paths, seal
from tests.unit.forked import in_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


def _status() -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)


def test_credentials_give_the_specs_user_groups_capabilities_rlimits_umask_and_no_new_privs():
    caps = ("CAP_NET_BIND_SERVICE",)
    credentials = Credentials(
        uid=1000, gid=1001, additional_gids=(2000, 2001),
        capabilities={"bounding": ("CAP_NET_BIND_SERVICE", "CAP_KILL"), "effective": caps, "permitted": caps,
                      "inheritable": caps, "ambient": caps},
        no_new_privileges=True, rlimits=(Rlimit("RLIMIT_NOFILE", 100, 200),), umask=0o027)

    def become() -> dict[str, Any]:
        apply_credentials(credentials)
        return {"status": _status(), "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                "umask": os.umask(0)}

    seen = in_child(become)
    status = seen["status"]
    assert status["Uid"].split() == ["1000"] * 4 and status["Gid"].split() == ["1001"] * 4
    assert sorted(status["Groups"].split()) == ["2000", "2001"]
    bind = f"{linux.capability_mask(caps):016x}"
    assert status["CapBnd"] == f"{linux.capability_mask(('CAP_NET_BIND_SERVICE', 'CAP_KILL')):016x}"
    assert status["CapEff"] == status["CapPrm"] == status["CapInh"] == status["CapAmb"] == bind
    assert status["NoNewPrivs"].strip() == "1"
    assert seen["nofile"] == [100, 200]
    assert seen["umask"] == 0o027


def test_a_non_root_user_without_spec_capabilities_holds_none():
    seen = in_child(lambda: _status() if apply_credentials(Credentials(uid=65534, gid=65534)) is None else {})
    assert seen["CapEff"] == seen["CapPrm"] == "0" * 16


def test_the_root_holds_the_image_the_spec_mounts_and_the_shims_view_and_nothing_of_the_node(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "static").mkdir(parents=True)
    (rootfs / "spin.toml").write_text("image manifest\n")
    (rootfs / "static" / "zero").parent.mkdir(exist_ok=True)
    os.mknod(rootfs / "static" / "zero", 0o666 | 0o020000, os.makedev(1, 5))
    (rootfs / "data").symlink_to("/etc")  # a volume's destination through an image symlink
    volume = tmp_path / "volume"
    volume.mkdir()
    config = tmp_path / "secret.toml"
    config.write_text("from the volume\n")
    cache = tmp_path / "cache"
    mounts = (
        SpecMount("/data/volume", "bind", str(volume), ("rbind", "rw")),
        SpecMount("/runtime-config.toml", "bind", str(config), ("rbind", "ro")),
        SpecMount("/dev", "tmpfs", "tmpfs", ("nosuid", "mode=755")),
        SpecMount("/proc", "proc", "proc", ()),
        SpecMount("/tmp", "tmpfs", "tmpfs", ("size=1m",)),
    )

    plan = RootPlan(rootfs=rootfs, mounts=mounts, readonly=True, cache_dir=cache)

    def inside() -> dict[str, Any]:
        skipped = enter_root(plan)
        top = sorted(os.listdir("/"))
        Path("/etc/volume/written").write_text("kept in the volume\n")
        try:
            Path("/runtime-config.toml").write_text("x")
            config_writable = True
        except OSError:
            config_writable = False
        try:
            with open("/static/zero", "rb") as device:
                device_read = device.read(4).hex()
        except OSError as exc:
            device_read = exc.strerror
        with open("/dev/null", "wb") as null:
            null.write(b"allowed device")
        precompiled_before = os.stat("/.spin-shim/precompiled").st_ino
        release_host_paths(plan)
        seal(True)
        try:
            Path("/new-file").write_text("x")
            root_writable = True
        except OSError:
            root_writable = False
        return {"top": top, "skipped": skipped, "config": Path("/runtime-config.toml").read_text(),
                "config_writable": config_writable, "device": device_read, "cwd": os.getcwd(),
                "precompiled_before": precompiled_before,
                "precompiled_after": os.stat("/.spin-shim/precompiled").st_ino, "root_writable": root_writable}

    seen = in_child(inside)
    assert seen["top"] == sorted([".spin-shim", "data", "dev", "etc", "runtime-config.toml", "spin.toml",
                                  "static", "tmp"])
    assert seen["skipped"] == ["/proc (proc): not mounted for a Wasm task"]
    assert seen["config"] == "from the volume\n" and not seen["config_writable"]
    assert seen["device"] == "Permission denied"  # nodev: the image's /dev/zero node is inert
    assert seen["cwd"] == "/"
    node_cache = (cache / "precompiled").stat().st_ino  # bound in for the load, gone after release_host_paths
    assert seen["precompiled_before"] == node_cache != seen["precompiled_after"]
    assert not seen["root_writable"]
    assert (volume / "written").read_text() == "kept in the volume\n"
    assert not (Path("/etc") / "volume").exists()
    assert (rootfs / "etc" / "volume").is_dir()  # the mount point was made inside the image


def test_device_rules_become_cgroup_v1_lines_in_spec_order():
    assert device_rules([
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 136, "access": "rw"},
        {"allow": False, "type": "b", "major": 7, "minor": -1, "access": "r"},
    ]) == [DeviceRule("devices.deny", "a"), DeviceRule("devices.allow", "c 1:3 rwm"),
           DeviceRule("devices.allow", "c 136:* rw"), DeviceRule("devices.deny", "b 7:* r")]
    with pytest.raises(ValueError, match="device type"):
        device_rules([{"allow": True, "type": "x"}])


#: Extensions of the standard library linking a library of the node, with that library's soname.
_LAZY_EXTENSIONS = (("_lzma", "liblzma.so.5"), ("_bz2", "libbz2.so.1.0"), ("_uuid", "libuuid.so.1"),
                    ("_curses", "libncursesw.so.6"), ("readline", "libreadline.so.8"))


def test_after_the_pivot_modules_import_through_the_read_only_binds_and_extensions_only_with_node_libraries(
        tmp_path):
    from shim.wasm.sandbox import native_libs, python_paths

    rootfs = tmp_path / "rootfs"
    for lib_dir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"):
        (rootfs / lib_dir).mkdir(parents=True, exist_ok=True)
    plan = RootPlan(rootfs=rootfs, mounts=(), readonly=False, cache_dir=tmp_path / "cache",
                    module_dirs=python_paths.module_dirs())

    def inside() -> dict[str, Any]:
        python_paths.import_before_pivot(content_store=False)
        for name in ("colorsys", "runtime.executors.spin1", "ssl", "_ssl", "sqlite3", "_sqlite3"):
            sys.modules.pop(name, None)  # other tests of this process may have imported them
        loaded = native_libs.loaded_libraries()
        # An extension whose library is not in this process yet; the image ships a library of that name.
        lazy, lazy_lib = next((module, lib) for module, lib in _LAZY_EXTENSIONS
                              if lib not in loaded and module not in sys.modules
                              and importlib.util.find_spec(module) is not None)
        for lib_dir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"):
            (rootfs / lib_dir / lazy_lib).write_bytes(b"\x7fELF the image's code")
        # The image plants modules where node paths point: sys.path entries the node lacks (python311.zip), and
        # our packages' source tree (an editable install finds them by node path).
        for entry in sys.path:
            if entry.endswith(".zip") and not os.path.exists(entry):
                planted = rootfs / entry.lstrip("/")
                planted.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(planted, "w") as archive:
                    archive.writestr("colorsys.py", "raise SystemExit('the image ran')\n")
        proto_dir = rootfs / str(Path(importlib.util.find_spec("proto").origin).parent).lstrip("/")
        proto_dir.mkdir(parents=True, exist_ok=True)
        (proto_dir / "__init__.py").write_text("raise SystemExit('the image ran')\n")
        for name in [name for name in sys.modules if name == "proto" or name.startswith("proto.")]:
            sys.modules.pop(name)
        enter_root(plan)
        python_paths.remap_imports(plan.module_binds)
        import colorsys  # the stdlib, pure Python: through the bind of its directory
        import sqlite3  # an extension preloaded from the node before the pivot
        import ssl

        import proto  # ours too, never imported before the pivot
        import runtime.executors.spin1  # ours, from the editable install's source tree

        from importlib import metadata  # a dependency reading its own version at import (pg8000, scramp)

        refused = ""
        try:
            __import__(lazy)
        except native_libs.NativeImportRefused as exc:
            refused = str(exc)
        h11_dist = metadata.distribution("h11")
        return {"h11_version": h11_dist.version, "h11_dist": str(h11_dist.locate_file("")),
                "stdlib": colorsys.__file__, "ours": runtime.executors.spin1.__file__, "proto": proto.__file__,
                "ssl": ssl.OPENSSL_VERSION, "sqlite": sqlite3.connect(":memory:").execute("select 7").fetchone()[0],
                "node_gone": not os.path.exists(plan.module_dirs[0] + "/os.py"),
                "lazy": lazy, "lazy_lib": lazy_lib, "refused": refused,
                "openssl_modules": os.environ.get("OPENSSL_MODULES")}

    seen = in_child(inside)
    assert seen["stdlib"].startswith("/.spin-shim/python/")
    assert seen["ours"].startswith("/.spin-shim/python/") and seen["proto"].startswith("/.spin-shim/python/")
    assert seen["ssl"].startswith("OpenSSL") and seen["sqlite"] == 7
    assert seen["node_gone"]
    import h11

    assert seen["h11_version"] == h11.__version__ and seen["h11_dist"].startswith("/.spin-shim/python/")
    assert seen["refused"] == (f"sandbox: module {seen['lazy']} needs {seen['lazy_lib']}, which the shim did not load "
                               f"before it entered the container (inside, the dynamic loader would search the image)")
    assert seen["openssl_modules"] == native_libs.NO_OPENSSL_MODULES


def test_namespace_packages_imported_before_the_pivot_keep_their_portions_through_the_binds(tmp_path):
    """A namespace package imported before the pivot (protobuf's `google`, in every shim process) finds its other
    subpackages after it (googleapis-common-protos' google.rpc, which the OTLP/gRPC exporter imports), from each
    of its portions' binds and only there; one first imported after the pivot works as well."""
    from shim.wasm.sandbox import python_paths

    portion_a, portion_b, rootfs = tmp_path / "site-a", tmp_path / "site-b", tmp_path / "rootfs"
    for path, text in (("site-a/nsdemo/before/__init__.py", "PORTION = 'a'\n"),
                       ("site-a/nsdemo/nested/leaf_before.py", ""),
                       ("site-a/nsdemo/nested/leaf_after.py", ""),
                       ("site-b/nsdemo/after/__init__.py", "PORTION = 'b'\n"),
                       ("site-b/nsfresh/mod.py", "")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    # The image plants a subpackage where the node path of a portion points after the pivot.
    planted = rootfs / str(portion_a).lstrip("/") / "nsdemo" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("raise SystemExit('the image ran')\n")

    def inside() -> dict[str, Any]:
        sys.path.extend([str(portion_a), str(portion_b)])
        import google.protobuf  # noqa: F401 - `google` imported before the pivot, as in every shim process
        import nsdemo.before
        import nsdemo.nested.leaf_before  # noqa: F401 - a nested namespace package, imported before too

        # Other tests of this process may have imported google.rpc: it is dropped so that the pivoted import must
        # find it again, and the module imported after the pivot is one never imported in this process (executing
        # an imported one's descriptors again is protobuf's "duplicate symbol" error).
        fresh_rpc = next(f"google.rpc.{path.stem}" for portion in google.__path__
                         for path in sorted(Path(portion, "rpc").glob("*_pb2.py"))
                         if f"google.rpc.{path.stem}" not in sys.modules)
        for name in [name for name in sys.modules if name == "google.rpc" or name.startswith("google.rpc.")]:
            sys.modules.pop(name)
        plan = RootPlan(rootfs=rootfs, mounts=(), readonly=False, cache_dir=tmp_path / "cache",
                        module_dirs=python_paths.module_dirs())
        enter_root(plan)
        python_paths.remap_imports(plan.module_binds)
        rpc_module = importlib.import_module(fresh_rpc)
        import nsdemo.after
        import nsdemo.nested.leaf_after
        import nsfresh.mod

        try:
            import nsdemo.planted  # noqa: F401
            planted_import = "imported"
        except ImportError as exc:
            planted_import = type(exc).__name__
        return {"google_rpc": rpc_module.__file__, "nsdemo_path": list(nsdemo.__path__),
                "before": nsdemo.before.PORTION, "after": [nsdemo.after.PORTION, nsdemo.after.__file__],
                "leaf_after": nsdemo.nested.leaf_after.__file__, "fresh": nsfresh.mod.__file__,
                "planted": planted_import}

    seen = in_child(inside)
    assert seen["google_rpc"].startswith("/.spin-shim/python/")
    assert len(seen["nsdemo_path"]) == 2 and all(p.startswith("/.spin-shim/python/") for p in seen["nsdemo_path"])
    assert seen["before"] == "a" and seen["after"][0] == "b" and seen["after"][1].startswith("/.spin-shim/python/")
    assert seen["leaf_after"].startswith("/.spin-shim/python/") and seen["fresh"].startswith("/.spin-shim/python/")
    assert seen["planted"] == "ModuleNotFoundError"
