"""allowed_outbound_hosts as Spin reads it: every rule from strings, no network."""

from __future__ import annotations

import pytest

from runtime.errors import AppError, ManifestError
from runtime.spin.outbound import (
    OutboundDenied,
    OutboundHostsError,
    OutboundPolicy,
    parse_destination,
    service_chaining_target,
)


def policy(*entries: str, **variables: str) -> OutboundPolicy:
    return OutboundPolicy.parse(entries, where="spin.toml: component 'web'", resolve_variable=variables.__getitem__)


def rejected(*entries: str) -> str:
    with pytest.raises(OutboundHostsError) as info:
        policy(*entries)
    return str(info.value)


def test_empty_list_allows_nothing():
    assert not policy().allows("https://example.com")
    assert not policy().allows("/relative")


def test_exact_entry_uses_the_schemes_default_port():
    p = policy("https://api.example.com")
    assert p.allows("https://api.example.com/v1/x?y=1")
    assert p.allows("https://api.example.com:443/")
    assert not p.allows("https://api.example.com:8443/")
    assert not p.allows("http://api.example.com/")
    assert not p.allows("https://other.example.com/")


def test_http_default_port_is_80():
    p = policy("http://example.com")
    assert p.allows("http://example.com")
    assert p.allows("http://example.com:80/a")
    assert not p.allows("http://example.com:8080")


def test_host_matching_ignores_case_and_userinfo():
    p = policy("https://API.Example.com")
    assert p.allows("https://api.EXAMPLE.com/x")
    assert p.allows("https://user:pass@api.example.com/file@0.1.0.json")


def test_explicit_port_must_match():
    p = policy("http://localhost:3001")
    assert p.allows("http://localhost:3001/x")
    assert not p.allows("http://localhost/x")
    assert not p.allows("http://localhost:3002/x")


def test_any_port():
    p = policy("http://localhost:*")
    assert p.allows("http://localhost:1") and p.allows("http://localhost") and p.allows("http://localhost:65535")


def test_port_range_excludes_its_end_like_spin():
    p = policy("http://localhost:4000..4002")
    assert p.allows("http://localhost:4000") and p.allows("http://localhost:4001")
    assert not p.allows("http://localhost:4002") and not p.allows("http://localhost:3999")


def test_dash_port_range_is_rejected_with_the_spin_spelling():
    message = rejected("http://localhost:1000-2000")
    assert "start..end" in message and "'http://localhost:1000-2000'" in message


def test_any_scheme():
    p = policy("*://example.com:7777")
    assert p.allows("http://example.com:7777") and p.allows("redis://example.com:7777")
    assert not p.allows("http://example.com")


def test_any_scheme_needs_a_port():
    assert "no well-known port" in rejected("*://example.com")


def test_any_host():
    p = policy("https://*")
    assert p.allows("https://anything.test") and p.allows("https://10.1.2.3")
    assert not p.allows("http://anything.test")


def test_allow_all():
    p = policy("*://*:*")
    assert p.allows_all
    assert p.allows("https://x.test:9") and p.allows("mqtt://y") and p.allows("/self-request")


def test_subdomain_wildcard_matches_subdomains_only():
    p = policy("https://*.example.com")
    assert p.allows("https://a.example.com") and p.allows("https://a.b.example.com")
    assert not p.allows("https://example.com")
    assert not p.allows("https://badexample.com")


def test_wildcards_elsewhere_in_a_host_are_rejected():
    assert "wildcards" in rejected("https://api.*.com")
    assert "wildcards" in rejected("https://*.*.com")


def test_ip_literals_and_ipv6():
    p = policy("http://192.168.1.1:3002", "http://[::1]:8001")
    assert p.allows("http://192.168.1.1:3002") and not p.allows("http://192.168.1.2:3002")
    assert p.allows("http://[::1]:8001/x") and p.allows("http://[0:0::1]:8001")
    assert policy("http://[::1]").allows("http://[::1]/")


def test_cidr_networks():
    p = policy("*://127.0.0.0/24:80", "*://ff00::/8:80")
    assert p.allows("http://127.0.0.9") and not p.allows("http://127.0.1.9")
    assert p.allows("http://[ff00::1]") and not p.allows("http://localhost")


def test_entry_paths_are_rejected_but_a_trailing_slash_is_fine():
    assert policy("http://spin.fermyon.dev/").allows("http://spin.fermyon.dev")
    assert policy("http://spin.fermyon.dev:4444/").allows("http://spin.fermyon.dev:4444")
    assert "path" in rejected("http://spin.fermyon.dev/a")
    assert "path" in rejected("http://spin.fermyon.dev:6666/a/b")


def test_self_allows_relative_requests_only():
    p = policy("http://self")
    assert p.allows("/api/other") and p.allows_relative()
    assert not p.allows("http://self.example.com") and not p.allows("http://localhost")
    assert not policy("https://example.com").allows("/x")


