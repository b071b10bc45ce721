"""``[[client_tls]]`` as Spin parses it (spin crates/factor-outbound-networking runtime_config/spin.rs tests), read
through runtime.spin.runtime_config so the paths resolve inside the container's root."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.spin.client_tls import DEFAULT_PROFILE, profile_for
from runtime.spin.runtime_config import RuntimeConfigError, parse_runtime_config
from tests.outbound_support import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def root(tmp_path: Path, pki) -> Path:
    certs = tmp_path / "root" / "certs"
    certs.mkdir(parents=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        (certs / name).write_bytes((pki.ca_crt.parent / name).read_bytes())
    return tmp_path / "root"


def parse(root: Path, text: str):
    return parse_runtime_config(text, root / "runtime-config.toml", root).client_tls


def test_minimal_table_uses_platform_roots_only(root: Path) -> None:
    (spec,) = parse(root, '[[client_tls]]\ncomponent_ids = ["test-component"]\nhosts = ["test-host"]\n')
    assert (spec.use_platform_roots, spec.use_webpki_roots, spec.ca_roots_pem) == (True, False, None)
    assert spec.matches("test-component", "TEST-HOST") and not spec.matches("other", "test-host")


def test_maximal_table_loads_roots_and_the_client_certificate(root: Path) -> None:
    (spec,) = parse(root, """
[[client_tls]]
component_ids = ["test-component"]
hosts = ["test-host"]
ca_use_webpki_roots = true
ca_roots_file = "certs/ca.crt"
client_cert_file = "/certs/client.crt"
client_private_key_file = "certs/client.key"
""")
    assert (spec.use_platform_roots, spec.use_webpki_roots) == (False, True)
    assert "BEGIN CERTIFICATE" in (spec.ca_roots_pem or "")
    assert spec.client_cert_file == root / "certs" / "client.crt"


@pytest.mark.parametrize(("keys", "platform", "webpki"), [
    ('ca_roots_file = "certs/ca.crt"', False, False),  # explicit roots alone: neither default set
    ("ca_use_platform_roots = true", True, False),
    ("ca_use_webpki_roots = true", False, True),
    ("ca_use_platform_roots = true\nca_use_webpki_roots = true", True, True),
])
def test_root_flags_follow_spins_table(root: Path, keys: str, platform: bool, webpki: bool) -> None:
    (spec,) = parse(root, f'[[client_tls]]\ncomponent_ids = ["a"]\nhosts = ["h"]\n{keys}\n')
    assert (spec.use_platform_roots, spec.use_webpki_roots) == (platform, webpki)


@pytest.mark.parametrize(("body", "message"), [
    ('component_ids = []\nhosts = ["h"]', "'component_ids' list may not be empty"),
    ('component_ids = ["a"]\nhosts = []', "'hosts' list may not be empty"),
    ('hosts = ["h"]', "'component_ids' is required"),
    ('component_ids = ["a"]\nhosts = ["h:443"]', "ports not currently supported"),
    ('component_ids = ["Not_Kebab"]\nhosts = ["h"]', "kebab-case"),
    ('component_ids = ["a"]\nhosts = ["h"]\nclient_cert_file = "certs/client.crt"',
     "client_cert_file specified without client_private_key_file"),
    ('component_ids = ["a"]\nhosts = ["h"]\nclient_private_key_file = "certs/client.key"',
     "client_private_key_file specified without client_cert_file"),
    ('component_ids = ["a"]\nhosts = ["h"]\ncert_chain_file = "x"', "unknown key(s) 'cert_chain_file'"),
    ('component_ids = ["a"]\nhost = ["h"]', "'host' (did you mean `hosts`?)"),
    ('component_ids = ["a"]\nhosts = ["h"]\nca_roots_file = "certs/client.key"', "holds no PEM certificate"),
    ('component_ids = ["a"]\nhosts = ["h"]\nca_roots_file = "certs/missing.crt"', "no such file"),
    ('component_ids = ["a"]\nhosts = ["h"]\nca_use_platform_roots = false\nca_use_webpki_roots = false',
     "at least one of"),
    ('component_ids = ["a"]\nhosts = ["h"]\nclient_cert_file = "certs/ca.crt"\n'
     'client_private_key_file = "certs/client.key"', "cannot load the certificate and key"),
])
def test_invalid_tables_fail_the_load_naming_the_table(root: Path, body: str, message: str) -> None:
    with pytest.raises(RuntimeConfigError) as caught:
        parse(root, f"[[client_tls]]\n{body}\n")
    assert message in str(caught.value) and "[[client_tls]] #1" in str(caught.value)


def test_paths_never_leave_the_containers_root(root: Path, tmp_path: Path, pki) -> None:
    outside = tmp_path / "outside.crt"
    outside.write_bytes(pki.ca_crt.read_bytes())
    (root / "certs" / "escape.crt").symlink_to(outside)  # absolute: means the container's /.../outside.crt
    for written in ("../outside.crt", "certs/escape.crt", str(outside)):
        with pytest.raises(RuntimeConfigError):
            parse(root, f'[[client_tls]]\ncomponent_ids = ["a"]\nhosts = ["h"]\nca_roots_file = "{written}"\n')


def test_the_first_matching_table_wins_and_others_get_the_default(root: Path) -> None:
    specs = parse(root, """
[[client_tls]]
component_ids = ["one"]
hosts = ["api.example.com"]
ca_roots_file = "certs/ca.crt"
client_cert_file = "certs/client.crt"
client_private_key_file = "certs/client.key"

[[client_tls]]
component_ids = ["one", "two"]
hosts = ["api.example.com"]
""")
    first = profile_for(specs, "one", "api.example.com")
    assert first.key == "client_tls#1"
    assert profile_for(specs, "two", "api.example.com").key == "client_tls#2"
    assert profile_for(specs, "three", "api.example.com") is DEFAULT_PROFILE
    assert profile_for(specs, "one", "other.example.com") is DEFAULT_PROFILE
    assert first.context() is first.context()
