#!/usr/bin/env python3
"""Start-path benchmark: `ctr run --rm` of a Wasm hello command through this shim versus
busybox `true` through runc, on the same private containerd, in one run; or, with --mode http,
`ctr run -d` of an HTTP app (js-echo) to its first HTTP 200 versus busybox httpd through runc.

Prints the median (and p10/p90) wall time of each and their ratio shim/runc. The runs
alternate between the two so that machine noise (these VMs are noisy) hits both alike;
a few warm-up runs of each are discarded (the first shim run compiles the guest into the
precompile cache, the first runc run pages in runc). A ratio below 1 means a Wasm task
starts faster than a runc container.

    scripts/bench_start.py [--mode hello|http] [--version 1.6] [--runs 20] [--warmup 3] [--baseline OTHER_SHIM]
                           [--phases] [--floor] [--timeline]

--baseline names another build's containerd-shim-spin-v2 (e.g. a checkout of main's venv/bin one): its runs
alternate with this build's and runc's in the same containerd, and the ratio this/baseline is printed, which is
how a change's cost on the start path is measured on a noisy machine. --phases runs containerd at debug level and
prints the median of each setup phase the instance processes reported ("ready as pid N (namespaces 0.9 ms, ...)").
--floor (hello mode) also times what containerd does for a `ctr run --rm` whatever the runtime: `ctr containers
create` + `ctr containers rm` of the busybox image (the snapshot's prepare and removal, the container record),
with no task at all, and one bare `ctr version` (a ctr process and a round trip). No shim can start a task in less
than the floor minus one ctr process, so when that exceeds 0.75x runc's `ctr run --rm` the 0.75x goal is out of
reach on this containerd.
--timeline (hello mode) splits each `ctr run --rm` at the events containerd publishes (`ctr events`: container
create, task create, start, exit, task delete, container delete) and prints the median of each step for the shim
and for runc side by side, with the difference: where a start's time goes, and which steps are the runtime's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from busybox_image import BUSYBOX_REF, build_busybox_tar, httpd_command  # noqa: E402
from mkoci import build_image_tar  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

SHIM = "containerd-shim-spin-v2"
RUNTIME = "io.containerd.spin.v2"
#: containerd finds runtime io.containerd.spinbaseline.v2 as this binary on its PATH.
BASELINE_SHIM = "containerd-shim-spinbaseline-v2"
BASELINE_RUNTIME = "io.containerd.spinbaseline.v2"


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


#: Ports of the HTTP runs (host network): one per kind, reused run after run.
SHIM_PORT, RUNC_PORT, BASELINE_PORT = 18711, 18712, 18713
WASM_READY_PATH = "/.well-known/spin/health"


def _answers_200(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            return conn.recv(16).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


def _timed_http_run(daemon: PrivateContainerd, run_args: list[str], task_id: str, port: int, path: str,
                    command: list[str]) -> float:
    """`ctr run -d` to the first 200 on 127.0.0.1:port; the task is then killed and removed (not timed)."""
    started = time.perf_counter()
    result = daemon.ctr("run", "-d", "--net-host", *run_args, task_id, *command, check=False)
    if result.returncode != 0:
        raise SystemExit(f"benchmark run failed: ctr run {' '.join(run_args)}\n{result.stdout}{result.stderr}")
    deadline = started + 60
    while not _answers_200(port, path):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{task_id} never answered 200 on port {port}")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    daemon.ctr("task", "kill", "-s", "SIGKILL", task_id, check=False)
    for _ in range(500):
        if task_id not in daemon.ctr("task", "ls", check=False).stdout.split():
            break
        if daemon.ctr("task", "rm", task_id, check=False).returncode == 0:
            break
        time.sleep(0.01)
    daemon.ctr("container", "rm", task_id, check=False)
    return elapsed


def _http_app_image(workdir: Path) -> Path:
    """js-echo as a rootfs image (spin.toml in the root), from scripts/build_http_apps.py's cache."""
    from build_http_apps import build as build_http_apps

    apps_dir = build_http_apps()
    index = json.loads((apps_dir / "index.json").read_text())
    app_dir = apps_dir / index["apps"]["js-echo"]["dir"]
    rootfs = workdir / "rootfs-js-echo"
    shutil.copytree(app_dir, rootfs)
    tar = workdir / "js-echo.tar"
    build_image_tar(rootfs, tar, "docker.io/bench/js-echo:latest", os_="wasip1", arch="wasm", entrypoint=["/"])
    return tar


