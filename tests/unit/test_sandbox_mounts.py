"""The pure half of the sandbox's root: mount options, which spec mounts are made, mount points inside a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim.kernel import linux
from shim.kernel.mount_options import MS_NOATIME, parse_mount_options
from shim.oci_spec import SpecMount, parse_spec
from shim.wasm.sandbox.in_root import (
    MountPointError,
    fd_path,
    make_mount_point,
    open_in_root,
)
from shim.wasm.sandbox.mount_plan import ALWAYS, MountPlanError, plan_mounts


def test_flag_options_set_and_clear_bits_and_the_rest_is_data():
    options = parse_mount_options(["rbind", "ro", "nosuid", "noexec", "mode=755", "size=64m", "noatime"])
    assert options.flags == linux.MS_BIND | linux.MS_REC | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC \
        | MS_NOATIME
    assert options.data == "mode=755,size=64m"
    assert options.is_bind and options.readonly
    assert parse_mount_options(["ro", "rw", "dev"]).flags == 0


def test_propagation_options_are_kept_apart():
    options = parse_mount_options(["rbind", "rprivate", "rslave"])
    assert options.propagation == (linux.MS_PRIVATE | linux.MS_REC, linux.MS_SLAVE | linux.MS_REC)


def test_recursive_attribute_options_apply_to_the_top_mount():
    assert parse_mount_options(["rbind", "rro"]).readonly


def _mount(destination: str, type_: str, source: str, *options: str) -> SpecMount:
    return SpecMount(destination, type_, source, options)


def test_binds_and_tmpfs_are_made_always_nosuid_nodev_and_kernel_views_are_left_out():
    planned, skipped = plan_mounts((
        _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec"),
        _mount("/sys", "sysfs", "sysfs", "ro"),
        _mount("/data", "bind", "/var/lib/kubelet/pods/x/volumes/data", "rbind", "rprivate", "rw"),
        _mount("/runtime-config.toml", "bind", "/var/lib/kubelet/secret", "rbind", "ro"),
    ))
    assert [m.destination for m in planned] == ["/dev", "/data", "/runtime-config.toml"]
    assert {line.split()[0] for line in skipped} == {"/proc", "/dev/pts", "/sys"}
    dev, data, config = planned
    assert dev.kind == "tmpfs" and dev.flags & ALWAYS == ALWAYS and dev.data == "mode=755,size=65536k"
    assert data.kind == "bind" and data.flags == linux.MS_BIND | linux.MS_REC
    assert data.remount_flags == ALWAYS and data.propagation == (linux.MS_PRIVATE | linux.MS_REC,)
    assert config.remount_flags == ALWAYS | linux.MS_RDONLY


def test_unknown_mount_types_and_relative_paths_are_refused_with_the_mount_named():
    with pytest.raises(MountPlanError, match="/mnt.*'nfs'"):
        plan_mounts((_mount("/mnt", "nfs", "server:/x"),))
    with pytest.raises(MountPlanError, match="absolute"):
        plan_mounts((_mount("data", "bind", "/x", "rbind"),))
    with pytest.raises(MountPlanError, match="bind source"):
        plan_mounts((_mount("/data", "bind", "relative/dir", "rbind"),))


def test_the_spec_parser_reads_mounts_rlimits_umask_and_seccomp():
    spec = parse_spec({
        "process": {"args": ["/"], "user": {"uid": 5, "gid": 6, "umask": 18},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 64, "hard": 128}]},
        "mounts": [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]}],
        "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}},
    })
    assert spec.mounts == (SpecMount("/data", "bind", "/srv", ("rbind",)),)
    assert [(r.type, r.soft, r.hard) for r in spec.rlimits] == [("RLIMIT_NOFILE", 64, 128)]
    assert spec.umask == 18
    assert spec.seccomp == {"defaultAction": "SCMP_ACT_ERRNO"}


# -- mount points inside a root: an image's symlinks never lead outside it ------------------------------------


@pytest.fixture
def root(tmp_path: Path):
    image = tmp_path / "root"
    image.mkdir()
    fd = os.open(image, os.O_PATH | os.O_DIRECTORY)
    yield image, fd
    os.close(fd)


def _made(fd: int) -> str:
    try:
        return os.readlink(fd_path(fd))
    finally:
        os.close(fd)


def test_an_absolute_symlink_on_the_way_is_followed_inside_the_root(root, tmp_path):
    image, fd = root
    outside = tmp_path / "outside"
    outside.mkdir()
    (image / "data").symlink_to(str(outside))
    assert _made(make_mount_point(fd, "/data/volume", directory=True)) == str(image / outside.relative_to("/") /
                                                                                "volume")
    assert not (outside / "volume").exists()


def test_a_climbing_relative_symlink_stops_at_the_root(root, tmp_path):
    image, fd = root
    (image / "up").symlink_to("../../../../..")
    assert _made(make_mount_point(fd, "/up/etc/hosts", directory=False)) == str(image / "etc" / "hosts")
    assert (image / "etc" / "hosts").is_file()


def test_the_shims_reserved_paths_refuse_any_symlink(root, tmp_path):
    image, fd = root
    (image / ".spin-shim").symlink_to("/tmp")
    with pytest.raises(MountPointError, match="reserves"):
        make_mount_point(fd, "/.spin-shim/precompiled", directory=True, follow_symlinks=False)


def test_a_file_where_a_directory_is_mounted_is_an_error(root):
    image, fd = root
    (image / "data").write_text("x")
    with pytest.raises(MountPointError, match="not a directory"):
        make_mount_point(fd, "/data/volume", directory=True)
    with pytest.raises(MountPointError, match="'..'"):
        make_mount_point(fd, "/a/../b", directory=True)


def test_open_in_root_resolves_absolute_symlinks_from_the_root(root):
    image, fd = root
    (image / "etc").mkdir()
    (image / "etc" / "passwd").write_text("image's own\n")
    (image / "link").symlink_to("/etc/passwd")
    opened = open_in_root(fd, "/link", os.O_RDONLY)
    try:
        assert os.read(opened, 100) == b"image's own\n"
    finally:
        os.close(opened)


# -- bounded reads of files the image names -----------------------------------------------------------------


def test_capped_reads_refuse_fifos_devices_directories_and_oversize_files(tmp_path):
    from runtime.capped_read import CappedReadError, read_capped

    os.mkfifo(tmp_path / "fifo")
    os.mknod(tmp_path / "zero", 0o666 | 0o020000, os.makedev(1, 5))
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_bytes(b"x" * 1025)
    (tmp_path / "ok").write_bytes(b"x" * 1024)
    (tmp_path / "link").symlink_to("ok")
    for name, reason in (("fifo", "not a regular file"), ("zero", "not a regular file"), ("dir", "a directory"),
                         ("big", "larger than 1024 bytes"), ("link", "symbolic link")):
        with pytest.raises(CappedReadError, match=reason):
            read_capped(tmp_path / name, 1024)
    assert read_capped(tmp_path / "ok", 1024) == b"x" * 1024
    assert read_capped(tmp_path / "link", 1024, follow_symlinks=True) == b"x" * 1024
    assert read_capped(tmp_path / "missing", 1024) is None


def test_a_huge_manifest_is_refused_without_being_parsed(tmp_path):
    from runtime.errors import ManifestError
    from runtime.manifest import MAX_MANIFEST_BYTES, load_manifest

    manifest = tmp_path / "spin.toml"
    with manifest.open("wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError, match="larger than 1 MiB"):
        load_manifest(manifest)


@pytest.mark.parametrize("resources, cpus", [
    ({}, None),
    ({"cpu": {"shares": 2}}, None),  # CRI's shares for a container that requested no CPU
    ({"cpu": {"shares": 512}}, 0.5),  # a request of 500m
    ({"cpu": {"shares": 2048, "quota": 150000, "period": 100000}}, 1.5),  # the limit wins over the request
    ({"cpu": {"quota": -1, "period": 100000, "shares": 1024}}, 1.0),  # no limit: the request
    ({"cpu": {"quota": "x"}}, None),
])
def test_the_cpus_a_container_may_use_are_its_limit_else_its_request(resources, cpus):
    from shim.oci_spec import container_cpus

    assert container_cpus(resources) == cpus
