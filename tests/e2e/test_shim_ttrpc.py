"""Our own ttrpc client against a shim daemon that containerd started for a real task.

Unknown ids are NOT_FOUND on every id-taking method, unsupported methods UNIMPLEMENTED
with a reason, Shutdown is ignored while a task remains, and garbage on one connection
neither kills the daemon nor disturbs the task it serves (issue 2, acceptance 4).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from proto.containerd.task.v2 import shim_pb2
from shim.cli.start import socket_path
from shim.ttrpc.client import TtrpcClient
from shim.ttrpc.status import Code, RpcError
from tests.e2e.support import RUNTIME, assert_no_leaks, wait_until

pytestmark = pytest.mark.e2e

SERVICE = "containerd.task.v2.Task"
TASK_ID = "ttrpc-target"


@pytest.fixture(scope="module")
def running_task(containerd_16, images_16, guests):
    image = images_16.wasm_image("loop", {"/loop.wasm": guests["loop.wasm"]}, ["/loop.wasm"])
    containerd_16.ctr("run", "-d", "--runtime", RUNTIME, image, TASK_ID)
    yield socket_path(containerd_16.address, "default", TASK_ID)
    containerd_16.ctr("tasks", "kill", "-s", "SIGKILL", TASK_ID, check=False)
    wait_until(lambda: "STOPPED" in containerd_16.ctr("tasks", "ls").stdout or
               TASK_ID not in containerd_16.ctr("tasks", "ls").stdout)
    containerd_16.ctr("tasks", "rm", "-f", TASK_ID, check=False)
    containerd_16.ctr("containers", "rm", TASK_ID, check=False)
    assert_no_leaks(containerd_16, [TASK_ID])


async def _call(path: str, method: str, request, response_cls):
    client = await TtrpcClient.connect(path)
    try:
        return await client.call(SERVICE, method, request, response_cls, timeout=10,
                                 metadata={"containerd-namespace-ttrpc": "default"})
    finally:
        client.close()


def _code(path: str, method: str, request, response_cls) -> tuple[Code, str]:
    with pytest.raises(RpcError) as info:
        asyncio.run(_call(path, method, request, response_cls))
    return info.value.code, info.value.message


@pytest.mark.parametrize("method, request_message, response_cls", [
    ("State", shim_pb2.StateRequest(id="nope"), shim_pb2.StateResponse),
    ("Start", shim_pb2.StartRequest(id="nope"), shim_pb2.StartResponse),
    ("Kill", shim_pb2.KillRequest(id="nope", signal=9), shim_pb2.StateResponse),
    ("Delete", shim_pb2.DeleteRequest(id="nope"), shim_pb2.DeleteResponse),
    ("Wait", shim_pb2.WaitRequest(id="nope"), shim_pb2.WaitResponse),
    ("Connect", shim_pb2.ConnectRequest(id="nope"), shim_pb2.ConnectResponse),
    ("Pids", shim_pb2.PidsRequest(id="nope"), shim_pb2.PidsResponse),
    ("Stats", shim_pb2.StatsRequest(id="nope"), shim_pb2.StatsResponse),
])
def test_unknown_task_id_is_not_found(running_task, method, request_message, response_cls):
    code, message = _code(running_task, method, request_message, response_cls)
    assert code == Code.NOT_FOUND
    assert "nope" in message


def test_exec_is_unimplemented_with_a_reason(running_task):
    code, message = _code(running_task, "Exec", shim_pb2.ExecProcessRequest(id=TASK_ID, exec_id="e1"),
                          shim_pb2.StateResponse)
    assert code == Code.UNIMPLEMENTED
    assert "exec" in message and "Wasm" in message


def test_unknown_method_is_unimplemented(running_task):
    code, message = _code(running_task, "Frobnicate", shim_pb2.StateRequest(id=TASK_ID),
                          shim_pb2.StateResponse)
    assert code == Code.UNIMPLEMENTED
    assert "Frobnicate" in message


def test_the_real_task_answers_with_its_pid(running_task):
    state = asyncio.run(_call(running_task, "State", shim_pb2.StateRequest(id=TASK_ID),
                              shim_pb2.StateResponse))
    connect = asyncio.run(_call(running_task, "Connect", shim_pb2.ConnectRequest(id=TASK_ID),
                                shim_pb2.ConnectResponse))
    assert state.pid == connect.task_pid > 0
    assert connect.shim_pid != connect.task_pid


def test_shutdown_is_ignored_while_a_task_remains(running_task, containerd_16):
    from google.protobuf import empty_pb2

    asyncio.run(_call(running_task, "Shutdown", shim_pb2.ShutdownRequest(id=TASK_ID, now=True),
                      empty_pb2.Empty))
    state = asyncio.run(_call(running_task, "State", shim_pb2.StateRequest(id=TASK_ID),
                              shim_pb2.StateResponse))
    assert state.status == 2  # RUNNING


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x05\x00\x00\x00\x01\x01\x00\xff\xff\xff\xff\xff",  # Request that is not protobuf
    b"\x00\x00\x00\x02\x00\x00\x00\x02\x01\x00\x08\x01",  # even stream id
    b"\x7f\xff\xff\xff\x00\x00\x00\x01\x01\x00" + b"x" * 100,  # oversized length, then EOF
    b"\x00\x00\x00",  # truncated header, then EOF
    bytes(range(256)) * 4,  # noise
])
def test_garbage_does_not_disturb_the_daemon(running_task, containerd_16, garbage):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(running_task)
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    if reply:
        # Whatever came back is a well-formed Response frame with a non-OK status.
        length, _stream, msg_type, _flags = struct.unpack(">IIBB", reply[:10])
        assert msg_type == 2 and length == len(reply[10:10 + length])
    state = asyncio.run(_call(running_task, "State", shim_pb2.StateRequest(id=TASK_ID),
                              shim_pb2.StateResponse))
    assert state.status == 2
    assert TASK_ID in containerd_16.ctr("tasks", "ls").stdout
