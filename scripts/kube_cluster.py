#!/usr/bin/env python3
"""A single-node Kubernetes cluster on a private containerd: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet and kube-proxy, started and stopped by pid like the private containerd itself.

Why it exists: a platform engineer judges the shim by what kubelet does with it (probes on its own timing, the
projected service-account token, /etc/hosts and termination-log mounts, PLEG relists, the CRI streaming server
behind `kubectl exec`, `logs -f` and `port-forward`, restarts with back-off), and scripts/cri_client.py only imitates
kubelet. Here the real components, built by scripts/build_kube.sh from the k8s.io/kubernetes module at one release,
drive the private containerd (scripts/private_containerd.py) whose config.toml the shim's own installer wrote.

What the node is like, and why:

* One node, named after this machine's node IP, with the cgroupfs driver (no systemd here) under a cgroup root of
  its own (`/spin-kube-<id>`), so two clusters, or a cluster and the CRI tests, never share a QoS hierarchy.
* Pods get the private containerd's CNI bridge and /24 (its `enable_cni()`); the controller-manager allocates no
  pod CIDRs. Services get 10.96.0.0/24 from the apiserver and kube-proxy in iptables mode, whose rules
  `kube-proxy --cleanup` removes at stop.
* Certificates come from openssl, made at start in the workdir: a CA, the apiserver's serving certificate (its SANs:
  the node IP, 127.0.0.1, the first service IP, kubernetes.default.svc), the kubelet's serving certificate, client
  certificates for the kubelet (system:node:<name>, so the Node authorizer governs it) and for an admin in
  system:masters, which the other components and kubectl use. Service-account tokens are signed by an RSA key of
  the cluster's.
* etcd runs with --unsafe-no-fsync: the cluster is thrown away with its workdir.
* SpinKube's spin-operator (scripts/build_spin_operator.sh) is optional: `start_spin_operator()` installs its CRDs
  and runs it as one more component, stopped first.
* The kernel tunables kubelet sets on start (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops) are read
  before and restored at stop, so a test run leaves the machine's sysctls as it found them.

Use as a library (the e2e fixtures do)::

    cluster = KubeCluster(ctrd, workdir)   # ctrd: a started PrivateContainerd with CRI, CNI and the pause image
    cluster.start()
    cluster.kubectl("apply", "-f", "deploy/runtime-class.yaml")
    cluster.stop()

or from the command line, for demos::

    python3 scripts/kube_cluster.py start --workdir /tmp/k [--containerd 2.1] [--spin-operator]
    KUBECONFIG=/tmp/k/kube/admin.kubeconfig kubectl get nodes
    python3 scripts/kube_cluster.py stop --workdir /tmp/k
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from private_containerd import (  # noqa: E402
    PrivateContainerd,
    _is_alive,
    _rmdir_quietly,
    _signal,
    _unmount,
    _wait_gone,
    cache_root,
    cgroup_hierarchies,
    mounts_under,
)

KUBE_VERSION = "v1.34.4"
REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build_kube.sh"
SPIN_OPERATOR_VERSION = "v0.6.1"
SPIN_OPERATOR_BUILD_SCRIPT = REPO / "scripts" / "build_spin_operator.sh"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of the range
CLUSTER_DOMAIN = "cluster.local"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
#: Set by kubelet at start (its setupKernelTunables); put back at stop.
KERNEL_TUNABLES = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
#: Started in this order and stopped in the reverse one.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
              "spin-operator")


class KubeClusterError(RuntimeError):
    """A component did not start, or the node did not become Ready; the message carries its log's tail."""


def kube_bin_dir(version: str = KUBE_VERSION) -> Path:
    """The cached binaries of this release, built by scripts/build_kube.sh when they are not there yet."""
    bin_dir = cache_root() / "kube" / version / "bin"
    if not (bin_dir.parent / ".stamp").exists():
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    return bin_dir


def spin_operator_dist(version: str = SPIN_OPERATOR_VERSION) -> Path:
    """The cached spin-operator build and its CRDs, built by scripts/build_spin_operator.sh when not there yet."""
    dist = cache_root() / "spin-operator" / version / "dist"
    if not (dist.parent / ".stamp").exists():
        subprocess.run(["bash", str(SPIN_OPERATOR_BUILD_SCRIPT)], check=True)
    return dist


