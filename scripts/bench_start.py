#!/usr/bin/env python3
"""Start-path benchmark: `ctr run --rm` of a Wasm hello command through this shim versus
busybox `true` through runc, on the same private containerd, in one run.

Prints the median (and p10/p90) wall time of each and their ratio shim/runc. The runs
alternate between the two so that machine noise (these VMs are noisy) hits both alike;
a few warm-up runs of each are discarded (the first shim run compiles the guest into the
precompile cache, the first runc run pages in runc). A ratio below 1 means a Wasm task
starts faster than a runc container.

    scripts/bench_start.py [--version 1.6] [--runs 20] [--warmup 3] [--baseline OTHER_SHIM] [--phases]

--baseline names another build's containerd-shim-spin-v2 (e.g. a checkout of main's venv/bin one): its runs
alternate with this build's and runc's in the same containerd, and the ratio this/baseline is printed, which is
how a change's cost on the start path is measured on a noisy machine. --phases runs containerd at debug level and
prints the median of each setup phase the instance processes reported ("ready as pid N (namespaces 0.9 ms, ...)").
"""

from __future__ import annotations

import argparse
import re
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
#: containerd finds runtime io.containerd.spinbaseline.v2 as this binary on its PATH.
BASELINE_SHIM = "containerd-shim-spinbaseline-v2"


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


def _phases(containerd_dir: Path, warmup: int) -> dict[str, list[float]]:
    """Phase -> milliseconds per run of this build's hello tasks (ids w<i>) after the warm-up, from the shim's
    debug lines in containerd's log."""
    reports: list[tuple[int, str]] = []
    for log in sorted(containerd_dir.rglob("*.log")):
        text = log.read_text(errors="replace")
        for match in re.finditer(r'ready as pid \d+ \(([^)]*)\)"[^\n]* id=w(\d+)\b', text):
            reports.append((int(match.group(2)), match.group(1)))
    phases: dict[str, list[float]] = {}
    for run, report in reports:
        if run >= warmup:
            for part in report.split(", "):
                name, milliseconds, _ = part.rsplit(" ", 2)
                phases.setdefault(name, []).append(float(milliseconds))
    return phases


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
    parser.add_argument("--baseline", type=Path, help="another build's containerd-shim-spin-v2 to compare with")
    parser.add_argument("--phases", action="store_true", help="print the instance processes' setup phases")
    options = parser.parse_args()

    hello = _build_guests()
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        workdir = Path(tmp)
        shim_dir = workdir / "shim-bin"
        shim_dir.mkdir()
        (shim_dir / SHIM).symlink_to(Path(sys.executable).parent / SHIM)
        if options.baseline is not None:
            (shim_dir / BASELINE_SHIM).symlink_to(options.baseline.absolute())
        wasm_tar = _image(workdir, "hello-wasm", {"/hello.wasm": hello}, os_="wasip1", arch="wasm",
                          entrypoint=["/hello.wasm"])
        runc_tar = _image(workdir, "busybox", {"/bin/busybox": busybox}, os_="linux", arch="amd64",
                          entrypoint=["/bin/busybox", "true"])
        daemon = PrivateContainerd(options.version, workdir / "containerd", shim_dir, debug=options.phases,
                                   extra_env={"SPIN_SHIM_CACHE_DIR": str(workdir / "cache")})
        daemon.start()
        try:
            daemon.ctr("images", "import", "--all-platforms", str(wasm_tar))
            daemon.ctr("images", "import", str(runc_tar))
            wasm_args = ["--runtime", "io.containerd.spin.v2", "docker.io/bench/hello-wasm:latest"]
            runc_args = ["docker.io/bench/busybox:latest"]
            baseline_args = ["--runtime", "io.containerd.spinbaseline.v2", "docker.io/bench/hello-wasm:latest"]
            shim_times: list[float] = []
            runc_times: list[float] = []
            baseline_times: list[float] = []
            for i in range(options.warmup + options.runs):
                shim = _timed_run(daemon, [*wasm_args, f"w{i}"], "hello from wasm")
                runc = _timed_run(daemon, [*runc_args, f"r{i}"], None)
                baseline = (_timed_run(daemon, [*baseline_args, f"b{i}"], "hello from wasm")
                            if options.baseline is not None else 0.0)
                if i >= options.warmup:
                    shim_times.append(shim)
                    runc_times.append(runc)
                    baseline_times.append(baseline)
            phases = _phases(workdir / "containerd", options.warmup) if options.phases else {}
            if options.phases and not phases:
                raise SystemExit("--phases: no instance reported its setup phases in containerd's log")
        finally:
            daemon.stop()
    ratio = statistics.median(shim_times) / statistics.median(runc_times)
    print(f"containerd {daemon.version_string}, {options.runs} runs each after {options.warmup} warm-up, alternating")
    print(f"ctr run --rm, Wasm hello via {SHIM}: {_summary(shim_times)}")
    print(f"ctr run --rm, busybox true via runc:        {_summary(runc_times)}")
    print(f"ratio shim/runc (median): {ratio:.2f}")
    if options.baseline is not None:
        print(f"ctr run --rm, Wasm hello via the baseline:  {_summary(baseline_times)}   ({options.baseline})")
        print(f"ratio shim/baseline (median): {statistics.median(shim_times) / statistics.median(baseline_times):.3f}"
              f"   median of paired differences: "
              f"{statistics.median(s - b for s, b in zip(shim_times, baseline_times)) * 1000:+.1f} ms")
    if phases:
        print("instance setup phases of this build (median ms): "
              + ", ".join(f"{name} {statistics.median(values):.1f}" for name, values in phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
