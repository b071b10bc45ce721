#!/usr/bin/env python3
"""Pod density: N pods of one Spin app through CRI, beside N pods of busybox httpd through runc.

What a node operator wants to know before moving a Deployment to the shim: how much memory does each replica cost
on the node, and how long does a scale-up to N replicas take until all are Ready. So, in one run, on one machine,
through one private containerd (2.1 by default, CRI + a CNI bridge of its own):

* spin side: N pods with runtime_handler "spin", one container each, all of the same app (default js-echo);
  Ready = 200 on http://<pod IP>:80/.well-known/spin/health (the readiness probe of our manifests);
* reference side: N pods with runtime_handler "runc", one busybox `httpd -f -p 80 -h /www` container each;
  Ready = 200 on http://<pod IP>:80/.

Pods are created as kubelet does for a Deployment scale-up: concurrently (kubelet's pod workers sync pods in
parallel; here a pool of --parallel threads runs RunPodSandbox, CreateContainer, StartContainer per pod), with a
prober per pod polling every --probe-interval seconds (a real readiness probe polls every periodSeconds, 10 s by
default, which would only quantize the figure). Time to all-Ready runs from the first RunPodSandbox until the last
pod answered its probe.

Memory per pod is the PSS (/proc/<pid>/smaps_rollup) of every process the N pods added: processes that did not
exist before the scale-up and are shim processes started with this containerd's `-address` (our shim daemon,
containerd-shim-runc-v2) or their descendants (pause and runc containers, our instance processes and their HTTP
workers), summed and divided by N. PSS charges each shared page to its sharers in equal parts, so the sum over
all processes is the memory they use together, without counting shared code or the mmapped precompiled wasm N
times (RSS would). It is read twice: just after all-Ready, and after --requests GETs of an app route per pod
(a replica that has served traffic has run its guest: code pages touched, allocator high-water marks, threads).
Also printed, because they answer other questions: USS (what tearing one pod down frees, about the cost of one
more pod), the pods' cgroup working set (what kubelet and `kubectl top` see; the shims live outside the pod cgroup,
as with runc), containerd's own growth, the drop of MemAvailable (whole machine, so noisy when other work runs),
the CPU the pod processes used to get Ready, and the CPU they use while idle (--idle-window): a per-pod timer
costs a node in proportion to its pod count whatever the traffic. --smaps K shows where one process of each kind
keeps its PSS (heap, anonymous mappings, libraries, the precompiled component).

The app is an OCI artifact pushed to a registry on 127.0.0.1 with `containerd-shim-spin-v2 push` and pulled with
CRI PullImage (the default, --image-form artifact: how SpinKube users ship apps, `spin registry push`, and the path
where the instance process reads layers and the precompiled blob from containerd's content store), or a rootfs
image imported with ctr (--image-form rootfs: spin.toml in the image root, the precompiled component in the shim's
cache dir). Before each side one pod is started, made Ready and removed: for Spin that compiles the app once into
the precompile cache (the cold compile is measured by bench_oci_start.py), for both it warms the page cache.

Cleans up everything (pods, containerd, its bridge, the registry) at the end, on errors and on Ctrl-C, and prints
what, if anything, was left.

    sudo .venv/bin/python scripts/bench_density.py [--pods 20] [--parallel 5] [--app js-echo]
        [--image-form artifact|rootfs] [--version 2.1] [--workers N] [--sides spin busybox] [--requests 4]
        [--idle-window 5] [--smaps K]

Limits met on a 2-CPU, 24 GiB machine: the CNI bridge network is a /24, so at most 253 pods per side (the 254th
RunPodSandbox fails with "no IP addresses available in range set"); 250 Spin pods take ~15 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from bench_oci_start import APPS  # noqa: E402  (each test app's env: py-spin needs its api_token variable)
from build_http_apps import build  # noqa: E402
from busybox_image import BUSYBOX_REF, build_busybox_tar, httpd_command  # noqa: E402
from cri_client import CriClient, PodHandle, pod_cgroups  # noqa: E402
from local_registry import Registry, trust_registry  # noqa: E402
from mkoci import build_image_tar  # noqa: E402
from private_containerd import (  # noqa: E402
    CRI_NAMESPACE,
    SHIM_SOCKET_DIR,
    SUPPORTED_VERSIONS,
    PrivateContainerd,
    mounts_under,
)

SHIM = Path(sys.executable).parent / "containerd-shim-spin-v2"
APP_PORT = 80
SPIN_HEALTH_PATH = "/.well-known/spin/health"  # what the readiness probes of our manifests ask
WORKERS_ENV = "SPIN_SHIM_HTTP_WORKERS"  # runtime/http/trigger.py; unset = the CPUs the task may use
PROBE_TIMEOUT_S = 2.0
NETWORK_READY_TIMEOUT_S = 30.0
SHIMS_GONE_TIMEOUT_S = 60.0
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Process kinds, as the breakdown names them.
SPIN_SHIM = "spin shim daemon"
INSTANCE = "spin instance process"
WORKER = "spin HTTP worker"
RUNC_SHIM = "containerd-shim-runc-v2"
PAUSE = "pause"
HTTPD = "busybox httpd"
KIND_ORDER = (SPIN_SHIM, INSTANCE, WORKER, RUNC_SHIM, PAUSE, HTTPD)


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM): threads give up at their next step."""


