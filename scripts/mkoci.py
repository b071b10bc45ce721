#!/usr/bin/env python3
"""Pack a directory into a one-layer OCI image-layout tarball that `ctr images import` accepts.

Why: tests need images without a registry or Docker. containerd reads the image name from the index annotation
`io.containerd.image.name` (we also set `org.opencontainers.image.ref.name` to the same full reference, as
`docker save`/`ctr images export` do). Output is deterministic
(fixed mtimes, sorted entries, uid/gid 0, gzip header without name or time) so that the same rootfs always gives
the same digests: tests can compare them and caches keyed by digest stay warm.

For a "wasm in a scratch image" use `--os wasip1 --arch wasm`; importing it needs `ctr images import
--all-platforms` (without it ctr says "image might be filtered out": the platform is not the host's).

CLI:  mkoci.py ROOTFS_DIR OUT.tar REF [--os linux] [--arch amd64] [--entrypoint JSON_LIST] [--cmd JSON_LIST]
                [--env K=V ...] [--label K=V ...] [--workdir /] [--whole-dir]
Prints the manifest digest. A ROOTFS_DIR holding a spin.toml is packed as `spin registry push` packs an app: only
spin.toml, /runtime-config.toml if there is one, each component's source and the files its `files` place (a JS
app's node_modules, 109 MB, is none of them); --whole-dir packs every file instead.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
FIXED_MTIME = 0
DEFAULT_LINUX_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COPY_CHUNK = 1 << 20


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through, so blobs are digested while streamed."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile) -> None:
        super().__init__()
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks for the start offset
        return self.size

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._target.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def _walk_sorted(rootfs: Path) -> Iterator[Path]:
    """Every path under rootfs, parents before children, siblings by name: a stable order for the layer."""
    for dirpath, dirnames, filenames in os.walk(rootfs, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        # os.walk lists symlinks to directories in dirnames but does not descend into them; they are entries.
        for name in sorted([*filenames, *dirnames]):
            yield base / name


def _normalized_tarinfo(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo | None:
    """Tar header of a file with the build machine's identity removed (owner, times); mode bits kept."""
    info = tar.gettarinfo(str(path), arcname)
    if info is None:  # sockets cannot be archived
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    info.pax_headers = {}
    return info


def write_layer_tar(rootfs: Path, out: IO[bytes] | io.RawIOBase) -> None:
    """The uncompressed layer: rootfs contents with relative names, symlinks as symlinks, empty dirs kept."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk_sorted(rootfs):
            info = _normalized_tarinfo(tar, path, path.relative_to(rootfs).as_posix())
            if info is None:
                continue
            if info.isreg():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)


def _build_layer(rootfs: Path, scratch: Path) -> tuple[Path, str, int, str]:
    """Write the gzip layer blob; return (path, digest, size, diff_id). diff_id hashes the *uncompressed* tar."""
    layer_path = scratch / "layer.tar.gz"
    with layer_path.open("wb") as raw:
        compressed = _HashingWriter(raw)
        # filename="" and mtime=0 keep the gzip header free of the temp file's name and the build time.
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
            uncompressed = _HashingWriter(gz)
            write_layer_tar(rootfs, uncompressed)
    return layer_path, compressed.digest, compressed.size, uncompressed.digest


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}


def image_config(
    *,
    os_: str,
    arch: str,
    diff_id: str,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    env: Sequence[str] | None,
    labels: Mapping[str, str] | None,
    workdir: str | None,
    user: str | None = None,
) -> dict[str, object]:
    """The OCI image config. A Linux image without an explicit env gets the usual PATH, as docker build gives."""
    if env is None:
        env = [DEFAULT_LINUX_PATH] if os_ == "linux" else []
    runtime_config: dict[str, object] = {"Env": list(env)}
    if entrypoint is not None:
        runtime_config["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        runtime_config["Cmd"] = list(cmd)
    if labels:
        runtime_config["Labels"] = dict(labels)
    if workdir:
        runtime_config["WorkingDir"] = workdir
    if user:
        runtime_config["User"] = user
    return {
        "architecture": arch,
        "os": os_,
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "mkoci.py", "comment": "one layer from a directory"}],
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, FIXED_MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
    tar.addfile(info)


def _write_layout(out_tmp: Path, blobs: dict[str, Path | bytes], index: dict[str, object]) -> None:
    """The outer tar: oci-layout, index.json, blobs/sha256/<hex>, in a fixed order."""
    with tarfile.open(out_tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tar, "index.json", _canonical_json(index))
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for digest in sorted(blobs):
            name = "blobs/sha256/" + digest.removeprefix("sha256:")
            blob = blobs[digest]
            if isinstance(blob, bytes):
                _add_bytes(tar, name, blob)
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = blob.stat().st_size, 0o644, FIXED_MTIME
            with blob.open("rb") as content:
                tar.addfile(info, content)


def build_image_tar(
    rootfs: Path,
    out: Path,
    ref: str,
    *,
    os_: str = "linux",
    arch: str = "amd64",
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
) -> str:
    """Write an OCI image-layout tar of `rootfs` named `ref` to `out`; return the manifest digest.

    `env` entries are "K=V" strings. The file is written next to `out` and renamed, so a reader never sees a
    half-written tar.
    """
    rootfs, out = Path(rootfs), Path(out)
    if not rootfs.is_dir():
        raise NotADirectoryError(f"rootfs {rootfs} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mkoci-", dir=out.parent) as scratch_name:
        scratch = Path(scratch_name)
        layer_path, layer_digest, layer_size, diff_id = _build_layer(rootfs, scratch)
        config = _canonical_json(
            image_config(
                os_=os_, arch=arch, diff_id=diff_id, entrypoint=entrypoint, cmd=cmd, env=env, labels=labels,
                workdir=workdir, user=user,
            )
        )
        manifest = _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": _descriptor(MEDIA_TYPE_CONFIG, config),
                "layers": [{"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
            }
        )
        manifest_descriptor = _descriptor(MEDIA_TYPE_MANIFEST, manifest)
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [
                {
                    **manifest_descriptor,
                    "platform": {"architecture": arch, "os": os_},
                    "annotations": {ANNOTATION_REF_NAME: ref, ANNOTATION_CONTAINERD_NAME: ref},
                }
            ],
        }
        blobs: dict[str, Path | bytes] = {
            layer_digest: layer_path,
            str(_descriptor(MEDIA_TYPE_CONFIG, config)["digest"]): config,
            str(manifest_descriptor["digest"]): manifest,
        }
        out_tmp = scratch / "image.tar"
        _write_layout(out_tmp, blobs, index)
        os.chmod(out_tmp, 0o644)
        shutil.move(str(out_tmp), out)
    return str(manifest_descriptor["digest"])


# ---- CLI -----------------------------------------------------------------------------------------------------
def _json_string_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError('expected a JSON list of strings, e.g. \'["/bin/sh", "-c", "true"]\'')
    return value


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return text


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pack a directory into an OCI image-layout tar for ctr import.")
    parser.add_argument("rootfs", type=Path, help="directory that becomes the image's only layer")
    parser.add_argument("out", type=Path, help="tar file to write")
    parser.add_argument("ref", help="full image reference, e.g. docker.io/library/busybox-local:latest")
    parser.add_argument("--os", dest="os_", default="linux", help="platform os (wasip1 for wasm images)")
    parser.add_argument("--arch", default="amd64", help="platform architecture (wasm for wasm images)")
    parser.add_argument("--entrypoint", type=_json_string_list, help="JSON list")
    parser.add_argument("--cmd", type=_json_string_list, help="JSON list")
    parser.add_argument("--env", type=_key_value, nargs="+", action="extend", metavar="K=V")
    parser.add_argument("--label", type=_key_value, nargs="+", action="extend", metavar="K=V")
    parser.add_argument("--workdir", help="working directory in the image config")
    parser.add_argument("--whole-dir", action="store_true",
                        help="with a spin.toml in ROOTFS_DIR: pack every file, not only what the app uses")
    return parser.parse_args(argv)


class AppSelectionError(Exception):
    """The app's spin.toml cannot be read, or names a file that is not there."""


