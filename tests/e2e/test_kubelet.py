"""Spin pods through a real kubelet, kube-apiserver, scheduler and controller-manager (scripts/kube_cluster.py) on
containerd 2.1 set up by the shim's installer, applied and inspected with kubectl as a platform engineer does.

What kubelet adds that the CRI tests' own client never sent: the projected service-account token, /etc/hosts,
/etc/resolv.conf and termination-log mounts; its own probe timing; PLEG relists; the CRI streaming server behind
`kubectl exec`, `logs -f` and `port-forward`; restarts with back-off; grace periods from `kubectl delete`.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import http_apps, shim_cache_dir  # noqa: F401  (fixtures)
from tests.e2e.kube_support import (  # noqa: F401  (kube is a fixture)
    Kube,
    busybox_sidecar,
    container_id,
    eventually,
    forwarded_port,
    http_get,
    kube,
    namespace,
    pod_manifest,
)
from tests.e2e.registry_support import registry  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e

SPIN_RUNTIME = "io.containerd.spin.v2"


def test_the_sample_deployment_rolls_out_and_every_replica_answers_on_its_pod_ip(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(kube.sample_app(), ns)
        kube.wait_rollout(ns, "spin-hello")
        pods = kube.pods(ns, "app=spin-hello")
        assert len(pods) == 3
        for pod in pods:
            assert kube.container_runtime(container_id(pod, "spin-hello")) == SPIN_RUNTIME
            status, body = http_get(pod["status"]["podIP"], 80, "/hello")
            assert (status, body) == (200, "Hello from Python!")
            # kubelet's own mounts are in the task's root (a Spin guest sees only its `files`, as under Spin;
            # the runtime and the app's runtime config see the root): the projected service-account token and
            # the files kubelet writes for every container.
            root = Path(f"/proc/{kube.task_pid(container_id(pod, 'spin-hello'))}/root")
            assert (root / "var/run/secrets/kubernetes.io/serviceaccount/token").read_text().count(".") == 2  # a JWT
            assert pod["metadata"]["name"] in (root / "etc/hosts").read_text()
            assert (root / "etc/resolv.conf").exists() and (root / "dev/termination-log").exists()


def test_kubectl_logs_and_logs_follow_show_the_guests_output(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(pod_manifest("logger", kube.app_image), ns)
        pod = kube.wait_pod_ready(ns, "logger")
        ip = pod["status"]["podIP"]
        assert http_get(ip, 80, "/log") == (200, "logged")

        def logged() -> str | None:
            out = kube.kubectl("logs", "-n", ns, "logger").stdout
            return out if "py-spin stdout marker" in out else None
        logs = eventually(logged, what="the guest's line in kubectl logs")
        assert "py-spin stderr marker" in logs
        follow = subprocess.Popen([kube.cluster.binary("kubectl"), "--kubeconfig", str(kube.cluster.kubeconfig),
                                   "logs", "-f", "--tail=0", "-n", ns, "logger"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            seen: list[str] = []
            reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
            reader.start()
            eventually(lambda: http_get(ip, 80, "/log") == (200, "logged") and
                       any("py-spin stdout marker" in line for line in seen), timeout=60, interval=1,
                       what="a line logged after `kubectl logs -f` started reaching it")
        finally:
            follow.kill()
            follow.wait()


def test_exec_into_a_busybox_sidecar_reaches_the_app_on_localhost(kube: Kube):
    sidecar = busybox_sidecar(kube)
    with namespace(kube) as ns:
        kube.apply(pod_manifest("with-sidecar", kube.app_image, containers=[sidecar]), ns)
        pod = kube.wait_pod_ready(ns, "with-sidecar")
        assert kube.container_runtime(container_id(pod, "app")) == SPIN_RUNTIME
        assert kube.container_runtime(container_id(pod, "sidecar")) == SPIN_RUNTIME  # runc behind the same shim
        result = kube.kubectl("exec", "-n", ns, "with-sidecar", "-c", "sidecar", "--",
                              "wget", "-qO-", "http://127.0.0.1:80/hello")
        assert result.stdout == "Hello from Python!"
        refused = kube.kubectl("exec", "-n", ns, "with-sidecar", "-c", "app", "--", "true", check=False)
        assert refused.returncode != 0 and "exec is not supported for Wasm tasks" in refused.stderr


def test_port_forward_to_the_spin_container_answers(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(pod_manifest("forwarded", kube.app_image), ns)
        kube.wait_pod_ready(ns, "forwarded")
        forward = subprocess.Popen([kube.cluster.binary("kubectl"), "--kubeconfig", str(kube.cluster.kubeconfig),
                                    "port-forward", "-n", ns, "pod/forwarded", ":80"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            port = forwarded_port(forward)
            assert http_get("127.0.0.1", port, "/hello") == (200, "Hello from Python!")
            assert http_get("127.0.0.1", port, "/echo") == (200, "")
        finally:
            forward.kill()
            forward.wait()


def test_the_service_answers_on_its_cluster_ip_through_kube_proxy(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(kube.sample_app(), ns)
        kube.wait_rollout(ns, "spin-hello")
        cluster_ip = kube.get("service", "-n", ns, "spin-hello")["spec"]["clusterIP"]
        answers = eventually(lambda: http_get(cluster_ip, 80, "/hello", timeout=3), timeout=60,
                             what=f"an answer on the Service's ClusterIP {cluster_ip}")
        assert answers == (200, "Hello from Python!")


def test_a_configmap_and_a_secret_reach_the_app_as_files_and_env(kube: Kube):
    """As SpinKube users wire them: the ConfigMap's runtime-config.toml mounted at /runtime-config.toml names an
    env variables provider whose dotenv file is the Secret's, mounted as a file; a second ConfigMap key and a
    Secret key arrive as env vars. The guest reads them all through Spin's variables and its environment."""
    runtime_config = '[[config_provider]]\ntype = "env"\ndotenv_path = "/secret/app.env"\n'
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"runtime-config.toml": runtime_config, "greeting": "hello from a ConfigMap"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"app.env": "SPIN_VARIABLE_API_TOKEN=token-from-a-secret-file\n",
                             "literal": "secret-as-env"}}
    env = [{"name": "SPIN_VARIABLE_GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                                 "key": "greeting"}}},
           {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "literal"}}}]
    mounts = [{"name": "settings", "mountPath": "/runtime-config.toml", "subPath": "runtime-config.toml",
               "readOnly": True},
              {"name": "creds", "mountPath": "/secret", "readOnly": True}]
    volumes = [{"name": "settings", "configMap": {"name": "settings"}},
               {"name": "creds", "secret": {"secretName": "creds"}}]
    with namespace(kube) as ns:
        kube.apply(json.dumps(config), ns)
        kube.apply(json.dumps(secret), ns)
        kube.apply(pod_manifest("configured", kube.app_image, env=env, volumeMounts=mounts, volumes=volumes), ns)
        ip = kube.wait_pod_ready(ns, "configured")["status"]["podIP"]
        # py-spin's component variables: token = "{{ api_token }}" (required), greeting = "{{ greeting }}".
        status, body = http_get(ip, 80, "/vars?names=token,greeting")
        assert (status, json.loads(body)) == (200, {"token": "token-from-a-secret-file",
                                                     "greeting": "hello from a ConfigMap"})
        assert http_get(ip, 80, "/env?name=FROM_SECRET") == (200, "secret-as-env")