# ---- processes and their memory -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it; (pid, start ticks) names it across pid reuse."""

    pid: int
    ppid: int
    start_ticks: int
    comm: str
    argv: tuple[str, ...]
    threads: int
    cpu_ticks: int  # utime + stime, in clock ticks

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start_ticks


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw_argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    if fields[0] == "Z":
        return None
    argv = tuple(part.decode(errors="replace") for part in raw_argv.split(b"\0") if part)
    return Proc(pid, int(fields[1]), int(fields[19]), comm, argv, int(fields[17]), int(fields[11]) + int(fields[12]))


def all_procs() -> dict[int, Proc]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            procs[proc.pid] = proc
    return procs


@dataclass
class Memory:
    """smaps_rollup figures in bytes; USS = Private_Clean + Private_Dirty."""

    pss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    uss: int = 0
    rss: int = 0

    def __iadd__(self, other: Memory) -> Memory:
        self.pss += other.pss
        self.pss_anon += other.pss_anon
        self.pss_file += other.pss_file
        self.uss += other.uss
        self.rss += other.rss
        return self


def memory_of(pid: int) -> Memory:
    """smaps_rollup (one pass over the page tables, unlike smaps); a process that just exited counts zero."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return Memory()
    return Memory(pss=values.get("Pss", 0), pss_anon=values.get("Pss_Anon", 0), pss_file=values.get("Pss_File", 0),
                  uss=values.get("Private_Clean", 0) + values.get("Private_Dirty", 0), rss=values.get("Rss", 0))


def mappings_of(pid: int) -> dict[str, tuple[int, int]]:
    """PSS and anonymous bytes by mapping (file path, [heap], [stack], or "[anon <perms>]" for nameless ones).

    Why: "the worker has 15 MiB of anon PSS" does not say whether it is Python's heap, wasmtime's code or a guest's
    linear memory; smaps (not _rollup) names each mapping. Costs a full page-table walk: only for --smaps.
    """
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    name = ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):  # a mapping header: addr perms offset dev inode [path]
            fields = line.split(None, 5)
            name = fields[5] if len(fields) > 5 else f"[anon {fields[1]}]"
        elif head == "Pss:":
            totals[name][0] += int(rest.split()[0]) * 1024
        elif head == "Anonymous:":
            totals[name][1] += int(rest.split()[0]) * 1024
    return {key: (value[0], value[1]) for key, value in totals.items()}


def is_shim_of(proc: Proc, address: str) -> bool:
    """A shim (ours or containerd-shim-runc-v2) containerd started with our `-address` (the daemons keep start's
    argv); the daemon itself and other engineers' containerds never match."""
    return any(flag == "-address" and value == address for flag, value in zip(proc.argv, proc.argv[1:]))


@dataclass
class PodProcess:
    proc: Proc
    kind: str
    root: int  # pid of the shim whose tree it is in
    memory: Memory = field(default_factory=Memory)
    idle_cpu: float = 0.0  # CPU seconds per second over the idle window


def classify(proc: Proc, parent_kind: str | None) -> str:
    """Name a process by where it sits in the shim's tree: our instance processes and workers are forks of the
    Python shim (comm set by prctl, not argv), pause and httpd are runc containers reparented to the shim (it is
    their child subreaper)."""
    exe = " ".join(proc.argv[:2])
    if parent_kind is None:
        if "containerd-shim-runc-v2" in exe:
            return RUNC_SHIM
        if "containerd-shim-spin-v2" in exe:
            return SPIN_SHIM
        return f"other shim ({proc.comm})"
    if proc.comm == "pause":
        return PAUSE
    if proc.comm == "httpd":
        return HTTPD
    if parent_kind == SPIN_SHIM and proc.comm.startswith("spin-") and proc.comm != "spin-shim":
        return INSTANCE
    if parent_kind == INSTANCE:
        return WORKER
    return f"other ({proc.comm}, child of {parent_kind})"


