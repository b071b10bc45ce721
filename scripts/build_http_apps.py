#!/usr/bin/env python3
"""Build the real Spin HTTP test apps from the public SDKs into tests/apps/build/, cached across runs.

Why real SDK builds and not hand-written WAT (as scripts/build_guests.py does for command guests): an HTTP host is
only proven by the components people actually ship, with their 20-45 imports, their stream usage and their
version skew (componentize-py 0.25 imports wasi@0.2.9, StarlingMonkey wasi@0.2.12 next to wasi:http@0.2.3).

Apps (sources in tests/apps/src/<app>/, routes in tests/apps/README.md):
  py-spin   Spin Python SDK 3.4.1 + componentize-py 0.17.2, world spin-http (incoming-handler@0.2.0, Spin APIs)
  py-spin5  Spin Python SDK 5.0.0 + componentize-py 0.25.1, its p2 world spin:up/http-trigger@3.4.0
  py-spin5-p3  the same SDK's default world spin:up/http-trigger@4.1.0 (WASIp3: the shim refuses it at Create)
  py-proxy  componentize-py 0.25.1, plain wasi:http/proxy@0.2.0 (no Spin imports)
  js-echo   @spinframework/build-tools 1.0.7 `j2w` (StarlingMonkey), incoming-handler@0.2.3
  multi     five components on js-echo's wasm, for route matching (no build of its own)
  py-redis  Spin Python SDK 3.4.1 + componentize-py 0.17.2, world spin-redis (fermyon:spin/inbound-redis)
  py-mixed  the same, world spin-all: one wasm serving an http and a redis component of one app
  py-mqtt   componentize-py 0.17.2 (spin-py), its own world: spin-trigger-mqtt's p2 `spin-mqtt` + Spin's outbound MQTT
  py-mqtt-p3  componentize-py 0.25.1 (spin5-py), spin:mqtt-trigger@3.0.0's async `spin-mqtt` (refused at Create)

Each app is keyed by a hash of its sources, the pins of the toolchains it uses (tests/apps/toolchains/) and its
build command; a finished build lives in ${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}/apps/<key>/ and
is only copied on later runs (a full build takes about a minute on 2 cores, a cached one well under a second).
Toolchains come from scripts/install_app_toolchains.sh; a cache miss without them exits 1 saying so.

Output: tests/apps/build/<app>/ (spin.toml, the wasm and the manifest's `files`) and tests/apps/build/index.json:
  {"apps": {name: {"dir": "<app>" (relative to index.json), "wasm": ["app.wasm"], "sha256": {"app.wasm": hex},
                   "size": {"app.wasm": bytes}, "exports": [...], "key": hex, "build_seconds": float}}}

Usage: python scripts/build_http_apps.py [--force] [--smoke]
  --force  rebuild every app, ignoring the cache
  --smoke  afterwards, serve js-echo and py-proxy with `wasmtime serve -Scli` and check a few requests
Tests call ``build()`` (returns the build dir; takes a file lock so parallel callers build once).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APPS_DIR = REPO / "tests" / "apps"
SRC_DIR = APPS_DIR / "src"
PINS_DIR = APPS_DIR / "toolchains"
BUILD_DIR = APPS_DIR / "build"
CACHE_ROOT = Path(os.environ.get("SPIN_SHIM_CACHE", "/var/cache/containerd-shim-spin-test"))
TOOLCHAINS_DIR = CACHE_ROOT / "toolchains"
APP_CACHE_DIR = CACHE_ROOT / "apps"
INDEX_NAME = "index.json"
META_NAME = ".build.json"  # in a cache entry; written last, so its presence means the entry is complete
INSTALL_HINT = "run `sudo bash scripts/install_app_toolchains.sh` first"
#: Cache entries kept per app (newest first), so other worktrees' and branches' builds survive without the
#: cache growing by ~70 MB per source edit forever.
KEEP_ENTRIES_PER_APP = 3
#: Bump when a build step changes in a way the recipe commands below do not show.
RECIPE_VERSION = 1
#: Build outputs never depend on these, so they never change a cache key.
IGNORED_NAMES = frozenset({"__pycache__", "node_modules", ".DS_Store"})
BUILD_TIMEOUT_SECONDS = 900


class ToolchainMissing(RuntimeError):
    """A toolchain the build needs is absent or was installed from other pins."""


@dataclass(frozen=True)
class Toolchain:
    name: str
    pin_files: tuple[str, ...]  # relative to PINS_DIR; install_app_toolchains.sh stamps their text into <dir>/.pins

    @property
    def dir(self) -> Path:
        return TOOLCHAINS_DIR / self.name

    def pins_text(self, pins_dir: Path = PINS_DIR) -> str:
        return "".join((pins_dir / name).read_text() for name in self.pin_files)

    def require(self) -> Path:
        stamp = self.dir / ".pins"
        try:
            installed = stamp.read_text()
        except OSError:
            raise ToolchainMissing(f"toolchain {self.name!r} is not installed in {self.dir}; {INSTALL_HINT}") from None
        # bash's $(cat ...) drops trailing newlines when it compares; do the same so both sides agree.
        if installed.rstrip("\n") != self.pins_text().rstrip("\n"):
            raise ToolchainMissing(f"toolchain {self.name!r} in {self.dir} was installed from other pins; {INSTALL_HINT}")
        return self.dir


TOOLCHAINS: dict[str, Toolchain] = {
    "spin-py": Toolchain("spin-py", ("spin-py.txt",)),
    "spin5-py": Toolchain("spin5-py", ("spin5-py.txt",)),
    "proxy-py": Toolchain("proxy-py", ("proxy-py.txt",)),
    "js": Toolchain("js", ("js/package.json", "js/package-lock.json")),
    "wasm-tools": Toolchain("wasm-tools", ("wasm-tools.txt",)),
    "wasmtime-cli": Toolchain("wasmtime-cli", ("wasmtime-cli.txt",)),
}


@dataclass(frozen=True)
class Recipe:
    """How one app is built. `command` is data (hashed into the key); `{name}` fields name toolchain dirs."""

    app: str
    toolchains: tuple[str, ...]
    command: tuple[str, ...] = ()
    venv: str | None = None  # the toolchain venv to activate: componentize-py reads VIRTUAL_ENV for site-packages
    reuses: str | None = None  # copy this app's built wasm instead of running a command


#: The wasi@0.2.0 WIT packages the proxy world needs. componentize-py 0.25.1 ships no WIT, and spin-sdk 3.4.1
#: (pinned in spin-py) carries exactly these under spin_sdk/wit/deps, so py-proxy takes them from there rather
#: than vendoring a copy. wasi:http is the root package, so `-w proxy` names wasi:http/proxy@0.2.0.
PROXY_WIT_DEPS = ("cli", "clocks", "io", "random", "filesystem", "sockets")

#: componentize-py's entry point with sys.path = stdlib + .componentize/ (links to the toolchain's componentize_py*
#: packages only, made by _link_componentize_py).
MQTT_COMPONENTIZE = ("import sys; sys.path.insert(0, '.componentize'); sys.argv[0] = 'componentize-py'; "
                     "from componentize_py import script; sys.exit(script())")

RECIPES: tuple[Recipe, ...] = (
    Recipe("py-spin", ("spin-py",), ("{spin-py}/bin/componentize-py", "-w", "spin-http", "componentize", "app",
                                     "-o", "app.wasm"), venv="spin-py"),
    Recipe("py-proxy", ("proxy-py", "spin-py"), ("{proxy-py}/bin/componentize-py", "-d", "wit", "-w", "proxy",
                                                 "componentize", "app", "-o", "app.wasm"), venv="proxy-py"),
    # j2w resolves the target world from the package.json in its working directory (the app's, whose
    # node_modules we link to the toolchain's), and it exits 0 even when componentizing failed.
    Recipe("js-echo", ("js",), ("node", "{js}/node_modules/@spinframework/build-tools/dist/index.js",
                                "-i", "app.js", "-o", "app.wasm")),
    Recipe("multi", (), reuses="js-echo"),
    # spin-sdk 5's default world (README: `-w spin:up/http-trigger@4.1.0`) is WASIp3; its p2 world is 3.4.0.
    Recipe("py-spin5", ("spin5-py",), ("{spin5-py}/bin/componentize-py", "-w", "spin:up/http-trigger@3.4.0",
                                       "componentize", "app", "-o", "app.wasm"), venv="spin5-py"),
    Recipe("py-spin5-p3", ("spin5-py",), ("{spin5-py}/bin/componentize-py", "-w", "spin:up/http-trigger@4.1.0",
                                          "componentize", "app", "-o", "app.wasm"), venv="spin5-py"),
    # The Redis trigger's apps (tests/e2e/test_redis_trigger.py): spin-sdk 3.4.1's `spin-redis` world exports
    # fermyon:spin/inbound-redis; `spin-all` exports it beside wasi:http/incoming-handler@0.2.0.
    Recipe("py-redis", ("spin-py",), ("{spin-py}/bin/componentize-py", "-w", "spin-redis", "componentize", "app",
                                      "-o", "app.wasm"), venv="spin-py"),
    Recipe("py-mixed", ("spin-py",), ("{spin-py}/bin/componentize-py", "-w", "spin-all", "componentize", "app",
                                      "-o", "app.wasm"), venv="spin-py"),
    # The MQTT trigger's app (tests/e2e/test_mqtt_trigger.py): spin-sdk 3.4.1 has no MQTT world, so the app's own
    # wit/world.wit includes spin-trigger-mqtt's p2 world (vendored in its wit/deps) and _prepare_py_mqtt adds
    # the SDK's fermyon:spin@2.0.0 WIT and its deps beside it. componentize-py runs with `python -S` and only
    # itself on sys.path: found in site-packages, spin_sdk's componentize-py.toml replaces the `-d wit` package
    # ("no world named `py-mqtt` in package").
    Recipe("py-mqtt", ("spin-py",), ("{spin-py}/bin/python", "-S", "-c", MQTT_COMPONENTIZE, "-d", "wit", "-w",
                                     "py-mqtt", "componentize", "app", "-o", "app.wasm")),
    # spin-trigger-mqtt's newest world (spin:mqtt-trigger@3.0.0, async handle-message: WASIp3), which the shim
    # refuses at Create; componentize-py 0.25.1 builds async exports. `python -S` as for py-mqtt (spin_sdk 5).
    Recipe("py-mqtt-p3", ("spin5-py",), ("{spin5-py}/bin/python", "-S", "-c", MQTT_COMPONENTIZE, "-d", "wit", "-w",
                                         "spin-mqtt", "componentize", "app", "-o", "app.wasm")),
)


def log(message: str) -> None:
    print(f"[build_http_apps] {message}", flush=True)


def _source_files(app_src: Path) -> list[Path]:
    return sorted(
        path for path in app_src.rglob("*")
        if path.is_file() and not IGNORED_NAMES.intersection(path.relative_to(app_src).parts)
    )


def cache_key(recipe: Recipe, *, src_dir: Path = SRC_DIR, pins_dir: Path = PINS_DIR,
              dependency_keys: dict[str, str] | None = None) -> str:
    """sha256 of everything the app's build depends on: its sources, toolchain pins, command and reused apps."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("recipe-version", str(RECIPE_VERSION).encode())
    add("app", recipe.app.encode())
    add("command", json.dumps([recipe.command, recipe.venv, recipe.reuses]).encode())
    for name in sorted(recipe.toolchains):
        add(f"pins:{name}", TOOLCHAINS[name].pins_text(pins_dir).encode())
    app_src = src_dir / recipe.app
    for path in _source_files(app_src):
        add(f"src:{path.relative_to(app_src).as_posix()}", path.read_bytes())
    if recipe.reuses:
        add(f"reuses:{recipe.reuses}", (dependency_keys or {})[recipe.reuses].encode())
    return digest.hexdigest()


