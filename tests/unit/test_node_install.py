"""The node installer: the config edit on real `containerd config default` outputs and hand-written files, its
refusals, and the command's I/O (symlink, atomic write, exit status, messages).

tests/unit/data/containerd-<v>-config-default.toml are the real `containerd config default` outputs of containerd
1.6 (bookworm's /usr/bin/containerd), 1.7 and 2.1 (scripts/install_containerd.sh), each under a two-line comment
saying which binary made it.
"""

from __future__ import annotations

import copy
import io
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.cli import main as cli
from shim.install.command import NOTHING_CHANGED, RESTART_HINT, SHIM_BINARY_NAME, main
from shim.install.containerd_config import (
    ConfigError,
    RuntimeSettings,
    containerd_major_from_version_output,
    edit_config,
)

DATA = Path(__file__).parent / "data"
V2_RUNTIMES = ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes")
V3_RUNTIMES = ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes")
SPIN = "io.containerd.spin.v2"

HAND_WRITTEN = """\
# containerd config, managed by hand
version = 2  # schema 2: containerd 1.6/1.7

root = '/var/lib/containerd'

[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "registry.k8s.io/pause:3.9"   # pinned

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true

# registry mirrors
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/containerd/certs.d"
"""


def containerd_on_path_says() -> str:
    import subprocess

    result = subprocess.run(["/usr/bin/containerd", "--version"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


CONTAINERD_ON_PATH_SAYS = containerd_on_path_says()


def default_config(version: str) -> str:
    return (DATA / f"containerd-{version}-config-default.toml").read_text()


def lookup(tree: Any, *path: str) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def without(tree: dict[str, Any], *path: str) -> dict[str, Any]:
    """The parsed config minus one table, and minus the parents that held only it."""
    tree = copy.deepcopy(tree)
    parents = [tree]
    for key in path[:-1]:
        if key not in parents[-1]:
            return tree
        parents.append(parents[-1][key])
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if parents[depth]:
            break
        del parents[depth - 1][path[depth - 1]]
    return tree


def only_insertions(before: str, after: str) -> list[str]:
    """The one block of lines the edit inserted; fails if it changed or removed any line of the original."""
    old, new = before.splitlines(), after.splitlines()
    start = 0
    while start < len(old) and old[start] == new[start]:
        start += 1
    block = new[start:start + len(new) - len(old)]
    assert new == old[:start] + block + old[start:], "the edit changed more than one inserted block"
    return block


# ---- the edit on `containerd config default` outputs -----------------------------------------------------------

@pytest.mark.parametrize(("version", "runtimes"), [("1.6", V2_RUNTIMES), ("1.7", V2_RUNTIMES), ("2.1", V3_RUNTIMES)])
def test_default_config_gets_runtime_in_its_schemas_cri_plugin(version: str, runtimes: tuple[str, ...]) -> None:
    text = default_config(version)
    edit = edit_config(text, RuntimeSettings())
    parsed = tomllib.loads(edit.text)
    assert lookup(parsed, *runtimes, "spin", "runtime_type") == SPIN
    # containerd's default runc options say SystemdCgroup = false: the shim gets the same driver.
    assert lookup(parsed, *runtimes, "spin", "options") == {"SystemdCgroup": False}
    assert without(parsed, *runtimes, "spin") == tomllib.loads(text)
    assert len(edit.changes) == 2


def test_new_table_of_1_7_sits_after_runc_and_is_laid_out_like_it() -> None:
    text = default_config("1.7")
    added = only_insertions(text, edit_config(text, RuntimeSettings()).text)
    assert added == [
        '        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]',
        '          runtime_type = "io.containerd.spin.v2"',
        "",
        '          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options]',
        "            SystemdCgroup = false",
        "",
    ]
    new_lines = edit_config(text, RuntimeSettings()).text.splitlines()
    spin_at = new_lines.index(added[0])
    assert new_lines[spin_at - 2].strip() == "SystemdCgroup = false"  # runc's options end just above
    assert "untrusted_workload_runtime]" in new_lines[spin_at + len(added)]


def test_new_table_of_2_1_keeps_its_single_quotes() -> None:
    text = default_config("2.1")
    added = only_insertions(text, edit_config(text, RuntimeSettings()).text)
    assert added[:2] == [
        "        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.spin]",
        "          runtime_type = 'io.containerd.spin.v2'",
    ]


@pytest.mark.parametrize("version", ["1.6", "1.7", "2.1"])
def test_second_run_changes_nothing_and_returns_the_same_bytes(version: str) -> None:
    first = edit_config(default_config(version), RuntimeSettings()).text
    second = edit_config(first, RuntimeSettings())
    assert second.changes == []
    assert second.text == first


def test_version_2_file_uses_the_1x_plugin_even_for_containerd_2() -> None:
    """containerd 2.x migrates version 2 files itself; writing the 3.x plugin into one would be ignored."""
    edit = edit_config(default_config("1.7"), RuntimeSettings(containerd_major=2))
    assert lookup(tomllib.loads(edit.text), *V2_RUNTIMES, "spin", "runtime_type") == SPIN


# ---- hand-written configs --------------------------------------------------------------------------------------

def test_hand_written_config_keeps_comments_quoting_and_order() -> None:
    edit = edit_config(HAND_WRITTEN, RuntimeSettings())
    added = only_insertions(HAND_WRITTEN, edit.text)
    assert added == [
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]',
        'runtime_type = "io.containerd.spin.v2"',
        "",
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options]',
        "SystemdCgroup = true",
        "",
    ]
    # The comment that introduces the registry table still sits right above it, not above ours.
    lines = edit.text.splitlines()
    assert lines[lines.index("# registry mirrors") + 1] == '[plugins."io.containerd.grpc.v1.cri".registry]'


