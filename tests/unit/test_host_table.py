"""runtime.host without a guest: the resource table, the per-request context, the registry, and the stream, fields
and response-body logic of the WASI providers, called the way the linker calls them (``impl(ctx, *host_args)``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from runtime.host import context as host_context
from runtime.host.context import ComponentHost, RequestContext, bound, current
from runtime.host.registry import REGISTRY, Registry, split_import_name
from runtime.host.table import ResourceTable
from runtime.host.traps import HostTrap
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.host.wasi import http as wasi_http
from runtime.host.wasi import io as wasi_io
from runtime.host.wasi.cli import FdTarget
from runtime.http.contract import ClientGone, ComponentConfig


def make_ctx(**config: Any) -> RequestContext:
    cfg = ComponentConfig(id="web", wasm_path=Path("/dev/null"), executor="component", environment={}, **config)
    return RequestContext(ComponentHost(cfg), deadline=time.monotonic() + 5)


def impl(interface: str, name: str) -> Any:
    iface = REGISTRY.find(interface)
    assert iface is not None, interface
    return iface.functions[name]


HTTP = "wasi:http/types@0.2.9"
STREAMS = "wasi:io/streams@0.2.0"


class MemorySink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.started = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.finished = False
        self.fail_after = fail_after

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started, self.status, self.headers = True, status, headers

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise ClientGone("peer reset")
        self.chunks.append(bytes(data))

    def finish(self, trailers: Any = None) -> None:
        self.finished = True


# ------------------------------------------------------------------------------------------------ table


def test_table_reps_start_at_one_and_are_never_reused_within_a_request() -> None:
    table = ResourceTable()
    first, second = table.push("a"), table.push("b")
    assert (first, second) == (1, 2)
    table.pop(first)
    assert table.push("c") == 3


def test_table_get_of_a_wrong_type_or_dropped_handle_traps_with_the_reason() -> None:
    table = ResourceTable()
    rep = table.push("text")
    with pytest.raises(HostTrap, match="is a str, not a int"):
        table.get(rep, int)
    table.pop(rep)
    with pytest.raises(HostTrap, match="unknown int handle 1"):
        table.get(rep, int)


def test_table_take_moves_ownership_out_and_keeps_the_entry_on_a_type_mismatch() -> None:
    table = ResourceTable()
    rep = table.push(7)
    with pytest.raises(HostTrap):
        table.take(rep, str)
    assert rep in table
    assert table.take(rep, int) == 7
    assert rep not in table


def test_table_clear_returns_what_the_guest_left_behind() -> None:
    table = ResourceTable()
    table.push("x")
    table.push("y")
    assert table.clear() == ["x", "y"]
    assert len(table) == 0


# ------------------------------------------------------------------------------------------------ context


def test_current_is_the_context_bound_to_this_thread_only() -> None:
    ctx = make_ctx()
    seen: list[Any] = []
    with bound(ctx):
        assert current() is ctx
        worker = threading.Thread(target=lambda: seen.append(host_context.current_or_none()))
        worker.start()
        worker.join()
    assert seen == [None]
    with pytest.raises(HostTrap, match="outside a request"):
        current()


def test_component_memo_builds_once_across_threads() -> None:
    host = make_ctx().component
    calls: list[int] = []

    def build() -> int:
        calls.append(1)
        time.sleep(0.01)
        return 42

    threads = [threading.Thread(target=lambda: host.memo("k", build)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert host.memo("k", build) == 42 and calls == [1]


# ------------------------------------------------------------------------------------------------ registry


def test_import_names_split_into_interface_and_version() -> None:
    assert split_import_name("wasi:io/streams@0.2.9") == ("wasi:io/streams", "0.2.9")
    assert split_import_name("fermyon:spin/config") == ("fermyon:spin/config", "")


def test_registry_serves_any_0_2_patch_version_and_nothing_else() -> None:
    for version in ("0.2.0", "0.2.3", "0.2.9", "0.2.12"):
        assert REGISTRY.find(f"wasi:http/types@{version}") is not None
    assert REGISTRY.find("wasi:http/types@0.3.0") is None
    assert REGISTRY.find("wasi:http/handler@0.3.0") is None


def test_registry_refuses_two_providers_for_one_version() -> None:
    registry = Registry()
    registry.interface("x:y/z", ["1.*"])
    registry.interface("x:y/z", ["1.0.0"])
    assert registry.find("x:y/z@2.0.0") is None
    with pytest.raises(RuntimeError, match="served by 2"):
        registry.find("x:y/z@1.0.0")


def test_registry_imports_provider_packages_once_and_skips_absent_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "host_test_provider.py").write_text(
        "from tests.unit import test_host_table as t\n"
        "t.PROVIDER_IMPORTS.append(1)\n"
        "t.FAKE_REGISTRY.interface('fake:pkg/iface', ['1.0.0']).define('f', lambda ctx: 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    global FAKE_REGISTRY
    FAKE_REGISTRY = Registry(["host_test_absent_provider", "host_test_provider"])
    PROVIDER_IMPORTS.clear()
    try:
        assert FAKE_REGISTRY.find("fake:pkg/iface@1.0.0") is not None
        assert FAKE_REGISTRY.find("fake:pkg/iface@1.0.0") is not None
        assert PROVIDER_IMPORTS == [1]
    finally:
        sys.modules.pop("host_test_provider", None)


PROVIDER_IMPORTS: list[int] = []
FAKE_REGISTRY = Registry()


def test_a_resource_kind_makes_owned_handles_of_its_own_type_id() -> None:
    registry = Registry()
    iface = registry.interface("x:y/z", ["1.0.0"])
    first, second = iface.resource("a"), iface.resource("b")
    assert first.type_id != second.type_id
    handle = first.own(9)
    assert (handle.rep, handle.type, handle.owned) == (9, first.type_id, True)
    with pytest.raises(ValueError, match="declared twice"):
        iface.resource("a")


# ------------------------------------------------------------------------------------------------ fields


def test_fields_from_list_rejects_bad_names_bad_values_and_hop_by_hop_headers() -> None:
    ctx = make_ctx()
    from_list = impl(HTTP, "[static]fields.from-list")
    assert from_list(ctx, [("bad name", b"x")]) == Err(Variant("invalid-syntax"))
    assert from_list(ctx, [("x-ok", b"line\nbreak")]) == Err(Variant("invalid-syntax"))
    assert from_list(ctx, [("Transfer-Encoding", b"chunked")]) == Err(Variant("forbidden"))
    result = from_list(ctx, [("X-Mixed", b"1"), ("x-mixed", b"2"), ("tab", b"a\tb")])
    assert isinstance(result, Ok)
    fields = ctx.table.get(result.value.rep, wasi_http.Fields)
    assert fields.entries == [("x-mixed", b"1"), ("x-mixed", b"2"), ("tab", b"a\tb")]
    assert impl(HTTP, "[method]fields.get")(ctx, result.value.rep, "X-MIXED") == [b"1", b"2"]


def test_fields_set_delete_append_mutate_but_request_headers_are_immutable() -> None:
    ctx = make_ctx()
    rep = impl(HTTP, "[constructor]fields")(ctx).rep
    assert impl(HTTP, "[method]fields.append")(ctx, rep, "a", b"1") is OK_EMPTY
    assert impl(HTTP, "[method]fields.set")(ctx, rep, "a", [b"2", b"3"]) is OK_EMPTY
    assert impl(HTTP, "[method]fields.entries")(ctx, rep) == [("a", b"2"), ("a", b"3")]
    assert impl(HTTP, "[method]fields.delete")(ctx, rep, "a") is OK_EMPTY
    assert impl(HTTP, "[method]fields.has")(ctx, rep, "a") is False

    head = types.SimpleNamespace(method="GET", target="/", headers=[(b"host", b"h")], scheme="http", authority="h")
    request = wasi_http.new_incoming_request(ctx, head, None)  # type: ignore[arg-type]
    headers = impl(HTTP, "[method]incoming-request.headers")(ctx, request.rep).rep
    assert impl(HTTP, "[method]fields.set")(ctx, headers, "x", [b"1"]) == Err(Variant("immutable"))
    assert impl(HTTP, "[method]fields.clone")(ctx, headers).rep != headers  # a clone is a new, mutable copy


# ------------------------------------------------------------------------------------------------ streams


class ChunkSource(wasi_io.InputSource):
    def __init__(self, chunks: list[bytes | Exception]) -> None:
        self.chunks = chunks

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        item = self.chunks.pop(0) if self.chunks else b""
        if isinstance(item, Exception):
            raise item
        return item[:max_bytes]


def test_input_stream_reads_then_reports_closed_forever() -> None:
    ctx = make_ctx()
    rep = ctx.new(wasi_io.INPUT_STREAM, wasi_io.InputStream(ChunkSource([b"abc"]))).rep
    read = impl(STREAMS, "[method]input-stream.blocking-read")
    assert read(ctx, rep, 2) == Ok(b"ab")
    assert read(ctx, rep, 0) == Ok(b"")
    assert read(ctx, rep, 10) == Err(Variant("closed"))
    assert read(ctx, rep, 10) == Err(Variant("closed"))


def test_a_failed_read_gives_last_operation_failed_with_a_readable_error() -> None:
    ctx = make_ctx()
    source = wasi_http.RequestBodySource(types.SimpleNamespace(read=lambda n: (_ for _ in ()).throw(ClientGone("gone"))))
    rep = ctx.new(wasi_io.INPUT_STREAM, wasi_io.InputStream(source)).rep
    result = impl(STREAMS, "[method]input-stream.read")(ctx, rep, 10)
    assert isinstance(result, Err) and result.value.tag == "last-operation-failed"
    error_rep = result.value.payload.rep
    assert "gone" in impl("wasi:io/error@0.2.0", "[method]error.to-debug-string")(ctx, error_rep)


def test_stdout_writes_reach_fd_in_one_write_each() -> None:
    ctx = make_ctx()
    read_end, write_end = os.pipe()
    try:
        rep = ctx.new(wasi_io.OUTPUT_STREAM, wasi_io.OutputStream(FdTarget(write_end))).rep
        write = impl(STREAMS, "[method]output-stream.blocking-write-and-flush")
        assert write(ctx, rep, b"line one\n") is OK_EMPTY
        assert write(ctx, rep, b"line two\n") is OK_EMPTY
        assert os.read(read_end, 100) == b"line one\nline two\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_poll_sleeps_until_the_earliest_timer_and_traps_on_a_wait_that_cannot_end() -> None:
    ctx = make_ctx()
    soon = ctx.new(wasi_io.POLLABLE, wasi_io.TimerPollable(time.monotonic() + 0.05)).rep
    later = ctx.new(wasi_io.POLLABLE, wasi_io.TimerPollable(time.monotonic() + 5)).rep
    started = time.monotonic()
    assert impl("wasi:io/poll@0.2.0", "poll")(ctx, [later, soon]) == [1]
    assert 0.04 <= time.monotonic() - started < 1

    never = ctx.new(wasi_io.POLLABLE, _NeverReady())
    with pytest.raises(HostTrap, match="never become ready"):
        impl("wasi:io/poll@0.2.0", "poll")(ctx, [never.rep])


class _NeverReady(wasi_io.Pollable):
    def ready(self) -> bool:
        return False


def test_a_wait_past_the_request_deadline_ends_as_a_deadline_trap() -> None:
    ctx = make_ctx()
    ctx.deadline = time.monotonic() + 0.05
    timer = ctx.new(wasi_io.POLLABLE, wasi_io.TimerPollable(time.monotonic() + 60)).rep
    started = time.monotonic()
    with pytest.raises(wasi_io.DeadlineExceeded):
        impl("wasi:io/poll@0.2.0", "[method]pollable.block")(ctx, timer)
    assert time.monotonic() - started < 1


# ------------------------------------------------------------------------------------------------ the response


def response_with_body(ctx: RequestContext, headers: list[tuple[str, bytes]]) -> tuple[int, int, int]:
    fields = impl(HTTP, "[static]fields.from-list")(ctx, headers).value.rep
    response = impl(HTTP, "[constructor]outgoing-response")(ctx, fields).rep
    body = impl(HTTP, "[method]outgoing-response.body")(ctx, response).value.rep
    stream = impl(HTTP, "[method]outgoing-body.write")(ctx, body).value.rep
    return response, body, stream


def test_body_written_before_the_outparam_is_set_waits_and_set_starts_the_response() -> None:
    ctx, sink = make_ctx(), MemorySink()
    outparam = wasi_http.new_response_outparam(ctx, sink).rep  # type: ignore[arg-type]
    response, body, stream = response_with_body(ctx, [("content-type", b"text/plain")])
    impl(HTTP, "[method]outgoing-response.set-status-code")(ctx, response, 201)
    impl(STREAMS, "[method]output-stream.write")(ctx, stream, b"early ")
    assert not sink.started
    impl(HTTP, "[static]response-outparam.set")(ctx, outparam, Ok(response))
    assert sink.started and sink.status == 201 and sink.headers == [(b"content-type", b"text/plain")]
    impl(STREAMS, "[method]output-stream.write")(ctx, stream, b"late")
    assert impl(HTTP, "[static]outgoing-body.finish")(ctx, body, None) is OK_EMPTY
    assert b"".join(sink.chunks) == b"early late" and sink.finished


def test_writing_past_the_guests_content_length_fails_and_breaks_the_response() -> None:
    ctx, sink = make_ctx(), MemorySink()
    outparam = wasi_http.new_response_outparam(ctx, sink).rep  # type: ignore[arg-type]
    response, body, stream = response_with_body(ctx, [("content-length", b"3")])
    impl(HTTP, "[static]response-outparam.set")(ctx, outparam, Ok(response))
    result = impl(STREAMS, "[method]output-stream.write")(ctx, stream, b"toolong")
    assert isinstance(result, Err) and result.value.tag == "last-operation-failed"
    error = ctx.table.get(result.value.payload.rep, wasi_io.IoError)
    assert error.http_error == Variant("HTTP-response-body-size", 7)
    assert wasi_http.exchange_of(ctx).broken is not None  # type: ignore[union-attr]
    assert sink.chunks == []


def test_finishing_short_of_the_content_length_is_an_error() -> None:
    ctx, sink = make_ctx(), MemorySink()
    outparam = wasi_http.new_response_outparam(ctx, sink).rep  # type: ignore[arg-type]
    response, body, stream = response_with_body(ctx, [("content-length", b"10")])
    impl(HTTP, "[static]response-outparam.set")(ctx, outparam, Ok(response))
    impl(STREAMS, "[method]output-stream.write")(ctx, stream, b"short")
    assert impl(HTTP, "[static]outgoing-body.finish")(ctx, body, None) == Err(Variant("HTTP-response-body-size", 5))
    assert not sink.finished


def test_a_client_gone_mid_body_fails_the_guests_next_write() -> None:
    ctx, sink = make_ctx(), MemorySink(fail_after=1)
    outparam = wasi_http.new_response_outparam(ctx, sink).rep  # type: ignore[arg-type]
    response, body, stream = response_with_body(ctx, [])
    impl(HTTP, "[static]response-outparam.set")(ctx, outparam, Ok(response))
    write = impl(STREAMS, "[method]output-stream.blocking-write-and-flush")
    assert write(ctx, stream, b"one") is OK_EMPTY
    assert isinstance(write(ctx, stream, b"two"), Err)
    assert isinstance(impl(STREAMS, "[method]output-stream.check-write")(ctx, stream), Err)


def test_a_response_error_code_is_kept_and_nothing_is_sent() -> None:
    ctx, sink = make_ctx(), MemorySink()
    outparam = wasi_http.new_response_outparam(ctx, sink).rep  # type: ignore[arg-type]
    impl(HTTP, "[static]response-outparam.set")(ctx, outparam, Err(Variant("internal-error", "nope")))
    assert wasi_http.exchange_of(ctx).error == Variant("internal-error", "nope")  # type: ignore[union-attr]
    assert not sink.started


def test_outbound_requests_outside_allowed_hosts_are_denied_with_a_note() -> None:
    ctx = make_ctx(allowed_outbound_hosts=("https://api.example.com",))
    fields = impl(HTTP, "[constructor]fields")(ctx).rep
    request = impl(HTTP, "[constructor]outgoing-request")(ctx, fields).rep
    impl(HTTP, "[method]outgoing-request.set-authority")(ctx, request, "evil.example.com")
    handle = impl("wasi:http/outgoing-handler@0.2.0", "handle")
    assert handle(ctx, request, None) == Err(Variant("HTTP-request-denied"))
    assert "add \"https://evil.example.com\" to allowed_outbound_hosts" in ctx.notes[0]
