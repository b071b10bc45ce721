#!/usr/bin/env python3
"""What a Spin data call costs through the shim: one Redis GET and one SQLite query per request, against the same
calls made by a plain Python client, same machine, one run.

Served through a private containerd 2.1 with this shim (`ctr run -d --net-host --cpus 1`: one worker, so the
figures are per-worker), the py-spin app (Spin Python SDK 3.4.1) answers

* `GET /hello`: the request path alone (instance, guest, response);
* `GET /data-bench?address=redis://...`: the same, plus `redis.open` + `get("bench")` and a
  `spin:sqlite` `open("default")` + `SELECT v FROM bench WHERE k = ?` (tests/apps/src/py-spin/app.py);

each loaded with wrk at 1 connection, alternating, for `--rounds` rounds; a real redis-server from Debian serves
the GET. The plain client is this Python process doing the same two calls in a loop with redis-py and sqlite3,
once reusing its connections and once opening both per call (as a guest must: a Spin instance lives for one
request). The figures printed:

* req/s and p50 of both routes, and calls/s of both plain-client variants;
* the data calls' share of a request through the shim: 1/rps(data-bench) - 1/rps(hello);
* the host's overhead per request of the two calls: that share minus the plain client's time for the same two
  calls opened per call (the guest's own SDK work, the canonical-ABI crossings and the policy checks), and the
  ratio of the two.

Usage (root): .venv/bin/python scripts/bench_data.py [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_http import ShimServer, WrkResult, run_wrk  # noqa: E402
from build_http_apps import build as build_http_apps  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

from tests.redis_support import running_redis  # noqa: E402

APP = "py-spin"
BENCH_VALUE = "cached-value"
QUERY = "SELECT v FROM bench WHERE k = ?"


def seed_app_database(url: str) -> None:
    """The app's default database gets the table the route reads (through the app itself: it is in the task's root)."""
    statements = [["CREATE TABLE IF NOT EXISTS bench (k INTEGER PRIMARY KEY, v TEXT)", []],
                  ["INSERT OR REPLACE INTO bench VALUES (1, ?)", ["from-sqlite"]]]
    request = urllib.request.Request(f"{url}/sqlite", data=json.dumps(statements).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 200:
            raise SystemExit(f"seeding the app's database failed: {response.status} {response.read()!r}")


def check_route(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        body = response.read().decode()
    if body != f"{BENCH_VALUE} from-sqlite":
        raise SystemExit(f"{path} answered {body!r}, not the seeded values")
    return body


def calls_per_second(call: Callable[[], object], duration: float) -> float:
    call()  # warm
    count, started = 0, time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        call()
        count += 1
    return count / (time.perf_counter() - started)


def plain_client_rates(redis_port: int, workdir: Path, duration: float) -> dict[str, float]:
    """redis-py GET + sqlite3 SELECT in this process: with kept connections, and opened per call."""
    import redis

    db_path = workdir / "plain.db"
    with sqlite3.connect(db_path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE IF NOT EXISTS bench (k INTEGER PRIMARY KEY, v TEXT)")
        setup.execute("INSERT OR REPLACE INTO bench VALUES (1, 'from-sqlite')")

    kept_redis = redis.Redis(host="127.0.0.1", port=redis_port)
    kept_db = sqlite3.connect(db_path)

    def kept() -> object:
        return kept_redis.get("bench"), kept_db.execute(QUERY, (1,)).fetchall()

    def opened() -> object:
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        database = sqlite3.connect(db_path)
        try:
            return client.get("bench"), database.execute(QUERY, (1,)).fetchall()
        finally:
            client.close()
            database.close()

    try:
        return {"kept connections": calls_per_second(kept, duration),
                "opened per call": calls_per_second(opened, duration)}
    finally:
        kept_redis.close()
        kept_db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run / plain-client loop")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it starts a private containerd)")
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")

    apps_dir = build_http_apps()
    index = json.loads((apps_dir / "index.json").read_text())
    app_dir = apps_dir / index["apps"][APP]["dir"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-data-"))
    shim_bin = workdir / "shim-bin"
    shim_bin.mkdir()
    (shim_bin / "containerd-shim-spin-v2").symlink_to(REPO / ".venv" / "bin" / "containerd-shim-spin-v2")
    daemon = PrivateContainerd("2.1", workdir / "containerd", shim_bin,
                               extra_env={"SPIN_SHIM_CACHE_DIR": str(workdir / "cache")})
    daemon.start()
    shim: ShimServer | None = None
    try:
        with running_redis(workdir / "redis") as redis_port:
            import redis

            redis.Redis(host="127.0.0.1", port=redis_port).set("bench", BENCH_VALUE)
            shim = ShimServer(daemon, app_dir, APP, workdir,
                              env={"SPIN_VARIABLE_API_TOKEN": "bench", "SPIN_SHIM_HTTP_WORKERS": "1"})
            seed_app_database(shim.url)
            data_path = f"/data-bench?address=redis://127.0.0.1:{redis_port}"
            check_route(shim.url, data_path)
            for path in ("/hello", data_path):  # warm: first requests pay lazy page faults and imports
                run_wrk(shim.url, 1, 2, path)
            routes = {"/hello": "/hello", "/data-bench": data_path}
            results: dict[str, list[WrkResult]] = {name: [] for name in routes}
            plain: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, path in routes.items():
                    results[name].append(run_wrk(shim.url, 1, args.duration, path))
                for variant, rate in plain_client_rates(redis_port, workdir, args.duration / 2).items():
                    plain.setdefault(variant, []).append(rate)
    finally:
        if shim is not None:
            shim.stop()
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = print_report(results, plain)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_report(results: dict[str, list[WrkResult]], plain: dict[str, list[float]]) -> dict:
    """Medians over rounds; times in ms per request."""
    figures: dict = {}
    print(f"{'through the shim (1 worker, 1 conn)':<40}{'req/s':>10}{'p50 ms':>10}{'errors':>8}")
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_second for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        errors = sum(r.errors for r in runs)
        figures[name] = {"rps": rps, "p50_ms": p50, "errors": errors}
        print(f"{'GET ' + name:<40}{rps:>10.0f}{p50:>10.2f}{errors:>8}")
    print(f"{'plain Python client (redis-py, sqlite3)':<40}{'calls/s':>10}{'ms':>10}")
    for variant, rates in plain.items():
        rate = statistics.median(rates)
        figures[f"plain {variant}"] = {"per_s": rate, "ms": 1000 / rate}
        print(f"{'GET + SELECT, ' + variant:<40}{rate:>10.0f}{1000 / rate:>10.3f}")
    data_share = 1000 / figures["/data-bench"]["rps"] - 1000 / figures["/hello"]["rps"]
    plain_ms = figures["plain opened per call"]["ms"]
    overhead = data_share - plain_ms
    figures["data calls through the shim ms"] = data_share
    figures["host overhead ms"] = overhead
    figures["ratio shim/plain"] = data_share / plain_ms
    print(f"the two calls through the shim: {data_share:.3f} ms per request (1/rps(data-bench) - 1/rps(hello))")
    print(f"the same two calls, plain client opening per call: {plain_ms:.3f} ms")
    print(f"host overhead: {overhead:.3f} ms per request for the two calls; ratio shim/plain "
          f"{figures['ratio shim/plain']:.2f}x")
    if any(figures[name]["errors"] for name in results):
        print("WARNING: some requests did not answer 2xx; the figures include them", flush=True)
    return figures


if __name__ == "__main__":
    sys.exit(main())