def pod_processes(before: set[tuple[int, int]], address: str) -> list[PodProcess]:
    """New processes of this containerd's shims and their descendants, each with its kind and memory."""
    procs = all_procs()
    children: dict[int, list[Proc]] = defaultdict(list)
    for proc in procs.values():
        children[proc.ppid].append(proc)
    # Our instance processes and workers are forks of the shim daemon and keep its argv (`-address` too), so a
    # shim is a root only when its parent is not one of them.
    shims = {proc.pid for proc in procs.values() if proc.key not in before and is_shim_of(proc, address)}
    found: list[PodProcess] = []
    stack: list[tuple[Proc, str | None, int]] = [
        (procs[pid], None, pid) for pid in shims if procs[pid].ppid not in shims
    ]
    while stack:
        proc, parent_kind, root = stack.pop()
        kind = classify(proc, parent_kind)
        found.append(PodProcess(proc, kind, root))
        stack.extend((child, kind, root) for child in children[proc.pid] if child.key not in before)
    for item in found:
        item.memory = memory_of(item.proc.pid)
    return found


def measure_idle_cpu(processes: Sequence[PodProcess], window: float) -> None:
    """Set each process's idle_cpu: CPU seconds per second it uses while nobody asks anything. Timers, tickers
    and polling loops cost a node CPU in proportion to its pod count, whatever the traffic."""
    if window <= 0 or not processes:
        return
    before = {item.proc.key: item.proc.cpu_ticks for item in processes}
    time.sleep(window)
    for item in processes:
        now = read_proc(item.proc.pid)
        if now is not None and now.key in before:
            item.idle_cpu = (now.cpu_ticks - before[now.key]) / CLK_TCK / window


