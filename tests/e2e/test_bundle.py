"""The node bundle on a node that has nothing but glibc, sh, containerd and runc (issue 16, acceptance 4).

The bundle (scripts/build_bundle.py, cached per source tree) is unpacked into /opt of a NodeRoot
(tests/e2e/bundle_support.py): no repo, no venv, no /usr/lib/python3* there. Inside it:

- the bundle's interpreter starts, its sys.path is the bundle's own, and every native module the shim loads
  (ssl, sqlite3, ctypes, grpc's core, protobuf's upb, wasmtime, libseccomp through pyseccomp) imports;
- `containerd-shim-spin-v2 install`, run from the bundle, links /usr/local/bin/containerd-shim-spin-v2 to the
  bundle's entry point and adds the runtime to a config.toml without it (a second run changes nothing); a
  containerd 2.1 started on that file serves the demo app (scripts/demo.sh's: py-spin, `ctr run -d --net-host`)
  to curl, through shim processes run by the bundle's interpreter; after the task and containerd stop, no
  process is left in the node (the warm fork server, which outlives containerd by design, is stopped by pid).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.bundle_support import BUNDLE_DIR, NodeContainerd, NodeRoot, cached_bundle
from tests.e2e.http_support import curl, free_port
from tests.e2e.support import RUNTIME, SHIM_NAME, shim_processes, wait_until

import build_bundle  # noqa: E402  (scripts/ is on sys.path via conftest)
from mkoci import build_image_tar  # noqa: E402

pytestmark = pytest.mark.e2e

ENTRY = BUNDLE_DIR / "bin" / SHIM_NAME
INTERPRETER = BUNDLE_DIR / "bin" / build_bundle.PY_NAME
NODE_BIN = Path("/usr/local/bin")
DEMO_IMAGE = "docker.io/library/spin-py-demo:latest"
READY_TIMEOUT_S = 120.0  # the first start compiles the 37 MB component (~6 s alone; more on a busy machine)
#: What the shim imports natively on its paths: the sandbox's preloads, the content store's grpc, the engine.
NATIVE_IMPORTS = ("ssl", "hashlib", "sqlite3", "zlib", "binascii", "lzma", "bz2", "ctypes", "uuid", "decimal",
                  "grpc._cython.cygrpc", "google._upb._message", "wasmtime", "pyseccomp")


@pytest.fixture(scope="module")
def bundle() -> Path:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (chroot, mounts, containerd)")
    return cached_bundle()


@pytest.fixture(scope="module")
def node(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRoot]:
    base = tmp_path_factory.mktemp("bundle-node")
    node = NodeRoot(base / "root", base / "w")
    node.populate()
    node.unpack(bundle)
    yield node
    node.stop_processes(node.processes())  # only after a failure: the tests leave none


def test_the_node_has_no_python_but_the_bundle(node: NodeRoot) -> None:
    assert node.python_files() == []
    result = node.run([str(ENTRY), "--version"])
    assert result.returncode == 0, result.stderr
    assert "Engine: wasmtime-py" in result.stdout and "not importable" not in result.stdout, result.stdout


def test_the_bundle_interpreter_imports_only_from_the_bundle(node: NodeRoot, bundle: Path) -> None:
    probe = ("import importlib, json, sys\n"
             f"mods = {{name: getattr(importlib.import_module(name), '__file__', None) for name in {NATIVE_IMPORTS!r}}}\n"
             "print(json.dumps({'path': sys.path, 'prefix': sys.prefix, 'executable': sys.executable, 'mods': mods}))")
    result = node.run([str(INTERPRETER), "-I", "-c", probe])
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["prefix"] == str(BUNDLE_DIR)
    assert seen["executable"] == str(INTERPRETER)
    assert all(entry.startswith(f"{BUNDLE_DIR}/") for entry in seen["path"]), seen["path"]
    assert all(path is None or path.startswith(f"{BUNDLE_DIR}/") for path in seen["mods"].values()), seen["mods"]
    manifest = build_bundle.read_manifest(bundle)
    assert manifest["python"] == build_bundle.sys.version.split()[0]
    assert manifest["glibc_minimum"] != "unknown"
    assert {"libssl.so.3", "libsqlite3.so.0", "libstdc++.so.6"} <= set(manifest["bundled_libraries"])


def test_install_from_the_bundle_then_containerd_serves_the_demo_app(node: NodeRoot,
                                                                    http_apps: dict[str, Path]) -> None:
    ctrd = NodeContainerd(node, spin_runtime=False, extra_env={"SPIN_SHIM_CACHE_DIR": str(node.workdir / "cache")})
    config = ctrd.write_config()
    assert RUNTIME not in config.read_text()
    first = node.run([str(ENTRY), "install", "--config", str(config)])
    assert first.returncode == 0, f"{first.stdout}{first.stderr}"
    link = node.root / NODE_BIN.relative_to("/") / SHIM_NAME
    assert os.readlink(link) == str(ENTRY), first.stdout
    installed = config.read_bytes()
    assert f'runtime_type = "{RUNTIME}"'.encode() in installed
    second = node.run([str(ENTRY), "install", "--config", str(config)])
    assert second.returncode == 0, f"{second.stdout}{second.stderr}"
    assert config.read_bytes() == installed, "the second install changed config.toml"

    app_tar = node.workdir / "app.tar"
    build_image_tar(http_apps["py-spin"], app_tar, DEMO_IMAGE, os_="wasip1", arch="wasm", entrypoint=["/"])
    ctrd.start(keep_config=True)
    try:
        ctrd.ctr("images", "import", "--all-platforms", str(app_tar))
        port = free_port()
        log = node.workdir / "demo.log"
        ctrd.ctr("run", "-d", "--net-host", "--runtime", RUNTIME, "--log-uri", f"file://{log}",
                 "--env", f"SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}", "--env", "SPIN_VARIABLE_API_TOKEN=demo",
                 DEMO_IMAGE, "demo", "/")
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return curl(f"{url}/.well-known/spin/health", timeout=5).status == 200
            except AssertionError:
                return False

        assert wait_until(healthy, timeout=READY_TIMEOUT_S, interval=0.2), \
            f"the demo never answered; log:\n{log.read_text(errors='replace') if log.exists() else '(none)'}"
        assert curl(f"{url}/hello").text == "Hello from Python!"
        assert [curl(f"{url}/counter").text, curl(f"{url}/counter").text] == ["1", "2"]

        shims = shim_processes(ctrd)
        assert shims, f"no shim process serves the task; in the node: {node.processes()}"
        for pid in shims:  # run by the bundle's interpreter, inside the node
            assert os.readlink(f"/proc/{pid}/exe") == str(node.root / INTERPRETER.relative_to("/")), pid
            assert os.readlink(f"/proc/{pid}/root") == str(node.root), pid

        ctrd.ctr("tasks", "kill", "demo")
        assert wait_until(lambda: "RUNNING" not in ctrd.ctr("tasks", "ls", check=False).stdout, timeout=30)
        ctrd.ctr("tasks", "delete", "demo")
        ctrd.ctr("containers", "delete", "demo")
        assert wait_until(lambda: not shim_processes(ctrd), timeout=15), "the task's shim outlived it"
    finally:
        ctrd.stop()
    left = node.processes()
    fork_servers = [pid for pid in left if b"fork-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert left == fork_servers, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    node.stop_processes(fork_servers)
    assert wait_until(lambda: not node.processes(), timeout=10), "the node's fork server did not stop"


def test_the_bundle_tarball_unpacks_anywhere(bundle: Path, tmp_path: Path) -> None:
    """The entry point finds its interpreter through a symlink from anywhere (as /usr/local/bin's is)."""
    subprocess.run(["tar", "-C", str(tmp_path), "-xzf", str(bundle)], check=True, timeout=120)
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / SHIM_NAME
    link.symlink_to(tmp_path / build_bundle.TOP_DIR / "bin" / SHIM_NAME)
    result = subprocess.run([str(link), "--version"], capture_output=True, text=True, env={}, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "Engine: wasmtime-py" in result.stdout