def test_rollout_restart_then_scale_to_20_and_to_0_leaves_nothing_behind(kube: Kube):
    with namespace(kube) as ns:
        before = kube.containers()
        kube.apply(kube.sample_app(), ns)
        kube.wait_rollout(ns, "spin-hello")
        first = {pod["metadata"]["name"] for pod in kube.pods(ns, "app=spin-hello")}
        kube.kubectl("rollout", "restart", "-n", ns, "deployment/spin-hello")
        kube.wait_rollout(ns, "spin-hello")
        eventually(lambda: len(kube.pods(ns, "app=spin-hello")) == 3, what="the old replicas gone")
        second = {pod["metadata"]["name"] for pod in kube.pods(ns, "app=spin-hello")}
        assert not first & second, "rollout restart kept an old pod"
        # 20 replicas of the sample's 100m request would take all of this 2-CPU node's allocatable CPU.
        kube.kubectl("set", "resources", "-n", ns, "deployment/spin-hello", "--requests=cpu=50m")
        kube.wait_rollout(ns, "spin-hello")
        kube.kubectl("scale", "-n", ns, "deployment/spin-hello", "--replicas=20")
        kube.wait_rollout(ns, "spin-hello", timeout=300)
        pods = kube.pods(ns, "app=spin-hello")
        assert len(pods) == 20
        assert all(http_get(pod["status"]["podIP"], 80, "/hello")[0] == 200 for pod in pods)
        kube.kubectl("scale", "-n", ns, "deployment/spin-hello", "--replicas=0")
        eventually(lambda: not kube.pods(ns, "app=spin-hello"), timeout=180, what="every replica gone")
        # kubelet removes a deleted pod's exited containers and sandbox in its garbage collection, once a minute.
        # Earlier tests' containers may still be collected meanwhile: what must hold is that none of ours is left.
        eventually(lambda: kube.containers() <= before, timeout=180, interval=2,
                   what="no container of the test's pods left in CRI")
        eventually(lambda: not [pid for pid in kube.ctrd.owned_pids()
                                if "containerd-shim-spin-v2 -namespace" in _cmdline(pid)],
                   timeout=30, what="every shim daemon of the 20 pods gone")
        pod_cgroups = [path for path in kube.cluster.pod_cgroups() if any(
            pod["metadata"]["uid"].replace("-", "_") in path.name or pod["metadata"]["uid"] in path.name
            for pod in pods)]
        assert pod_cgroups == [], f"pod cgroups left: {pod_cgroups}"


