"""Running WASI command guests through runtime.loader: output, exit codes, args/env, files, traps, interrupts,
and every load-time error. Guests come from scripts/build_guests.py (tests/guests/build/).

Most tests run the guest in this process and read fds 1/2 with capfd (guest stdio is the process's own fds).
The SIGTERM tests use a subprocess harness doing what the shim's instance process does: SIGTERM is handled
on a thread that calls interrupt() while the main thread is inside run().
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.errors import (
    AppNotFoundError,
    InvalidSettingError,
    ManifestError,
    MissingImportError,
    UnsupportedTriggerError,
    WasmLoadError,
)
from runtime.exits import EXIT_INTERRUPTED, EXIT_TRAP
from runtime.loader import load_app
from runtime.settings import RuntimeSettings
from tests.unit.guest_fixtures import built_guests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return built_guests()


@pytest.fixture(scope="module")
def apps(build_dir: Path) -> Path:
    return build_dir / "apps"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> RuntimeSettings:
    return RuntimeSettings(cache_dir=tmp_path_factory.mktemp("cache"))


def run_app(root: Path, args: list[str], env: dict[str, str], settings: RuntimeSettings, capfd) -> tuple[int, str, str]:
    app = load_app(root, args, env, settings)
    capfd.readouterr()  # drop anything printed while loading
    code = app.run()
    out, err = capfd.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------- bare .wasm


def test_hello_prints_args_env_and_exits_zero(build_dir, settings, capfd):
    code, out, err = run_app(build_dir, ["/hello.wasm", "a", "b c"], {"GREETING": "hi"}, settings, capfd)
    assert code == 0
    assert out == "hello from wasm\nargs: /hello.wasm a b c\nGREETING=hi\n"
    assert err == "hello on stderr\n"


def test_hello_exits_with_the_code_it_is_given(build_dir, settings, capfd):
    code, out, _ = run_app(build_dir, ["hello.wasm", "exit", "3"], {}, settings, capfd)
    assert code == 3
    assert "args: hello.wasm exit 3\n" in out


def test_guest_env_is_exactly_the_given_dict(build_dir, settings, capfd, monkeypatch):
    monkeypatch.setenv("GREETING", "leaked from the host process")
    _, out, _ = run_app(build_dir, ["/hello.wasm"], {"OTHER": "x"}, settings, capfd)
    assert "GREETING is not set\n" in out


def test_p2_component_prints_and_returns_ok(build_dir, settings, capfd):
    code, out, err = run_app(build_dir, ["/hello-component.wasm", "x"], {"GREETING": "p2"}, settings, capfd)
    assert code == 0
    assert out == "hello from wasm component\nargs: /hello-component.wasm x\nGREETING=p2\n"
    assert err == "hello on stderr from component\n"


def test_p2_component_exit_with_code_and_run_err(build_dir, settings, capfd):
    assert run_app(build_dir, ["/hello-component.wasm", "exit", "7"], {}, settings, capfd)[0] == 7
    assert run_app(build_dir, ["/hello-component.wasm", "fail"], {}, settings, capfd)[0] == 1


def test_trap_prints_one_line_to_stderr_and_exits_1(build_dir, settings, capfd):
    code, out, err = run_app(build_dir, ["/trap.wasm"], {}, settings, capfd)
    assert code == EXIT_TRAP == 1
    assert out == "about to trap\n"
    assert err == "spin: trap.wasm: trap: wasm `unreachable` instruction executed\n"


def test_bare_wasm_sees_no_files(build_dir, settings, capfd):
    code, _, err = run_app(build_dir, ["/readfile.wasm", "/hello.wasm"], {}, settings, capfd)
    assert code == 1
    assert err == "readfile: /hello.wasm is not inside any preopened directory\n"


def test_run_may_be_called_once(build_dir, settings, capfd):
    app = load_app(build_dir, ["/hello.wasm"], {}, settings)
    assert app.run() == 0
    with pytest.raises(RuntimeError, match="only once"):
        app.run()


def test_description_and_guest_setup_are_reported(build_dir, settings):
    app = load_app(build_dir, ["/hello-component.wasm", "x"], {"A": "1"}, settings)
    assert app.description == "hello-component.wasm (WASI p2 component)"
    assert list(app.guest.argv) == ["/hello-component.wasm", "x"] and dict(app.guest.env) == {"A": "1"}
    app.close()


# ---------------------------------------------------------------------------------------------------- Spin apps


def test_spin_command_app_gets_component_id_as_argv0_and_drops_slash(apps, settings, capfd):
    code, out, _ = run_app(apps / "command-hello", ["/", "x", "exit", "5"], {}, settings, capfd)
    assert code == 5
    assert "args: hello x exit 5\n" in out
    assert "GREETING=from spin.toml\n" in out


@pytest.mark.parametrize("arg0", ["/spin.toml", "spin.toml", "./spin.toml"])
def test_spin_args_drop_a_path_to_spin_toml(apps, settings, capfd, arg0):
    _, out, _ = run_app(apps / "command-hello", [arg0, "y"], {}, settings, capfd)
    assert "args: hello y\n" in out


def test_spin_args_are_kept_when_arg0_is_an_argument(apps, settings, capfd):
    _, out, _ = run_app(apps / "command-hello", ["first", "second"], {}, settings, capfd)
    assert "args: hello first second\n" in out


def test_task_env_overrides_component_environment(apps, settings):
    app = load_app(apps / "command-hello", ["/"], {"GREETING": "from the pod", "EXTRA": "1"}, settings)
    assert dict(app.guest.env) == {"GREETING": "from the pod", "COMPONENT_ONLY": "yes", "EXTRA": "1"}
    app.close()


def test_spin_app_with_inline_p2_component(apps, settings, capfd):
    code, out, _ = run_app(apps / "command-component", ["/", "exit", "4"], {}, settings, capfd)
    assert code == 4
    assert out.startswith("hello from wasm component\nargs: greeter exit 4\nGREETING=from an inline component\n")


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/static/a.txt", "hello from a.txt\n"),
        ("/static/b.txt", "hello from b.txt\n"),
        ("/assets/readme.txt", "hello from assets\n"),
        ("/assets/img/logo.txt", "logo bytes\n"),
        ("/etc/app/config.json", '{"mapped": true}\n'),
    ],
)
def test_declared_files_are_visible(apps, settings, capfd, path, content):
    code, out, err = run_app(apps / "command-files", ["/", path], {}, settings, capfd)
    assert (code, out, err) == (0, content, "")


@pytest.mark.parametrize(
    "path",
    ["/static/secret.txt", "/static/notes.md", "/private/key.txt", "/spin.toml", "/readfile.wasm", "/private"],
)
def test_undeclared_and_excluded_files_are_invisible(apps, settings, capfd, path):
    code, out, err = run_app(apps / "command-files", ["/", path], {}, settings, capfd)
    assert code == 1 and out == ""
    assert err == f"readfile: cannot open {path}: errno 44\n"  # WASI errno 44 = noent


@pytest.mark.parametrize("path", ["/static/a.txt", "/assets/new.txt", "/etc/app/config.json"])
def test_files_are_read_only(apps, settings, capfd, path):
    before = (apps / "command-files" / "static" / "a.txt").read_text()
    code, out, err = run_app(apps / "command-files", ["/", path, "write"], {}, settings, capfd)
    assert code == 1 and out == ""
    assert err.startswith(f"readfile: cannot write {path}: errno ")
    assert (apps / "command-files" / "static" / "a.txt").read_text() == before
    assert not (apps / "command-files" / "assets" / "new.txt").exists()


def test_staged_files_are_removed_after_run_and_on_close(apps, settings):
    app = load_app(apps / "command-files", ["/", "/static/a.txt"], {}, settings)
    staged_root = app.guest.preopens[0].host_path
    assert app.guest.preopens[0].guest_path == "/" and staged_root.is_dir()
    assert staged_root.is_relative_to(settings.cache_dir)
    assert (staged_root / "static" / "a.txt").is_file() and not (staged_root / "static" / "notes.md").exists()
    app.close()
    assert not staged_root.exists()

    app = load_app(apps / "command-files", ["/", "/static/a.txt"], {}, settings)
    staged_root = app.guest.preopens[0].host_path
    app.run()
    assert not staged_root.exists()


def test_directory_mapping_is_preopened_directly(apps, settings):
    with load_app(apps / "command-files", ["/"], {}, settings) as app:
        by_guest = {p.guest_path: p.host_path for p in app.guest.preopens}
    assert by_guest["/assets"] == (apps / "command-files" / "assets").resolve()


# ---------------------------------------------------------------------------------------------------- interrupt


def test_interrupt_stops_a_busy_loop(build_dir, settings, capfd):
    app = load_app(build_dir, ["/loop.wasm"], {}, settings)
    timer = threading.Timer(0.3, app.interrupt)
    started = time.monotonic()
    timer.start()
    code = app.run()
    elapsed = time.monotonic() - started
    timer.join()
    out, err = capfd.readouterr()
    with capfd.disabled():
        print(f"\nloop.wasm interrupted after {elapsed:.3f} s (interrupt sent at 0.3 s)")
    assert code == EXIT_INTERRUPTED == 143
    assert elapsed < 10
    assert out == "looping\n" and err == ""  # a requested stop is not reported as a trap


def test_interrupt_before_run_does_not_start_the_guest(build_dir, settings, capfd):
    app = load_app(build_dir, ["/hello.wasm"], {}, settings)
    capfd.readouterr()
    app.interrupt()
    assert app.run() == 143
    assert capfd.readouterr().out == ""


def test_interrupting_another_app_does_not_stop_this_one(build_dir, settings):
    looping = load_app(build_dir, ["/loop.wasm"], {}, settings)
    other = load_app(build_dir, ["/hello.wasm"], {}, settings)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(looping.run()))
    runner.start()
    time.sleep(0.2)
    other.interrupt()  # bumps the shared engine's epoch
    time.sleep(0.3)
    assert runner.is_alive(), "the epoch bump for another app stopped this one"
    looping.interrupt()
    runner.join(10)
    assert result == [143]


HARNESS = r"""
import signal, sys, threading
from pathlib import Path
from runtime.loader import load_app
from runtime.settings import RuntimeSettings

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by threads started after this
app = load_app(Path(sys.argv[1]), sys.argv[3:], {}, RuntimeSettings(cache_dir=Path(sys.argv[2])))

