#!/usr/bin/env python3
"""A cold-started Spin pod (empty precompile cache: the start compiles) against a warm-started one (cache hit).

Issue 16's acceptance: a cold start must cost what a warm one does (within 10 % PSS), because the compile runs
in a short-lived child process (runtime/compile_process.py) and the instance process loads the stored blob as a
warm start does. Before that, the first start of js-echo left ~390 MiB PSS over the instance process and its
workers, a warm one ~75 MiB.

One private containerd (2.1, CRI + a CNI bridge of its own), a fresh shim cache and content store, so the first
pod really compiles; then, one at a time:

0. an empty pod (a sandbox only), removed at once: the first `start` of a shim build finds no warm fork server,
   forks the pod's daemon itself from a fresh interpreter and spawns the server for the next start
   (shim/forkserver). A daemon not forked from the server shares none of its pages, which costs every process of
   that pod 1-4 MiB of PSS (measured: +13 MiB over the pod), so without this the cold pod would pay for being
   the first pod of the build, not for its compile;
1. the cold pod: RunPodSandbox, CreateContainer, StartContainer, Ready on /.well-known/spin/health, --requests GETs
   of the app route, --settle seconds, then the PSS of every process the pod added (bench_density.py's
   pod_processes: the shim daemon, pause, the instance process, its HTTP workers), summed; the pod is removed;
2. the warm pod, the same way, with the blob the cold pod stored.

PSS, not RSS: the pods run one after the other, so neither shares pages with the other, and the sum is what the
pod costs the node. Prints both sums, their breakdown by process kind, the ratio, and whether it is within
--tolerance (exit status 1 when it is not).

    sudo .venv/bin/python scripts/bench_cold_warm.py [--app js-echo] [--image-form artifact|rootfs]
        [--workers 2] [--requests 20] [--settle 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent)]

from bench_density import (  # noqa: E402
    APPS,
    MIB,
    SHIM,
    SPIN_HEALTH_PATH,
    WORKERS_ENV,
    PodLauncher,
    PodRun,
    Side,
    _cleanup,
    cgroup_working_set,
    interrupts_as_exceptions,
    leftovers,
    pod_processes,
    process_keys,
    spin_image,
    wait_network,
    wait_shims_gone,
)
from cri_client import CriClient  # noqa: E402
from fork_servers import fork_server_pids, new_fork_servers_stopped  # noqa: E402
from local_registry import Registry, trust_registry  # noqa: E402
from private_containerd import SUPPORTED_VERSIONS, PrivateContainerd  # noqa: E402


def start_and_measure(launcher: PodLauncher, ctrd: PrivateContainerd, name: str, requests: int,
                      settle: float) -> tuple[int, dict[str, tuple[int, int]], float, int | None]:
    """(PSS sum, {kind: (processes, PSS)}, seconds to Ready, the pod cgroup's working set) of one pod after its
    requests; the pod is removed."""
    before = process_keys()
    run = launcher.start_and_probe(PodRun(0), name)
    try:
        if run.error is not None:
            raise RuntimeError(f"{name}: {run.error}")
        failures = launcher.serve([run], requests, 1) if requests else 0
        if failures:
            raise RuntimeError(f"{name}: {failures} of {requests} requests did not answer 200")
        time.sleep(settle)
        processes = pod_processes(before, ctrd.address)
        working_set = cgroup_working_set(run.pod) if run.pod is not None else None
    finally:
        launcher.teardown([run], 1)
        wait_shims_gone(ctrd)
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in processes:
        by_kind[item.kind][0] += 1
        by_kind[item.kind][1] += item.memory.pss
    total = sum(item.memory.pss for item in processes)
    return (total, {kind: (count, pss) for kind, (count, pss) in by_kind.items()}, run.ready - run.started,
            working_set)


def warm_fork_server(cri: CriClient, ctrd: PrivateContainerd, key: str, pod_ids: list[str]) -> None:
    """Step 0 of the module docstring: a sandbox's `start` spawns the build's fork server; wait until it runs."""
    pod = cri.run_pod("cold-warm-prime", runtime_handler="spin")
    pod_ids.append(pod.id)
    cri.teardown_pod(pod.id)
    wait_shims_gone(ctrd)
    deadline = time.monotonic() + 30
    while not fork_server_pids(key):
        if time.monotonic() > deadline:
            raise RuntimeError("no fork server of this shim build started")
        time.sleep(0.1)
    time.sleep(1.0)  # listening: a start that came too early would fork its daemon itself again


def print_pod(label: str, total: int, by_kind: dict[str, tuple[int, int]], ready_s: float,
              working_set: int | None) -> None:
    seen = f"{working_set / MIB:.1f} MiB" if working_set is not None else "unknown"
    print(f"{label}: {total / MIB:.1f} MiB PSS, Ready in {ready_s:.1f} s; pod cgroup working set (what kubelet "
          f"sees) {seen}", flush=True)
    for kind, (count, pss) in sorted(by_kind.items(), key=lambda entry: -entry[1][1]):
        print(f"    {kind:24s} x{count}  {pss / MIB:7.1f} MiB")


def run(args: argparse.Namespace) -> int:
    from shim.forkserver.build_key import build_key

    key = build_key()
    with new_fork_servers_stopped(key):  # the server outlives containerd by design; this run's is stopped
        return _run(args, key)


def _run(args: argparse.Namespace, key: str) -> int:
    stop = threading.Event()
    work = Path(tempfile.mkdtemp(prefix="bench-cold-warm-"))
    shim_dir = work / "bin"
    shim_dir.mkdir()
    (shim_dir / SHIM.name).symlink_to(SHIM)
    registry = Registry(work / "registry") if args.image_form == "artifact" else None
    ctrd = PrivateContainerd(args.version, work / "containerd", shim_dir,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(work / "shim-cache")})
    bridge: str | None = None
    cri: CriClient | None = None
    pod_ids: list[str] = []
    within = False
    try:
        with interrupts_as_exceptions():
            if registry is not None:
                registry.start()
            bridge = ctrd.enable_cni().name
            ctrd.start()
            ctrd.import_pause_image()
            if registry is not None:
                trust_registry(ctrd, registry)
            cri = CriClient(ctrd)
            wait_network(cri)
            image = spin_image(args, ctrd, cri, registry, work)
            request_path, app_env = APPS.get(args.app, ("/hello", {}))
            env = {**app_env, WORKERS_ENV: str(args.workers)}
            side = Side("spin", f"spin {args.app} ({args.image_form})", "spin", image, ("/",), env,
                        SPIN_HEALTH_PATH, "cold-warm", request_path)
            launcher = PodLauncher(cri, side, stop, 0.1, args.ready_timeout, pod_ids)
            warm_fork_server(cri, ctrd, key, pod_ids)
            print(f"containerd {ctrd.version_string}, {os.cpu_count()} CPUs; {side.label}, "
                  f"{WORKERS_ENV}={args.workers}, {args.requests} requests, {args.settle:.0f} s settle", flush=True)
            cold, cold_kinds, cold_ready, cold_ws = start_and_measure(launcher, ctrd, "cold-warm-cold",
                                                                      args.requests, args.settle)
            print_pod("cold start (compiled)", cold, cold_kinds, cold_ready, cold_ws)
            warm, warm_kinds, warm_ready, warm_ws = start_and_measure(launcher, ctrd, "cold-warm-warm",
                                                                      args.requests, args.settle)
            print_pod("warm start (cache hit)", warm, warm_kinds, warm_ready, warm_ws)
            ratio = cold / warm
            within = ratio <= 1 + args.tolerance
            print(f"cold / warm PSS = {ratio:.3f} ({cold / MIB:.1f} / {warm / MIB:.1f} MiB): "
                  f"{'within' if within else 'NOT within'} {args.tolerance:.0%}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        stop.set()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _cleanup(cri, ctrd, registry)
            left = leftovers(ctrd, bridge, work, pod_ids)
            print("cleanup: " + ("nothing left" if not left else "LEFT BEHIND: " + "; ".join(left)), flush=True)
            if not left:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
    return 0 if within else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="js-echo", choices=["js-echo", "py-spin", "py-proxy"])
    parser.add_argument("--image-form", default="artifact", choices=["artifact", "rootfs"],
                        help="OCI artifact pushed to a local registry (blob in containerd's content store), or a "
                             "rootfs image (blob in the shim's cache dir)")
    parser.add_argument("--version", default="2.1", choices=SUPPORTED_VERSIONS, help="containerd version")
    parser.add_argument("--workers", type=int, default=2, help=f"{WORKERS_ENV} of the pods (default 2)")
    parser.add_argument("--requests", type=int, default=20, help="GETs of the app route before the reading")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the requests and the reading")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed cold/warm excess (default 0.10)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
