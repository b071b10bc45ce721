"""Bad Redis and MQTT trigger config through containerd's CRI plugin: kubelet's path, not ctr's.

A user's SpinApp reaches the shim as a pushed artifact pulled by CRI. A trigger table the shim cannot serve must
fail the container's start with the reason in the CRI error (what `kubectl describe pod` shows) and in the
container's log (what `kubectl logs` shows), and leave nothing behind. tests/e2e/test_redis_trigger.py and
test_mqtt_trigger.py show the same through ctr.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import http_apps  # noqa: F401  (fixture)
from tests.e2e.registry_support import Registry, push_app, registry  # noqa: F401  (`registry`: a fixture)
from tests.e2e.test_artifact_attacks import assert_refused, start_once
from tests.e2e.test_oci_artifacts import Cluster, cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cri_cluster(tmp_path_factory, shim_dir, registry: Registry) -> Iterator[Cluster]:  # noqa: F811
    cache_dir = tmp_path_factory.mktemp("shim-cache")
    with cluster("2.1", tmp_path_factory.mktemp("trigger-config-cri"), shim_dir, cache_dir, registry) as c:
        yield c


#: The test apps' required port variables get defaults: the only thing wrong with each pushed app is its trigger.
PORT_DEFAULTS = {"py-redis": ('redis_port = { required = true }', 'redis_port = { default = "6379" }'),
                 "py-mqtt": ('mqtt_port = { required = true }', 'mqtt_port = { default = "1883" }')}


def _pushed_with(app: Path, tmp_path: Path, registry: Registry, old: str, new: str) -> str:  # noqa: F811
    """The app pushed as an artifact with one piece of its spin.toml replaced."""
    copy = tmp_path / app.name
    shutil.copytree(app, copy)
    manifest = copy / "spin.toml"
    text = manifest.read_text()
    for before, after in (PORT_DEFAULTS[app.name], (old, new)):
        assert before in text, f"{app.name}'s spin.toml no longer has {before!r}"
        text = text.replace(before, after)
    manifest.write_text(text)
    ref = registry.ref(f"spin-test/bad-{app.name}", uuid.uuid4().hex[:8])
    push_app(copy, ref)
    return ref


@pytest.mark.parametrize(("app", "old", "new", "needles"), [
    ("py-redis", 'channel = "{{ channel }}"\n', "",
     ("[[trigger.redis]]", "`channel` is required (the Redis channel to subscribe to)")),
    ("py-redis", 'address = "redis://{{ redis_host }}:{{ redis_port }}"\n\n[variables]',
     'address = "http://{{ redis_host }}"\n\n[variables]', ("[[trigger.redis]]", "http://127.0.0.1")),
    ("py-mqtt", 'qos = "1"', 'qos = "3"', ("[[trigger.mqtt]]", '`qos` must be "0", "1" or "2"')),
])
def test_bad_trigger_config_fails_the_pods_container_with_the_reason_in_the_cri_error_and_its_log(
        cri_cluster: Cluster, registry: Registry, http_apps, tmp_path: Path,  # noqa: F811
        app: str, old: str, new: str, needles: tuple[str, ...]):
    image = _pushed_with(http_apps[app], tmp_path, registry, old, new)
    outcome = start_once(cri_cluster, image, f"bad-{app}-{uuid.uuid4().hex[:6]}")
    assert_refused(outcome, *needles)