def test_systemd_cgroup_is_copied_from_runc_options() -> None:
    edit = edit_config(HAND_WRITTEN, RuntimeSettings())
    assert lookup(tomllib.loads(edit.text), *V2_RUNTIMES, "spin", "options", "SystemdCgroup") is True
    assert any("SystemdCgroup = true (as runc's options say)" in change for change in edit.changes)


def test_systemd_cgroup_flag_overrides_runc() -> None:
    edit = edit_config(HAND_WRITTEN, RuntimeSettings(systemd_cgroup=False))
    assert lookup(tomllib.loads(edit.text), *V2_RUNTIMES, "spin", "options", "SystemdCgroup") is False


def test_without_runc_options_auto_leaves_systemd_cgroup_out() -> None:
    edit = edit_config('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                       'runtime_type = "io.containerd.runc.v2"\n', RuntimeSettings())
    assert lookup(tomllib.loads(edit.text), *V2_RUNTIMES, "spin") == {"runtime_type": SPIN}


EXISTING_RUNTIME = """\
version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.spin]
  runtime_type = 'io.containerd.spin.v1'   # the operator's note
  pod_annotations = ["spin.example.com/*"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.spin.options]
    Foo = "bar"
[grpc]
  address = "/run/containerd/containerd.sock"
"""


def test_existing_runtime_keeps_the_operators_keys() -> None:
    edit = edit_config(EXISTING_RUNTIME, RuntimeSettings(replace_runtime_type=True))  # install --force
    spin = lookup(tomllib.loads(edit.text), *V3_RUNTIMES, "spin")
    assert spin == {"runtime_type": SPIN, "pod_annotations": ["spin.example.com/*"],
                    "options": {"Foo": "bar", "SystemdCgroup": True}}
    assert "  runtime_type = 'io.containerd.spin.v2'   # the operator's note\n" in edit.text
    assert edit.changes[0].startswith("updated ") and "(was 'io.containerd.spin.v1')" in edit.changes[0]
    assert edit_config(edit.text, RuntimeSettings()).text == edit.text


def test_existing_runtime_without_options_gets_them_indented_like_its_values() -> None:
    text = ('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
            '  SystemdCgroup = true\n\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]\n'
            '  runtime_type = "io.containerd.spin.v2"\n  pod_annotations = ["a"]\n\n# tail\n[metrics]\n'
            '  address = ""\n')
    added = only_insertions(text, edit_config(text, RuntimeSettings()).text)
    assert added == ['  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options]',
                     "    SystemdCgroup = true", ""]


def test_complete_runtime_is_left_byte_identical() -> None:
    done = edit_config(EXISTING_RUNTIME, RuntimeSettings(replace_runtime_type=True)).text
    edit = edit_config(done, RuntimeSettings(systemd_cgroup=True))
    assert (edit.text, edit.changes) == (done, [])


def test_operators_systemd_value_stays_when_runc_says_nothing() -> None:
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]\n'
            'runtime_type = "io.containerd.spin.v2"\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options]\nSystemdCgroup = true\n')
    assert edit_config(text, RuntimeSettings()).changes == []


def test_options_table_alone_gets_its_runtime_table() -> None:
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options]\nSystemdCgroup = true\n'
            '[grpc]\naddress = "/x"\n')
    edit = edit_config(text, RuntimeSettings())
    assert lookup(tomllib.loads(edit.text), *V2_RUNTIMES, "spin") == {"runtime_type": SPIN,
                                                                      "options": {"SystemdCgroup": True}}
    assert edit.changes == ['added [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin] '
                            'runtime_type = "io.containerd.spin.v2"']


