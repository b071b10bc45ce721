"""The kubelet smoke test on containerd 1.7 (config version 2, the CRI plugin of 1.x): the sample Deployment rolls
out, answers on its pod IPs and through its Service, `kubectl logs` and `exec` into a sidecar work. The full set of
kubelet behaviours runs on 2.1 (test_kubelet.py)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import http_apps, shim_cache_dir  # noqa: F401  (fixtures)
from tests.e2e.kube_support import (  # noqa: F401  (kube_17 is a fixture)
    Kube,
    busybox_sidecar,
    container_id,
    eventually,
    http_get,
    kube_17,
    namespace,
    pod_manifest,
)
from tests.e2e.registry_support import registry  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def test_the_sample_deployment_serves_on_containerd_17(kube_17: Kube):
    kube = kube_17
    sidecar = busybox_sidecar(kube)
    with namespace(kube) as ns:
        kube.apply(kube.sample_app(), ns)
        kube.apply(pod_manifest("with-sidecar", kube.app_image, containers=[sidecar]), ns)
        kube.wait_rollout(ns, "spin-hello")
        for pod in kube.pods(ns, "app=spin-hello"):
            assert kube.container_runtime(container_id(pod, "spin-hello")) == "io.containerd.spin.v2"
            assert http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from Python!")
        cluster_ip = kube.get("service", "-n", ns, "spin-hello")["spec"]["clusterIP"]
        # kube-proxy programs the Service's rules a moment after its endpoints appear.
        assert eventually(lambda: http_get(cluster_ip, 80, "/hello", timeout=3), timeout=60,
                          what="the Service's ClusterIP answering") == (200, "Hello from Python!")
        ip = kube.wait_pod_ready(ns, "with-sidecar")["status"]["podIP"]
        assert http_get(ip, 80, "/log") == (200, "logged")
        assert "py-spin stdout marker" in kube.kubectl("logs", "-n", ns, "with-sidecar", "-c", "app").stdout
        exec_result = kube.kubectl("exec", "-n", ns, "with-sidecar", "-c", "sidecar", "--",
                                   "wget", "-qO-", "http://127.0.0.1:80/hello")
        assert exec_result.stdout == "Hello from Python!"
