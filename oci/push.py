"""`containerd-shim-spin-v2 push`: a spin.toml app pushed to an OCI registry exactly as `spin registry push` does.

Two halves, like Spin's `push_locked_core` / `assemble_layers` (spin crates/oci/src/client.rs; the lock's shape is
spin crates/locked-app/src/locked.rs):

* ``assemble_app`` (pure apart from reading the app dir): spin.toml -> the locked app JSON with content refs by
  digest, and the blobs to upload in order: one wasm layer per distinct component wasm, one data layer per
  mounted file above ``INLINE_MAX_SIZE`` bytes (smaller ones are inlined, base64, in the locked app), the locked
  app as the LAST layer, an OCI image config whose label names the locked app's digest, and the manifest.
  Layers are de-duplicated by digest. The image config's ``rootfs.diff_ids`` is empty: nothing to unpack, which
  containerd accepts since 1.6.25 / 1.7.7 and older ones refuse ("mismatched image rootfs and manifest layers":
  containerd image.go ``getLayers`` skips non-tar layers only from those versions on; Debian's 1.6.20 refuses).
* ``push_artifact``: the upload, with the oras library (blob POST+PUT, manifest PUT), and nothing else.

Errors a user can fix are a ``PushError`` (or the manifest's ``ManifestError``), each a one-line message; ``main``
prints it and exits 1, never with a traceback.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from oci.media_types import (
    DATA_LAYER,
    INLINE_MAX_SIZE,
    LOCKED_APP_DIGEST_LABEL,
    OCI_CONFIG,
    OCI_MANIFEST,
    SPIN_APPLICATION,
    WASM_ARCHITECTURE,
    WASM_LAYER,
    WASM_OS,
)
from runtime.errors import AppError
from runtime.files import list_component_files
from runtime.manifest import MANIFEST_FILE_NAME, Component, LocalSource, Manifest, load_manifest, parse_manifest
from runtime.paths import resolve_in_root

PROG = "containerd-shim-spin-v2 push"
WASM_MAGIC = b"\0asm"
#: The component source's content type in a locked app (Spin writes no other).
WASM_CONTENT_TYPE = "application/wasm"
#: Spin switches to archive layers at this many layers (spin crates/oci/src/client.rs MAX_LAYER_COUNT); this
#: command does not write archive layers, so it refuses such apps instead of pushing what Spin would not.
MAX_LAYER_COUNT = 500
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_CREATED = "org.opencontainers.image.created"
#: (connect, read) seconds per registry request: a registry that accepts and then says nothing must not hang us.
REQUEST_TIMEOUT_S = (10.0, 300.0)
_HASH_CHUNK = 1 << 20


class PushError(Exception):
    """A problem the user must fix (app, reference, registry); ``str()`` is the one-line message."""


# ---------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Blob:
    """One blob to upload: its descriptor, and its bytes (in memory) or the host file holding them."""

    media_type: str
    digest: str
    size: int
    content: bytes | Path

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes) -> Blob:
        return cls(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), data)

    @classmethod
    def of_file(cls, media_type: str, path: Path) -> Blob:
        sha = hashlib.sha256()
        size = 0
        with open(path, "rb") as stream:
            while chunk := stream.read(_HASH_CHUNK):
                sha.update(chunk)
                size += len(chunk)
        return cls(media_type, "sha256:" + sha.hexdigest(), size, path)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def read(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.read_bytes()


@dataclass(frozen=True)
class AppArtifact:
    """Everything a push uploads: ``layers`` (the locked app last), then ``config``, then ``manifest``."""

    locked_app: dict[str, Any]
    layers: tuple[Blob, ...]
    config: Blob
    manifest: Blob

    @property
    def locked_app_blob(self) -> Blob:
        return self.layers[-1]


# ---------------------------------------------------------------------------------------------------- assembly


def find_manifest(app: Path) -> Path:
    """The spin.toml of ``app`` (a directory holding one, or the file itself)."""
    path = app / MANIFEST_FILE_NAME if app.is_dir() else app
    if not path.is_file():
        raise PushError(f"{path}: not found (give an app directory holding {MANIFEST_FILE_NAME}, or its path)")
    return path


def load_pushable_manifest(path: Path) -> Manifest:
    """load_manifest, with push's own words for what push cannot carry (non-local sources, dependencies)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PushError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    for component in parse_manifest(text, path).components.values():
        if not isinstance(component.source, LocalSource):
            raise PushError(
                f"{path}: component {component.id!r}: only a local .wasm `source` can be pushed "
                f"(got {component.source!r}); download the wasm and point `source` at the file"
            )
        if component.dependencies:
            raise PushError(
                f"{path}: component {component.id!r}: `dependencies` are not supported by this push; "
                "compose the component first (e.g. with `wac plug`) and push the composed wasm"
            )
    return load_manifest(path)