def test_other_runtime_name() -> None:
    edit = edit_config(default_config("2.1"), RuntimeSettings(runtime_name="wasm-spin"))
    assert lookup(tomllib.loads(edit.text), *V3_RUNTIMES, "wasm-spin", "runtime_type") == SPIN
    assert "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasm-spin]" == edit.runtime_table


def test_minimal_file_gets_the_tables_it_lacks() -> None:
    text = 'version = 2\n\n[grpc]\naddress = "/run/containerd/containerd.sock"\n'
    edit = edit_config(text, RuntimeSettings())
    assert only_insertions(text, edit.text) == [
        "", '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]', 'runtime_type = "io.containerd.spin.v2"']


def test_file_without_final_newline() -> None:
    text = 'version = 2\n[grpc]\naddress = "/x"'
    edit = edit_config(text, RuntimeSettings())
    assert tomllib.loads(edit.text)["grpc"] == {"address": "/x"}
    assert edit.text.endswith('runtime_type = "io.containerd.spin.v2"\n')


def test_disabled_cri_is_reported_not_changed() -> None:
    text = 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    edit = edit_config(text, RuntimeSettings())
    assert tomllib.loads(edit.text)["disabled_plugins"] == ["io.containerd.grpc.v1.cri"]
    assert edit.notes and "disabled_plugins turns CRI off" in edit.notes[0]


# ---- empty and missing files -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("major", "schema", "runtimes"), [(1, 2, V2_RUNTIMES), (2, 3, V3_RUNTIMES)])
def test_empty_config_gets_the_schema_of_the_containerd_version(major: int, schema: int,
                                                                 runtimes: tuple[str, ...]) -> None:
    edit = edit_config("", RuntimeSettings(containerd_major=major))
    parsed = tomllib.loads(edit.text)
    assert parsed["version"] == schema
    assert lookup(parsed, *runtimes, "spin", "runtime_type") == SPIN
    assert edit.text.startswith(f"version = {schema}\n\n[")
    assert edit_config(edit.text, RuntimeSettings()).changes == []


def test_comment_only_config_is_empty_and_keeps_its_comments() -> None:
    edit = edit_config("# nothing yet\n", RuntimeSettings(containerd_major=2))
    assert edit.text.startswith("version = 3\n# nothing yet\n")


def test_empty_config_needs_the_containerd_version() -> None:
    with pytest.raises(ConfigError, match="--containerd-version"):
        edit_config("\n", RuntimeSettings())


@pytest.mark.parametrize(("output", "major"), [
    ("containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n", 1),
    ("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n", 2),
    ("containerd containerd.io v2.0.5 fb4c30d4ede3531652d86197bf3fc9515e5276d9\n", 2),
])
def test_containerd_version_output(output: str, major: int) -> None:
    assert containerd_major_from_version_output(output) == major


def test_unreadable_containerd_version_output() -> None:
    with pytest.raises(ConfigError, match="cannot read a version"):
        containerd_major_from_version_output("containerd\n")


# ---- refusals: the file stays as it is -------------------------------------------------------------------------

def test_schema_1_config_is_refused() -> None:
    """Docker's containerd.io package ships such a file (no version, CRI disabled)."""
    with pytest.raises(ConfigError, match="no `version` key: this is a schema 1 config"):
        edit_config('disabled_plugins = ["cri"]\n', RuntimeSettings())


@pytest.mark.parametrize("version", ["1", "4", '"2"'])
def test_unknown_version_is_refused(version: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        edit_config(f"version = {version}\n", RuntimeSettings())


def test_version_3_is_refused_for_containerd_1() -> None:
    with pytest.raises(ConfigError, match="containerd 1.x cannot read"):
        edit_config(default_config("2.1"), RuntimeSettings(containerd_major=1))


def test_unparseable_config_is_refused_with_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .* at line 2 col 8"):
        edit_config('version = 2\n[plugins\nfoo = 1\n', RuntimeSettings())


def test_duplicate_key_that_tomlkit_might_accept_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        edit_config("version = 2\nversion = 2\n", RuntimeSettings())


def test_runtimes_under_dotted_keys_are_refused() -> None:
    """tomlkit would render the new table as a top-level [runtimes.spin]."""
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes.runc.runtime_type = "x"\n'
    with pytest.raises(ConfigError, match="dotted keys"):
        edit_config(text, RuntimeSettings())


def test_runtimes_split_over_two_places_are_refused() -> None:
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\nruntime_type = "a"\n'
            '[grpc]\naddress = "/x"\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\n'
            'runtime_type = "b"\n')
    with pytest.raises(ConfigError, match="split over several places"):
        edit_config(text, RuntimeSettings())


