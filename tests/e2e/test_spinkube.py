"""SpinApps through SpinKube's spin-operator (built from its Go module by scripts/build_spin_operator.sh, run
against the real cluster of scripts/kube_cluster.py with webhooks off), served by this shim unchanged.

The operator, not the test, renders each SpinApp into a Deployment (deployment.go: command ["/"],
SPIN_HTTP_LISTEN_ADDR, SPIN_VARIABLE_* from `variables`, the runtime-config Secret mounted at /runtime-config.toml
with subPath, the CA bundle at /etc/ssl/certs/ca-certificates.crt, `volumes`/`volumeMounts` passed through,
SPIN_COMPONENTS_TO_RETAIN from `components`) and a ClusterIP Service; the tests apply deploy/spinkube/ as a user
does, then look at what kubelet and the shim did with it.
"""

from __future__ import annotations

import base64
import http.client
import json
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import http_apps, shim_cache_dir  # noqa: F401  (fixtures)
from tests.e2e.kube_support import (DEPLOY, SAMPLE_IMAGE, Kube, container_id, eventually, http_get, namespace,
                                    running_kube)
from tests.e2e.registry_support import Registry, push_app, registry  # noqa: F401  (registry is a fixture)
from tests.redis_support import running_redis
from kube_cluster import KubeClusterError, spin_operator_dist  # noqa: E402  (scripts/ is on sys.path)

pytestmark = pytest.mark.e2e

SPIN_RUNTIME = "io.containerd.spin.v2"
SPINKUBE = DEPLOY / "spinkube"
#: The labels spin-operator puts on a SpinApp's Deployment and pods (pkg/spinapp: NameLabelKey).
APP_NAME_LABEL = "core.spinkube.dev/app-name"


@dataclass
class SpinKube:
    kube: Kube
    images: dict[str, str]  # test app name -> its ref in the session's registry

    def spinapp(self, name: str, app: str, **spec) -> str:
        """A SpinApp of one of the test apps on the executor of deploy/spinkube/; JSON is YAML."""
        return json.dumps({"apiVersion": "core.spinkube.dev/v1alpha1", "kind": "SpinApp",
                           "metadata": {"name": name},
                           "spec": {"image": self.images[app], "executor": "containerd-shim-spin", "replicas": 1,
                                    **spec}})

    def deploy(self, ns: str, *manifests: str) -> None:
        """The executor of deploy/spinkube/ (the operator looks it up in the app's namespace), then the manifests."""
        self.kube.kubectl("apply", "-n", ns, "-f", str(SPINKUBE / "spin-app-executor.yaml"))
        for manifest in manifests:
            self.kube.apply(manifest, ns)

    def wait_ready(self, ns: str, name: str, replicas: int = 1) -> list[dict]:
        """The SpinApp's pods once the operator made its Deployment, every replica is Ready and the operator
        reports them in the SpinApp's status."""
        eventually(lambda: self.kube.kubectl("get", "deployment", name, "-n", ns, check=False).returncode == 0,
                   timeout=60, what=f"spin-operator's Deployment for SpinApp {name}")
        self.kube.wait_rollout(ns, name)
        eventually(lambda: self.kube.get("spinapp", name, "-n", ns).get("status", {}).get("readyReplicas")
                   == replicas, timeout=60, what=f"SpinApp {name} status.readyReplicas == {replicas}")
        pods = self.kube.pods(ns, f"{APP_NAME_LABEL}={name}")
        assert len(pods) == replicas, [pod["metadata"]["name"] for pod in pods]
        for pod in pods:
            assert self.kube.container_runtime(container_id(pod, name)) == SPIN_RUNTIME
        return pods

    def task_root(self, pod: dict, container: str) -> Path:
        return Path(f"/proc/{self.kube.task_pid(container_id(pod, container))}/root")


@pytest.fixture(scope="module")
def spinkube(tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path, registry: Registry,
             http_apps: dict[str, Path]) -> Iterator[SpinKube]:
    """The containerd 2.1 node with SpinKube's CRDs installed and spin-operator running against it."""
    with running_kube("2.1", tmp_path_factory, shim_cache_dir, registry, http_apps) as kube:
        try:
            kube.cluster.start_spin_operator(spin_operator_dist())
        except KubeClusterError as exc:
            pytest.fail(str(exc))
        images = {"py-spin": kube.app_image}
        for app in ("js-echo", "multi"):
            images[app] = registry.ref(f"spin-test/{app}-kube", "v1")
            push_app(http_apps[app], images[app])
        yield SpinKube(kube, images)


def _sample_spinapp(spinkube: SpinKube) -> str:
    text = (SPINKUBE / "sample-spinapp.yaml").read_text()
    assert SAMPLE_IMAGE in text, "deploy/spinkube/sample-spinapp.yaml no longer names the image to replace"
    return text.replace(SAMPLE_IMAGE, spinkube.images["py-spin"])