def on_sigterm():
    signal.sigwait({signal.SIGTERM})
    app.interrupt()

threading.Thread(target=on_sigterm, daemon=True).start()
sys.exit(app.run())
"""


def start_harness(root: Path, cache_dir: Path, args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(root), str(cache_dir), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the guest's first line: it is running
    return proc


def test_sigterm_stops_a_busy_loop_in_an_instance_process(build_dir, settings):
    proc = start_harness(build_dir, settings.cache_dir, ["/loop.wasm"])
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    print(f"loop.wasm process exited {time.monotonic() - started:.3f} s after SIGTERM", file=sys.__stderr__)
    assert code == 143


def test_guest_blocked_in_a_host_call_ignores_sigterm_until_killed(build_dir, settings):
    proc = start_harness(build_dir, settings.cache_dir, ["/sleep.wasm"])
    try:
        # "sleeping" is printed just before poll_oneoff; a SIGTERM that lands before the guest enters that call
        # still stops it at the write loop's epoch check (correctly). Give it time to be inside the host call.
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.0)
    finally:
        proc.kill()
    assert proc.wait(10) == -signal.SIGKILL


def test_guest_output_reaches_pipes_on_fds_1_and_2(build_dir, settings):
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(build_dir), str(settings.cache_dir), "/hello.wasm", "exit", "9"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 9
    assert done.stdout.startswith("hello from wasm\n") and done.stderr == "hello on stderr\n"


# ---------------------------------------------------------------------------------------------------- load errors


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        ("/corrupt.wasm", "corrupt.wasm: invalid WebAssembly module"),
        ("/random.wasm", "random.wasm: not a WebAssembly binary"),
        ("/truncated.wasm", "unexpected end-of-file"),
    ],
)
def test_broken_wasm_is_a_load_error(build_dir, settings, wasm, message):
    with pytest.raises(WasmLoadError, match=message):
        load_app(build_dir, [wasm], {}, settings)


def test_missing_p1_imports_are_all_named(build_dir, settings):
    with pytest.raises(MissingImportError) as caught:
        load_app(build_dir, ["/missing-import-p1.wasm"], {}, settings)
    assert caught.value.missing == ("spin::frobnicate", "env::not_provided")
    assert "spin::frobnicate, env::not_provided" in str(caught.value)


def test_missing_component_imports_are_all_named(build_dir, settings):
    with pytest.raises(MissingImportError) as caught:
        load_app(build_dir, ["/missing-import-component.wasm"], {}, settings)
    assert caught.value.missing == ("example:unavailable/frobnicator@1.0.0", "example:unavailable/other@1.0.0")


def test_broken_spin_toml_is_a_manifest_error(apps, settings):
    with pytest.raises(ManifestError, match=r"spin.toml: invalid TOML: .*line 11"):
        load_app(apps / "broken-toml", ["/"], {}, settings)


def test_unknown_trigger_type_is_named(apps, settings):
    with pytest.raises(UnsupportedTriggerError, match=r"\[\[trigger.foo\]\]: unknown trigger type 'foo'"):
        load_app(apps / "unknown-trigger", ["/"], {}, settings)


def test_http_route_to_a_command_module_says_to_use_wagi(apps, settings):
    # hello.wasm is a WASI p1 command: not a wasi:http component, not a Spin 1 module; maybe a CGI program
    with pytest.raises(WasmLoadError, match=r"without Spin 1's `handle-http-request` export.*type = \"wagi\""):
        load_app(apps / "http-trigger", ["/"], {"SPIN_HTTP_LISTEN_ADDR": "127.0.0.1:0"}, settings)


def test_missing_component_source_is_a_manifest_error(apps, settings):
    with pytest.raises(ManifestError, match="source file 'target/wasm32-wasip1/release/not-built.wasm' not found"):
        load_app(apps / "missing-source", ["/"], {}, settings)


def test_no_app_says_what_was_looked_for(tmp_path, settings):
    with pytest.raises(AppNotFoundError, match=r"looked for /spin.toml .* args\[0\] '/bin/sh' is not a .wasm"):
        load_app(tmp_path, ["/bin/sh"], {}, settings)
    with pytest.raises(AppNotFoundError, match="no args naming a .wasm file"):
        load_app(tmp_path, [], {}, settings)
    with pytest.raises(AppNotFoundError, match="no such file in the image"):
        load_app(tmp_path, ["/app.wasm"], {}, settings)


def test_wasm_path_may_not_escape_the_root(tmp_path, build_dir, settings):
    root = tmp_path / "root"
    root.mkdir()
    (root / "up.wasm").symlink_to("../../hello.wasm")
    with pytest.raises(AppNotFoundError, match="outside the app root"):
        load_app(root, ["../hello.wasm"], {}, settings)
    with pytest.raises(AppNotFoundError, match="outside the app root"):
        load_app(root, ["/up.wasm"], {}, settings)
    # An absolute symlink means "from the image root", not from the host's.
    (root / "bin").mkdir()
    (root / "bin" / "hello.wasm").write_bytes((build_dir / "hello.wasm").read_bytes())
    (root / "app.wasm").symlink_to("/bin/hello.wasm")
    app = load_app(root, ["/app.wasm"], {}, settings)
    assert app.loads[0].wasm_path == (root / "bin" / "hello.wasm").resolve()


def test_modules_and_components_that_are_not_commands_are_rejected(tmp_path, settings):
    import wasmtime

    (tmp_path / "reactor.wasm").write_bytes(wasmtime.wat2wasm('(module (func (export "_initialize")))'))
    with pytest.raises(WasmLoadError, match="exports no `_start` function"):
        load_app(tmp_path, ["/reactor.wasm"], {}, settings)
    (tmp_path / "lib.wasm").write_bytes(wasmtime.wat2wasm(
        '(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))'
        ' (func $f (canon lift (core func $i "f"))) (export "f" (func $f)))'))
    with pytest.raises(WasmLoadError, match=r"exports `f`, not wasi:cli/run@0.2.x"):
        load_app(tmp_path, ["/lib.wasm"], {}, settings)


def test_more_than_one_command_trigger_is_rejected(tmp_path, build_dir, settings):
    (tmp_path / "hello.wasm").write_bytes((build_dir / "hello.wasm").read_bytes())
    (tmp_path / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "two"\n'
        '[[trigger.command]]\nid = "a"\ncomponent = "hello"\n[[trigger.command]]\nid = "b"\ncomponent = "hello"\n'
        '[component.hello]\nsource = "hello.wasm"\n')
    with pytest.raises(ManifestError, match=r"2 \[\[trigger.command\]\] tables \('a', 'b'\)"):
        load_app(tmp_path, ["/"], {}, settings)


def test_max_instance_memory_from_task_env(build_dir, settings):
    for wasm in ("/hello.wasm", "/hello-component.wasm"):
        with pytest.raises(WasmLoadError, match="SPIN_MAX_INSTANCE_MEMORY"):
            load_app(build_dir, [wasm], {"SPIN_MAX_INSTANCE_MEMORY": "65536"}, settings)
    app = load_app(build_dir, ["/hello.wasm"], {"SPIN_MAX_INSTANCE_MEMORY": str(64 << 20)}, settings)
    assert app.run() == 0
    with pytest.raises(InvalidSettingError, match="not a number of bytes"):
        load_app(build_dir, ["/hello.wasm"], {"SPIN_MAX_INSTANCE_MEMORY": "64Mi"}, settings)


def test_importing_the_loader_does_not_import_wasmtime():
    code = "import runtime.loader, sys; print('wasmtime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
