#!/usr/bin/env python3
"""Task create to first HTTP 200 for a Spin OCI artifact, with a cold and with a warm precompile cache.

One run, one machine, one containerd (2.1, CRI + CNI), one registry on 127.0.0.1 (these machines are noisy, so
the two figures are only compared within a run). For each app: `containerd-shim-spin-v2 push` it, pull it with CRI
PullImage, then time, per sample, StartContainer (where CRI creates and starts the task; CreateContainer only
records it) until the first 200 on the pod IP:

* cold: no compiled blob in the content store. Before each cold sample the image is removed (containerd's GC then
  drops the compiled blob with it) and pulled again, so the shim compiles every component;
* warm: the compiled blob is labelled on the image's layer; the shim loads it.

The pod sandbox (pause through runc) is made before the clock starts: kubelet does that once per pod, and it is
the same for both. Prints each sample, the medians and the cold/warm ratio.

    .venv/bin/python scripts/bench_oci_start.py [--apps js-echo py-spin] [--cold 2] [--warm 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from build_http_apps import build  # noqa: E402
from cri_client import CriClient  # noqa: E402
from local_registry import Registry, trust_registry  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

SHIM = Path(sys.executable).parent / "containerd-shim-spin-v2"
APP_PORT = 80
#: A route each test app answers 200 on (tests/apps/README.md), and the env it needs.
APPS = {"js-echo": ("/hello", {}), "py-spin": ("/hello", {"API_TOKEN": "bench"})}
FIRST_200_TIMEOUT_S = 180.0


def first_200(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no 200 from {url} within {timeout} s")


def sample(cri: CriClient, image: str, path: str, env: dict[str, str], name: str) -> float:
    with cri.pod(name, runtime_handler="spin") as pod:
        container = cri.create_container(pod, "app", image, command=["/"], env=env)
        started = time.perf_counter()
        cri.start_container(container)
        first_200(f"http://{pod.ip}:{APP_PORT}{path}", FIRST_200_TIMEOUT_S)
        return time.perf_counter() - started


def run(apps: list[str], cold_runs: int, warm_runs: int) -> None:
    app_dirs = {name: Path(entry) for name, entry in _built_apps().items()}
    with tempfile.TemporaryDirectory(prefix="bench-oci-") as scratch:
        work = Path(scratch)
        shim_dir = work / "bin"
        shim_dir.mkdir()
        (shim_dir / SHIM.name).symlink_to(SHIM)
        cache = work / "shim-cache"
        registry = Registry(work / "registry")
        registry.start()
        try:
            ctrd = PrivateContainerd("2.1", work / "containerd", shim_dir,
                                     extra_env={"SPIN_SHIM_CACHE_DIR": str(cache)})
            ctrd.enable_cni()
            ctrd.start()
            try:
                ctrd.import_pause_image()
                trust_registry(ctrd, registry)
                with CriClient(ctrd) as cri:
                    _wait_network(cri)
                    for app in apps:
                        _bench_app(cri, registry, app, app_dirs[app], cold_runs, warm_runs)
            finally:
                ctrd.stop()
        finally:
            registry.stop()


def _bench_app(cri: CriClient, registry: Registry, app: str, app_dir: Path, cold_runs: int, warm_runs: int) -> None:
    path, env = APPS[app]
    image = registry.ref(f"bench/{app}", "v1")
    subprocess.run([str(SHIM), "push", str(app_dir), image], check=True, capture_output=True, timeout=300)
    wasm_mb = sum(f.stat().st_size for f in app_dir.glob("*.wasm")) / 1e6
    print(f"== {app} ({wasm_mb:.1f} MB of wasm), StartContainer -> first 200 on the pod IP")
    cold = []
    for i in range(cold_runs):
        _remove_image(cri, image)  # GC takes the compiled blob with it: the next start compiles
        cri.pull_image(image)
        cold.append(sample(cri, image, path, env, f"{app}-cold-{i}"))
        print(f"  cold  #{i + 1}: {cold[-1] * 1000:8.0f} ms")
    warm = []
    for i in range(warm_runs):
        warm.append(sample(cri, image, path, env, f"{app}-warm-{i}"))
        print(f"  warm  #{i + 1}: {warm[-1] * 1000:8.0f} ms")
    cold_median, warm_median = statistics.median(cold), statistics.median(warm)
    print(f"  median cold {cold_median * 1000:.0f} ms, warm {warm_median * 1000:.0f} ms, "
          f"ratio cold/warm {cold_median / warm_median:.1f}x")


def _remove_image(cri: CriClient, image: str) -> None:
    try:
        cri.remove_image(image)
    except Exception:  # noqa: BLE001 - not pulled yet
        pass


def _wait_network(cri: CriClient) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cri.status().get("NetworkReady", (False, ""))[0]:
            return
        time.sleep(0.2)
    raise TimeoutError("CRI network not ready (CNI config?)")


def _built_apps() -> dict[str, str]:
    import json

    build_dir = build()
    index = json.loads((build_dir / "index.json").read_text())
    return {name: str(build_dir / entry["dir"]) for name, entry in index["apps"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", default=list(APPS), choices=list(APPS))
    parser.add_argument("--cold", type=int, default=2, help="cold samples per app (each recompiles)")
    parser.add_argument("--warm", type=int, default=5, help="warm samples per app")
    args = parser.parse_args(argv)
    run(args.apps, args.cold, args.warm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
