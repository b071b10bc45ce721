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
