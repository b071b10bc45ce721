"""The pure parts of the CRI test infrastructure: the CRI log format, kubelet's CPU arithmetic, the CNI network."""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from private_containerd import CNI_SLOTS, CniNetwork, cni_slot_order, render_cni_conflist  # noqa: E402

from cri_client import cpu_resources, join_cri_log, parse_cri_log_line  # noqa: E402

# --- CRI log lines ---------------------------------------------------------------------------------


def test_full_line_is_parsed_into_its_four_fields() -> None:
    entry = parse_cri_log_line("2026-11-21T21:42:16.893871522Z stdout F hello-from-cri\n")
    assert (entry.timestamp, entry.stream, entry.partial, entry.content) == (
        "2026-11-21T21:42:16.893871522Z", "stdout", False, "hello-from-cri"
    )


def test_content_keeps_its_own_spaces_and_may_be_empty() -> None:
    assert parse_cri_log_line("t stderr F  two  spaces ").content == " two  spaces "
    assert parse_cri_log_line("t stdout F ").content == ""
    assert parse_cri_log_line("t stdout F").content == ""  # an empty line as some runtimes write it


def test_tag_with_extra_fields_uses_its_first_field() -> None:
    assert parse_cri_log_line("t stdout P:future x").partial


@pytest.mark.parametrize("line", ["", "just-text", "t stdin F x", "t stdout X x"])
def test_malformed_lines_are_rejected(line: str) -> None:
    with pytest.raises(ValueError):
        parse_cri_log_line(line)


def test_partial_pieces_are_joined_per_stream() -> None:
    lines = [
        "t1 stdout P hel",
        "t2 stderr F oops",
        "t3 stdout P lo ",
        "t4 stdout F world",
        "",
        "t5 stdout F next",
    ]
    assert join_cri_log(lines) == ["oops", "hello world", "next"]
    assert join_cri_log(lines, "stdout") == ["hello world", "next"]
    assert join_cri_log(lines, "stderr") == ["oops"]


def test_a_trailing_partial_line_is_still_shown() -> None:
    assert join_cri_log(["t stdout F a", "t stdout P unfinished"]) == ["a", "unfinished"]


# --- kubelet's CPU mapping -------------------------------------------------------------------------


def test_cpu_millicores_map_to_shares_and_quota_as_kubelet_does() -> None:
    assert cpu_resources(500) == {"cpu_shares": 512, "cpu_quota": 50_000, "cpu_period": 100_000}
    assert cpu_resources(1000)["cpu_shares"] == 1024
    assert cpu_resources(1)["cpu_shares"] == 2  # kubelet's minimum


# --- CNI network -----------------------------------------------------------------------------------


def test_every_slot_has_a_valid_bridge_name_and_its_own_subnet() -> None:
    networks = [CniNetwork(slot) for slot in range(CNI_SLOTS)]
    assert all(len(n.name) <= 15 for n in networks)  # IFNAMSIZ - 1
    subnets = [ipaddress.ip_network(n.subnet) for n in networks]
    assert len(set(subnets)) == CNI_SLOTS
    assert all(s.prefixlen == 24 and s.is_private for s in subnets)
    assert len({n.name for n in networks}) == CNI_SLOTS


def test_gateway_is_the_first_host_and_pods_are_the_rest_of_the_subnet() -> None:
    network = CniNetwork(0x1a3)
    assert (network.name, network.subnet, network.gateway) == ("spinshim1a3", "10.201.163.0/24", "10.201.163.1")
    assert network.contains("10.201.163.2") and not network.contains("10.201.163.1")
    assert not network.contains("10.201.164.2")


def test_slot_order_is_a_stable_permutation_per_workdir() -> None:
    order = cni_slot_order(Path("/tmp/a"))
    assert order == cni_slot_order(Path("/tmp/a"))
    assert sorted(order) == list(range(CNI_SLOTS))
    assert order[0] != cni_slot_order(Path("/tmp/b"))[0]


def test_conflist_is_a_gateway_bridge_without_masquerade_on_host_local_ipam(tmp_path: Path) -> None:
    network = CniNetwork(7)
    conflist = json.loads(render_cni_conflist(network, tmp_path / "ipam"))
    assert conflist["name"] == network.name
    (bridge,) = conflist["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == network.name
    assert bridge["isGateway"] is True and bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local" and ipam["dataDir"] == str(tmp_path / "ipam")
    assert ipam["ranges"] == [[{"subnet": network.subnet, "gateway": network.gateway}]]


# --- the pause binary ------------------------------------------------------------------------------

PT_INTERP = 3  # ELF program header naming the dynamic loader
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing: run scripts/setup.sh")


@needs_gcc
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_pause_blocks_until_told_to_stop_then_exits_zero(tmp_path: Path, signum: int) -> None:
    """CRI stops the sandbox with SIGTERM; anything but exit 0 would be reported as a failed sandbox."""
    from build_pause import compile_pause

    binary = tmp_path / "pause"
    compile_pause(binary)
    process = subprocess.Popen([str(binary)], stderr=subprocess.PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.3)
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()
    assert b"not PID 1" in process.stderr.read()  # type: ignore[union-attr]


@needs_gcc
def test_pause_is_static(tmp_path: Path) -> None:
    """The image holds nothing but /pause: no dynamic loader, no libc."""
    from build_pause import compile_pause

    binary = tmp_path / "pause"
    compile_pause(binary)
    elf = binary.read_bytes()
    assert elf[:5] == b"\x7fELF\x02"  # 64-bit ELF
    phoff, phentsize, phnum = (int.from_bytes(elf[32:40], "little"), int.from_bytes(elf[54:56], "little"),
                               int.from_bytes(elf[56:58], "little"))
    program_types = [int.from_bytes(elf[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
                     for i in range(phnum)]
    assert PT_INTERP not in program_types
