"""runtime.spin.postgres.address alone: tokio-postgres's two connection-string forms, Spin's allowed-host check,
and masking of passwords in every form."""

from __future__ import annotations

import pytest

from runtime.spin.outbound import OutboundPolicy
from runtime.spin.postgres.address import check_allowed, masked, parse_connection_string
from runtime.spin.postgres.errors import PgError


def test_url_form_with_every_part():
    options = parse_connection_string(
        "postgresql://app%40x:p%40ss:w@db.example:6543,[::1]:7000/my%20db?sslmode=disable&application_name=a&"
        "connect_timeout=3&options=-c%20search_path%3Dx")
    assert options.user == "app@x" and options.password == "p@ss:w" and options.dbname == "my db"
    assert options.hosts == ("db.example", "::1") and options.ports == (6543, 7000)
    assert options.endpoints() == [("db.example", 6543), ("::1", 7000)]
    assert (options.sslmode, options.application_name, options.connect_timeout) == ("disable", "a", 3.0)
    assert options.options == "-c search_path=x"
    assert "p@ss" not in repr(options)


def test_key_value_form_and_defaults():
    options = parse_connection_string("host=127.0.0.1 user=spin password='it\\'s q' dbname=d")
    assert options.password == "it's q" and options.endpoints() == [("127.0.0.1", 5432)]
    assert options.sslmode == "prefer" and options.dbname == "d"
    one_port = parse_connection_string("postgres://u@a,b:1234/x")
    assert one_port.endpoints() == [("a", 1234), ("b", 1234)]


@pytest.mark.parametrize(("address", "reason"), [
    ("postgres://u@h:0/x", "port"),
    ("postgres://u@a:1,b:2,c:3/x?port=4", "unexpected number of ports"),
    ("postgres://u@h/x?sslmode=verify-full", "sslmode"),
    ("postgres://u@h/x?nonsense=1", "unknown option `nonsense`"),
    ("postgres://u@h/x?sslmode", "unexpected EOF"),
    ("postgres://u@[::1/x", "IPv6"),
    ("just some words", "key=value"),
])
def test_malformed_connection_strings_are_connection_failed(address, reason):
    with pytest.raises(PgError) as caught:
        parse_connection_string(address)
    assert caught.value.kind == "connection-failed" and reason in caught.value.text


def test_every_host_and_hostaddr_must_be_allowed_as_postgres_urls():
    policy = OutboundPolicy.parse(["postgres://db.example", "postgres://127.0.0.1:*", "postgres://[::1]:7000"])
    check_allowed(parse_connection_string("postgres://u@db.example/x"), policy)  # 5432 by default
    check_allowed(parse_connection_string("postgres://u@127.0.0.1:1,[::1]:7000/x"), policy)
    for address, shown in (("postgres://u@db.example:6543/x", "postgres://db.example:6543"),
                           ("postgres://u@127.0.0.1,other/x", "postgres://other"),
                           ("host=db.example hostaddr=10.0.0.9 user=u", "postgres://10.0.0.9"),
                           ("postgres://u@[::1]:7001/x", "postgres://[::1]:7001")):
        with pytest.raises(PgError) as caught:
            check_allowed(parse_connection_string(address), policy)
        assert caught.value.kind == "connection-failed"
        assert caught.value.text == f"address {shown} is not permitted"
    with pytest.raises(PgError, match="Unix sockets are not supported on WebAssembly"):
        check_allowed(parse_connection_string("host=/run/postgresql user=u"), OutboundPolicy.parse(["*://*:*"]))
    with pytest.raises(PgError, match="not permitted"):
        check_allowed(parse_connection_string("postgres://u@db.example/x"), OutboundPolicy.parse(["redis://*:*"]))


@pytest.mark.parametrize(("address", "shown"), [
    ("postgres://u:hunter2@h:1/db", "postgres://u:***@h:1/db"),
    ("postgresql://u:hun@ter2@h/db?x=1", "postgresql://u:***@h/db?x=1"),
    ("postgres://u@h/db?sslmode=disable&password=hunter2", "postgres://u@h/db?sslmode=disable&password=***"),
    ("host=h password=hunter2 user=u", "host=h password=*** user=u"),
    ("host=h password='hunter 2' user=u", "host=h password=*** user=u"),
    ("postgres://u@h/db", "postgres://u@h/db"),
])
def test_masked_hides_the_password_in_every_form(address, shown):
    assert masked(address) == shown