def _timed_run(daemon: PrivateContainerd, args: list[str], expect: str | None) -> float:
    started = time.perf_counter()
    result = daemon.ctr("run", "--rm", *args, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or (expect is not None and expect not in result.stdout):
        raise SystemExit(f"benchmark run failed: ctr run {' '.join(args)}\n{result.stdout}{result.stderr}")
    return elapsed


def _timed_floor(daemon: PrivateContainerd, image: str, container_id: str) -> float:
    started = time.perf_counter()
    daemon.ctr("containers", "create", image, container_id)
    daemon.ctr("containers", "rm", container_id)
    return time.perf_counter() - started


def _timed_ctr_version(daemon: PrivateContainerd) -> float:
    started = time.perf_counter()
    daemon.ctr("version")
    return time.perf_counter() - started


#: The events of one `ctr run --rm`, in the order they are published; a step is the time from one to the next.
TIMELINE_TOPICS = ("/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete",
                   "/containers/delete")
TIMELINE_STEPS = {
    "ctr start -> container create": "ctr's process, the image's snapshot prepared, the container record",
    "container create -> task create": "the runtime's start (the shim process) and Create",
    "task create -> task start": "Start",
    "task start -> exit": "the process runs and exits, the exit reaches containerd",
    "exit -> task delete": "ctr's wait returns, its Delete",
    "task delete -> container delete": "the shim's delete/shutdown, ctr's container and snapshot removal",
    "container delete -> ctr exit": "ctr's exit",
}
_EVENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \S+ \S+ \S+ (/\S+) (\{.*\})\s*$")


class EventTimeline:
    """`ctr events` running beside the runs: the time each container's lifecycle events were published."""

    def __init__(self, daemon: PrivateContainerd) -> None:
        argv = [str(daemon.bin_dir / "ctr"), "--address", daemon.address, "events"]
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.3)  # subscribed before the first run
        self.runs: dict[str, tuple[float, float]] = {}  # container id -> (ctr started, ctr exited), wall clock
        self._seen: dict[str, dict[str, float]] = {}  # container id -> topic -> published, wall clock

    def timed(self, container_id: str, run: Callable[[], float]) -> float:
        started = time.time()
        elapsed = run()
        self.runs[container_id] = (started, started + elapsed)
        return elapsed

    def stop(self) -> None:
        """Ends `ctr events` and reads when each container's events were published."""
        self._process.terminate()
        output, _ = self._process.communicate(timeout=10)
        for line in output.splitlines():
            match = _EVENT_LINE.match(line)
            if match is None or match.group(2) not in TIMELINE_TOPICS:
                continue
            body = json.loads(match.group(3))
            container = body.get("container_id") or body.get("id") or ""
            self._seen.setdefault(container, {}).setdefault(match.group(2), _parse_event_time(match.group(1)))

    def steps(self, container_ids: list[str]) -> dict[str, list[float]]:
        """Step name -> seconds per run, for the runs whose every event was seen (after stop)."""
        seen = self._seen
        steps: dict[str, list[float]] = {name: [] for name in TIMELINE_STEPS}
        for container in container_ids:
            events = seen.get(container, {})
            if container not in self.runs or any(topic not in events for topic in TIMELINE_TOPICS):
                continue
            started, exited = self.runs[container]
            marks = [started, *(events[topic] for topic in TIMELINE_TOPICS), exited]
            for name, (a, b) in zip(TIMELINE_STEPS, zip(marks, marks[1:])):
                steps[name].append(b - a)
        return steps


