"""A kubelet stand-in: drives containerd's CRI plugin over gRPC the way kubelet does, for the e2e tests and the benchmarks.

Why: what kubectl users see of the shim (pod IPs, `kubectl logs`, exit reasons, metrics, resource limits) is what
containerd's CRI plugin makes of it, and crictl (cri-tools) has no Debian package in bookworm, trixie or sid.
So this module builds the same requests kubelet builds (pod metadata with a uid, a log directory per pod, a cgroup
parent per pod, `<container>/<attempt>.log` log paths, kubelet's CPU share/quota arithmetic) and reads the CRI log
file format. Stubs: proto.k8s.cri.v1 (generated from the vendored cri-api 0.36.4, package runtime.v1).

Errors are raised as CriError carrying containerd's gRPC code and message, because the tests assert on the message
containerd (or the shim behind it) gave.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from proto.k8s.cri.v1 import api_pb2 as cri
from proto.k8s.cri.v1 import api_pb2_grpc as cri_grpc

DEFAULT_TIMEOUT_S = 60.0
# kubelet's cgroupfs layout is /kubepods/<qos>/pod<uid>; a root of our own keeps test pods apart from a real node's.
POD_CGROUP_ROOT = "spin-shim-test-pods"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# kubelet: shares = millicpu * 1024 / 1000 (min 2), quota = millicpu * period / 1000 with a 100 ms period.
CPU_PERIOD_US = 100_000
MIN_CPU_SHARES = 2


class CriError(RuntimeError):
    """A CRI call failed; `code` and `details` are what containerd answered."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class HasAddress(Protocol):
    """A PrivateContainerd (or anything else with containerd's gRPC socket path and a work dir)."""

    address: str
    workdir: Path


@dataclass(frozen=True)
class PodHandle:
    """A pod as kubelet remembers it: the sandbox id, and the config every CreateContainer must repeat."""

    id: str
    config: cri.PodSandboxConfig
    runtime_handler: str
    ip: str  # "" for host-network pods

    @property
    def name(self) -> str:
        return self.config.metadata.name

    @property
    def uid(self) -> str:
        return self.config.metadata.uid

    @property
    def log_directory(self) -> Path:
        return Path(self.config.log_directory)


@dataclass(frozen=True)
class ContainerState:
    """The parts of ContainerStatus kubectl shows: `state` is the enum's name, e.g. "CONTAINER_EXITED"."""

    id: str
    state: str
    exit_code: int
    reason: str
    message: str
    log_path: Path
    started_at_ns: int
    finished_at_ns: int


@dataclass(frozen=True)
class CriLogLine:
    """One line of a CRI container log: `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>`."""

    timestamp: str
    stream: str
    partial: bool  # "P": the runtime split a long line; the next entry continues it
    content: str


def parse_cri_log_line(line: str) -> CriLogLine:
    """Parse one log line as kubelet does (pkg/kubelet/kuberuntime/logs: parseCRILog); ValueError if malformed."""
    line = line.removesuffix("\n")
    parts = line.split(" ", 3)
    if len(parts) < 3:
        raise ValueError(f"not a CRI log line: {line!r}")
    timestamp, stream, tag = parts[0], parts[1], parts[2]
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"unknown stream {stream!r} in CRI log line {line!r}")
    # The tag field is ':'-separated for future extension; its first element is the partial/full flag.
    flag = tag.split(":", 1)[0]
    if flag not in ("F", "P"):
        raise ValueError(f"unknown tag {tag!r} in CRI log line {line!r}")
    return CriLogLine(timestamp, stream, flag == "P", parts[3] if len(parts) == 4 else "")


def join_cri_log(lines: Sequence[str], stream: str | None = None) -> list[str]:
    """The logical lines of a CRI log (partial pieces joined), optionally of one stream: what `kubectl logs` shows."""
    joined: list[str] = []
    pending: dict[str, str] = {}
    for raw in lines:
        if not raw.strip():
            continue
        entry = parse_cri_log_line(raw)
        if stream is not None and entry.stream != stream:
            continue
        text = pending.pop(entry.stream, "") + entry.content
        if entry.partial:
            pending[entry.stream] = text
        else:
            joined.append(text)
    joined.extend(pending.values())  # a trailing partial line (container still writing, or killed mid-line)
    return joined


