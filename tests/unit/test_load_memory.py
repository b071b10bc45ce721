"""The load's memory cap (shim/wasm/load_memory.py): the load runs before the instance process joins the pod's
cgroup, and a 1 MiB spin.toml can name thousands of components. Each case runs in a child interpreter, as
RLIMIT_DATA is process-wide."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shim.wasm.load_memory import DEFAULT_LOAD_MEMORY_MAX, LOAD_MEMORY_ENV, load_memory_max
from tests.unit.test_host_marshal import REPO, app_wasm

CACHE_DIR = Path("/var/cache/containerd-shim-spin-test/unit-load-memory")


def _run(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_setting_takes_byte_counts_and_refuses_nonsense():
    assert load_memory_max({}) == DEFAULT_LOAD_MEMORY_MAX == 4 << 30
    assert load_memory_max({LOAD_MEMORY_ENV: "256Mi"}) == 256 << 20
    assert load_memory_max({LOAD_MEMORY_ENV: "1k"}) == DEFAULT_LOAD_MEMORY_MAX  # below the minimum
    assert load_memory_max({LOAD_MEMORY_ENV: "lots"}) == DEFAULT_LOAD_MEMORY_MAX


def test_python_memory_past_the_cap_is_a_load_memory_error_and_the_limit_is_restored():
    outcome = _run("""
        import json, resource
        from shim.wasm.load_memory import LoadMemoryError, load_memory_capped
        before = resource.getrlimit(resource.RLIMIT_DATA)
        with load_memory_capped(64 << 20):
            within = len(bytearray(16 << 20))
        try:
            with load_memory_capped(64 << 20):
                bytearray(256 << 20)
            error = None
        except LoadMemoryError as exc:
            error = str(exc)
        restored = resource.getrlimit(resource.RLIMIT_DATA) == before
        after = len(bytearray(256 << 20))  # the cap is gone
        print(json.dumps({"within": within, "error": error, "restored": restored, "after": after}))
    """)
    assert outcome["within"] == 16 << 20 and outcome["after"] == 256 << 20 and outcome["restored"]
    assert outcome["error"].startswith("loading the app needs more than 64 MiB: the load runs outside the pod's "
                                       "memory limit and is capped by SPIN_SHIM_LOAD_MEMORY_MAX")


@pytest.fixture(scope="module")
def many_components(tmp_path_factory) -> Path:
    """js-echo named by 60 components of one spin.toml, each on its own route."""
    app = tmp_path_factory.mktemp("many-components")
    shutil.copyfile(app_wasm("js-echo"), app / "app.wasm")
    (app / "spin.toml").write_text('spin_manifest_version = 2\n[application]\nname = "many"\n' + "".join(
        f'[[trigger.http]]\nroute = "/r{i}"\ncomponent = "c{i}"\n[component.c{i}]\nsource = "app.wasm"\n'
        for i in range(60)))
    return app


def _load_code(app: Path, limit_mib: int) -> str:
    return f"""
        import json
        from pathlib import Path
        from runtime.errors import AppError
        from runtime.loader import load_app
        from runtime.settings import RuntimeSettings
        from shim.wasm.load_memory import load_memory_capped
        try:
            with load_memory_capped({limit_mib} << 20):
                load_app(Path({str(app)!r}), ["/"], {{}}, RuntimeSettings(cache_dir=Path({str(CACHE_DIR)!r})))
            error = None
        except AppError as exc:
            error = f"{{type(exc).__name__}}: {{exc}}"
        print(json.dumps({{"error": error, "blobs": sorted(str(p) for p in Path({str(CACHE_DIR)!r}).rglob("*.cwasm"))}}))
    """


def test_many_components_past_the_cap_fail_the_load_and_keep_the_compiled_blob(many_components):
    warm = _run(_load_code(many_components, 1024))  # compiles (once) and caches; 60 components fit in 1 GiB
    assert warm["error"] is None and warm["blobs"]
    capped = _run(_load_code(many_components, 40))  # the same load from the cache, in a fresh process
    assert capped["error"] is not None and capped["error"].startswith(
        "LoadMemoryError: loading the app needs more than 40 MiB"), capped["error"]
    assert capped["blobs"] == warm["blobs"]  # the blob that did not fit stays (it was dropped and recompiled)
