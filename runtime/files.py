"""Turn a Spin component's ``files`` into WASI preopens: what the guest may see, read-only, and nothing else.

Spin places files by rule (spin crates/loader): a glob string puts every matching *file* at its path relative to
the app dir, under ``/``; ``{source, destination}`` puts a file or a directory at ``destination``; and
``exclude_files`` globs remove matches from both. WASI can only preopen directories, so:

* a ``{source = <dir>}`` mapping with nothing excluded inside it is preopened directly (no copying, any size);
* everything else (globs, single files, directories with exclusions) is *staged*: hard-linked into one private
  directory under ``<cache_dir>/staging/`` that is preopened at ``/``. Hard links cost one syscall per file and
  no space, and the guest cannot change the image through them because every preopen is read-only
  (``fs_mutable=False``). If the cache dir is on another filesystem (EXDEV) or links are not permitted, the file
  is copied instead. Symlinks are not used: wasmtime's sandbox (cap-std) refuses to follow a symlink out of a
  preopen, which is exactly where these would point.

The staging dir belongs to one LoadedApp and is removed by ``StagedFiles.cleanup`` (LoadedApp.close, run's end);
dirs left by a crashed process are swept by the next load (``sweep_stale_staging``), keyed by the pid in the name.

The walk and the matching are bounded (``MAX_MATCH_WORK``): both the files and the patterns are image content,
and they run before the instance process joins the pod's cgroup (shim.wasm.instance_process, step 6), so a rootfs
of millions of files or a spin.toml of thousands of globs and ``**`` must cost the node seconds, not hours.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runtime.errors import ManifestError
from runtime.manifest import Component, GlobFiles, MappedFiles
from runtime.paths import PathEscapeError, quoted_path, resolve_in_root

STAGING_DIR_NAME = "staging"
#: Glob-matching steps (a path segment against a pattern segment) and files walked that one component's ``files``
#: may cost: 3-6 s of matching here; a 20 000-file static site with three globs and two exclusions needs 1.6 M
#: (tests/unit/test_files_bounds.py).
MAX_MATCH_WORK = 10_000_000


@dataclass(frozen=True)
class Preopen:
    host_path: Path
    guest_path: str


@dataclass
class StagedFiles:
    """The preopens for one component, and the staging dir to remove when the app is done."""

    preopens: tuple[Preopen, ...]
    staging_dir: Path | None = None

    def cleanup(self) -> None:
        if self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            self.staging_dir = None


class _Work:
    """What is left of one component's ``MAX_MATCH_WORK``; ``spend`` raises the ManifestError that ends the load."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.left = MAX_MATCH_WORK

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise ManifestError(
                f"{self.where}: matching the globs and exclude_files against the app's files takes more than "
                f"{MAX_MATCH_WORK} steps (too many files under the app dir, or too many or too deep patterns); "
                "map directories with { source, destination } or narrow the globs")


def _excluded(rel_path: str, exclude: tuple[str, ...], work: _Work) -> bool:
    return any(_glob_match(rel_path, pattern, work) for pattern in exclude)


def _glob_match(rel_path: str, pattern: str, work: _Work) -> bool:
    """Spin-style glob on a relative POSIX path: ``*`` stays inside one directory, ``**`` spans any number.

    Written out (segment by segment) because PurePath.full_match only exists from Python 3.13; as a table of
    which path prefixes each pattern prefix matches, so ``**/**/**/...`` costs pattern segments x path segments
    steps, not the exponential number of ways to split the path among them.
    """
    path_parts = rel_path.split("/")
    pattern_parts = [p for p in pattern.split("/") if p not in ("", ".")]
    work.spend(len(pattern_parts) * (len(path_parts) + 1))
    # matched[i]: the pattern so far matches the first i segments of the path.
    matched = [True] + [False] * len(path_parts)
    for part in pattern_parts:
        if part == "**":  # zero or more whole segments
            for i in range(1, len(matched)):
                matched[i] = matched[i] or matched[i - 1]
        else:
            matched = [False] + [matched[i] and fnmatch.fnmatchcase(segment, part)
                                 for i, segment in enumerate(path_parts)]
        if not any(matched):
            return False
    return matched[-1]


def _walk_files(directory: Path, work: _Work, private: Path | None = None) -> list[Path]:
    """Regular files under ``directory`` (not following symlinked dirs: the image's layout is what counts),
    leaving out the ``private`` tree."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        if private is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != private]
        work.spend(1 + len(filenames))
        for filename in filenames:
            found.append(Path(dirpath, filename))
    return found


def _inside(path: Path, directory: Path | None) -> bool:
    """`path` is `directory` or below it (both resolved)."""
    return directory is not None and (path == directory or directory in path.parents)


def plan_component_files(app_dir: Path, manifest_path: Path, component: Component,
                         private_dir: Path | None = None) -> tuple[list[Preopen], dict[str, Path]]:
    """Decide the placements: (directories preopened directly, {guest path: host file} to stage).

    Pure with respect to the outside world except for reading the app dir; raises ManifestError naming the
    component and the entry for a source that is missing or leaves the app dir. ``private_dir`` (the runtime's
    cache dir: inside the shim's sandbox it is in the container's root, holding the node's precompiled blobs
    while the app loads) is never the app's: a source inside it is refused, and globs and directories that
    contain it leave it out.
    """
    direct: list[Preopen] = []
    staged: dict[str, Path] = {}
    where = f"{manifest_path}: component {component.id!r}: files"
    work = _Work(where)
    root = Path(os.path.realpath(app_dir))
    private = Path(os.path.realpath(private_dir)) if private_dir is not None else None
    if private is not None and _inside(root, private):
        private = None  # an app laid out in the runtime's dir (an artifact's): resolution cannot leave the app dir

    for mount in component.files:
        if isinstance(mount, GlobFiles):
            pattern = mount.pattern
            if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
                raise ManifestError(f"{where}: glob {pattern!r} must be relative to the app dir and must not use '..'")
            for host_file in _walk_files(root, work, private):
                rel = host_file.relative_to(root).as_posix()
                if _glob_match(rel, pattern, work) and not _excluded(rel, component.exclude_files, work):
                    staged["/" + rel] = _checked_file(root, rel, where, private)
            # Spin accepts a glob that matches nothing; so do we (an empty static dir is a valid app).
            continue

        assert isinstance(mount, MappedFiles)
        try:
            source = resolve_in_root(root, mount.source)
        except PathEscapeError as exc:
            raise ManifestError(f"{where}: source: {exc}") from None
        destination = "/" + "/".join(p for p in mount.destination.split("/") if p not in ("", "."))
        if ".." in destination.split("/"):
            raise ManifestError(f"{where}: destination {mount.destination!r} must not contain '..'")
        if _inside(source, private):
            raise ManifestError(
                f"{where}: source {quoted_path(mount.source)} is the runtime's own directory, not the app's")
        if source.is_dir():
            files = _walk_files(source, work, private)
            rel_files = [(f, f.relative_to(source).as_posix()) for f in files]
            hidden = [rel for f, rel in rel_files
                      if _excluded(f.relative_to(root).as_posix(), component.exclude_files, work)]
            if not hidden and destination != "/" and not (private is not None and _inside(private, source)):
                direct.append(Preopen(host_path=source, guest_path=destination))
                continue
            for host_file, rel in rel_files:
                if not _excluded(host_file.relative_to(root).as_posix(), component.exclude_files, work):
                    guest = (destination.rstrip("/") + "/" + rel)
                    staged[guest] = _checked_file(root, host_file.relative_to(root).as_posix(), where, private)
        elif source.is_file():
            if destination == "/":
                raise ManifestError(f"{where}: a single file {quoted_path(mount.source)} cannot be placed at '/'")
            staged[destination] = source
        else:
            raise ManifestError(f"{where}: source {quoted_path(mount.source)} not found (looked for {source})")
    return direct, staged


def list_component_files(app_dir: Path, manifest_path: Path, component: Component) -> dict[str, Path]:
    """Every file the component sees, one by one: {absolute guest path: host file}, sorted by guest path.

    The same placements as ``plan_component_files`` (globs, mappings, exclude_files), with directly preopened
    directories expanded to their files: what a pushed app lists in its locked ``files`` (oci.push).
    """
    direct, staged = plan_component_files(app_dir, manifest_path, component)
    where = f"{manifest_path}: component {component.id!r}: files"
    root = Path(os.path.realpath(app_dir))
    placed = dict(staged)
    work = _Work(where)
    for preopen in direct:
        for host_file in _walk_files(preopen.host_path, work):
            rel = host_file.relative_to(preopen.host_path).as_posix()
            guest = preopen.guest_path.rstrip("/") + "/" + rel
            placed[guest] = _checked_file(root, host_file.relative_to(root).as_posix(), where)
    return dict(sorted(placed.items()))


def _checked_file(root: Path, rel: str, where: str, private: Path | None = None) -> Path:
    """Resolve a matched file through any symlinks inside the image; refuse ones that leave the app dir."""
    try:
        resolved = resolve_in_root(root, rel)
    except PathEscapeError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if not resolved.is_file():
        raise ManifestError(f"{where}: {quoted_path(rel)} is not a regular file")
    if _inside(resolved, private):
        raise ManifestError(f"{where}: {quoted_path(rel)} leads into the runtime's own directory, not the app's")
    return resolved


def stage_component_files(
    app_dir: Path, manifest_path: Path, component: Component, cache_dir: Path
) -> StagedFiles:
    """Resolve the component's ``files`` into preopens, staging what cannot be preopened directly."""
    direct, staged = plan_component_files(app_dir, manifest_path, component, cache_dir)
    if not staged:
        return StagedFiles(preopens=tuple(direct))

    staging_root = cache_dir / STAGING_DIR_NAME
    staging_root.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{component.id}-", dir=staging_root))
    try:
        for guest_path, host_file in staged.items():
            target = staging_dir / guest_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(host_file, target)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    # Direct directory preopens at deeper guest paths win over the staged root: wasi-libc (and every other
    # guest libc) picks the longest matching preopen prefix.
    return StagedFiles(preopens=(Preopen(staging_dir, "/"), *direct), staging_dir=staging_dir)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(source, target)


def sweep_stale_staging(cache_dir: Path) -> None:
    """Remove staging dirs whose owning process is gone (a crashed or SIGKILLed instance process)."""
    staging_root = cache_dir / STAGING_DIR_NAME
    try:
        entries = list(staging_root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else