def test_inline_runtime_table_is_refused_when_it_needs_a_change() -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\nspin = { runtime_type = "x" }\n'
    with pytest.raises(ConfigError, match="inline"):
        edit_config(text, RuntimeSettings(replace_runtime_type=True))


def test_runtime_that_is_not_a_table_is_refused() -> None:
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\nspin = "x"\n'
    with pytest.raises(ConfigError, match="not a table"):
        edit_config(text, RuntimeSettings())


# ---- property: whatever else the file says, it still says ------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "root", "options", "runtimes", "runc", "spin", "io.containerd.x", "with space"])
_VALUES = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
                    st.lists(st.integers(0, 9), max_size=3))
_TREES = st.dictionaries(_KEYS, st.recursive(_VALUES, lambda inner: st.dictionaries(_KEYS, inner, max_size=3),
                                             max_leaves=8), max_size=4)


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    import tomlkit

    schema = draw(st.sampled_from([2, 3]))
    runtimes_path = V2_RUNTIMES if schema == 2 else V3_RUNTIMES
    tree: dict[str, Any] = {"version": schema, **draw(_TREES)}
    plugins = tree["plugins"] = draw(_TREES)
    cri = plugins[runtimes_path[1]] = draw(_TREES)
    containerd = cri["containerd"] = draw(_TREES)
    runtimes = containerd["runtimes"] = {}
    if draw(st.booleans()):
        runtimes["runc"] = {"runtime_type": "io.containerd.runc.v2", **draw(_TREES)}
        if draw(st.booleans()):
            runtimes["runc"]["options"] = {"SystemdCgroup": draw(st.booleans()), **draw(_TREES)}
    if draw(st.booleans()):
        spin = runtimes["spin"] = draw(_TREES)
        if not isinstance(spin.get("options", {}), dict):
            spin.pop("options")
    tree.pop("disabled_plugins", None)
    return tomlkit.dumps(tree), tree, runtimes_path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.sampled_from([None, True, False]))
def test_everything_but_the_runtime_table_stays_as_it_was(config: tuple[str, dict[str, Any], tuple[str, ...]],
                                                          systemd: bool | None) -> None:
    text, _, runtimes = config
    before = tomllib.loads(text)
    edit = edit_config(text, RuntimeSettings(systemd_cgroup=systemd))
    after = tomllib.loads(edit.text)
    assert without(after, *runtimes, "spin") == without(before, *runtimes, "spin")
    spin_before = lookup(before, *runtimes).get("spin", {})
    spin_after = lookup(after, *runtimes, "spin")
    assert spin_after["runtime_type"] == SPIN
    assert {k: v for k, v in spin_after.items() if k not in ("runtime_type", "options")} == \
        {k: v for k, v in spin_before.items() if k not in ("runtime_type", "options")}
    assert edit_config(edit.text, RuntimeSettings(systemd_cgroup=systemd)).text == edit.text


# ---- the command: files, symlink, exit status, messages --------------------------------------------------------

@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A fake node: config dir, bin dir, and an executable standing in for this venv's console script."""
    shim = tmp_path / "venv" / "bin" / SHIM_BINARY_NAME
    shim.parent.mkdir(parents=True)
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    (tmp_path / "bin").mkdir()
    return {"config": tmp_path / "etc" / "config.toml", "bin": tmp_path / "bin", "shim": shim}