def test_a_failing_liveness_probe_restarts_the_container_with_back_off(kube: Kube):
    liveness = {"httpGet": {"path": "/status/500", "port": 80}, "periodSeconds": 1, "failureThreshold": 1,
                "initialDelaySeconds": 1}
    with namespace(kube) as ns:
        kube.apply(pod_manifest("unhealthy", kube.app_image, livenessProbe=liveness), ns)

        def backing_off():
            status = kube.get("pod", "-n", ns, "unhealthy")["status"]["containerStatuses"][0]
            waiting = status["state"].get("waiting", {})
            return status if status["restartCount"] >= 2 and waiting.get("reason") == "CrashLoopBackOff" else None
        status = eventually(backing_off, timeout=180, interval=1, what="restarts with CrashLoopBackOff between them")
        assert status["lastState"]["terminated"]["exitCode"] in (0, 137, 143), status
        events = kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=unhealthy").stdout
        assert "Liveness probe failed" in events and "Back-off restarting failed container" in events


def test_a_memory_limit_breach_shows_oomkilled_in_kubectl_get_pod(kube: Kube):
    """restartPolicy Never keeps the terminated state on show (a restarted container shows Running again)."""
    with namespace(kube) as ns:
        limits = {"limits": {"memory": "256Mi"}, "requests": {"memory": "128Mi"}}
        manifest = json.loads(pod_manifest("greedy", kube.app_image, resources=limits))
        manifest["spec"]["restartPolicy"] = "Never"
        kube.apply(json.dumps(manifest), ns)
        ip = kube.wait_pod_ready(ns, "greedy")["status"]["podIP"]
        try:
            http_get(ip, 80, "/alloc", timeout=60)
        except OSError:
            pass  # the connection dies with the instance

        def status_column():
            row = kube.kubectl("get", "pod", "-n", ns, "greedy", "--no-headers").stdout.split()
            return row if row[2] == "OOMKilled" else None
        eventually(status_column, timeout=120, interval=1, what="STATUS OOMKilled in kubectl get pod")
        terminated = kube.get("pod", "-n", ns, "greedy")["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_pods_stay_ready_through_a_containerd_restart_and_a_kubelet_restart(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(kube.sample_app(), ns)
        kube.wait_rollout(ns, "spin-hello")
        pods = kube.pods(ns, "app=spin-hello")
        restarts = {pod["metadata"]["name"]: pod["status"]["containerStatuses"][0]["restartCount"] for pod in pods}
        for restart in (kube.ctrd.restart_daemon, kube.cluster.restart_kubelet):
            restart()
            time.sleep(12)  # past a PLEG relist and two readiness periods of the sample app
            kube.wait_rollout(ns, "spin-hello")
            for pod in kube.pods(ns, "app=spin-hello"):
                name = pod["metadata"]["name"]
                assert pod["status"]["containerStatuses"][0]["restartCount"] == restarts[name], (restart, name)
                assert http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from Python!")


def test_kubectl_delete_with_a_grace_period_lets_an_in_flight_request_finish(kube: Kube):
    with namespace(kube) as ns:
        kube.apply(pod_manifest("draining", kube.app_image), ns)
        ip = kube.wait_pod_ready(ns, "draining")["status"]["podIP"]
        answer: list[tuple[int, str]] = []
        request = threading.Thread(target=lambda: answer.append(http_get(ip, 80, "/sleep?ms=4000", timeout=30)))
        request.start()
        time.sleep(1)
        kube.kubectl("delete", "pod", "-n", ns, "draining", "--grace-period=20", "--wait=false")
        request.join(30)
        assert answer == [(200, "slept 4000 ms")]
        eventually(lambda: not kube.pods(ns), timeout=60, what="the deleted pod gone")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_crictl_shows_a_spin_pod_as_the_readme_debugging_section_says(kube: Kube):
    """The crictl commands of README's "Debugging a node" section, against this node's containerd."""
    sidecar = busybox_sidecar(kube)
    with namespace(kube) as ns:
        kube.apply(pod_manifest("inspected", kube.app_image, containers=[sidecar]), ns)
        pod = kube.wait_pod_ready(ns, "inspected")
        assert http_get(pod["status"]["podIP"], 80, "/log") == (200, "logged")

        def crictl(*args: str) -> str:
            result = subprocess.run([kube.cluster.binary("crictl"), "--config", str(kube.cluster.crictl_config),
                                     *args], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (args, result.stderr)
            assert "level=warning" not in result.stderr, result.stderr
            return result.stdout + (result.stderr if args[0] == "logs" else "")

        pod_id = crictl("pods", "--namespace", ns, "--name", "inspected", "-q").strip()
        assert len(pod_id) == 64
        assert json.loads(crictl("inspectp", pod_id))["status"]["runtimeHandler"] == "spin"
        app = crictl("ps", "--pod", pod_id, "--name", "^app$", "-q").strip()
        assert json.loads(crictl("inspect", app))["status"]["state"] == "CONTAINER_RUNNING"
        assert "py-spin stdout marker" in crictl("logs", app)
        stats = json.loads(crictl("stats", "-o", "json", app))["stats"][0]
        assert int(stats["memory"]["workingSetBytes"]["value"]) > 0
        sidecar_id = crictl("ps", "--pod", pod_id, "--name", "sidecar", "-q").strip()
        assert crictl("exec", sidecar_id, "wget", "-qO-", "http://127.0.0.1:80/hello") == "Hello from Python!"