def test_the_sample_spinapp_is_rendered_by_the_operator_and_served_by_the_shim(spinkube: SpinKube):
    kube = spinkube.kube
    with namespace(kube) as ns:
        spinkube.deploy(ns, _sample_spinapp(spinkube))
        pods = spinkube.wait_ready(ns, "spin-hello", replicas=2)
        # What the operator rendered, not what the test wrote: its Deployment names the RuntimeClass of the
        # executor, runs "/" and sets the listen address and the variable as env.
        template = kube.get("deployment", "spin-hello", "-n", ns)["spec"]["template"]["spec"]
        assert template["runtimeClassName"] == "wasmtime-spin-v2"
        container = template["containers"][0]
        assert container["command"] == ["/"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["SPIN_HTTP_LISTEN_ADDR"] == "0.0.0.0:80" and env["SPIN_VARIABLE_API_TOKEN"] == "change-me"
        ca_bundle = base64.b64decode(kube.get("secret", "spin-ca", "-n", ns)["data"]["ca-certificates.crt"])
        for pod in pods:
            assert http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from Python!")
            status, body = http_get(pod["status"]["podIP"], 80, "/vars?names=token")
            assert (status, json.loads(body)) == (200, {"token": "change-me"})
            # installDefaultCACerts: the operator's CA bundle, mounted by kubelet with subPath, in the task's root.
            assert (spinkube.task_root(pod, "spin-hello") / "etc/ssl/certs/ca-certificates.crt").read_bytes() \
                == ca_bundle
        service = kube.get("service", "spin-hello", "-n", ns)
        cluster_ip = service["spec"]["clusterIP"]
        assert service["spec"]["ports"][0]["port"] == 80
        eventually(lambda: http_get(cluster_ip, 80, "/hello") == (200, "Hello from Python!"), timeout=60,
                   what=f"an answer on the SpinApp's Service {cluster_ip}")


def test_a_plain_spinapp_serves_with_nothing_but_image_replicas_and_executor(spinkube: SpinKube):
    """The operator's config/samples/simple.yaml, with the JS SDK's app: no variables, no probes, no config."""
    with namespace(spinkube.kube) as ns:
        spinkube.deploy(ns, spinkube.spinapp("simple-spinapp", "js-echo"))
        [pod] = spinkube.wait_ready(ns, "simple-spinapp")
        assert http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from JS!")


def test_spinapp_variables_from_values_and_from_a_secret_reach_the_app(spinkube: SpinKube):
    kube = spinkube.kube
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secrets"},
              "stringData": {"token": "token-from-a-secret"}}
    variables = [{"name": "greeting", "value": "hello from a SpinApp"},
                 {"name": "api_token", "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": "token"}}}]
    with namespace(kube) as ns:
        spinkube.deploy(ns, json.dumps(secret), spinkube.spinapp("variables-spinapp", "py-spin", variables=variables))
        [pod] = spinkube.wait_ready(ns, "variables-spinapp")
        status, body = http_get(pod["status"]["podIP"], 80, "/vars?names=token,greeting,literal")
        assert (status, json.loads(body)) == (200, {"token": "token-from-a-secret", "greeting": "hello from a SpinApp",
                                                     "literal": "fixed-value"})


