"""A small, synchronous client of containerd's gRPC API: the calls the shim needs to read images and keep blobs.

Containers/Get, Images/Get, Content Info/Read/Update/Write and Leases Create/Delete (the calls runwasi's
``load_modules`` makes: runwasi crates/containerd-shim-wasm/src/containerd/client.rs, lease.rs), over the unix
socket containerd gives the shim (`-address`), with the namespace in every call's metadata.
Synchronous on purpose: it runs in an instance process at task create, one call after another, where there is no
event loop to share.

Every failure is a ContentStoreError whose message says which call, on what, and what containerd answered, so
that the task's Create error tells an operator whether containerd, the image or the shim is at fault. grpc is
imported here and only here: instance processes of rootfs apps never pay its ~75 ms import.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2

from oci.errors import BlobTooLargeError, ContentStoreError
from proto.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from proto.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from proto.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from proto.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc

NAMESPACE_METADATA_KEY = "containerd-namespace"
LEASE_METADATA_KEY = "containerd-lease"
#: Lease label telling containerd's GC when a lease (and what it protects) may be collected if we crash.
GC_EXPIRE_LABEL = "containerd.io/gc.expire"
#: containerd's default maximum gRPC message size is 16 MiB; stay well below it.
WRITE_CHUNK_BYTES = 1 << 20
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str]


class ContainerdClient:
    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._channel = grpc.insecure_channel(
            f"unix://{address}",
            options=[("grpc.max_receive_message_length", 32 << 20), ("grpc.enable_http_proxy", 0)],
        )
        self._containers = containers_pb2_grpc.ContainersStub(self._channel)
        self._images = images_pb2_grpc.ImagesStub(self._channel)
        self._content = content_pb2_grpc.ContentStub(self._channel)
        self._leases = leases_pb2_grpc.LeasesStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ calls

    def container_image(self, container_id: str) -> str:
        """The image name the container was created from ("" for a container made from a bare rootfs)."""
        response = self._call(f"Containers/Get {container_id}", self._containers.Get,
                              containers_pb2.GetContainerRequest(id=container_id))
        return response.container.image

    def image_target(self, name: str) -> Descriptor:
        response = self._call(f"Images/Get {name}", self._images.Get, images_pb2.GetImageRequest(name=name))
        target = response.image.target
        return Descriptor(target.media_type, target.digest, target.size)

    def info(self, digest: str) -> ContentInfo:
        response = self._call(f"Content/Info {digest}", self._content.Info, content_pb2.InfoRequest(digest=digest))
        return ContentInfo(response.info.digest, response.info.size, dict(response.info.labels))

    def read(self, digest: str, max_bytes: int = 64 << 20) -> bytes:
        """A whole (small) blob in memory: manifests, configs, locked apps. Raises BlobTooLargeError for a blob of
        more than ``max_bytes``: containerd is asked for at most ``max_bytes + 1`` bytes (ReadContentRequest.size;
        one more than the blob has is fine), so a huge blob is neither sent nor buffered."""
        chunks = []
        total = 0
        for chunk in self._read_stream(digest, size=max_bytes + 1):
            total += len(chunk)
            if total > max_bytes:
                raise BlobTooLargeError(
                    f"Content/Read {digest}: larger than {max_bytes} bytes, refusing to buffer it", max_bytes)
            chunks.append(chunk)
        return _verified(digest, b"".join(chunks))

    def read_into(self, digest: str, target: Path) -> None:
        """Stream a blob into ``target`` (written as a tmp file and renamed: never seen half-written), checking
        its digest on the way."""
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256":
            raise ContentStoreError(f"{digest}: only sha256 digests are supported")
        hasher = hashlib.sha256()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as handle:
                for chunk in self._read_stream(digest):
                    hasher.update(chunk)
                    handle.write(chunk)
            if hasher.hexdigest() != expected:
                raise ContentStoreError(f"Content/Read {digest}: the bytes containerd sent do not match the digest")
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def set_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set (or, with value "", remove) exactly these labels on a blob, leaving its other labels alone."""
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]),
        )
        self._call(f"Content/Update {digest}", self._content.Update, request)

    def write(self, data: bytes, labels: Mapping[str, str], lease: str) -> str:
        """Commit ``data`` as a blob with ``labels`` under ``lease``; its digest. Already present is success."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ref = f"spin-shim-{digest}"
        requests = [content_pb2.WriteContentRequest(action=content_pb2.WriteAction.STAT, ref=ref)]
        for offset in range(0, len(data), WRITE_CHUNK_BYTES):
            requests.append(content_pb2.WriteContentRequest(
                action=content_pb2.WriteAction.WRITE, ref=ref, offset=offset,
                data=data[offset:offset + WRITE_CHUNK_BYTES]))
        requests.append(content_pb2.WriteContentRequest(
            action=content_pb2.WriteAction.COMMIT, ref=ref, total=len(data), offset=len(data), expected=digest,
            labels=dict(labels)))
        metadata = self._metadata() + ((LEASE_METADATA_KEY, lease),)
        try:
            responses = list(self._content.Write(iter(requests), metadata=metadata, timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                return digest
            raise self._error(f"Content/Write {digest}", exc) from None
        committed = responses[-1] if responses else None
        if committed is None or committed.digest != digest or committed.offset != len(data):
            raise ContentStoreError(f"Content/Write {digest}: containerd did not confirm the commit")
        return digest

    @contextmanager
    def lease(self, purpose: str, expire_after: datetime.timedelta) -> Iterator[str]:
        """A lease that protects what is written under it from GC until it is deleted (or expires, if we die)."""
        expire = datetime.datetime.now(datetime.timezone.utc) + expire_after
        lease_id = f"spin-shim-{purpose}-{secrets.token_hex(6)}"
        self._call(f"Leases/Create {lease_id}", self._leases.Create, leases_pb2.CreateRequest(
            id=lease_id, labels={GC_EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ")}))
        try:
            yield lease_id
        finally:
            try:
                self._call(f"Leases/Delete {lease_id}", self._leases.Delete, leases_pb2.DeleteRequest(id=lease_id))
            except ContentStoreError:
                pass  # it expires on its own (gc.expire)

    # ------------------------------------------------------------------------------------------------ plumbing

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((NAMESPACE_METADATA_KEY, self.namespace),)

    def _call(self, what: str, method, request):  # type: ignore[no-untyped-def]
        try:
            return method(request, metadata=self._metadata(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise self._error(what, exc) from None

    def _read_stream(self, digest: str, size: int = 0) -> Iterator[bytes]:
        """The blob's bytes as containerd sends them; at most ``size`` of them (0: all)."""
        try:
            for response in self._content.Read(content_pb2.ReadContentRequest(digest=digest, size=size),
                                               metadata=self._metadata(), timeout=CALL_TIMEOUT_S * 4):
                yield response.data
        except grpc.RpcError as exc:
            raise self._error(f"Content/Read {digest}", exc) from None

    def _error(self, what: str, exc: grpc.RpcError) -> ContentStoreError:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return ContentStoreError(f"containerd at {self.address} did not answer {what}: {detail}", code.name)
        name = code.name.lower().replace("_", " ") if code is not None else "error"
        return ContentStoreError(f"{what} (namespace {self.namespace}): {name}: {detail}",
                                 code.name if code is not None else None)


def _verified(digest: str, data: bytes) -> bytes:
    algorithm, _, expected = digest.partition(":")
    if algorithm == "sha256" and hashlib.sha256(data).hexdigest() != expected:
        raise ContentStoreError(f"Content/Read {digest}: the bytes containerd sent do not match the digest")
    return data
