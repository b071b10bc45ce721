"""Spin's own endpoints under ``/.well-known/spin/``, answered by the server before routing.

Kubernetes probes point at ``/.well-known/spin/health`` (SpinKube's default liveness/readiness path), so it must
answer even when the app's catch-all "/..." route would take every other path, and must not cost a guest call.
Same answers as Spin (spin crates/trigger-http/src/server.rs ``handle``): "health" is 200 "OK", "info" is the
app's name/version/OCI digest as pretty JSON, any other name under the prefix is an empty 404.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.http.contract import Headers
from runtime.http.routing import WELL_KNOWN_PREFIX


@dataclass(frozen=True)
class AppInfo:
    """What ``/.well-known/spin/info`` reports (Spin's ``AppInfo``; absent fields are left out of the JSON)."""

    name: str = ""
    version: str | None = None
    oci_image_digest: str | None = None

    def to_json(self) -> bytes:
        doc: Mapping[str, str] = {
            key: value for key, value in
            (("name", self.name), ("version", self.version), ("oci_image_digest", self.oci_image_digest))
            if value is not None
        }
        # serde_json::to_vec_pretty indents by two spaces, as json.dumps(indent=2) does.
        return json.dumps(doc, indent=2).encode()


@dataclass(frozen=True)
class SimpleResponse:
    status: int
    headers: Headers
    body: bytes


def well_known_response(path: str, app_info: AppInfo) -> SimpleResponse | None:
    """Spin's answer for a path under the well-known prefix, or None when the path is the app's to route."""
    if not path.startswith(WELL_KNOWN_PREFIX):
        return None
    name = path[len(WELL_KNOWN_PREFIX):]
    if name == "health":
        return SimpleResponse(200, [], b"OK")
    if name == "info":
        return SimpleResponse(200, [(b"content-type", b"application/json")], app_info.to_json())
    return SimpleResponse(404, [], b"")