def run(node: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["--config", str(node["config"]), "--bin-dir", str(node["bin"]), *extra],
                  shim_binary=node["shim"], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_install_twice(node: dict[str, Path]) -> None:
    node["config"].parent.mkdir()
    node["config"].write_text(default_config("1.7"))
    node["config"].chmod(0o600)
    status, out, err = run(node)
    assert (status, err) == (0, "")
    link = node["bin"] / SHIM_BINARY_NAME
    assert os.readlink(link) == str(node["shim"])
    assert out.splitlines() == [
        "containerd version: containerd 1.x (ran `/usr/bin/containerd --version`, which printed "
        f"{CONTAINERD_ON_PATH_SAYS!r})",
        f"installed {link} -> {node['shim']}",
        f"backed up {node['config']} to {node['config']}.before-spin-install",
        f'{node["config"]}: added [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin] '
        'runtime_type = "io.containerd.spin.v2"',
        f'{node["config"]}: set [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin.options] '
        "SystemdCgroup = false (as runc's options say)",
        f"recorded what install did in {node['config']}.spin-install.json (uninstall reverts it)",
        RESTART_HINT,
    ]
    assert stat.S_IMODE(node["config"].stat().st_mode) == 0o600
    first = node["config"].read_bytes()
    mtime = node["config"].stat().st_mtime_ns

    status, out, err = run(node)
    assert (status, err) == (0, "")
    assert out.splitlines()[1] == f"{link} already points to {node['shim']}: unchanged"
    assert out.splitlines()[-1] == NOTHING_CHANGED
    assert node["config"].read_bytes() == first
    assert node["config"].stat().st_mtime_ns == mtime
    assert sorted(p.name for p in node["config"].parent.iterdir()) == [
        "config.toml", "config.toml.before-spin-install", "config.toml.spin-install.json"], "temporary file left"


def test_unparseable_config_is_left_untouched(node: dict[str, Path]) -> None:
    node["config"].parent.mkdir()
    node["config"].write_bytes(b"version = 2\n[plugins\n")
    os.utime(node["config"], ns=(10**18, 10**18))
    status, out, err = run(node)
    assert (status, out) == (1, "")
    assert err == (f"{SHIM_BINARY_NAME} install: {node['config']}: not valid TOML: Unexpected character: '\\n' "
                   "at line 2 col 8; left unchanged\n")
    assert node["config"].read_bytes() == b"version = 2\n[plugins\n"
    assert node["config"].stat().st_mtime_ns == 10**18
    assert not (node["bin"] / SHIM_BINARY_NAME).exists(), "nothing is installed when the config is refused"


def test_missing_config_is_created_for_the_containerd_on_path(node: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "path" / "containerd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'containerd github.com/containerd/containerd/v2 v2.1.4 abc'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    status, out, _ = run(node)
    assert status == 0
    assert "set version = 3 (empty config, containerd 2.x)" in out
    assert tomllib.loads(node["config"].read_text())["version"] == 3
    assert stat.S_IMODE(node["config"].stat().st_mode) == 0o644


def test_missing_config_without_containerd_is_an_error(node: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    status, _, err = run(node)
    assert status == 1 and "`containerd` is not on PATH" in err and "--containerd-version" in err
    assert not node["config"].exists()


def test_containerd_version_flag_needs_no_containerd(node: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert run(node, "--containerd-version", "1")[0] == 0
    assert tomllib.loads(node["config"].read_text())["version"] == 2


def test_symlinked_config_is_edited_where_it_points(node: dict[str, Path], tmp_path: Path) -> None:
    real = tmp_path / "managed.toml"
    real.write_text(default_config("2.1"))
    node["config"].parent.mkdir()
    node["config"].symlink_to(real)
    assert run(node)[0] == 0
    assert node["config"].is_symlink()
    assert "runtimes.spin" in real.read_text()


def test_something_else_at_the_shims_place_is_replaced_only_with_force(node: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """More cases (and the backups) in tests/unit/test_install_safety.py."""
    link = node["bin"] / SHIM_BINARY_NAME
    link.write_text("old binary")
    assert run(node, "--containerd-version", "2")[0] == 1
    status, out, _ = run(node, "--containerd-version", "2", "--force")
    assert status == 0 and out.splitlines()[1] == f"replaced {link} (a file) by a symlink to {node['shim']}"
    os.unlink(link)
    os.unlink(f"{link}.before-spin-install")  # an earlier backup is never overwritten
    link.symlink_to(tmp_path / "elsewhere")
    status, out, _ = run(node, "--containerd-version", "2", "--force")
    assert out.splitlines()[1] == f"replaced {link} (a symlink to {tmp_path / 'elsewhere'}) by a symlink to " \
                                  f"{node['shim']}"
    assert out.splitlines()[-1].startswith("config unchanged: containerd needs no restart")
    assert os.readlink(link) == str(node["shim"])


def test_missing_bin_dir_fails_before_the_config_is_written(node: dict[str, Path]) -> None:
    node["bin"].rmdir()
    status, out, err = run(node, "--containerd-version", "2")
    assert status == 1 and f"{node['bin']} is not a directory" in err
    assert not node["config"].exists()


def test_runtime_name_must_be_a_runtimeclass_handler(node: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(node, "--runtime-name", "Spin_1")
    assert exit_info.value.code == 2


def test_cli_dispatches_install(node: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("shim.install.command.default_shim_binary", lambda: node["shim"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["install", "--config", str(node["config"]), "--bin-dir", str(node["bin"]),
                  "--containerd-version", "1"])
    assert exit_info.value.code == 0
    assert RESTART_HINT in capsys.readouterr().out