def meminfo(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def cgroup_working_set(pod: PodHandle) -> int | None:
    """The pod cgroup's usage minus inactive file pages: kubelet's working set, what `kubectl top pod` shows."""
    for directory in pod_cgroups(pod.config.linux.cgroup_parent):
        for usage_name, inactive_name in (("memory.current", "inactive_file"),
                                          ("memory.usage_in_bytes", "total_inactive_file")):
            try:
                usage = int((directory / usage_name).read_text())
                stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
            except (OSError, ValueError):
                continue
            return max(0, usage - int(stat.get(inactive_name, 0)))
    return None


# ---- pods -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """One half of the comparison: what runs in each pod and how its readiness is asked."""

    key: str
    label: str
    runtime_handler: str
    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    ready_path: str
    name_prefix: str
    request_path: str  # a route the app answers 200 on, asked a few times per pod before the memory reading


@dataclass
class PodRun:
    """One pod's timeline (perf_counter seconds) and outcome."""

    index: int
    started: float = math.nan  # just before RunPodSandbox
    sandbox_ready: float = math.nan  # RunPodSandbox (and PodSandboxStatus for the IP) returned
    container_started: float = math.nan  # StartContainer returned
    ready: float = math.nan  # first 200 on the probe path
    pod: PodHandle | None = None
    error: str | None = None


def http_ok(ip: str, path: str) -> bool:
    connection = http.client.HTTPConnection(ip, APP_PORT, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class PodLauncher:
    """Starts pods of one side as kubelet's pod workers would, and probes them as its prober would."""

    def __init__(self, cri: CriClient, side: Side, stop: threading.Event, probe_interval: float,
                 ready_timeout: float, pod_ids: list[str]) -> None:
        self.cri = cri
        self.pod_ids = pod_ids  # every sandbox this run made, for the leftover check at the end
        self.side = side
        self.stop = stop
        self.probe_interval = probe_interval
        self.ready_timeout = ready_timeout

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

    def start(self, run: PodRun, name: str) -> PodRun:
        """RunPodSandbox, CreateContainer, StartContainer: one kubelet SyncPod."""
        try:
            self._check_stop()
            run.started = time.perf_counter()
            run.pod = self.cri.run_pod(name, runtime_handler=self.side.runtime_handler)
            self.pod_ids.append(run.pod.id)
            run.sandbox_ready = time.perf_counter()
            self._check_stop()
            self.cri.run_container(run.pod, "app", self.side.image, command=self.side.command, env=self.side.env)
            run.container_started = time.perf_counter()
        except Exception as error:  # noqa: BLE001 - reported per pod, the others go on
            run.error = f"{type(error).__name__}: {error}"
        return run

    def probe(self, run: PodRun) -> PodRun:
        """Poll the pod IP until the first 200 (or the deadline)."""
        if run.error is not None or run.pod is None:
            return run
        deadline = time.perf_counter() + self.ready_timeout
        while not self.stop.is_set():
            if http_ok(run.pod.ip, self.side.ready_path):
                run.ready = time.perf_counter()
                return run
            if time.perf_counter() > deadline:
                run.error = f"no 200 on http://{run.pod.ip}:{APP_PORT}{self.side.ready_path} " \
                            f"within {self.ready_timeout:.0f} s"
                return run
            time.sleep(self.probe_interval)
        run.error = "interrupted"
        return run

    def start_and_probe(self, run: PodRun, name: str) -> PodRun:
        return self.probe(self.start(run, name))

    def scale_up(self, count: int, parallel: int) -> list[PodRun]:
        """`count` pods through `parallel` pod workers; each started pod is handed to a prober of its own."""
        runs = [PodRun(i) for i in range(count)]
        probes: list[Future[PodRun]] = []
        lock = threading.Lock()
        with ThreadPoolExecutor(parallel, thread_name_prefix="pod-worker") as workers, \
                ThreadPoolExecutor(count, thread_name_prefix="prober") as probers:
            def launch(run: PodRun) -> None:
                self.start(run, f"{self.side.name_prefix}-{run.index}")
                with lock:
                    probes.append(probers.submit(self.probe, run))

            try:
                started = [workers.submit(launch, run) for run in runs]
                _wait_all(started, self.stop)
                _wait_all(probes, self.stop)
            except BaseException:
                self.stop.set()  # the threads give up at their next step; the executors wait for them
                raise
        return runs

    def serve(self, runs: Sequence[PodRun], requests: int, parallel: int) -> int:
        """`requests` GETs of the app route per pod, each on a new connection (the workers take turns accepting on
        their shared listener, so most workers run the guest at least once); returns how many did not answer 200."""
        targets = [run.pod.ip for run in runs if run.pod is not None for _ in range(requests)]
        with ThreadPoolExecutor(parallel, thread_name_prefix="client") as pool:
            answers = list(pool.map(lambda ip: http_ok(ip, self.side.request_path), targets))
        return answers.count(False)

    def teardown(self, runs: Sequence[PodRun], parallel: int) -> float:
        """StopPodSandbox + RemovePodSandbox of every pod, `parallel` at a time; returns the seconds it took."""
        began = time.perf_counter()
        pods = [run.pod for run in runs if run.pod is not None]
        with ThreadPoolExecutor(parallel, thread_name_prefix="teardown") as pool:
            for future in [pool.submit(self.cri.teardown_pod, pod.id) for pod in pods]:
                with contextlib.suppress(Exception):  # teardown_all in the caller's finally retries
                    future.result()
        return time.perf_counter() - began


def _wait_all(futures: Sequence[Future[object]], stop: threading.Event) -> None:
    """Wait in short slices, so that a Ctrl-C reaches the main thread instead of a blocking join."""
    pending = set(futures)
    while pending:
        if stop.is_set():
            raise Interrupted()
        _, pending = wait(pending, timeout=0.2)


# ---- results --------------------------------------------------------------------------------------------------
@dataclass
class SideResult:
    side: Side
    count: int
    runs: list[PodRun]
    warmup_s: float
    all_ready_s: float | None
    processes: list[PodProcess]
    working_sets: list[int]
    mem_available_drop: int
    containerd_growth: int
    ready_memory: Memory = field(default_factory=Memory)  # all processes, read just after all-Ready
    requests_per_pod: int = 0
    request_failures: int = 0
    idle_cpu_s: float = 0.0  # CPU seconds all pod processes used per second of an idle window
    start_cpu_s: float = 0.0  # CPU seconds the pod processes had used when all were Ready
    containerd_start_cpu_s: float = 0.0  # containerd's CPU seconds during the scale-up
    teardown_s: float = math.nan
    mappings: dict[str, list[tuple[str, tuple[int, int]]]] = field(default_factory=dict)  # --smaps

    @property
    def ok(self) -> list[PodRun]:
        return [run for run in self.runs if run.error is None]

    @property
    def total(self) -> Memory:
        total = Memory()
        for item in self.processes:
            total += item.memory
        return total

    def per_pod(self, value: float) -> float:
        return value / max(1, len(self.ok))

    def kind_counts(self) -> Counter[str]:
        return Counter(item.kind for item in self.processes)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 20 samples p90 is the 18th)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def print_side(result: SideResult) -> None:
    side, ok = result.side, result.ok
    print(f"\n== {side.label}: {result.count} pods, runtime_handler {side.runtime_handler!r}, image {side.image}")
    print(f"  warm-up pod (not counted): Ready {result.warmup_s:.2f} s after RunPodSandbox, then removed"
          + (" (it compiled the app into the precompile cache)" if side.key == "spin" else ""))
    failed = [run for run in result.runs if run.error is not None]
    if failed:
        print(f"  !! {len(failed)} of {result.count} pods did not get Ready; first errors:")
        for run in failed[:5]:
            print(f"     pod {run.index}: {run.error[:400]}")
    if result.all_ready_s is not None:
        print(f"  time to all-Ready: {result.all_ready_s:.2f} s (first RunPodSandbox -> last pod answered "
              f"GET {side.ready_path} with 200)")
    phases: list[tuple[str, Callable[[PodRun], float]]] = [
        ("RunPodSandbox (+ status for the IP)", lambda r: r.sandbox_ready - r.started),
        ("CreateContainer + StartContainer", lambda r: r.container_started - r.sandbox_ready),
        ("StartContainer returned -> first 200", lambda r: r.ready - r.container_started),
        ("per pod: RunPodSandbox -> Ready", lambda r: r.ready - r.started),
    ]
    if ok:
        print(f"  {'phase (per pod, seconds)':<40}{'median':>8}{'p90':>8}{'max':>8}")
        for label, phase in phases:
            values = [phase(run) for run in ok]
            print(f"  {label:<40}{statistics.median(values):>8.2f}{percentile(values, 0.9):>8.2f}"
                  f"{max(values):>8.2f}")
    total, pods = result.total, max(1, len(ok))
    print(f"  CPU until all-Ready: {result.per_pod(result.start_cpu_s):.2f} s/pod in the pod processes (live ones "
          f"only: runc and `shim start` runs have exited), containerd {result.per_pod(result.containerd_start_cpu_s):.2f}"
          " s/pod")
    print(f"  just after all-Ready: PSS {mib(result.ready_memory.pss / pods)} MiB/pod, "
          f"USS {mib(result.ready_memory.uss / pods)} MiB/pod")
    if result.requests_per_pod:
        failed_note = f", {result.request_failures} not 200" if result.request_failures else ", all 200"
        print(f"  then {result.requests_per_pod} GET {side.request_path} per pod, each on a new connection"
              f"{failed_note}; after that:")
    print(f"  memory of the {len(result.processes)} processes the pods added (PSS from smaps_rollup; MiB):")
    print(f"  {'process kind':<26}{'procs':>6}{'/pod':>6}{'thr/proc':>9}{'PSS/proc':>9}{'anon':>7}{'file':>7}"
          f"{'USS/proc':>9}{'PSS/pod':>9}{'idle mCPU/proc':>15}")
    by_kind: dict[str, list[PodProcess]] = defaultdict(list)
    for item in result.processes:
        by_kind[item.kind].append(item)
    for kind in sorted(by_kind, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k)):
        items = by_kind[kind]
        n = len(items)
        pss = sum(i.memory.pss for i in items)
        print(f"  {kind:<26}{n:>6}{n / pods:>6.1f}{sum(i.proc.threads for i in items) / n:>9.1f}{mib(pss / n):>9}"
              f"{mib(sum(i.memory.pss_anon for i in items) / n):>7}{mib(sum(i.memory.pss_file for i in items) / n):>7}"
              f"{mib(sum(i.memory.uss for i in items) / n):>9}{mib(pss / pods):>9}"
              f"{sum(i.idle_cpu for i in items) * 1000 / n:>15.2f}")
    print(f"  {'all':<26}{len(result.processes):>6}{len(result.processes) / pods:>6.1f}{'':>9}{'':>9}"
          f"{'':>7}{'':>7}{'':>9}{mib(total.pss / pods):>9}")
    print(f"  per pod: PSS {mib(total.pss / pods)} MiB (anon {mib(total.pss_anon / pods)}, file "
          f"{mib(total.pss_file / pods)}), USS {mib(total.uss / pods)} MiB, RSS {mib(total.rss / pods)} MiB")
    if result.working_sets:
        print(f"  pod cgroup working set (kubelet's view; shims are outside the pod cgroup): median "
              f"{mib(statistics.median(result.working_sets))} MiB")
    print(f"  containerd's own PSS grew by {mib(result.containerd_growth)} MiB "
          f"({mib(result.per_pod(result.containerd_growth))} MiB/pod); MemAvailable dropped by "
          f"{mib(result.mem_available_drop)} MiB ({mib(result.per_pod(result.mem_available_drop))} MiB/pod, "
          "whole machine: kernel memory too, noisy)")
    shims = [item for item in result.processes if item.kind in (SPIN_SHIM, RUNC_SHIM)]
    shim_note = f"  shim processes: {len(shims)} for {len(ok)} Ready pods"
    if len(shims) > len(ok):
        shim_note += f"  !! MORE THAN ONE SHIM PER POD ({len(shims) / pods:.2f} per pod)"
    print(shim_note)
    print(f"  idle CPU of all pod processes: {result.idle_cpu_s * 1000:.1f} millicores "
          f"({result.per_pod(result.idle_cpu_s * 1000):.2f} per pod)")
    print(f"  teardown of all pods: {result.teardown_s:.1f} s")
    if result.processes:
        _print_one_tree(result.processes)
    for kind, rows in result.mappings.items():
        print(f"  where the PSS of one {kind} sits (largest mappings; MiB PSS / of it anonymous):")
        for name, (pss, anon) in rows:
            print(f"    {mib(pss):>7} / {mib(anon):>6}  {name}")