def assemble_app(app: Path, *, created: str | None = None) -> AppArtifact:
    """Build the locked app and every blob of the push from an app dir (or spin.toml path). Reads, never writes."""
    manifest = load_pushable_manifest(find_manifest(app))
    locked_app, content_layers = build_locked_app(manifest)
    locked_blob = Blob.of_bytes(SPIN_APPLICATION, _compact_json(locked_app))
    layers = (*content_layers, locked_blob)
    if len(layers) >= MAX_LAYER_COUNT:
        raise PushError(
            f"{manifest.path}: the app needs {len(layers)} layers; Spin packs apps of {MAX_LAYER_COUNT} or more "
            "layers into archive layers, which this push does not write (mount fewer, larger files)"
        )
    config = Blob.of_bytes(OCI_CONFIG, _compact_json(image_config(locked_blob.digest)))
    annotations = {ANNOTATION_TITLE: manifest.application.name}
    if manifest.application.version:
        annotations[ANNOTATION_VERSION] = manifest.application.version
    annotations[ANNOTATION_CREATED] = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
        "annotations": annotations,
    }
    return AppArtifact(locked_app, layers, config, Blob.of_bytes(OCI_MANIFEST, _compact_json(image_manifest)))


def image_config(locked_app_digest: str) -> dict[str, Any]:
    """The standard OCI image config Spin writes: wasm/wasip1, no rootfs, the locked app's digest as a label."""
    return {
        "architecture": WASM_ARCHITECTURE,
        "os": WASM_OS,
        "config": {"Labels": {LOCKED_APP_DIGEST_LABEL: locked_app_digest}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def build_locked_app(manifest: Manifest) -> tuple[dict[str, Any], list[Blob]]:
    """The locked app (content refs by digest, no host paths) and its wasm and data layers, de-duplicated."""
    layers: dict[str, Blob] = {}  # by digest, in first-use order
    components = []
    for component in manifest.components.values():
        wasm = _wasm_blob(manifest, component)
        layers.setdefault(wasm.digest, wasm)
        files = []
        for guest_path, host_file in list_component_files(manifest.app_dir, manifest.path, component).items():
            entry, layer = _file_entry(manifest, component, guest_path, host_file)
            files.append(entry)
            if layer is not None:
                layers.setdefault(layer.digest, layer)
        components.append(_locked_component(component, wasm.digest, files))

    locked: dict[str, Any] = {"spin_lock_version": 0, "metadata": _app_metadata(manifest)}
    if manifest.variables:
        locked["variables"] = {name: _locked_variable(var) for name, var in manifest.variables.items()}
    locked["triggers"] = [
        {
            "id": trigger.id,
            "trigger_type": trigger.type,
            "trigger_config": {
                **({"component": trigger.component} if trigger.component is not None else {}),
                **_plain(trigger.config),
            },
        }
        for trigger in manifest.triggers
    ]
    locked["components"] = components
    return locked, list(layers.values())


def _app_metadata(manifest: Manifest) -> dict[str, Any]:
    app = manifest.application
    metadata: dict[str, Any] = {"name": app.name}
    if app.version is not None:
        metadata["version"] = app.version
    if app.description is not None:
        metadata["description"] = app.description
    if app.authors:
        metadata["authors"] = list(app.authors)
    if app.trigger_options:
        metadata["triggers"] = _plain(app.trigger_options)
    if len(manifest.trigger_types) == 1:
        # Spin adds this for readers older than multi-trigger apps (spin crates/loader/src/local.rs).
        metadata["trigger"] = {"type": manifest.trigger_types[0]}
    return metadata


def _locked_variable(variable: Any) -> dict[str, Any]:
    locked: dict[str, Any] = {}
    if variable.default is not None:
        locked["default"] = variable.default
    if variable.description is not None:
        locked["description"] = variable.description
    locked["secret"] = variable.secret
    return locked


def _locked_component(component: Component, wasm_digest: str, files: list[dict[str, str]]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if component.description is not None:
        metadata["description"] = component.description
    metadata.update(
        allowed_outbound_hosts=list(component.allowed_outbound_hosts),
        key_value_stores=list(component.key_value_stores),
        databases=list(component.sqlite_databases),
        ai_models=list(component.ai_models),
    )
    locked: dict[str, Any] = {
        "id": component.id,
        "metadata": metadata,
        "source": {"content_type": WASM_CONTENT_TYPE, "digest": wasm_digest},
    }
    if component.environment:
        locked["env"] = dict(component.environment)
    if files:
        locked["files"] = files
    if component.variables:
        locked["config"] = dict(component.variables)
    return locked


def _wasm_blob(manifest: Manifest, component: Component) -> Blob:
    assert isinstance(component.source, LocalSource)  # load_pushable_manifest refused the others
    path = resolve_in_root(manifest.app_dir, component.source.path)
    with open(path, "rb") as stream:
        header = stream.read(len(WASM_MAGIC))
    if header != WASM_MAGIC:
        raise PushError(
            f"{manifest.path}: component {component.id!r}: source {component.source.path!r} is not a wasm file "
            f"(it starts with {header!r}, not {WASM_MAGIC!r})"
        )
    return Blob.of_file(WASM_LAYER, path)


def _file_entry(
    manifest: Manifest, component: Component, guest_path: str, host_file: Path
) -> tuple[dict[str, str], Blob | None]:
    """A locked ``files`` entry; small files carry their bytes inline (and their digest), others name a layer."""
    rel = guest_path.lstrip("/")
    parts = PurePosixPath(rel).parts
    if not parts or any(part in ("", ".", "..") for part in parts) or rel != "/".join(parts):
        raise PushError(f"{manifest.path}: component {component.id!r}: file path {guest_path!r} is not portable")
    size = host_file.stat().st_size
    if size <= INLINE_MAX_SIZE:
        data = host_file.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return {"digest": digest, "inline": base64.b64encode(data).decode("ascii"), "path": rel}, None
    layer = Blob.of_file(DATA_LAYER, host_file)
    return {"digest": layer.digest, "path": rel}, layer


def _plain(value: Any) -> Any:
    """TOML values as JSON values: read-only mappings to dicts, TOML dates and times to RFC 3339 strings."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    return value


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def parse_reference(text: str) -> Reference:
    """``registry[:port]/repo[/more]:tag``: the registry must be named (no Docker Hub default), the tag given."""
    if "@" in text:
        raise PushError(f"reference {text!r}: push needs a tag, not a digest (the digest is the push's result)")
    registry, slash, rest = text.partition("/")
    if not slash or not ("." in registry or ":" in registry or registry == "localhost"):
        raise PushError(f"reference {text!r} must start with a registry host, e.g. 127.0.0.1:5000/{text}")
    repository, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        raise PushError(f"reference {text!r} needs a tag, e.g. {text}:v1")
    if not _REPOSITORY.match(repository):
        raise PushError(f"reference {text!r}: repository {repository!r} must be lower-case path components")
    if not _TAG.match(tag):
        raise PushError(f"reference {text!r}: tag {tag!r} is not a valid tag")
    return Reference(registry, repository, tag)


def is_loopback_registry(registry: str) -> bool:
    """Plain HTTP is assumed for registries on this machine, as containerd does for localhost and 127.0.0.1."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1:].split("]")[0]
    return host == "localhost" or host == "::1" or host.startswith("127.")


# ---------------------------------------------------------------------------------------------------- upload


def push_artifact(artifact: AppArtifact, reference: Reference, *, insecure: bool) -> str:
    """Upload the layers, the config and the manifest; return the manifest digest the reference now names."""
    import oras.auth
    import oras.container
    import oras.provider
    import requests

    class _Registry(oras.provider.Registry):
        """oras's Registry with one change to ``do_request``, which every oras call goes through.

        oras retries every failed request five times, sleeping 3 s to 83 s in between (a registry that is down
        takes over two minutes to report), and turns a 401/403 it cannot answer into "Cannot respond to request
        for authentication.", dropping the registry's own reason. Here: one attempt (with a timeout), the auth
        challenge answered once as oras does, and a refusal returned as the response, for _check_status to quote.
        """

        def do_request(self, url: str, method: str = "GET", data: Any = None, headers: dict | None = None,
                       json: Any = None, stream: bool = False) -> Any:
            headers = dict(headers or {})
            if isinstance(self.auth, oras.auth.TokenAuth) and self.auth.token is not None:
                headers.update(self.auth.get_auth_header())

            def send() -> Any:
                return self.session.request(method, url, data=data, json=json, headers=headers, stream=stream,
                                            verify=self._tls_verify)

            response = send()
            if response.status_code in (401, 403):
                answered, changed = self.auth.authenticate_request(response, headers)
                if changed:
                    headers = answered
                    response = send()
            return response

        def _get_location(self, r: Any, container: Any) -> str:
            # put_upload asks this for the upload session a POST opened; a refused POST has none, and oras would
            # say only "Issue retrieving session url". Carry the response out instead.
            if r.status_code not in (200, 201, 202):
                raise _Refused(r)
            return super()._get_location(r, container)

    class _TimeoutAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = REQUEST_TIMEOUT_S
            return super().send(request, **kwargs)

    registry = _Registry(hostname=reference.registry, insecure=insecure)
    for prefix in ("http://", "https://"):
        registry.session.mount(prefix, _TimeoutAdapter())
    container = oras.container.Container(str(reference))
    try:
        registry.auth.load_configs(container)  # credentials from ~/.docker/config.json, as `docker login` left them
        # Reachability first, outside oras's auth dance: any HTTP answer will do (401 means "log in", not "down").
        registry.session.request("GET", f"{registry.prefix}://{reference.registry}/v2/")
        for blob in (*artifact.layers, artifact.config):
            with _blob_file(blob) as path:
                try:
                    response = registry.upload_blob(path, container, blob.descriptor())
                except _Refused as refused:
                    response = refused.response
            _check_status(response, reference, f"refused blob {blob.digest} ({blob.media_type})")
        response = registry.do_request(
            f"{registry.prefix}://{container.manifest_url()}",
            "PUT",
            # The exact bytes hashed in assemble_app, so the digest printed is the one stored.
            data=artifact.manifest.read(),
            headers={"Content-Type": OCI_MANIFEST, **registry.headers},
        )
        _check_status(response, reference, "refused the manifest")
    except requests.exceptions.SSLError as exc:
        raise PushError(
            f"registry {reference.registry}: TLS failed ({_reason(exc)}); if it serves plain HTTP, pass --insecure"
        ) from None
    except requests.exceptions.ConnectionError as exc:
        scheme = registry.prefix
        raise PushError(f"cannot reach registry {reference.registry} over {scheme}: {_reason(exc)}") from None
    except requests.exceptions.Timeout:
        raise PushError(f"registry {reference.registry} did not answer in time") from None
    except (requests.exceptions.RequestException, ValueError, oras.auth.AuthenticationException) as exc:
        raise PushError(f"registry {reference.registry}: {exc}") from None
    return artifact.manifest.digest


class _Refused(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(response.status_code)
        self.response = response


@contextlib.contextmanager
def _blob_file(blob: Blob) -> Iterator[str]:
    """A path to upload from (oras reads paths): the blob's own file, or a temporary copy of in-memory bytes."""
    if isinstance(blob.content, Path):
        yield str(blob.content)
        return
    fd, temp = tempfile.mkstemp(prefix="spin-push-")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(blob.content)
        yield temp
    finally:
        os.unlink(temp)


def _check_status(response: Any, reference: Reference, what: str, ok: tuple[int, ...] = (200, 201, 202)) -> None:
    if response.status_code in ok:
        return
    detail = ""
    try:
        errors = response.json().get("errors", [])
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except Exception:  # noqa: BLE001 - a non-JSON error body: the status says enough
        pass
    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
    raise PushError(f"registry {reference.registry} {what}: {reason}" + (f" ({detail})" if detail else ""))


def _reason(exc: BaseException) -> str:
    """The useful end of a requests/urllib3 error chain ('[Errno 111] Connection refused'), not its 300 chars."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0).strip()
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        if marker in text:
            return text.split(marker, 1)[1].split("'")[0].strip(" ()") or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Push a Spin app (spin.toml and what it names) to an OCI registry, laid out as "
        "`spin registry push` does: one layer per component wasm and per mounted file, the locked app last.",
    )
    parser.add_argument("app", type=Path, help=f"the app directory holding {MANIFEST_FILE_NAME}, or its path")
    parser.add_argument("reference", help="where to push: REGISTRY[:PORT]/REPOSITORY:TAG, e.g. 127.0.0.1:5000/apps/hello:v1")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="talk plain HTTP to the registry (always done for localhost and 127.0.0.0/8)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        reference = parse_reference(args.reference)
        artifact = assemble_app(args.app)
        digest = push_artifact(artifact, reference, insecure=args.insecure or is_loopback_registry(reference.registry))
    except (PushError, AppError) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except OSError as exc:  # an app file that vanished or cannot be read mid-way
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    print(f"Pushed {reference}")
    print(f"Pushed with digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
