#!/usr/bin/env python3
"""Start-path benchmark: `ctr run --rm` of a Wasm hello command through this shim versus
busybox `true` through runc, on the same private containerd, in one run.

Prints the median (and p10/p90) wall time of each and their ratio shim/runc. The runs
alternate between the two so that machine noise (these VMs are noisy) hits both alike;
a few warm-up runs of each are discarded (the first shim run compiles the guest into the
precompile cache, the first runc run pages in runc). A ratio below 1 means a Wasm task
starts faster than a runc container.

    scripts/bench_start.py [--version 1.6] [--runs 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mkoci import build_image_tar  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

SHIM = "containerd-shim-spin-v2"


def _build_guests() -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_guests.py")], check=True,
                   stdout=subprocess.DEVNULL)
    return REPO / "tests" / "guests" / "build" / "hello.wasm"


def _image(workdir: Path, name: str, files: dict[str, Path], *, os_: str, arch: str,
           entrypoint: list[str]) -> Path:
    rootfs = workdir / f"rootfs-{name}"
    for dest, source in files.items():
        target = rootfs / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    tar = workdir / f"{name}.tar"
    build_image_tar(rootfs, tar, f"docker.io/bench/{name}:latest", os_=os_, arch=arch,
                    entrypoint=entrypoint)
    return tar


def _timed_run(daemon: PrivateContainerd, args: list[str], expect: str | None) -> float:
    started = time.perf_counter()
    result = daemon.ctr("run", "--rm", *args, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or (expect is not None and expect not in result.stdout):
        raise SystemExit(f"benchmark run failed: ctr run {' '.join(args)}\n{result.stdout}{result.stderr}")
    return elapsed


def _summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p10 = ordered[max(0, int(len(ordered) * 0.1) - 1)]
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(samples) * 1000:7.1f} ms   p10 {p10 * 1000:7.1f}   p90 {p90 * 1000:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.6", choices=("1.6", "1.7", "2.1"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    options = parser.parse_args()

    hello = _build_guests()
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        workdir = Path(tmp)
        shim_dir = workdir / "shim-bin"
        shim_dir.mkdir()
        (shim_dir / SHIM).symlink_to(Path(sys.executable).parent / SHIM)
        wasm_tar = _image(workdir, "hello-wasm", {"/hello.wasm": hello}, os_="wasip1", arch="wasm",
                          entrypoint=["/hello.wasm"])
        runc_tar = _image(workdir, "busybox", {"/bin/busybox": busybox}, os_="linux", arch="amd64",
                          entrypoint=["/bin/busybox", "true"])
        daemon = PrivateContainerd(options.version, workdir / "containerd", shim_dir,
                                   extra_env={"SPIN_SHIM_CACHE_DIR": str(workdir / "cache")})
        daemon.start()
        try:
            daemon.ctr("images", "import", "--all-platforms", str(wasm_tar))
            daemon.ctr("images", "import", str(runc_tar))
            wasm_args = ["--runtime", "io.containerd.spin.v2", "docker.io/bench/hello-wasm:latest"]
            runc_args = ["docker.io/bench/busybox:latest"]
            shim_times: list[float] = []
            runc_times: list[float] = []
            for i in range(options.warmup + options.runs):
                shim = _timed_run(daemon, [*wasm_args, f"w{i}"], "hello from wasm")
                runc = _timed_run(daemon, [*runc_args, f"r{i}"], None)
                if i >= options.warmup:
                    shim_times.append(shim)
                    runc_times.append(runc)
        finally:
            daemon.stop()
    ratio = statistics.median(shim_times) / statistics.median(runc_times)
    print(f"containerd {daemon.version_string}, {options.runs} runs each after {options.warmup} warm-up, alternating")
    print(f"ctr run --rm, Wasm hello via {SHIM}: {_summary(shim_times)}")
    print(f"ctr run --rm, busybox true via runc:        {_summary(runc_times)}")
    print(f"ratio shim/runc (median): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