def read_cri_log(path: Path, stream: str | None = None) -> list[str]:
    """The logical lines of a CRI log file; [] if the runtime has not created it yet."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return join_cri_log(text.splitlines(), stream)


def cpu_resources(millicpu: int) -> dict[str, int]:
    """kubelet's mapping of a CPU request=limit in millicores to cgroup v1 shares, quota and period."""
    return {
        "cpu_shares": max(MIN_CPU_SHARES, millicpu * 1024 // 1000),
        "cpu_quota": millicpu * CPU_PERIOD_US // 1000,
        "cpu_period": CPU_PERIOD_US,
    }


def _resources(memory_limit: int | None, millicpu: int | None) -> cri.LinuxContainerResources:
    resources = cri.LinuxContainerResources()
    if memory_limit is not None:
        resources.memory_limit_in_bytes = memory_limit
    if millicpu is not None:
        for key, value in cpu_resources(millicpu).items():
            setattr(resources, key, value)
    return resources


class CriClient:
    """Blocking CRI client over `unix://<containerd address>`; it remembers the pods it ran, to tear them down."""

    def __init__(self, ctrd: HasAddress | str, *, log_root: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        address = ctrd if isinstance(ctrd, str) else ctrd.address
        if log_root is None:
            if isinstance(ctrd, str):
                raise ValueError("log_root is required when only an address is given")
            log_root = Path(ctrd.workdir) / "pod-logs"
        self.log_root = Path(log_root)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._runtime = cri_grpc.RuntimeServiceStub(self._channel)
        self._images = cri_grpc.ImageServiceStub(self._channel)
        self._pods: dict[str, PodHandle] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, service: Any, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(service, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise CriError(method, error.code(), error.details() or "") from None

    # ---- runtime ---------------------------------------------------------------------------------------------
    def version(self) -> cri.VersionResponse:
        return self._call(self._runtime, "Version", cri.VersionRequest(version="v1"))

    def status(self) -> dict[str, tuple[bool, str]]:
        """Runtime conditions by type, e.g. {"RuntimeReady": (True, ""), "NetworkReady": (False, "NetworkPlugin…")}."""
        response = self._call(self._runtime, "Status", cri.StatusRequest())
        return {c.type: (c.status, c.reason) for c in response.status.conditions}

    # ---- images ----------------------------------------------------------------------------------------------
    def pull_image(self, ref: str, timeout: float | None = None) -> str:
        """Pull as kubelet does; returns the image id containerd reports (the config digest)."""
        request = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
        return self._call(self._images, "PullImage", request, timeout).image_ref

    def image_status(self, ref: str) -> cri.Image | None:
        response = self._call(self._images, "ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=ref)))
        return response.image if response.HasField("image") else None

    def remove_image(self, ref: str) -> None:
        self._call(self._images, "RemoveImage", cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))

    def list_images(self) -> list[cri.Image]:
        return list(self._call(self._images, "ListImages", cri.ListImagesRequest()).images)

    # ---- pods ------------------------------------------------------------------------------------------------
    def run_pod(self, name: str, *, runtime_handler: str = "runc", host_network: bool = False,
                namespace: str = "default", labels: Mapping[str, str] | None = None,
                annotations: Mapping[str, str] | None = None) -> PodHandle:
        """RunPodSandbox with the config kubelet would send, and the pod's IP from PodSandboxStatus.

        A host-network pod gets no hostname: runc refuses to set one without a private UTS namespace ("unable to
        set hostname without a private UTS namespace"). The cgroup parent is per pod, as kubelet's; remove_pod()
        removes it, as kubelet does (containerd never removes pod-level cgroups).
        """
        uid = str(uuid.uuid4())
        log_directory = self.log_root / f"{namespace}_{name}_{uid}"
        log_directory.mkdir(parents=True, exist_ok=True)
        network_mode = cri.NamespaceMode.NODE if host_network else cri.NamespaceMode.POD
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname="" if host_network else name,
            log_directory=str(log_directory),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid, **(labels or {})},
            annotations=dict(annotations or {}),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=f"/{POD_CGROUP_ROOT}/pod{uid}",
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(
                        network=network_mode, pid=cri.NamespaceMode.CONTAINER, ipc=cri.NamespaceMode.POD
                    )
                ),
            ),
        )
        request = cri.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        try:
            pod_id = self._call(self._runtime, "RunPodSandbox", request).pod_sandbox_id
        except CriError:
            # containerd cleans up a sandbox it failed to start, but not its cgroup parent, which is kubelet's.
            remove_pod_cgroups(config.linux.cgroup_parent)
            raise
        pod = PodHandle(pod_id, config, runtime_handler, ip="")
        self._pods[pod_id] = pod  # before the status call, so a failure there still tears the pod down
        status = self.pod_status(pod_id)
        pod = PodHandle(pod_id, config, runtime_handler, ip=status.network.ip)
        self._pods[pod_id] = pod
        return pod

    @contextlib.contextmanager
    def pod(self, name: str, **options: Any) -> Iterator[PodHandle]:
        """run_pod() whose pod is stopped and removed when the block ends, whether it failed or not."""
        pod = self.run_pod(name, **options)
        try:
            yield pod
        finally:
            self.teardown_pod(pod.id)

    def pod_status(self, pod_id: str) -> cri.PodSandboxStatus:
        return self._call(self._runtime, "PodSandboxStatus", cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status

    def pod_info(self, pod_id: str) -> dict[str, Any]:
        """containerd's verbose sandbox info (JSON under "info"): pid of the sandbox task, netns path, config."""
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        info = self._call(self._runtime, "PodSandboxStatus", request).info
        return json.loads(info["info"]) if "info" in info else {}

    def list_pods(self) -> list[cri.PodSandbox]:
        return list(self._call(self._runtime, "ListPodSandbox", cri.ListPodSandboxRequest()).items)

    def stop_pod(self, pod_id: str) -> None:
        self._call(self._runtime, "StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        """RemovePodSandbox, then rmdir the pod's cgroup parent as kubelet's pod cleanup does."""
        self._call(self._runtime, "RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        pod = self._pods.pop(pod_id, None)
        if pod is not None:
            remove_pod_cgroups(pod.config.linux.cgroup_parent)

    def teardown_pod(self, pod_id: str) -> None:
        """StopPodSandbox + RemovePodSandbox, tolerating a pod already gone: the path every test's cleanup takes."""
        try:
            for step in (self.stop_pod, self.remove_pod):
                try:
                    step(pod_id)
                except CriError as error:
                    if error.code != grpc.StatusCode.NOT_FOUND:
                        raise
        finally:
            # rmdir only succeeds once the pod's processes are gone; a failed step leaves nothing else to try.
            pod = self._pods.pop(pod_id, None)
            if pod is not None:
                remove_pod_cgroups(pod.config.linux.cgroup_parent)

    def teardown_all(self) -> list[str]:
        """Tear down every pod this client ran that is still there; returns their ids (a test forgot them).
        One pod failing to go does not keep the others up; the first failure is raised at the end."""
        leftovers = list(self._pods)
        failures: list[CriError] = []
        for pod_id in leftovers:
            try:
                self.teardown_pod(pod_id)
            except CriError as error:
                failures.append(error)
        if failures:
            raise failures[0]
        return leftovers

    # ---- containers ------------------------------------------------------------------------------------------
    def create_container(self, pod: PodHandle, name: str, image: str, *, command: Sequence[str] = (),
                         args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                         memory_limit: int | None = None, millicpu: int | None = None,
                         labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
                         working_dir: str = "", attempt: int = 0, mounts: Sequence[cri.Mount] = (),
                         security_context: cri.LinuxContainerSecurityContext | None = None) -> str:
        """CreateContainer as kubelet does; the log goes to <pod log dir>/<name>/<attempt>.log. Returns the id.
        `mounts` are the volumes kubelet would bind (host paths it prepared); `security_context` the pod spec's."""
        (pod.log_directory / name).mkdir(parents=True, exist_ok=True)
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=attempt),
            image=cri.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            working_dir=working_dir,
            envs=[cri.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()],  # bytes in CRI 0.36
            log_path=f"{name}/{attempt}.log",
            labels={"io.kubernetes.container.name": name, **(labels or {})},
            annotations=dict(annotations or {}),
            linux=cri.LinuxContainerConfig(resources=_resources(memory_limit, millicpu),
                                           security_context=security_context),
            mounts=list(mounts),
        )
        request = cri.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
        return self._call(self._runtime, "CreateContainer", request).container_id

    def start_container(self, container_id: str) -> None:
        self._call(self._runtime, "StartContainer", cri.StartContainerRequest(container_id=container_id))

    def run_container(self, pod: PodHandle, name: str, image: str, **options: Any) -> str:
        """create_container + start_container."""
        container_id = self.create_container(pod, name, image, **options)
        self.start_container(container_id)
        return container_id

    def container_status(self, container_id: str) -> ContainerState:
        status = self._call(self._runtime, "ContainerStatus",
                            cri.ContainerStatusRequest(container_id=container_id)).status
        return ContainerState(
            id=status.id, state=cri.ContainerState.Name(status.state), exit_code=status.exit_code,
            reason=status.reason, message=status.message, log_path=Path(status.log_path),
            started_at_ns=status.started_at, finished_at_ns=status.finished_at,
        )

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        """StopContainer: SIGTERM (or the image's stop signal), SIGKILL after `timeout` seconds."""
        request = cri.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(self._runtime, "StopContainer", request, timeout=max(self.timeout, timeout + 30))

    def remove_container(self, container_id: str) -> None:
        self._call(self._runtime, "RemoveContainer", cri.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, pod_id: str | None = None) -> list[cri.Container]:
        request = cri.ListContainersRequest()
        if pod_id is not None:
            request.filter.pod_sandbox_id = pod_id
        return list(self._call(self._runtime, "ListContainers", request).containers)

    def container_stats(self, container_id: str) -> cri.ContainerStats:
        """What kubelet's summary API (and `kubectl top`) is built from: .cpu, .memory, .writable_layer."""
        request = cri.ContainerStatsRequest(container_id=container_id)
        return self._call(self._runtime, "ContainerStats", request).stats

    def update_container_resources(self, container_id: str, *, memory_limit: int | None = None,
                                   millicpu: int | None = None) -> None:
        request = cri.UpdateContainerResourcesRequest(container_id=container_id,
                                                      linux=_resources(memory_limit, millicpu))
        self._call(self._runtime, "UpdateContainerResources", request)

    def exec_sync(self, container_id: str, command: Sequence[str], timeout: int = 10) -> tuple[int, bytes, bytes]:
        """ExecSync (what exec probes use): (exit code, stdout, stderr)."""
        request = cri.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=timeout)
        response = self._call(self._runtime, "ExecSync", request, timeout=timeout + 30)
        return response.exit_code, response.stdout, response.stderr

    def container_log(self, container_id: str, stream: str | None = None) -> list[str]:
        """The container's log as `kubectl logs` shows it (from the log path ContainerStatus reports)."""
        return read_cri_log(self.container_status(container_id).log_path, stream)


def pod_cgroups(cgroup_parent: str) -> list[Path]:
    """The pod's cgroup dirs that exist, in every hierarchy (v1 controllers and the unified one)."""
    relative = cgroup_parent.strip("/")
    if not relative or not CGROUP_ROOT.is_dir():
        return []
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        hierarchies = [CGROUP_ROOT]
    else:
        hierarchies = [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    return [h / relative for h in hierarchies if (h / relative).is_dir()]


def remove_pod_cgroups(cgroup_parent: str) -> None:
    """rmdir the pod's cgroup (only possible once empty) and our root if no other pod uses it."""
    for directory in pod_cgroups(cgroup_parent):
        with contextlib.suppress(OSError):
            directory.rmdir()
        if directory.parent.name == POD_CGROUP_ROOT:
            with contextlib.suppress(OSError):
                directory.parent.rmdir()
