"""The media types and labels that make an OCI image a Spin app, as `spin registry push` writes them.

One table, shared by the reader (the shim at task create) and the writer (the push command), so the two can never
disagree. Values are Spin's (spin crates/oci/src/client.rs: its media type constants and
``push_locked_core``).
"""

from __future__ import annotations

#: The locked app (Spin's `spin.lock` JSON with content refs by digest): the last layer of a pushed app, or the
#: manifest's config in artifacts made by older Spin versions.
SPIN_APPLICATION = "application/vnd.fermyon.spin.application.v1+config"
#: One component's wasm.
WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
#: One file a component mounts (files of at most INLINE_MAX_SIZE bytes are inlined in the locked app instead).
DATA_LAYER = "application/vnd.wasm.content.layer.v1+data"
#: A gzipped tar of many files (Spin uses it above 499 layers or with SPIN_OCI_ARCHIVE_LAYERS set).
ARCHIVE_LAYER = "application/vnd.wasm.content.bundle.v1.tar+gzip"
#: A single wasm component pushed by wkg (a package, not a Spin app).
WKG_WASM_LAYER = "application/wasm"

SPIN_LAYER_TYPES = frozenset({SPIN_APPLICATION, WASM_LAYER, DATA_LAYER, ARCHIVE_LAYER, WKG_WASM_LAYER})
WASM_LAYER_TYPES = frozenset({WASM_LAYER, WKG_WASM_LAYER})

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

#: Image config label naming the locked-app layer's digest (makes every app's config, hence image id, unique).
LOCKED_APP_DIGEST_LABEL = "com.fermyon.spin.lockedAppDigest"
#: Files up to this size are inlined (base64) in the locked app rather than pushed as layers.
INLINE_MAX_SIZE = 128
#: The image config of a pushed Spin app says this; the shim uses it to tell an artifact from a Linux image.
WASM_ARCHITECTURE = "wasm"
WASM_OS = "wasip1"
