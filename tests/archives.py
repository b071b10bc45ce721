"""Archive layers for tests, as `spin registry push` makes them: a gzipped tar of files (unit and e2e alike)."""

from __future__ import annotations

import io
import tarfile


def targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