def _parse_event_time(text: str) -> float:
    """ctr prints Go's time with nanoseconds in UTC; datetime takes microseconds."""
    from datetime import datetime, timezone

    whole, _, fraction = text.partition(".")
    moment = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or '0'}")


def _print_timeline(shim: dict[str, list[float]], runc: dict[str, list[float]]) -> None:
    print(f"timeline of a ctr run --rm (median ms over {len(shim[next(iter(shim))])} shim and "
          f"{len(runc[next(iter(runc))])} runc runs whose events were all seen):")
    print(f"  {'step':34} {'shim':>8} {'runc':>8} {'shim-runc':>10}  what it is")
    for name, meaning in TIMELINE_STEPS.items():
        if not shim[name] or not runc[name]:
            continue
        a, b = statistics.median(shim[name]) * 1000, statistics.median(runc[name]) * 1000
        print(f"  {name:34} {a:8.1f} {b:8.1f} {a - b:+10.1f}  {meaning}")


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
    parser.add_argument("--mode", default="hello", choices=("hello", "http"))
    parser.add_argument("--version", default="1.6", choices=("1.6", "1.7", "2.1"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another build's containerd-shim-spin-v2 to compare with")
    parser.add_argument("--phases", action="store_true", help="print the instance processes' setup phases")
    parser.add_argument("--floor", action="store_true",
                        help="hello mode: also time containerd's own part (container create + rm, no task)")
    parser.add_argument("--timeline", action="store_true",
                        help="hello mode: split each run at containerd's events and print each step's median")
    options = parser.parse_args()
    if (options.floor or options.timeline) and options.mode != "hello":
        parser.error("--floor and --timeline apply to --mode hello")

    hello = _build_guests()
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        workdir = Path(tmp)
        shim_dir = workdir / "shim-bin"
        shim_dir.mkdir()
        (shim_dir / SHIM).symlink_to(Path(sys.executable).parent / SHIM)
        if options.baseline is not None:
            (shim_dir / BASELINE_SHIM).symlink_to(options.baseline.absolute())
        daemon = PrivateContainerd(options.version, workdir / "containerd", shim_dir, debug=options.phases,
                                   extra_env={"SPIN_SHIM_CACHE_DIR": str(workdir / "cache")})
        daemon.start()
        try:
            runs: dict[str, Callable[[int], float]]
            timeline = EventTimeline(daemon) if options.timeline else None
            if options.mode == "hello":
                daemon.ctr("images", "import", "--all-platforms", str(
                    _image(workdir, "hello-wasm", {"/hello.wasm": hello}, os_="wasip1", arch="wasm",
                           entrypoint=["/hello.wasm"])))
                daemon.ctr("images", "import", str(
                    _image(workdir, "busybox", {"/bin/busybox": busybox}, os_="linux", arch="amd64",
                           entrypoint=["/bin/busybox", "true"])))
                wasm = "docker.io/bench/hello-wasm:latest"
                def shim_run(i: int) -> float:
                    return _timed_run(daemon, ["--runtime", RUNTIME, wasm, f"w{i}"], "hello from wasm")

                def runc_run(i: int) -> float:
                    return _timed_run(daemon, ["docker.io/bench/busybox:latest", f"r{i}"], None)

                runs = {
                    "shim": shim_run if timeline is None else lambda i: timeline.timed(f"w{i}", lambda: shim_run(i)),
                    "runc": runc_run if timeline is None else lambda i: timeline.timed(f"r{i}", lambda: runc_run(i)),
                    "baseline": lambda i: _timed_run(daemon, ["--runtime", BASELINE_RUNTIME, wasm, f"b{i}"],
                                                     "hello from wasm"),
                    "floor": lambda i: _timed_floor(daemon, "docker.io/bench/busybox:latest", f"f{i}"),
                    "ctr": lambda i: _timed_ctr_version(daemon),
                }
            else:
                daemon.ctr("images", "import", "--all-platforms", str(_http_app_image(workdir)))
                daemon.ctr("images", "import", str(build_busybox_tar(workdir)))
                wasm = "docker.io/bench/js-echo:latest"

                def wasm_run(runtime: str, task_id: str, port: int) -> float:
                    return _timed_http_run(daemon, ["--runtime", runtime, "--env",
                                                    f"SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}", wasm],
                                           task_id, port, WASM_READY_PATH, ["/"])

                runs = {
                    "shim": lambda i: wasm_run(RUNTIME, f"w{i}", SHIM_PORT),
                    "runc": lambda i: _timed_http_run(daemon, [BUSYBOX_REF], f"r{i}", RUNC_PORT, "/",
                                                      httpd_command(RUNC_PORT)),
                    "baseline": lambda i: wasm_run(BASELINE_RUNTIME, f"b{i}", BASELINE_PORT),
                }
            kinds = (["shim", "runc"] + (["baseline"] if options.baseline is not None else [])
                     + (["floor", "ctr"] if options.floor else []))
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for i in range(options.warmup + options.runs):
                for kind in kinds:
                    elapsed = runs[kind](i)
                    if i >= options.warmup:
                        times[kind].append(elapsed)
            measured = range(options.warmup, options.warmup + options.runs)
            steps = None
            if timeline is not None:
                timeline.stop()
                steps = (timeline.steps([f"w{i}" for i in measured]), timeline.steps([f"r{i}" for i in measured]))
            phases = _phases(workdir / "containerd", options.warmup) if options.phases else {}
            if options.phases and not phases:
                raise SystemExit("--phases: no instance reported its setup phases in containerd's log")
        finally:
            daemon.stop()
    shim_times, runc_times, baseline_times = times["shim"], times["runc"], times.get("baseline", [])
    what = {"hello": ("ctr run --rm, Wasm hello via", "ctr run --rm, busybox true via runc:       "),
            "http": ("ctr run -d to first 200, js-echo via", "ctr run -d to first 200, busybox httpd via runc:")}
    wasm_label, runc_label = what[options.mode]
    ratio = statistics.median(shim_times) / statistics.median(runc_times)
    print(f"containerd {daemon.version_string}, {options.runs} runs each after {options.warmup} warm-up, alternating")
    print(f"{wasm_label} {SHIM}: {_summary(shim_times)}")
    print(f"{runc_label} {_summary(runc_times)}")
    print(f"ratio shim/runc (median): {ratio:.2f}")
    if options.baseline is not None:
        print(f"{wasm_label} the baseline: {_summary(baseline_times)}   ({options.baseline})")
        print(f"ratio shim/baseline (median): {statistics.median(shim_times) / statistics.median(baseline_times):.3f}"
              f"   median of paired differences: "
              f"{statistics.median(s - b for s, b in zip(shim_times, baseline_times)) * 1000:+.1f} ms")
    if options.floor:
        floor, ctr = statistics.median(times["floor"]), statistics.median(times["ctr"])
        runc = statistics.median(runc_times)
        print(f"containerd's floor, container create + rm without a task: {_summary(times['floor'])}")
        print(f"one ctr process (ctr version):                          {_summary(times['ctr'])}")
        base = floor - ctr
        print(f"floor minus one ctr process: {base * 1000:.1f} ms = {base / runc:.2f}x runc's run "
              f"(the 0.75x goal is {0.75 * runc * 1000:.1f} ms)")
        print(f"each run minus that floor: shim {(statistics.median(shim_times) - base) * 1000:.1f} ms, "
              f"runc {(runc - base) * 1000:.1f} ms")
    if steps is not None:
        _print_timeline(*steps)
    if phases:
        print("instance setup phases of this build (median ms): "
              + ", ".join(f"{name} {statistics.median(values):.1f}" for name, values in phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