def spin_app_files(app_dir: Path) -> list[str]:
    """The paths (relative to ``app_dir``) a Spin app needs in a rootfs image: spin.toml, /runtime-config.toml,
    each component's local source and every file its ``files`` place, found by the runtime's own manifest and
    files code, so the image holds what the shim will read. Imports the repository's runtime (this script is
    otherwise stdlib-only)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from runtime.errors import AppError
    from runtime.files import list_component_files
    from runtime.manifest import MANIFEST_FILE_NAME, LocalSource, load_manifest
    from runtime.paths import resolve_in_root

    root = Path(os.path.realpath(app_dir))
    try:
        manifest = load_manifest(app_dir / MANIFEST_FILE_NAME)
        wanted = {MANIFEST_FILE_NAME}
        if (app_dir / "runtime-config.toml").is_file():
            wanted.add("runtime-config.toml")
        for component in manifest.components.values():
            if isinstance(component.source, LocalSource):
                wanted.add(_relative_to(resolve_in_root(manifest.app_dir, component.source.path), root))
            for host_file in list_component_files(manifest.app_dir, manifest.path, component).values():
                wanted.add(_relative_to(Path(host_file), root))
    except (AppError, OSError) as error:
        raise AppSelectionError(str(error)) from None
    return sorted(wanted)


def _relative_to(path: Path, root: Path) -> str:
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise AppSelectionError(f"{path} is outside the app directory {root}: an image holds only the directory")
    if not real.is_file():
        raise AppSelectionError(f"{path}: not found")
    return real.relative_to(root).as_posix()


def _staged_app(app_dir: Path, scratch: Path) -> tuple[Path, int]:
    """A directory holding hard links (or copies) of just the app's files, and how many files were left out."""
    selected = spin_app_files(app_dir)
    staged = scratch / "app"
    for rel in selected:
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(app_dir / rel, target)
        except OSError:
            shutil.copy2(app_dir / rel, target)
    total = sum(1 for path in app_dir.rglob("*") if path.is_file())
    return staged, total - len(selected)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label) if args.label else None
    try:
        with tempfile.TemporaryDirectory(prefix=".mkoci-app-", dir=Path(args.out).absolute().parent) as scratch:
            rootfs = args.rootfs
            if not args.whole_dir and (rootfs / "spin.toml").is_file():
                rootfs, left_out = _staged_app(rootfs, Path(scratch))
                if left_out:
                    print(f"mkoci: a Spin app: packed what spin.toml uses, left out {left_out} other file(s) "
                          f"of {args.rootfs} (--whole-dir packs them)", file=sys.stderr)
            digest = build_image_tar(
                rootfs, args.out, args.ref, os_=args.os_, arch=args.arch, entrypoint=args.entrypoint,
                cmd=args.cmd, env=args.env, labels=labels, workdir=args.workdir,
            )
    except (OSError, AppSelectionError) as error:
        print(f"mkoci: {error}", file=sys.stderr)
        return 1
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