def test_a_runtime_config_on_a_persistent_volume_keeps_the_apps_data_past_the_pod(spinkube: SpinKube,
                                                                                  tmp_path: Path):
    """runtimeConfig.keyValueStores and sqliteDatabases: the operator renders runtime-config.toml into a Secret it
    mounts at /runtime-config.toml; the store's and the database's files are on a hostPath PersistentVolume (the
    operator's volume-mount.yaml sample), so what one pod stored, the pod that replaces it reads."""
    kube = spinkube.kube
    host_dir = tmp_path / "pv"
    host_dir.mkdir()
    pv_name = f"kv-{uuid.uuid4().hex[:8]}"  # PersistentVolumes are cluster-wide
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
          "spec": {"storageClassName": "manual", "capacity": {"storage": "100Mi"}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(host_dir)}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "app-data"},
           "spec": {"storageClassName": "manual", "volumeName": pv_name, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "100Mi"}}}}
    runtime_config = {
        "keyValueStores": [{"name": "default", "type": "spin",
                            "options": [{"name": "path", "value": "/mnt/data/kv.db"}]}],
        "sqliteDatabases": [{"name": "default", "type": "spin",
                             "options": [{"name": "path", "value": "/mnt/data/sqlite.db"}]}],
    }
    app = spinkube.spinapp(
        "data-spinapp", "py-spin", variables=[{"name": "api_token", "value": "t"}], runtimeConfig=runtime_config,
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}],
        volumeMounts=[{"name": "data", "mountPath": "/mnt/data"}])
    create = [["CREATE TABLE visits (who TEXT)", []], ["INSERT INTO visits VALUES (?)", ["first pod"]]]
    try:
        with namespace(kube) as ns:
            kube.kubectl("apply", "-f", "-", input=json.dumps(pv))
            spinkube.deploy(ns, json.dumps(pvc), app)
            [pod] = spinkube.wait_ready(ns, "data-spinapp")
            # The operator's rendering, as the shim reads it from the container's root.
            rendered = tomllib.loads((spinkube.task_root(pod, "data-spinapp") / "runtime-config.toml").read_text())
            assert rendered["key_value_store"]["default"] == {"type": "spin", "path": "/mnt/data/kv.db"}
            assert rendered["sqlite_database"]["default"] == {"type": "spin", "path": "/mnt/data/sqlite.db"}
            ip = pod["status"]["podIP"]
            assert _request(ip, "PUT", "/kv/answer", b"42")[0] == 200
            assert _request(ip, "POST", "/sqlite", json.dumps(create).encode())[0] == 200
            assert (host_dir / "kv.db").stat().st_size > 0, "the store's file is not on the volume"
            assert (host_dir / "sqlite.db").stat().st_size > 0, "the database's file is not on the volume"
            kube.kubectl("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=true")
            [replacement] = spinkube.wait_ready(ns, "data-spinapp")
            assert replacement["metadata"]["uid"] != pod["metadata"]["uid"]
            ip = replacement["status"]["podIP"]
            assert http_get(ip, 80, "/kv/answer") == (200, "42")
            status, _, body = _request(ip, "POST", "/sqlite", json.dumps([["SELECT who FROM visits", []]]).encode())
            assert (status, json.loads(body)[0]["rows"]) == (200, [["first pod"]])
    finally:
        kube.kubectl("delete", "pv", pv_name, "--wait=true", check=False)


def test_a_redis_store_a_sqlite_database_on_a_volume_and_the_env_provider_serve_as_the_operator_renders_them(
        spinkube: SpinKube, tmp_path: Path):
    """Issue 14's SpinKube runtime config: a `redis` key-value store whose url comes from a Secret, a sqlite
    database on a hostPath volume, and the `env` config provider the operator always renders (prefix
    SPIN_VARIABLE_), in one pod. The store's data is on the Redis server (a real redis-server on the node's
    address, which the pod reaches through its bridge), so the pod that replaces this one reads it back."""
    import redis

    kube = spinkube.kube
    host_dir = tmp_path / "data"
    host_dir.mkdir()
    with running_redis(tmp_path / "redis", bind=kube.cluster.node_ip) as port:
        url = f"redis://{kube.cluster.node_ip}:{port}/0"
        url_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-url"},
                      "stringData": {"url": url}}
        runtime_config = {
            "keyValueStores": [{"name": "default", "type": "redis",
                                "options": [{"name": "url",
                                             "valueFrom": {"secretKeyRef": {"name": "kv-url", "key": "url"}}}]}],
            "sqliteDatabases": [{"name": "default", "type": "spin",
                                 "options": [{"name": "path", "value": "/mnt/data/app.db"}]}],
        }
        app = spinkube.spinapp(
            "redis-kv-spinapp", "py-spin", variables=[{"name": "api_token", "value": "token-through-env"}],
            runtimeConfig=runtime_config,
            volumes=[{"name": "data", "hostPath": {"path": str(host_dir), "type": "Directory"}}],
            volumeMounts=[{"name": "data", "mountPath": "/mnt/data"}])
        with namespace(kube) as ns:
            spinkube.deploy(ns, json.dumps(url_secret), app)
            [pod] = spinkube.wait_ready(ns, "redis-kv-spinapp")
            rendered = tomllib.loads((spinkube.task_root(pod, "redis-kv-spinapp") / "runtime-config.toml").read_text())
            assert rendered["key_value_store"]["default"] == {"type": "redis", "url": url}
            assert rendered["sqlite_database"]["default"] == {"type": "spin", "path": "/mnt/data/app.db"}
            assert rendered["config_provider"] == [{"type": "env", "prefix": "SPIN_VARIABLE_"}]
            ip = pod["status"]["podIP"]
            status, body = http_get(ip, 80, "/vars?names=token")
            assert (status, json.loads(body)) == (200, {"token": "token-through-env"})
            assert _request(ip, "PUT", "/kv/answer", b"42")[0] == 200
            assert http_get(ip, 80, "/counter") == (200, "1")
            server = redis.Redis(host=kube.cluster.node_ip, port=port)
            try:  # Spin's key-value-redis layout: the store is the database, keys unprefixed
                assert server.get("answer") == b"42" and server.get("counter") == b"1"
                server.set("from-outside", b"written by redis-cli's equal")
            finally:
                server.close()
            statements = [["CREATE TABLE visits (who TEXT)", []], ["INSERT INTO visits VALUES (?)", ["first pod"]]]
            assert _request(ip, "POST", "/sqlite", json.dumps(statements).encode())[0] == 200
            assert (host_dir / "app.db").stat().st_size > 0, "the database's file is not on the volume"

            kube.kubectl("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=true")
            [replacement] = spinkube.wait_ready(ns, "redis-kv-spinapp")
            ip = replacement["status"]["podIP"]
            assert http_get(ip, 80, "/kv/answer") == (200, "42")
            assert http_get(ip, 80, "/kv/from-outside") == (200, "written by redis-cli's equal")
            assert http_get(ip, 80, "/counter") == (200, "2")
            status, _, body = _request(ip, "POST", "/sqlite", json.dumps([["SELECT who FROM visits", []]]).encode())
            assert (status, json.loads(body)[0]["rows"]) == (200, [["first pod"]])


