"""The image's two failure kinds, importable without grpc (the instance process catches them on every load).

ArtifactError: the image is a Spin artifact that cannot run (the user must fix the image). ContentStoreError: a
containerd API call failed (containerd's or the node's problem); ``code`` is the gRPC status name.
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