def manifest_outputs(spin_toml: Path) -> tuple[list[str], list[str]]:
    """(wasm sources, `files` sources) that spin.toml names, relative to its directory: what the app dir keeps."""
    manifest = tomllib.loads(spin_toml.read_text())
    wasm: list[str] = []
    files: list[str] = []
    for component in manifest.get("component", {}).values():
        source = component.get("source")
        if isinstance(source, str) and source not in wasm:
            wasm.append(source)
        for entry in component.get("files", []):
            path = entry if isinstance(entry, str) else entry.get("source")
            if isinstance(path, str) and path not in files:
                files.append(path)
    return wasm, files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _component_exports(wasm: Path) -> list[str]:
    """Interfaces the component exports, via `wasm-tools component wit` (also proves the file is a component)."""
    wasm_tools = (TOOLCHAINS["wasm-tools"].require() / "WASM_TOOLS").read_text().strip()
    result = subprocess.run([wasm_tools, "component", "wit", str(wasm)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{wasm}: not a valid component: {result.stderr.strip()}")
    exports = []
    for line in result.stdout.splitlines():
        words = line.split()
        # Top-level world items are indented two spaces; `export exports: interface {` is componentize-py's own.
        if line.startswith("  export ") and not line.startswith("   ") and len(words) == 2:
            exports.append(words[1].rstrip(";"))
    return exports


def _prepare_py_proxy(work: Path) -> None:
    sdk_wit = TOOLCHAINS["spin-py"].dir / "lib"
    deps = next(sdk_wit.glob("python3*/site-packages/spin_sdk/wit/deps"), None)
    if deps is None:
        raise ToolchainMissing(f"spin_sdk/wit/deps not found under {sdk_wit}; {INSTALL_HINT}")
    (work / "wit" / "deps").mkdir(parents=True)
    for wit in sorted((deps / "http").glob("*.wit")):
        shutil.copyfile(wit, work / "wit" / wit.name)
    for name in PROXY_WIT_DEPS:
        shutil.copytree(deps / name, work / "wit" / "deps" / name)


def _prepare_py_mqtt(work: Path) -> None:
    """spin-sdk 3.4.1's WIT root (package fermyon:spin@2.0.0) as wit/deps/fermyon-spin, and its deps beside it."""
    sdk_lib = TOOLCHAINS["spin-py"].dir / "lib"
    sdk_wit = next(sdk_lib.glob("python3*/site-packages/spin_sdk/wit"), None)
    if sdk_wit is None:
        raise ToolchainMissing(f"spin_sdk/wit not found under {sdk_lib}; {INSTALL_HINT}")
    deps = work / "wit" / "deps"
    (deps / "fermyon-spin").mkdir(parents=True)
    for wit in sorted(sdk_wit.glob("*.wit")):
        shutil.copyfile(wit, deps / "fermyon-spin" / wit.name)
    for dep in sorted(p for p in (sdk_wit / "deps").iterdir() if p.is_dir()):
        shutil.copytree(dep, deps / dep.name)
    _link_componentize_py(work, "spin-py")


def _link_componentize_py(work: Path, toolchain: str) -> None:
    """work/.componentize/: the toolchain's componentize_py packages alone, for MQTT_COMPONENTIZE's sys.path."""
    lib = TOOLCHAINS[toolchain].dir / "lib"
    site = next(lib.glob("python3*/site-packages"), None)
    if site is None:
        raise ToolchainMissing(f"no site-packages under {lib}; {INSTALL_HINT}")
    (work / ".componentize").mkdir()
    for package in sorted(site.glob("componentize_py*")):
        if package.is_dir() and not package.name.endswith(".dist-info"):
            (work / ".componentize" / package.name).symlink_to(package)


def _run_recipe(recipe: Recipe, work: Path, built: dict[str, Path]) -> None:
    """Turn the copied sources in `work` into the app's wasm, in place."""
    if recipe.reuses:
        source_dir = built[recipe.reuses]
        for wasm in manifest_outputs(source_dir / "spin.toml")[0]:
            shutil.copyfile(source_dir / wasm, work / wasm)
        return
    dirs = {name: str(TOOLCHAINS[name].require()) for name in recipe.toolchains}
    argv = [part.format_map(dirs) for part in recipe.command]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if recipe.venv:
        env["VIRTUAL_ENV"] = dirs[recipe.venv]
        env["PATH"] = f"{dirs[recipe.venv]}/bin:{env.get('PATH', '/usr/bin:/bin')}"
    if recipe.app == "py-proxy":
        _prepare_py_proxy(work)
    if recipe.app == "py-mqtt":
        _prepare_py_mqtt(work)
    if recipe.app == "py-mqtt-p3":
        _link_componentize_py(work, "spin5-py")
    if "js" in recipe.toolchains:
        (work / "node_modules").symlink_to(Path(dirs["js"]) / "node_modules")
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "An error occurred" in output:
        raise RuntimeError(f"{recipe.app}: `{' '.join(argv)}` failed (exit {result.returncode}):\n{output[-4000:]}")


def _stage_outputs(work: Path, entry: Path) -> list[str]:
    """Move what spin.toml names (wasm, files) from the work dir into the cache entry; return the wasm names."""
    wasm, files = manifest_outputs(work / "spin.toml")
    entry.mkdir(parents=True)
    shutil.copyfile(work / "spin.toml", entry / "spin.toml")
    for name in [*wasm, *files]:
        source = work / name
        if not source.exists():
            raise RuntimeError(f"{work.name}: spin.toml names {name!r} but the build produced no such file")
        target = entry / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    return wasm


def _build_entry(recipe: Recipe, key: str, built: dict[str, Path]) -> Path:
    """Build one app into APP_CACHE_DIR/<app>-<key>/ (atomically: a temp dir renamed into place)."""
    entry = APP_CACHE_DIR / f"{recipe.app}-{key}"
    scratch = APP_CACHE_DIR / f".tmp-{recipe.app}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    work, staged = scratch / "work", scratch / "entry"
    shutil.copytree(SRC_DIR / recipe.app, work, ignore=shutil.ignore_patterns(*IGNORED_NAMES))
    started = time.monotonic()
    try:
        _run_recipe(recipe, work, built)
        seconds = round(time.monotonic() - started, 2)
        wasm = _stage_outputs(work, staged)
        meta = {
            "app": recipe.app,
            "key": key,
            "build_seconds": seconds,
            "wasm": wasm,
            "sha256": {name: _sha256_file(staged / name) for name in wasm},
            "size": {name: (staged / name).stat().st_size for name in wasm},
            "exports": sorted({e for name in wasm for e in _component_exports(staged / name)}),
        }
        (staged / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(staged, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in meta["size"].items())
    log(f"{recipe.app}: built in {seconds:.1f} s ({sizes}; exports {', '.join(meta['exports'])})")
    return entry


def _prune(app: str, keep: Path) -> None:
    """Drop all but the newest KEEP_ENTRIES_PER_APP cache entries of an app (never `keep`, the one in use)."""
    entries = sorted(APP_CACHE_DIR.glob(f"{app}-" + "[0-9a-f]" * 64), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [e for e in entries if e != keep][KEEP_ENTRIES_PER_APP - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _read_meta(entry: Path) -> dict | None:
    try:
        return json.loads((entry / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def index_entry(meta: dict) -> dict:
    """The index.json record of one app, from its cache entry's metadata."""
    keys = ("wasm", "sha256", "size", "exports", "key", "build_seconds")
    return {"dir": meta["app"], **{name: meta[name] for name in keys}}


def _install_app(entry: Path, meta: dict, out_dir: Path, previous: dict | None) -> None:
    """Copy a cache entry to out_dir/<app>/ unless the copy there is already of this key.

    The app dir gets exactly what spin.toml names (no build metadata), since tests pack it into images as is.
    """
    target = out_dir / meta["app"]
    if (
        previous is not None
        and previous.get("key") == meta["key"]
        and all((target / name).is_file() and (target / name).stat().st_size == size
                for name, size in meta["size"].items())
    ):
        return
    staging = out_dir / f".tmp-{meta['app']}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(entry, staging, ignore=shutil.ignore_patterns(META_NAME))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)


def _read_index(out_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((out_dir / INDEX_NAME).read_text())["apps"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def build(out_dir: Path = BUILD_DIR, *, force: bool = False) -> Path:
    """Build (or fetch from the cache) every app into out_dir and write out_dir/index.json; return out_dir.

    Raises ToolchainMissing when an app is not cached and its toolchain is not installed (tests may skip on it).
    """
    APP_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(APP_CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time, across tests, worktrees and CI reruns
        previous = _read_index(out_dir)
        (out_dir / INDEX_NAME).unlink(missing_ok=True)  # written last: its presence means every app dir is complete
        keys: dict[str, str] = {}
        built: dict[str, Path] = {}
        index: dict[str, dict] = {}
        for recipe in RECIPES:
            key = cache_key(recipe, dependency_keys=keys)
            keys[recipe.app] = key
            entry = APP_CACHE_DIR / f"{recipe.app}-{key}"
            meta = None if force else _read_meta(entry)
            if meta is None:
                entry = _build_entry(recipe, key, built)
                meta = _read_meta(entry)
                assert meta is not None
                _prune(recipe.app, keep=entry)
            else:
                os.utime(entry)  # pruning keeps the most recently *used* entries
                log(f"{recipe.app}: cached ({key[:12]}, first built in {meta['build_seconds']:.1f} s)")
            built[recipe.app] = entry
            _install_app(entry, meta, out_dir, previous.get(recipe.app))
            index[recipe.app] = index_entry(meta)
        text = json.dumps({"apps": index}, indent=2, sort_keys=True) + "\n"
        tmp = out_dir / f".{INDEX_NAME}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / INDEX_NAME)
    return out_dir


def main(argv: list[str]) -> int:
    unknown = [arg for arg in argv if arg not in ("--force", "--smoke")]
    if unknown:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        out_dir = build(force="--force" in argv)
    except ToolchainMissing as exc:
        print(f"build_http_apps: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"build_http_apps: build failed: {exc}", file=sys.stderr)
        return 1
    log(f"{out_dir / INDEX_NAME} ({time.monotonic() - started:.1f} s)")
    return smoke(out_dir) if "--smoke" in argv else 0


# --- smoke test: the builds are real components that a reference host serves ---------------------------------------

#: app -> [(method, path, request body, expected status, expected body)] served by `wasmtime serve -Scli`.
#: py-spin is not here: it imports Spin APIs (wasi:config, fermyon:spin/*) that wasmtime serve does not provide.
SMOKE_REQUESTS: dict[str, list[tuple[str, str, bytes | None, int, bytes]]] = {
    "js-echo": [("GET", "/hello", None, 200, b"Hello from JS!"), ("POST", "/echo", b"ping", 200, b"ping"),
                ("GET", "/api/whoami", None, 200, b"smoke"),
                ("GET", "/status/418", None, 418, b"status 418"), ("GET", "/nope", None, 404, b"not found")],
    "py-proxy": [("GET", "/hello", None, 200, b"Hello from Python (proxy world)!"),
                 ("POST", "/echo", b"ping", 200, b"ping"), ("GET", "/nope", None, 404, b"not found")],
}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _serve_and_check(wasmtime: str, wasm: Path, requests: list[tuple[str, str, bytes | None, int, bytes]]) -> list[str]:
    port = _free_port()
    # WHO: js-echo reads it through wasi:cli/environment, which the multi app depends on.
    server = subprocess.Popen([wasmtime, "serve", "-Scli", "--env", "WHO=smoke", "--addr", f"127.0.0.1:{port}",
                               str(wasm)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    failures = []
    try:
        deadline = time.monotonic() + 120  # wasmtime compiles the 12-37 MB component first: 5-10 s here
        while True:
            try:
                _request(port, "GET", "/", None)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read().decode(errors="replace") if server.stdout else ""
                    return [f"wasmtime serve did not come up: {output.strip()[-2000:]}"]
                time.sleep(0.2)
        for method, path, body, status, expected in requests:
            got_status, got_body = _request(port, method, path, body)
            if (got_status, got_body) != (status, expected):
                failures.append(f"{method} {path}: got {got_status} {got_body[:200]!r}, want {status} {expected!r}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return failures


def smoke(out_dir: Path = BUILD_DIR) -> int:
    """Serve js-echo and py-proxy with the reference `wasmtime serve`; check the Spin SDK apps' exports. 0 when all
    pass."""
    index = json.loads((out_dir / INDEX_NAME).read_text())["apps"]
    try:
        wasmtime = (TOOLCHAINS["wasmtime-cli"].require() / "WASMTIME").read_text().strip()
    except ToolchainMissing as exc:
        print(f"build_http_apps: {exc}", file=sys.stderr)
        return 1
    failed = False
    for app, requests in SMOKE_REQUESTS.items():
        started = time.monotonic()
        failures = _serve_and_check(wasmtime, out_dir / index[app]["dir"] / index[app]["wasm"][0], requests)
        verdict = "ok" if not failures else "FAILED: " + "; ".join(failures)
        log(f"smoke {app} under wasmtime serve: {len(requests)} requests {verdict} ({time.monotonic() - started:.1f} s)")
        failed |= bool(failures)
    # py-spin and py-spin5 import Spin APIs (no `wasmtime serve`), so only their export is checked; py-spin5-p3
    # must stay WASIp3.
    p2_handler = "wasi:http/incoming-handler@0.2.0"
    for app, wanted in (("py-spin", p2_handler), ("py-spin5", p2_handler), ("py-spin5-p3", "wasi:http/handler@0.3.0")):
        exports = index[app]["exports"]
        has_handler = wanted in exports
        log(f"smoke {app} exports {exports}: {'ok' if has_handler else f'FAILED: no {wanted}'}")
        failed |= not has_handler
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