def _print_one_tree(processes: list[PodProcess]) -> None:
    """The process tree of one pod, so the classification can be checked by eye."""
    root = min(item.root for item in processes)
    items = {item.proc.pid: item for item in processes if item.root == root}
    print("  process tree of one pod (pid, kind, comm, threads, PSS MiB):")

    def show(pid: int, depth: int) -> None:
        item = items[pid]
        print(f"    {'  ' * depth}{pid} {item.kind} [{item.proc.comm}] thr={item.proc.threads} "
              f"pss={mib(item.memory.pss)}")
        for child in sorted(p for p, i in items.items() if i.proc.ppid == pid):
            show(child, depth + 1)

    show(root, 0)


def print_summary(results: list[SideResult]) -> None:
    requests = max((result.requests_per_pod for result in results), default=0)
    print("\n== summary (PSS/pod: just Ready, and after " + (f"{requests} requests per pod" if requests else "settling")
          + "; USS and processes: after)")
    print(f"  {'':<28}{'N':>4}{'Ready':>6}{'all-Ready s':>12}{'pod->Ready p50/p90 s':>21}{'PSS/pod MiB':>16}"
          f"{'USS/pod':>9}{'procs/pod':>10}{'shims':>6}")
    rows = {}
    for result in results:
        ok = result.ok
        pods = max(1, len(ok))
        to_ready = [run.ready - run.started for run in ok]
        row = {
            "all_ready": result.all_ready_s if result.all_ready_s is not None else math.nan,
            "p50": statistics.median(to_ready) if to_ready else math.nan,
            "p90": percentile(to_ready, 0.9),
            "pss_ready": result.ready_memory.pss / pods / MIB,
            "pss": result.total.pss / pods / MIB,
            "uss": result.total.uss / pods / MIB,
            "procs": len(result.processes) / pods,
        }
        rows[result.side.key] = row
        shims = sum(1 for item in result.processes if item.kind in (SPIN_SHIM, RUNC_SHIM))
        print(f"  {result.side.label:<28}{result.count:>4}{len(ok):>6}{row['all_ready']:>12.2f}"
              f"{row['p50']:>12.2f} /{row['p90']:>6.2f}{row['pss_ready']:>9.1f} /{row['pss']:>5.1f}"
              f"{row['uss']:>9.1f}{row['procs']:>10.1f}{shims:>6}")
    if "spin" in rows and "busybox" in rows:
        spin, ref = rows["spin"], rows["busybox"]

        def ratio(key: str) -> str:
            return f"{spin[key] / ref[key]:.1f}x" if ref[key] else "n/a"

        print(f"  {'ratio spin/busybox':<28}{'':>4}{'':>6}{ratio('all_ready'):>12}{ratio('p50'):>12} /"
              f"{ratio('p90'):>6}{ratio('pss_ready'):>9} /{ratio('pss'):>5}{ratio('uss'):>9}{ratio('procs'):>10}")


