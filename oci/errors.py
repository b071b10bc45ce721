"""The image's two failure kinds, importable without grpc (the instance process catches them on every load).

ArtifactError: the image is a Spin artifact that cannot run (the user must fix the image). ContentStoreError: a
containerd API call failed (containerd's or the node's problem); ``code`` is the gRPC status name.
BlobTooLargeError: a blob to be read whole is over the caller's cap (a ContentStoreError, since the client cannot
tell whose fault it is; oci.source, which knows the blob is image content, turns it into an ArtifactError).
"""

from __future__ import annotations


class ArtifactError(Exception):
    """The image carries Spin layers but they do not make a runnable app; the message says what is wrong."""


class ContentStoreError(Exception):
    """A containerd API call failed; ``code`` is the gRPC status code name (None when containerd was unreachable)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def not_found(self) -> bool:
        return self.code == "NOT_FOUND"


class BlobTooLargeError(ContentStoreError):
    """``ContainerdClient.read`` refused a blob larger than ``limit`` bytes rather than buffer it."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit
