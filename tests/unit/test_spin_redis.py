"""fermyon:spin/redis@2.0.0 as the guest calls it, against a real redis-server: every operation, Spin's
errors (address not allowed, server down, error replies), and connections closed at the end of the request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.host.values import Err, Ok, Variant
from runtime.manifest import parse_manifest
from runtime.spin.services import SpinServices
from tests.redis_support import running_redis
from tests.unit.test_spin_bindings import call, context, rep_of

REDIS = "fermyon:spin/redis@2.0.0"

MANIFEST = """
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
allowed_outbound_hosts = ["redis://127.0.0.1:*"]
[component.other]
source = "other.wasm"
"""


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture
def services(tmp_path: Path) -> SpinServices:
    return SpinServices.build(parse_manifest(MANIFEST, tmp_path / "spin.toml"), {}, work_dir=tmp_path)


def op(ctx, rep: int, name: str, *args):
    return call(REDIS, f"[method]connection.{name}", ctx, rep, *args)


def test_every_operation_against_a_real_server(services: SpinServices, redis_port: int):
    ctx = context(services)
    conn = rep_of(call(REDIS, "[static]connection.open", ctx, f"redis://127.0.0.1:{redis_port}"))
    assert op(ctx, conn, "set", "greeting", b"hello \x00\xff") == Ok(None)
    assert op(ctx, conn, "get", "greeting") == Ok(b"hello \x00\xff")
    assert op(ctx, conn, "get", "missing") == Ok(None)
    assert op(ctx, conn, "incr", "hits") == Ok(1) and op(ctx, conn, "incr", "hits") == Ok(2)
    assert op(ctx, conn, "sadd", "pets", ["cat", "dog", "cat"]) == Ok(2)
    assert sorted(op(ctx, conn, "smembers", "pets").value) == ["cat", "dog"]
    assert op(ctx, conn, "srem", "pets", ["cat", "fish"]) == Ok(1)
    assert op(ctx, conn, "del", ["greeting", "hits", "never"]) == Ok(2)
    assert op(ctx, conn, "publish", "news", b"payload") == Ok(None)
    executed = op(ctx, conn, "execute", "RPUSH", [Variant("binary", b"list"), Variant("binary", b"a"),
                                                  Variant("int64", 7)])
    assert executed == Ok([Variant("int64", 2)])
    assert op(ctx, conn, "execute", "LRANGE", [Variant("binary", b"list"), Variant("int64", 0),
                                               Variant("int64", -1)]) == Ok([Variant("binary", b"a"),
                                                                             Variant("binary", b"7")])
    assert op(ctx, conn, "execute", "GET", [Variant("binary", b"missing")]) == Ok([Variant("nil", None)])


def test_error_replies_and_type_mismatches_are_spins_errors(services: SpinServices, redis_port: int):
    ctx = context(services)
    conn = rep_of(call(REDIS, "[static]connection.open", ctx, f"redis://127.0.0.1:{redis_port}"))
    op(ctx, conn, "set", "text", b"not a number")
    failed = op(ctx, conn, "incr", "text")
    assert isinstance(failed, Err) and failed.value.tag == "other" and "not an integer" in failed.value.payload
    op(ctx, conn, "sadd", "binary-set", [])  # an empty SADD is an error reply too
    unknown = op(ctx, conn, "execute", "NOSUCHCOMMAND", [])
    assert unknown.value.tag == "other" and "unknown command" in unknown.value.payload
    op(ctx, conn, "execute", "SADD", [Variant("binary", b"raw"), Variant("binary", b"\xff\xfe")])
    assert op(ctx, conn, "smembers", "raw") == Err(Variant("type-error", None))


def test_addresses_not_allowed_or_not_redis_urls_are_invalid_address(services: SpinServices, redis_port: int):
    for address in (f"redis://localhost:{redis_port}", f"redis://127.0.0.2:{redis_port}", "http://127.0.0.1:80",
                    "127.0.0.1:6379", "redis://127.0.0.1:notaport", "unix:///run/redis.sock"):
        ctx = context(services)
        assert call(REDIS, "[static]connection.open", ctx, address) == Err(Variant("invalid-address", None)), address
    other = call(REDIS, "[static]connection.open", context(services, "other"), f"redis://127.0.0.1:{redis_port}")
    assert other == Err(Variant("invalid-address", None))  # a component without the permission


def test_a_server_that_is_down_is_other_with_the_reason_and_no_password(services: SpinServices, tmp_path: Path):
    with running_redis(tmp_path / "gone") as port:
        pass  # stopped again: nothing listens on the port now
    ctx = context(services)
    result = call(REDIS, "[static]connection.open", ctx, f"redis://user:hunter2@127.0.0.1:{port}")
    assert isinstance(result, Err) and result.value.tag == "other"
    assert "Connection refused" in result.value.payload or "111" in result.value.payload
    assert "hunter2" not in result.value.payload and "***" in result.value.payload


def test_connections_are_closed_when_dropped_or_when_the_request_ends(services: SpinServices, redis_port: int):
    from runtime.spin.bindings import redis as bindings

    ctx = context(services)
    conns = [rep_of(call(REDIS, "[static]connection.open", ctx, f"redis://127.0.0.1:{redis_port}"))
             for _ in range(3)]
    watcher = context(services)
    probe = rep_of(call(REDIS, "[static]connection.open", watcher, f"redis://127.0.0.1:{redis_port}"))

    def clients() -> int:
        listing = op(watcher, probe, "execute", "CLIENT", [Variant("binary", b"LIST")]).value[0].payload
        return len(listing.splitlines())

    def settles_at(count: int) -> bool:
        """The server drops a closed client a moment after the close (its event loop reads the EOF)."""
        deadline = time.monotonic() + 5
        while clients() != count and time.monotonic() < deadline:
            time.sleep(0.02)
        return clients() == count

    before = clients()
    bindings._released(ctx, ctx.table.take(conns[0], bindings.GuestRedis))
    assert settles_at(before - 1)
    for cleanup in ctx.cleanups:
        cleanup()
    assert settles_at(before - 3)