# ---- the run --------------------------------------------------------------------------------------------------
def wait_network(cri: CriClient) -> None:
    """CRI loads the CNI conflist asynchronously; RunPodSandbox before that fails."""
    deadline = time.monotonic() + NETWORK_READY_TIMEOUT_S
    while not cri.status().get("NetworkReady", (False, ""))[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRI network not ready after {NETWORK_READY_TIMEOUT_S:.0f} s: {cri.status()}")
        time.sleep(0.1)


def wait_shims_gone(ctrd: PrivateContainerd) -> None:
    """Shim daemons exit a moment after their last task is deleted; the next side must not see them."""
    deadline = time.monotonic() + SHIMS_GONE_TIMEOUT_S
    while [pid for pid in ctrd.owned_pids() if pid != ctrd.pid]:
        if time.monotonic() > deadline:
            print(f"  (shims still running {SHIMS_GONE_TIMEOUT_S:.0f} s after teardown: "
                  f"{[pid for pid in ctrd.owned_pids() if pid != ctrd.pid]})")
            return
        time.sleep(0.2)


def _cpu_ticks(pid: int | None) -> int:
    proc = read_proc(pid) if pid else None
    return proc.cpu_ticks if proc is not None else 0


def process_keys() -> set[tuple[int, int]]:
    return {proc.key for proc in all_procs().values()}


def bench_side(cri: CriClient, ctrd: PrivateContainerd, side: Side, count: int, parallel: int, settle: float,
               probe_interval: float, ready_timeout: float, stop: threading.Event, pod_ids: list[str],
               requests: int = 0, smaps_top: int = 0, idle_window: float = 5.0) -> SideResult:
    launcher = PodLauncher(cri, side, stop, probe_interval, ready_timeout, pod_ids)
    print(f"-- {side.label}: warm-up pod", flush=True)
    warm = launcher.start_and_probe(PodRun(-1), f"{side.name_prefix}-warmup")
    launcher.teardown([warm], 1)
    if warm.error is not None:
        raise RuntimeError(f"{side.label}: the warm-up pod failed: {warm.error}")
    wait_shims_gone(ctrd)
    time.sleep(1.0)

    before = process_keys()
    containerd_before = memory_of(ctrd.pid or 0).pss
    containerd_cpu_before = _cpu_ticks(ctrd.pid)
    available_before = meminfo("MemAvailable")
    print(f"-- {side.label}: {count} pods, {parallel} at a time", flush=True)
    runs = launcher.scale_up(count, parallel)
    ok = [run for run in runs if run.error is None]
    all_ready = (max(run.ready for run in ok) - min(run.started for run in runs)) if len(ok) == count else None
    time.sleep(settle)  # shims finishing their start-up work
    ready_memory = Memory()
    ready_processes = pod_processes(before, ctrd.address)
    for item in ready_processes:
        ready_memory += item.memory
    start_cpu = sum(item.proc.cpu_ticks for item in ready_processes) / CLK_TCK
    containerd_cpu = (_cpu_ticks(ctrd.pid) - containerd_cpu_before) / CLK_TCK
    failures = launcher.serve(ok, requests, parallel) if requests else 0
    if requests:
        time.sleep(settle)
    processes = pod_processes(before, ctrd.address)
    measure_idle_cpu(processes, idle_window)
    idle_cpu = sum(item.idle_cpu for item in processes)
    working_sets = [ws for run in ok if run.pod is not None and (ws := cgroup_working_set(run.pod)) is not None]
    result = SideResult(
        side, count, runs, warm.ready - warm.started, all_ready, processes, working_sets,
        mem_available_drop=available_before - meminfo("MemAvailable"),
        containerd_growth=memory_of(ctrd.pid or 0).pss - containerd_before,
        ready_memory=ready_memory, requests_per_pod=requests, request_failures=failures, idle_cpu_s=idle_cpu,
        start_cpu_s=start_cpu, containerd_start_cpu_s=containerd_cpu,
    )
    if smaps_top:
        for item in processes:
            if item.kind not in result.mappings:
                ranked = sorted(mappings_of(item.proc.pid).items(), key=lambda entry: -entry[1][0])
                result.mappings[item.kind] = ranked[:smaps_top]
    print(f"-- {side.label}: tearing down", flush=True)
    result.teardown_s = launcher.teardown(runs, parallel)
    wait_shims_gone(ctrd)
    return result


def spin_image(args: argparse.Namespace, ctrd: PrivateContainerd, cri: CriClient, registry: Registry | None,
               work: Path) -> str:
    """Push or import the app (see the module docstring for why artifact is the default)."""
    build_dir = build()
    index = json.loads((build_dir / "index.json").read_text())
    app_dir = build_dir / index["apps"][args.app]["dir"]
    if registry is not None:
        image = registry.ref(f"bench/{args.app}", "v1")
        subprocess.run([str(SHIM), "push", str(app_dir), image], check=True, capture_output=True, timeout=300)
        cri.pull_image(image, timeout=300)
        return image
    image = f"docker.io/spin-shim-bench/{args.app}-rootfs:v1"
    rootfs = work / "spin-rootfs"
    shutil.copytree(app_dir, rootfs)
    tar = work / "spin-rootfs.tar"
    build_image_tar(rootfs, tar, image, os_="wasip1", arch="wasm", entrypoint=["/"])
    ctrd.ctr("images", "import", "--all-platforms", str(tar), namespace=CRI_NAMESPACE)
    return image


def make_sides(args: argparse.Namespace, spin_ref: str | None) -> list[Side]:
    sides = []
    if "spin" in args.sides:
        assert spin_ref is not None
        env = dict(APPS.get(args.app, ("/hello", {}))[1])
        if args.workers is not None:
            env[WORKERS_ENV] = str(args.workers)
        sides.append(Side("spin", f"spin {args.app} ({args.image_form})", "spin", spin_ref, ("/",), env,
                          SPIN_HEALTH_PATH, "density-spin", APPS.get(args.app, ("/hello", {}))[0]))
    if "busybox" in args.sides:
        sides.append(Side("busybox", "busybox httpd (runc)", "runc", BUSYBOX_REF, tuple(httpd_command(APP_PORT)),
                          {}, "/", "density-busybox", "/"))
    return sides


def leftovers(ctrd: PrivateContainerd, bridge: str | None, work: Path, pod_ids: Sequence[str]) -> list[str]:
    """What the run might have left on the host; [] when clean."""
    found = []
    if owned := ctrd.owned_pids():
        found.append(f"processes of this containerd: {owned}")
    if bridge and Path("/sys/class/net", bridge).exists():
        found.append(f"bridge {bridge}")
    if mounts := mounts_under(work):
        found.append(f"mounts under {work}: {[str(m) for m in mounts]}")
    # Both shims group a pod's tasks by sandbox id: socket /run/containerd/s/sha256(<address>/<namespace>/<id>).
    sockets = [SHIM_SOCKET_DIR / hashlib.sha256(os.path.join(ctrd.address, CRI_NAMESPACE, pod_id).encode()).hexdigest()
               for pod_id in pod_ids]
    if left := [str(path) for path in sockets if path.exists()]:
        found.append(f"shim sockets: {left}")
    return found


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM behaves as Ctrl-C, so `kill <pid>` also cleans up."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    work = Path(tempfile.mkdtemp(prefix="bench-density-"))
    shim_dir = work / "bin"
    shim_dir.mkdir()
    (shim_dir / SHIM.name).symlink_to(SHIM)
    registry = Registry(work / "registry") if args.image_form == "artifact" and "spin" in args.sides else None
    ctrd = PrivateContainerd(args.version, work / "containerd", shim_dir,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(work / "shim-cache")})
    bridge: str | None = None
    cri: CriClient | None = None
    results: list[SideResult] = []
    pod_ids: list[str] = []
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
            spin_ref = spin_image(args, ctrd, cri, registry, work) if "spin" in args.sides else None
            if "busybox" in args.sides:
                ctrd.ctr("images", "import", str(build_busybox_tar(work)), namespace=CRI_NAMESPACE)
            print(f"containerd {ctrd.version_string}, {os.cpu_count()} CPUs, "
                  f"{meminfo('MemTotal') / MIB / 1024:.1f} GiB RAM, kernel {platform.release()}; "
                  f"{WORKERS_ENV}={args.workers if args.workers is not None else '(unset: the CPUs a task may use)'}",
                  flush=True)
            for side in make_sides(args, spin_ref):
                results.append(bench_side(cri, ctrd, side, args.pods, args.parallel, args.settle,
                                          args.probe_interval, args.ready_timeout, stop, pod_ids,
                                          args.requests, args.smaps, args.idle_window))
                print_side(results[-1])
            print_summary(results)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        stop.set()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        try:
            _cleanup(cri, ctrd, registry)
            left = leftovers(ctrd, bridge, work, pod_ids)
            print("\ncleanup: " + ("nothing left (no shim or pod process, bridge, mount of this run)" if not left
                                   else "LEFT BEHIND: " + "; ".join(left)), flush=True)
            if not left:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"work dir kept: {work}")
        finally:
            signal.signal(signal.SIGINT, previous)
    return 0


