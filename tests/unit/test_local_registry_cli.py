"""scripts/local_registry.py serve: the registry a developer runs by hand to try `push`."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_registry.py"


def test_serve_answers_writes_the_hosts_toml_and_cleans_up_at_ctrl_c(tmp_path):
    certs = tmp_path / "certs.d"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "serve", "--workdir", str(tmp_path / "registry"),
                                "--certs-dir", str(certs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("registry at 127.0.0.1:"), (line, process.stderr.read())  # type: ignore[union-attr]
        host = line.split()[2]
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=10) as response:
            assert response.status == 200
        hosts_toml = certs / host / "hosts.toml"
        assert f'[host."http://{host}"]' in hosts_toml.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    assert not (certs / host).exists()
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=2)
        raise AssertionError("the registry still answers after Ctrl-C")
    except OSError:
        pass
