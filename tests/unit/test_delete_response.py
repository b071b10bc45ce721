"""`delete` hand-encodes its DeleteResponse; it must be what protobuf would produce."""

from hypothesis import given
from hypothesis import strategies as st

from proto.containerd.task.v2 import shim_pb2
from shim.cli.delete import encode_delete_response


@given(pid=st.integers(0, 2**32 - 1), status=st.integers(0, 2**32 - 1),
       when=st.integers(0, 2**62))
def test_hand_encoding_matches_generated_code(pid, status, when):
    expected = shim_pb2.DeleteResponse(pid=pid, exit_status=status)
    expected.exited_at.seconds, expected.exited_at.nanos = divmod(when, 1_000_000_000)
    encoded = encode_delete_response(pid, status, when)
    assert encoded == expected.SerializeToString()
    decoded = shim_pb2.DeleteResponse.FromString(encoded)
    assert (decoded.pid, decoded.exit_status) == (pid, status)


def test_the_installed_command_deletes_a_cleanly_removed_task_without_heavy_imports(tmp_path):
    """containerd waits for `delete` after every shim disconnects (a clean removal too), so what the command imports
    is paid on every task removal: after a clean Delete (no task state, the daemon's socket gone) it answers
    without json/re, pathlib, typing, signal or socket (each several ms, -X importtime)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).parent / "containerd-shim-spin-v2"
    (tmp_path / "address").write_text(f"unix://{tmp_path / 'gone.sock'}")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([str(command), "-namespace", "default", "-address", "/run/none.sock", "-id", "t1",
                             "-bundle", str(tmp_path), "delete"], capture_output=True, env=env, timeout=60,
                            check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "shim.cli.delete" in imported  # the profile saw the command's own modules
    assert imported & {"re", "json", "pathlib", "typing", "signal", "socket", "enum", "google.protobuf"} == set()
    response = shim_pb2.DeleteResponse.FromString(result.stdout)
    assert response.exit_status == 137 and response.exited_at.seconds > 0
    assert (tmp_path / "address").exists()  # containerd's file: not ours to remove