def test_volumes_and_a_user_runtime_config_secret_reach_the_app(spinkube: SpinKube):
    """runtimeConfig.loadFromSecret names the user's own runtime-config Secret; its env provider reads a dotenv file
    from a ConfigMap the SpinApp mounts through `volumes`/`volumeMounts`."""
    kube = spinkube.kube
    runtime_config = '[[config_provider]]\ntype = "env"\ndotenv_path = "/config/app.env"\n'
    config_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-runtime-config"},
                     "stringData": {"runtime-config.toml": runtime_config}}
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-env"},
                "data": {"app.env": "SPIN_VARIABLE_API_TOKEN=token-from-a-volume\n"
                                    "SPIN_VARIABLE_GREETING=greeting-from-a-volume\n"}}
    app = spinkube.spinapp(
        "volume-spinapp", "py-spin", runtimeConfig={"loadFromSecret": "my-runtime-config"},
        volumes=[{"name": "settings", "configMap": {"name": "app-env"}}],
        volumeMounts=[{"name": "settings", "mountPath": "/config", "readOnly": True}])
    with namespace(kube) as ns:
        spinkube.deploy(ns, json.dumps(config_secret), json.dumps(settings), app)
        [pod] = spinkube.wait_ready(ns, "volume-spinapp")
        status, body = http_get(pod["status"]["podIP"], 80, "/vars?names=token,greeting")
        assert (status, json.loads(body)) == (200, {"token": "token-from-a-volume",
                                                     "greeting": "greeting-from-a-volume"})


def test_spinapp_components_serve_only_the_retained_components(spinkube: SpinKube):
    """Selective deployment (the operator's selective-deployment.yaml): `components` becomes
    SPIN_COMPONENTS_TO_RETAIN, and only those components' routes are served."""
    with namespace(spinkube.kube) as ns:
        spinkube.deploy(ns, spinkube.spinapp("api-only", "multi", components=["api", "deep"]))
        [pod] = spinkube.wait_ready(ns, "api-only")
        ip = pod["status"]["podIP"]
        assert http_get(ip, 80, "/api/whoami") == (200, "api")
        assert http_get(ip, 80, "/api/v1/x/whoami") == (200, "deep")
        # `fallback` (/...) and `exact` (/api/exact) were not retained: /whoami matches no route now, and
        # /api/exact falls to `api`'s wildcard (js-echo answers 404 for that path, with its component's x-who).
        assert http_get(ip, 80, "/whoami")[0] == 404
        status, headers, _ = _request(ip, "GET", "/api/exact")
        assert (status, headers["x-who"]) == (404, "api")


def test_scaling_then_deleting_a_spinapp_leaves_nothing_behind(spinkube: SpinKube):
    kube = spinkube.kube
    with namespace(kube) as ns:
        before = kube.containers()
        spinkube.deploy(ns, spinkube.spinapp("scaled", "js-echo"))
        spinkube.wait_ready(ns, "scaled")
        kube.kubectl("patch", "spinapp", "scaled", "-n", ns, "--type=merge", "-p", '{"spec": {"replicas": 3}}')
        pods = spinkube.wait_ready(ns, "scaled", replicas=3)
        assert all(http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from JS!") for pod in pods)
        kube.kubectl("delete", "spinapp", "scaled", "-n", ns, "--wait=true")
        # The Deployment and Service are the SpinApp's (owner references): the garbage collector removes them.
        eventually(lambda: kube.kubectl("get", "deployment,service", "-n", ns, "-o", "name").stdout.strip() == "",
                   timeout=60, what="the SpinApp's Deployment and Service gone")
        eventually(lambda: not kube.pods(ns), timeout=120, what="the SpinApp's pods gone")
        eventually(lambda: kube.containers() <= before, timeout=180, interval=2,
                   what="no container of the SpinApp's pods left in CRI")


def _request(host: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, 80, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        conn.close()
