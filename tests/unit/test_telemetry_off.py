"""With no OTLP endpoint in the task env, nothing of opentelemetry is imported (the start path pays nothing) and
nothing is linked differently; with one, the SDK is imported at load but no thread starts before the serving
process starts it (the instance process may still fork workers).

Each case runs in a fresh interpreter: this test process imports opentelemetry in other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, sys, threading
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.unit.telemetry_app import copy_py_spin, CACHE_DIR
from runtime.loader import load_app
from runtime.settings import RuntimeSettings
from runtime.host import registry

env = {{"SPIN_HTTP_LISTEN_ADDR": "127.0.0.1:0", "SPIN_VARIABLE_API_TOKEN": "t", **json.loads(sys.argv[1])}}
threads_before = threading.active_count()
app = load_app(copy_py_spin(Path(sys.argv[2])), ["/"], env, RuntimeSettings(cache_dir=CACHE_DIR))
print(json.dumps({{
    "otel_modules": sorted(m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")),
    "link_hooks": len(registry.LINK_HOOKS),
    "new_threads": [t.name for t in threading.enumerate()][threads_before:],
}}))
app.close()
"""


def _load_in_fresh_interpreter(tmp_path: Path, env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _SCRIPT.format(repo=str(REPO)), json.dumps(env), str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_app_loaded_without_otel_env_imports_no_opentelemetry(tmp_path):
    loaded = _load_in_fresh_interpreter(tmp_path, {})
    assert loaded["otel_modules"] == []
    assert loaded["link_hooks"] == 0


def test_sdk_disabled_imports_no_opentelemetry_even_with_an_endpoint(tmp_path):
    loaded = _load_in_fresh_interpreter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                                   "OTEL_SDK_DISABLED": "true"})
    assert loaded["otel_modules"] == []
    assert loaded["link_hooks"] == 0


def test_endpoint_imports_the_sdk_at_load_but_starts_no_thread(tmp_path):
    loaded = _load_in_fresh_interpreter(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert "opentelemetry.sdk.trace" in loaded["otel_modules"]
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in loaded["otel_modules"]
    assert loaded["link_hooks"] == 1
    assert loaded["new_threads"] == []  # exporters start after fork, in the serving process