def _cleanup(cri: CriClient | None, ctrd: PrivateContainerd, registry: Registry | None) -> None:
    if cri is not None:
        with contextlib.suppress(Exception):
            cri.teardown_all()
        cri.close()
    try:
        ctrd.stop()
    finally:
        if registry is not None:
            registry.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=20, help="pods per side (default 20)")
    parser.add_argument("--parallel", type=int, default=5, help="pods started at a time, as kubelet's pod workers")
    parser.add_argument("--app", default="js-echo", choices=["js-echo", "py-spin", "py-proxy"])
    parser.add_argument("--image-form", default="artifact", choices=["artifact", "rootfs"],
                        help="artifact: pushed to a local registry, pulled by CRI; rootfs: imported with ctr")
    parser.add_argument("--version", default="2.1", choices=SUPPORTED_VERSIONS, help="containerd version")
    parser.add_argument("--workers", type=int, help=f"{WORKERS_ENV} for the Spin pods (default: the shim's)")
    parser.add_argument("--sides", nargs="+", default=["spin", "busybox"], choices=["spin", "busybox"])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between all-Ready and the memory reading")
    parser.add_argument("--probe-interval", type=float, default=0.1, help="seconds between readiness probes of a pod")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds a pod may take to get Ready")
    parser.add_argument("--requests", type=int, default=4,
                        help="GETs of the app route per pod after all-Ready, before the memory reading (0: none)")
    parser.add_argument("--idle-window", type=float, default=5.0,
                        help="seconds over which the pods' idle CPU use is measured (0: skip)")
    parser.add_argument("--smaps", type=int, default=0, metavar="K",
                        help="also print the K largest mappings (by PSS) of one process of each kind")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.parallel < 1:
        parser.error("--pods and --parallel must be at least 1")
    if args.version == "1.6" and args.image_form == "artifact" and "spin" in args.sides:
        parser.error("containerd 1.6 cannot pull Spin OCI artifacts; use --image-form rootfs")
    if os.geteuid() != 0:
        parser.error("needs root (containerd, runc, CNI)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