def test_bad_scheme_and_port_messages_name_the_component_and_entry():
    message = rejected("ht1p://example.com")
    assert message.startswith("spin.toml: component 'web': allowed_outbound_hosts entry 'ht1p://example.com'")
    assert "not a port number" in rejected("http://example.com:http")
    assert "not a port number" in rejected("http://example.com:70000")


def test_the_error_is_a_manifest_app_error():
    with pytest.raises(ManifestError):
        policy("*")
    assert issubclass(OutboundHostsError, AppError)


def test_bare_star_is_not_a_format_and_points_at_allow_all():
    assert "'*://*:*'" in rejected("*")
    assert "'*://*:*'" in rejected("")


def test_legacy_allowed_http_hosts_forms():
    legacy = policy("legacy.example.com", "other.test:8080")
    assert legacy.allows("http://legacy.example.com") and legacy.allows("https://legacy.example.com")
    assert not legacy.allows("http://legacy.example.com:81")
    assert legacy.allows("http://other.test:8080") and legacy.allows("https://other.test:8080")
    assert not legacy.allows("https://other.test")
    allow_all = policy("insecure:allow-all")
    assert allow_all.allows("http://x.test:1") and allow_all.allows("https://y.test") and allow_all.allows("/self")
    assert not allow_all.allows("redis://x.test")
    assert policy("self").allows("/x")


def test_legacy_entry_with_a_path_is_rejected_asking_for_a_scheme():
    assert "does not contain a scheme" in rejected("example.com/path")


def test_templates_expand_from_application_variables():
    p = policy("https://{{ api_host }}:{{port}}", api_host="api.example.com", port="8443")
    assert p.allows("https://api.example.com:8443/x")
    assert p.hosts[0].original == "https://api.example.com:8443"


def test_template_errors_name_the_entry():
    def missing(name: str) -> str:
        raise LookupError(f"variable {name!r} has no value")

    with pytest.raises(OutboundHostsError, match="'https://{{ nope }}': variable 'nope' has no value"):
        OutboundPolicy.parse(["https://{{ nope }}"], where="w", resolve_variable=missing)
    assert "unclosed" in rejected("https://{{ api_host")
    with pytest.raises(OutboundHostsError, match="uses variables"):
        OutboundPolicy.parse(["https://{{ x }}"])


def test_expanded_template_that_is_malformed_shows_both_forms():
    message = rejected_with("https://{{ host }}/path", host="a.test")
    assert "'https://{{ host }}/path' (= 'https://a.test/path')" in message


def test_a_bad_entry_from_a_secret_variable_is_not_shown():
    with pytest.raises(OutboundHostsError) as info:
        OutboundPolicy.parse(["https://{{ host }}/x"], where="w", resolve_variable=lambda _: "s3cr3t.test",
                             is_secret=lambda name: name == "host")
    assert "s3cr3t" not in str(info.value) and "'https://{{ host }}/x' is invalid" in str(info.value)


def rejected_with(entry: str, **variables: str) -> str:
    with pytest.raises(OutboundHostsError) as info:
        policy(entry, **variables)
    return str(info.value)


def test_check_says_which_entry_would_allow_the_url():
    p = policy("https://api.example.com")
    p.check("https://api.example.com/ok")
    with pytest.raises(OutboundDenied) as info:
        p.check("http://other.test:8080/x")
    assert info.value.suggested_entry == "http://other.test:8080"
    assert str(info.value) == (
        "Destination not allowed: http://other.test:8080/x: to allow it, add \"http://other.test:8080\" "
        "to allowed_outbound_hosts of spin.toml: component 'web'"
    )
    with pytest.raises(OutboundDenied) as info:
        p.check("https://other.test:443/x")
    assert info.value.suggested_entry == "https://other.test"
    with pytest.raises(OutboundDenied) as info:
        p.check("/relative")
    assert info.value.suggested_entry == "http://self"


def test_unparseable_urls_are_denied():
    p = policy("*://*:*")
    assert not p.allows("http://")
    assert not p.allows("http://host:notaport/")
    with pytest.raises(OutboundDenied):
        p.check("http://host:99999/")


def test_destination_without_scheme_gets_the_default_scheme():
    assert parse_destination("spin.fermyon.dev:443", "https").scheme == "https"
    assert policy("*://spin.fermyon.dev:443").allows("spin.fermyon.dev:443")


def test_service_chaining_target():
    assert service_chaining_target("backend.spin.internal") == "backend"
    assert service_chaining_target("backend.spin.internal:80") == "backend"
    assert service_chaining_target("backend.example.com") is None
    assert policy("http://*.spin.internal").allows("http://backend.spin.internal/x")
