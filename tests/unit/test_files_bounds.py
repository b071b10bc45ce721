"""runtime.files on image content built to make the load slow: the glob matcher's cost and the per-component work
cap (MAX_MATCH_WORK), which hold before the instance process joins the pod's cgroup."""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import files
from runtime.errors import ManifestError
from runtime.files import MAX_MATCH_WORK, plan_component_files
from runtime.manifest import Component, GlobFiles, LocalSource


def _reference_match(rel_path: str, pattern: str) -> bool:
    """The matcher as it was (recursive, exponential in ``**``): the meaning the table must keep."""
    path_parts = rel_path.split("/")
    pattern_parts = [p for p in pattern.split("/") if p not in ("", ".")]

    def match(pi: int, si: int) -> bool:
        if pi == len(pattern_parts):
            return si == len(path_parts)
        if pattern_parts[pi] == "**":
            return any(match(pi + 1, k) for k in range(si, len(path_parts) + 1))
        return si < len(path_parts) and fnmatch.fnmatchcase(path_parts[si], pattern_parts[pi]) and match(pi + 1, si + 1)

    return match(0, 0)


def _match(rel_path: str, pattern: str) -> bool:
    return files._glob_match(rel_path, pattern, files._Work("test"))


_segments = st.sampled_from(["a", "b", "ab", "a.txt", "x"])
_pattern_segments = st.sampled_from(["a", "b", "*", "**", "a*", "*.txt", "?", "[ab]", "", "."])


@settings(max_examples=500, deadline=None)
@given(st.lists(_segments, min_size=1, max_size=6), st.lists(_pattern_segments, min_size=1, max_size=6))
def test_the_table_matches_exactly_what_the_recursive_matcher_matched(path, pattern):
    rel, glob = "/".join(path), "/".join(pattern)
    assert _match(rel, glob) == _reference_match(rel, glob), (rel, glob)


def test_spin_globs_keep_their_meaning():
    assert _match("static/css/site.css", "static/**/*.css")
    assert _match("static/site.css", "static/**/*.css")  # ** may be no directory at all
    assert not _match("static/css/site.css", "static/*.css")  # * stays in one directory
    assert _match("a/b/c", "**")
    assert not _match("a/b/c", "a/b")


def test_many_double_stars_against_a_deep_path_are_quick():
    # 25 `**` against 40 segments that almost match: the recursive matcher would try C(65, 25) splits
    rel = "/".join(["d"] * 40)
    started = time.perf_counter()
    assert not _match(rel, "/".join(["**"] * 25 + ["x"]))
    assert time.perf_counter() - started < 1.0


def _component(*patterns: str, exclude: tuple[str, ...] = ()) -> Component:
    return Component(id="flood", source=LocalSource("app.wasm"), files=tuple(GlobFiles(p) for p in patterns),
                     exclude_files=exclude)


def test_too_much_matching_is_a_manifest_error_naming_the_component(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(files, "MAX_MATCH_WORK", 50_000)
    app = tmp_path / "app"
    for d in range(20):
        (app / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (app / f"d{d}" / f"f{f}.txt").write_bytes(b"")
    # 2 000 files x 30 globs: the walk alone costs 60 000 steps
    with pytest.raises(ManifestError) as caught:
        plan_component_files(app, app / "spin.toml", _component(*[f"d{i}/*.txt" for i in range(30)]))
    message = str(caught.value)
    assert message.startswith(f"{app / 'spin.toml'}: component 'flood': files: matching the globs")
    assert "more than 50000 steps" in message and message.endswith(
        "map directories with { source, destination } or narrow the globs")
    # the same app with one glob fits
    direct, staged = plan_component_files(app, app / "spin.toml", _component("d1/*.txt"))
    assert len(staged) == 100 and not direct


def test_the_cap_leaves_room_for_a_large_static_site(tmp_path: Path, monkeypatch):
    # 20 000 files four directories deep, three globs and two exclusions: measured 1.6 M steps of the 10 M
    app = tmp_path / "site"
    for a in range(20):
        for b in range(10):
            d = app / "static" / f"s{a}" / f"t{b}"
            d.mkdir(parents=True)
            for f in range(100):
                (d / (f"p{f}.html" if f % 2 else f"p{f}.css")).write_bytes(b"")
    spent: list[files._Work] = []
    real_work = files._Work
    monkeypatch.setattr(files, "_Work", lambda where: spent.append(real_work(where)) or spent[-1])
    component = _component("static/**/*.html", "static/**/*.css", "static/s1/**/*",
                           exclude=("**/*.map", "static/s2/**"))
    direct, staged = plan_component_files(app, app / "spin.toml", component)
    assert len(staged) == 19_000 and not direct
    used = MAX_MATCH_WORK - spent[0].left
    assert used < MAX_MATCH_WORK / 4, used