def node_ip() -> str:
    """The address this machine routes from: what the apiserver advertises and the kubelet reports."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # TEST-NET-3: no packet is sent; the kernel only picks a source address
        return probe.getsockname()[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class KubeCluster:
    """The control plane and the one node on `ctrd`; everything it writes lives under `<workdir>/kube`."""

    def __init__(self, ctrd: PrivateContainerd, workdir: Path, *, bin_dir: Path | None = None,
                 kube_proxy: bool = True) -> None:
        self.ctrd = ctrd
        self.dir = Path(workdir) / "kube"
        self.bin_dir = bin_dir or kube_bin_dir()
        self.kube_proxy = kube_proxy
        self.node_ip = node_ip()
        self.node_name = "spin-node-" + self.node_ip.replace(".", "-")
        self._state_path = self.dir / "cluster.json"
        self._state: dict = {}

    # ---- paths ------------------------------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def crictl_config(self) -> Path:
        """crictl's config for this node's containerd: `crictl --config <this> pods`."""
        return self.dir / "crictl.yaml"

    def log_path(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every component, and return once the node is Ready and pods can be admitted (the default
        ServiceAccount and the kube-root-ca.crt ConfigMap exist). On failure everything started is stopped."""
        if self._state_path.exists():
            raise KubeClusterError(f"a cluster already runs in {self.dir} (stop it first)")
        for directory in (self.pki, self.dir / "logs", self.kubelet_root, self.pod_logs_dir, self.dir / "etcd"):
            directory.mkdir(parents=True, exist_ok=True)
        self._state = {
            "pids": {}, "node": self.node_name, "ports": {name: free_port() for name in (
                "etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kubelet", "kubelet-healthz",
                "proxy-healthz", "proxy-metrics")},
            "cgroup_root": f"/spin-kube-{uuid.uuid4().hex[:8]}",
            "sysctls": {name: Path("/proc/sys", name).read_text().strip() for name in KERNEL_TUNABLES},
            "containerd": {"address": self.ctrd.address, "workdir": str(self.ctrd.workdir)},
        }
        self._save()
        try:
            self._make_pki()
            endpoint = f"unix://{self.ctrd.address}"
            self.crictl_config.write_text(f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n")
            self._spawn("etcd", self._etcd_args())
            self._spawn("kube-apiserver", self._apiserver_args())
            self._wait("kube-apiserver", lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0)
            self._spawn("kube-controller-manager", self._controller_manager_args())
            self._spawn("kube-scheduler", self._scheduler_args())
            self._make_cgroup_root(self._state["cgroup_root"])
            self._spawn("kubelet", self._kubelet_args())
            if self.kube_proxy:
                self._spawn("kube-proxy", self._proxy_args())
            self._wait("kubelet", self._node_ready)
            self._wait("kube-controller-manager", lambda: self.kubectl(
                "get", "serviceaccount/default", "configmap/kube-root-ca.crt", check=False).returncode == 0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the components (kubelet's pods first, through CRI, so nothing of theirs outlives the cluster),
        remove kube-proxy's rules and kubelet's mounts, put the kernel tunables back. Safe to call twice."""
        state = self._load()
        if not state:
            return
        pids = state.get("pids", {})
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if pid is not None:
                _stop_pid(pid, STOP_GRACE_S)
        self._remove_pods()
        if self.kube_proxy and (self.bin_dir / "kube-proxy").exists() and "kube-proxy" in pids:
            subprocess.run([self.binary("kube-proxy"), "--cleanup"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
        # kube-proxy's localnet guard (KUBE-FIREWALL in INPUT/OUTPUT) outlives its --cleanup.
        for rule in (["-D", "INPUT", "-j", "KUBE-FIREWALL"], ["-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
                     ["-F", "KUBE-FIREWALL"], ["-X", "KUBE-FIREWALL"]):
            subprocess.run(["iptables", *rule], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        for mount in mounts_under(self.kubelet_root):  # deepest first
            _unmount(mount)
        self._remove_cgroups(state.get("cgroup_root", ""))
        for name, value in state.get("sysctls", {}).items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(value + "\n")
        self._state_path.unlink(missing_ok=True)
        self._state = {}

    def restart_kubelet(self) -> None:
        """Stop kubelet (SIGTERM, as `systemctl restart kubelet` does) and start it again: its pods keep running,
        and the new kubelet finds them through CRI."""
        _stop_pid(self._load()["pids"]["kubelet"], STOP_GRACE_S)
        self._state = self._load()
        self._spawn("kubelet", self._kubelet_args())
        self._wait("kubelet", lambda: _http_ok(self._state["ports"]["kubelet-healthz"], "/healthz"))

    def start_spin_operator(self, dist: Path | None = None) -> None:
        """Install SpinKube's CRDs and run spin-operator against the cluster, as `make install run` does: out of
        the cluster, as the admin (so its RBAC role is not needed), webhooks off (they need a serving certificate
        the apiserver trusts; without them SpinApps get no defaults, so they must name their executor and
        replicas). Returns once the CRDs are Established and the operator is ready; stop() stops it."""
        dist = dist or spin_operator_dist()
        self._state = self._load()
        for crd in sorted((dist / "crds").glob("*.yaml")):
            # Server-side: the SpinApp CRD is too big for client-side apply's last-applied annotation.
            self.kubectl("apply", "--server-side", "-f", str(crd))
        self._wait_established(["spinapps.core.spinkube.dev", "spinappexecutors.core.spinkube.dev"])
        self._state["ports"]["spin-operator-probes"] = probes = free_port()
        self._spawn("spin-operator", [
            str(dist / "spin-operator"), "--kubeconfig", str(self.kubeconfig), "--leader-elect=false",
            "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{probes}",
            "--zap-devel=false", "--zap-log-level=info"])
        self._wait("spin-operator", lambda: _http_ok(probes, "/readyz"))

    # ---- kubectl -----------------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary("kubectl"), "--kubeconfig", str(self.kubeconfig), *args], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubeClusterError(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                                   f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    # ---- the components' command lines --------------------------------------------------------------------------
    def _etcd_args(self) -> list[str]:
        ports = self._state["ports"]
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [self.binary("etcd"), "--name", "node", "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"node={peer}", "--unsafe-no-fsync",
                "--log-level", "warn"]

    def _apiserver_args(self) -> list[str]:
        ports, pki = self._state["ports"], self.pki
        return [self.binary("kube-apiserver"),
                "--etcd-servers", f"http://127.0.0.1:{ports['etcd']}",
                "--secure-port", str(ports["apiserver"]), "--bind-address", "0.0.0.0",
                "--advertise-address", self.node_ip, "--service-cluster-ip-range", SERVICE_CIDR,
                "--client-ca-file", str(pki / "ca.crt"),
                "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
                "--kubelet-client-certificate", str(pki / "admin.crt"),
                "--kubelet-client-key", str(pki / "admin.key"),
                "--kubelet-certificate-authority", str(pki / "ca.crt"),
                "--kubelet-preferred-address-types", "InternalIP",
                "--service-account-issuer", f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
                "--allow-privileged=true", "--profiling=false", "--v", "1"]

    def _controller_manager_args(self) -> list[str]:
        pki = self.pki
        return [self.binary("kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
                "--authentication-kubeconfig", str(self.kubeconfig),
                "--authorization-kubeconfig", str(self.kubeconfig),
                "--bind-address", "127.0.0.1", "--secure-port", str(self._state["ports"]["controller-manager"]),
                "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "ca.crt"),
                "--service-cluster-ip-range", SERVICE_CIDR, "--allocate-node-cidrs=false",
                "--use-service-account-credentials=false", "--leader-elect=false", "--profiling=false",
                "--v", "1"]

    def _scheduler_args(self) -> list[str]:
        return [self.binary("kube-scheduler"), "--kubeconfig", str(self.kubeconfig),
                "--authentication-kubeconfig", str(self.kubeconfig),
                "--authorization-kubeconfig", str(self.kubeconfig),
                "--bind-address", "127.0.0.1", "--secure-port", str(self._state["ports"]["scheduler"]),
                "--leader-elect=false", "--profiling=false", "--v", "1"]

    def _kubelet_args(self) -> list[str]:
        config = self.dir / "kubelet-config.json"
        ports, pki = self._state["ports"], self.pki
        endpoint = f"unix://{self.ctrd.address}"
        # JSON is YAML: KubeletConfiguration written without a YAML library.
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "address": self.node_ip, "port": ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": ports["kubelet-healthz"],
            "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "cgroupDriver": "cgroupfs", "cgroupRoot": self._state["cgroup_root"], "failCgroupV1": False,
            "failSwapOn": False, "containerRuntimeEndpoint": endpoint, "imageServiceEndpoint": endpoint,
            "podLogsDir": str(self.pod_logs_dir), "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "/etc/resolv.conf", "serializeImagePulls": False,
            # A test machine's disk may be nearly full: no eviction, no image GC on its account.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "maxPods": 250, "fileCheckFrequency": "5s", "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s", "nodeStatusReportFrequency": "10s",
            # The node's firewall is not the test's to change: no KUBE-FIREWALL or canary chains from kubelet.
            "makeIPTablesUtilChains": False,
        }, indent=1))
        return [self.binary("kubelet"), "--config", str(config), "--kubeconfig", str(self.dir / "kubelet.kubeconfig"),
                "--root-dir", str(self.kubelet_root), "--cert-dir", str(self.dir / "kubelet-certs"),
                "--hostname-override", self.node_name, "--node-ip", self.node_ip, "--v", "2"]

    def _proxy_args(self) -> list[str]:
        ports = self._state["ports"]
        network = self.ctrd.cni_network
        subnet = network.subnet if network is not None else None
        args = [self.binary("kube-proxy"), "--kubeconfig", str(self.kubeconfig), "--proxy-mode", "iptables",
                "--hostname-override", self.node_name,
                "--healthz-bind-address", f"127.0.0.1:{ports['proxy-healthz']}",
                "--metrics-bind-address", f"127.0.0.1:{ports['proxy-metrics']}", "--v", "1"]
        if subnet:
            args += ["--cluster-cidr", subnet]
        return args

    # ---- certificates --------------------------------------------------------------------------------------------
    def _make_pki(self) -> None:
        pki = self.pki
        openssl = shutil.which("openssl")
        if openssl is None:
            raise KubeClusterError("openssl not found; run scripts/setup.sh")

        def run(*args: str) -> None:
            result = subprocess.run([openssl, *args], capture_output=True, text=True)
            if result.returncode != 0:
                raise KubeClusterError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=spin-kube-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
        run("genrsa", "-out", str(pki / "sa.key"), "2048")
        run("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))

        def issue(name: str, subject: str, *, server_names: tuple[str, ...] | list[str] = (),
                  usage: str) -> None:
            extensions = pki / f"{name}.ext"
            lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                     f"extendedKeyUsage={usage}"]
            if server_names:
                lines.append("subjectAltName=" + ",".join(server_names))
            extensions.write_text("\n".join(lines) + "\n")
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(pki / f"{name}.key"),
                "-out", str(pki / f"{name}.csr"))
            run("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
                str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-extfile", str(extensions),
                "-out", str(pki / f"{name}.crt"))

        issue("apiserver", "/CN=kube-apiserver", usage="serverAuth", server_names=[
            f"IP:{self.node_ip}", "IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}"])
        issue("kubelet", f"/CN={self.node_name}", usage="serverAuth",
              server_names=[f"IP:{self.node_ip}", f"DNS:{self.node_name}"])
        issue("admin", "/O=system:masters/CN=spin-kube-admin", usage="clientAuth")
        issue("kubelet-client", f"/O=system:nodes/CN=system:node:{self.node_name}", usage="clientAuth")
        server = f"https://127.0.0.1:{self._state['ports']['apiserver']}"
        self.kubeconfig.write_text(_kubeconfig(server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key"))
        (self.dir / "kubelet.kubeconfig").write_text(
            _kubeconfig(server, pki / "ca.crt", pki / "kubelet-client.crt", pki / "kubelet-client.key"))

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_path(name).open("ab")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.dir)
        log.close()
        self._state["pids"][name] = process.pid
        self._save()

    def _wait(self, name: str, ready, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for component, pid in self._state["pids"].items():
                if not _is_alive(pid):
                    raise KubeClusterError(f"{component} exited while waiting for {name}; "
                                           f"{self.log_path(component)}:\n{_tail(self.log_path(component))}")
            if time.monotonic() > deadline:
                raise KubeClusterError(f"{name} not ready after {timeout:.0f} s; "
                                       f"{self.log_path(name)}:\n{_tail(self.log_path(name))}")
            time.sleep(0.5)

    def _wait_established(self, crds: list[str], timeout: float = 60.0) -> None:
        """Polls rather than `kubectl wait --for=condition=Established`: that fails at once, instead of waiting,
        while a just-created CRD has no status.conditions yet (seen in CI)."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while True:
            pending = [crd for crd in pending if self.kubectl(
                "get", "crd", crd, "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                check=False).stdout.strip() != "True"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise KubeClusterError(f"CRDs not Established after {timeout:.0f} s: {', '.join(pending)}")
            time.sleep(0.5)

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", self.node_name, "-o",
                              'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False)
        return result.returncode == 0 and result.stdout.strip() == "True"

    def _remove_pods(self) -> None:
        """Whatever pods kubelet left (it does not stop them when it exits) go through CRI, as kubelet would."""
        from cri_client import CriClient

        if not self.ctrd.is_running():
            return
        client = CriClient(self.ctrd)
        try:
            for sandbox in client.list_pods():
                with contextlib.suppress(Exception):
                    client.stop_pod(sandbox.id)
                with contextlib.suppress(Exception):
                    client.remove_pod(sandbox.id)
        finally:
            client.close()

    def pod_cgroups(self) -> list[Path]:
        """The pod-level cgroups kubelet keeps under its root (`.../kubepods/<qos>/pod<uid>`), in every hierarchy."""
        root = self._load().get("cgroup_root", "")
        if not root:
            return []
        return [path for hierarchy in cgroup_hierarchies()
                for path in (hierarchy / root.lstrip("/")).glob("kubepods*/**/pod*") if path.is_dir()]

    @staticmethod
    def _make_cgroup_root(root: str) -> None:
        """kubelet wants its cgroup root to exist in every hierarchy; a v1 cpuset starts empty and takes no task
        until it has CPUs and memory nodes, so it gets its parent's."""
        for hierarchy in cgroup_hierarchies():
            top = hierarchy / root.lstrip("/")
            top.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (top / name).exists() and not (top / name).read_text().strip():
                    (top / name).write_text((hierarchy / name).read_text())

    @staticmethod
    def _remove_cgroups(root: str) -> None:
        """The QoS hierarchy kubelet made under its cgroup root, deepest first, in every v1 hierarchy."""
        if not root.startswith("/spin-kube-"):
            return
        for hierarchy in cgroup_hierarchies():
            top = hierarchy / root.lstrip("/")
            if not top.is_dir():
                continue
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                    reverse=True) + [top]:
                _rmdir_quietly(directory)

    def _save(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        self._state_path.write_text(json.dumps(self._state))

    def _load(self) -> dict:
        if self._state:
            return self._state
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "spin",
        "clusters": [{"name": "spin", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "spin", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "spin", "context": {"cluster": "spin", "user": "spin"}}],
    }, indent=1)


def _http_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return conn.recv(32).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _stop_pid(pid: int, grace: float) -> None:
    """SIGTERM, and SIGKILL when the grace period ends; returns once the process is gone (or 5 s after that)."""
    _signal(pid, signal.SIGTERM)
    if not _wait_gone([pid], grace):
        _signal(pid, signal.SIGKILL)
        _wait_gone([pid], 5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("--workdir", type=Path, required=True)
    start.add_argument("--containerd", default="2.1", choices=("1.7", "2.1"))
    start.add_argument("--spin-operator", action="store_true",
                       help="also install SpinKube's CRDs and run spin-operator (scripts/build_spin_operator.sh)")
    stop = sub.add_parser("stop")
    stop.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (kubelet and containerd need it)")
    if args.command == "start":
        ctrd = node_containerd(args.containerd, args.workdir / "containerd")
        try:
            cluster = KubeCluster(ctrd, args.workdir)
            cluster.start()
        except BaseException:
            ctrd.stop()
            raise
        if args.spin_operator:
            try:
                cluster.start_spin_operator()
            except BaseException:
                cluster.stop()
                ctrd.stop()
                raise
        print(f"node {cluster.node_name} Ready\nexport KUBECONFIG={cluster.kubeconfig}\n"
              f"alias crictl='{cluster.binary('crictl')} --config {cluster.crictl_config}'")
        return 0
    recorded = json.loads((args.workdir / "containerd" / "instance.json").read_text())
    ctrd = PrivateContainerd(recorded["version"], args.workdir / "containerd", Path(recorded["shim_dir"]))
    KubeCluster(ctrd, args.workdir).stop()
    ctrd.stop()
    return 0


def node_containerd(version: str, workdir: Path) -> PrivateContainerd:
    """A private containerd set up as an operator sets up a node: its config.toml without our runtime, then
    `containerd-shim-spin-v2 install` (the shim linked into the node's bin dir, the runtime added to the config),
    then CNI and the pause image. The e2e tests use tests/e2e/node_install_support.py, which also checks that a
    second install changes nothing."""
    node_bin = workdir / "node-bin"
    node_bin.mkdir(parents=True, exist_ok=True)
    ctrd = PrivateContainerd(version, workdir, node_bin, spin_runtime=False)
    config = ctrd.write_config()
    shim = REPO / ".venv" / "bin" / "containerd-shim-spin-v2"
    subprocess.run([str(shim), "install", "--config", str(config), "--bin-dir", str(node_bin)], check=True,
                   stdout=subprocess.DEVNULL)
    ctrd.start(keep_config=True)
    try:
        ctrd.enable_cni()
        ctrd.import_pause_image()
    except BaseException:
        ctrd.stop()
        raise
    return ctrd


__all__ = ["KubeCluster", "KubeClusterError", "kube_bin_dir", "node_containerd", "spin_operator_dist"]

if __name__ == "__main__":
    sys.exit(main())
