"""A real OCI registry on 127.0.0.1 for tests, demos and benchmarks: Debian's `docker-registry` (CNCF distribution 2.8).

`Registry` runs one on a free port with its storage in a temp dir, waits until `GET /v2/` answers 200, and stops it
(SIGTERM, then SIGKILL) so no process outlives the test session. `trust_registry` writes containerd's hosts.toml for
it, so containerd's CRI plugin and the 1.7+ transfer service pull over plain HTTP (a hosts.toml whose `server` and
`[host."http://..."]` are http:// URLs, under the registry `config_path` containerd reads).

Lives in scripts/ so that benchmarks can use it; the pytest fixture is in tests/e2e/registry_support.py.

For a developer trying `containerd-shim-spin-v2 push` by hand:

    scripts/local_registry.py serve [--workdir DIR] [--certs-dir /etc/containerd/certs.d]

runs one in the foreground, prints its address, and with --certs-dir writes the hosts.toml that lets a containerd
whose registry `config_path` is that directory pull from it over plain HTTP (removed again at exit); Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY_BINARY = "docker-registry"
READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class RegistryError(RuntimeError):
    """The registry did not start, or answered a request with an error."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """One `docker-registry serve` on 127.0.0.1:<free port>, storage under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of a reference, and containerd's hosts.toml dir name."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RegistryError(f"{REGISTRY_BINARY} not found on PATH; run scripts/setup.sh (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        config = self.workdir / "config.yml"
        # JSON is YAML: no YAML writer needed. No debug listener: it would need a second free port.
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "spin-shim-test"},
        }))
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C of pytest must not reach it before stop() does.
            self._process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RegistryError(f"{REGISTRY_BINARY} exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RegistryError(f"{REGISTRY_BINARY} did not answer GET /v2/ within {READY_TIMEOUT_S}s:\n{self._log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE_S)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        except OSError:
            return "(no log)"

    # ---- the distribution API, read side ------------------------------------------------------------------
    def get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
        """GET ``/v2/<path>``; returns (body, headers with lower-case names). Raises RegistryError on HTTP errors."""
        request = urllib.request.Request(f"{self.url}/v2/{path}", headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"GET /v2/{path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None

    def manifest(self, repository: str, reference: str) -> tuple[bytes, dict[str, str]]:
        return self.get(f"{repository}/manifests/{reference}", accept=MANIFEST_ACCEPT)

    def blob(self, repository: str, digest: str) -> bytes:
        return self.get(f"{repository}/blobs/{digest}")[0]


def trust_registry(ctrd, registry: Registry) -> Path:
    """Make ``ctrd`` (a PrivateContainerd) pull from ``registry`` over plain HTTP; returns the hosts.toml written.

    ``ctrd.certs_dir`` is the `config_path` of containerd's CRI registry config and of the 1.7+ transfer service;
    containerd reads `<config_path>/<host:port>/hosts.toml` at each pull, so no restart is needed.
    """
    return _write_hosts_toml(ctrd, registry.host, registry.url, registry, '"pull", "resolve", "push"')


def mirror_to_registry(ctrd, upstream: str, registry: Registry) -> Path:
    """Make ``ctrd`` resolve ``<upstream>/<path>`` at ``registry`` as ``<registry>/v2/<path>`` (a pull mirror, so
    images pushed there under the upstream's repository paths are pulled by their upstream names)."""
    return _write_hosts_toml(ctrd, upstream, f"https://{upstream}", registry, '"pull", "resolve"')


def _write_hosts_toml(ctrd, host: str, server: str, registry: Registry, capabilities: str) -> Path:
    hosts_dir = Path(ctrd.certs_dir) / host
    hosts_dir.mkdir(parents=True, exist_ok=True)
    hosts_toml = hosts_dir / "hosts.toml"
    hosts_toml.write_text(
        f'server = "{server}"\n'
        "\n"
        f'[host."{registry.url}"]\n'
        f"  capabilities = [{capabilities}]\n"
    )
    return hosts_toml


class _CertsDir:
    """What trust_registry needs of a containerd: its registry config_path."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = certs_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local OCI registry on 127.0.0.1 until Ctrl-C.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one in the foreground and print its address")
    serve.add_argument("--workdir", type=Path, help="its storage and log (default: a temporary directory)")
    serve.add_argument("--certs-dir", type=Path,
                       help="a containerd registry config_path: write <dir>/127.0.0.1:<port>/hosts.toml there")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="local-registry-") as scratch:
        registry = Registry(args.workdir or Path(scratch))
        try:
            registry.start()
        except RegistryError as exc:
            print(f"local_registry: {exc}", file=sys.stderr)
            return 1
        hosts_toml = trust_registry(_CertsDir(args.certs_dir), registry) if args.certs_dir else None
        print(f"registry at {registry.host} (push with: containerd-shim-spin-v2 push <app dir> "
              f"{registry.host}/<repository>:<tag>){f'; containerd trusts it through {hosts_toml}' if hosts_toml else ''}",
              flush=True)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            registry.stop()
            if hosts_toml is not None:
                hosts_toml.unlink(missing_ok=True)
                try:
                    hosts_toml.parent.rmdir()
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
