#!/usr/bin/env python3
"""critest (cri-tools' CRI validation suite) against a private containerd, with runtime handler spin and runc.

Why a script and not a test: critest is containerd's conformance yardstick for a runtime, and what matters is the
list of what passes with our handler beside what passes with runc on the same containerd, the same images and the
same machine in the same run (the difference is ours; what fails for both is the environment). It takes minutes
per handler and its verdicts are for reading, so it prints them instead of asserting.

critest pulls its images from registry.k8s.io and gcr.io, which this machine cannot reach. So the script builds
stand-ins of those images from Debian's busybox-static (the real ones are busybox images too: cri-tools' images/
Dockerfiles are `FROM busybox` with a USER, an added file, or a web server), pushes them to a registry on 127.0.0.1
under the same repository paths, and makes that registry containerd's mirror of both hosts (certs.d hosts.toml),
so critest pulls the names it knows. (critest's `--registry-prefix` is no way out: its image tests then pull the
prefixed name but look up the status of the original one, and the prefix drops every tag.) The web
servers are busybox httpd on the port the real image serves. The one image that cannot be stood in for is the one
critest names by digest (test-image-digest@sha256:9700...): its tests fail for both handlers.

    .venv/bin/python scripts/run_critest.py [--handlers spin runc] [--version 2.1] [--focus REGEX] [--out DIR]

What fails with both handlers on this machine, and why (none of it is the runtime's): the digest-pinned image;
host-port mapping (the private containerd's CNI config has no portmap plugin); execSync with timeout (`pgrep`) and
the HostIpc specs (`ipcs`), absent from Debian's busybox-static; ContainerPID/HostPID (they look for nginx's
"master process"); MaskedPaths (this busybox's sh runs `ls` as an applet, so masking /bin/ls hides nothing);
NoNewPrivs (its image is a purpose-built binary not stood in for).

Prints, per handler, passed/failed/skipped counts, then every spec whose verdict differs between the handlers,
then every spec that failed with both and the first line of why. JUnit reports and critest's output stay in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from busybox_image import BUSYBOX, busybox_rootfs  # noqa: E402
from fork_servers import new_fork_servers_stopped  # noqa: E402
from kube_cluster import kube_bin_dir  # noqa: E402
from local_registry import Registry, mirror_to_registry, trust_registry  # noqa: E402
from mkoci import build_image_tar  # noqa: E402
from private_containerd import SUPPORTED_VERSIONS, PrivateContainerd  # noqa: E402

from shim.forkserver.build_key import build_key  # noqa: E402

SHIM = Path(sys.executable).parent / "containerd-shim-spin-v2"
IMAGE_NAMESPACE = "critest-images"  # where the stand-ins are imported before the push; not CRI's k8s.io
CRITEST_TIMEOUT_S = 3600
UPSTREAMS = ("registry.k8s.io", "gcr.io")  # where critest's images live (its framework and validate packages)

# busybox's own /etc/passwd and /etc/group (the users the image-user tests name, www-data among them).
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
www-data:x:33:
nogroup:x:65534:
"""


@dataclass(frozen=True)
class StandIn:
    """One image critest uses: its path under the registry, and how it differs from plain busybox."""

    path: str
    cmd: tuple[str, ...] = ("sh",)
    user: str | None = None
    marker: str | None = None  # a file whose presence makes the image's content (and digest) its own
    predefined_group: bool = False


def httpd(port: int, log_line: str | None = None, pid_file: str | None = None) -> tuple[str, ...]:
    """busybox httpd as the image's server; `pid_file` as nginx writes it (the NamespaceOption specs read it)."""
    steps = ([f"echo {log_line}"] if log_line else []) + ([f"echo $$ > {pid_file}"] if pid_file else [])
    return ("sh", "-c", "; ".join([*steps, f"exec httpd -f -p {port} -h /www"]))


STAND_INS = (
    StandIn("e2e-test-images/busybox:1.29-2"),
    StandIn("e2e-test-images/nginx:1.14-2", cmd=httpd(80, pid_file="/var/run/nginx.pid")),
    # multi_container_linux.go waits for "httpd" in the container's log, which Apache prints at start.
    StandIn("e2e-test-images/httpd:2.4.39-4", cmd=httpd(80, "httpd")),
    StandIn("k8s-staging-cri-tools/hostnet-nginx-amd64:latest", cmd=httpd(12003)),
    StandIn("k8s-staging-cri-tools/test-image-latest:latest", marker="test-image-latest"),
    StandIn("k8s-staging-cri-tools/test-image-tag:test", marker="test-image-tag"),
    StandIn("k8s-staging-cri-tools/test-image-tag:all", marker="test-image-tag"),
    *(StandIn(f"k8s-staging-cri-tools/test-image-{n}:latest", marker=f"test-image-{n}") for n in (1, 2, 3)),
    *(StandIn(f"k8s-staging-cri-tools/test-image-tags:{n}", marker="test-image-tags") for n in (1, 2, 3)),
    StandIn("k8s-staging-cri-tools/test-image-user-uid:latest", user="1002"),
    StandIn("k8s-staging-cri-tools/test-image-user-username:latest", user="www-data"),
    StandIn("k8s-staging-cri-tools/test-image-user-uid-group:latest", user="1003:1004"),
    StandIn("k8s-staging-cri-tools/test-image-user-username-group:latest", user="www-data:1004"),
    StandIn("k8s-staging-cri-tools/test-image-predefined-group:latest", user="1000", predefined_group=True),
)


def applets() -> list[str]:
    """Every applet this busybox has: critest's commands (top, nc, id, grep, ...) must exist in the image."""
    listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(set(listed) - {"busybox"})


def hardlink_applets(rootfs: Path) -> None:
    """The busybox image's applets are hard links: the MaskedPaths spec masks /bin/ls, which through a symlink
    would mask /bin/busybox and with it every command."""
    busybox = rootfs / "bin" / "busybox"
    for applet in (rootfs / "bin").iterdir():
        if applet.is_symlink():
            applet.unlink()
            applet.hardlink_to(busybox)


def build_stand_in(image: StandIn, ref: str, work: Path, names: list[str]) -> Path:
    directory = work / image.path.replace("/", "_").replace(":", "_")
    rootfs = busybox_rootfs(directory / "rootfs", names, extra_dirs=["www", "var/www", "var/run", "home"])
    hardlink_applets(rootfs)
    (rootfs / "www" / "index.html").write_text("hello from a critest stand-in\n")
    passwd, group = PASSWD, GROUP
    if image.predefined_group:  # images/image-predefined-group: adduser -u 1000, addgroup -g 50000
        passwd += "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
        group += "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
    (rootfs / "etc" / "passwd").write_text(passwd)
    (rootfs / "etc" / "group").write_text(group)
    if image.marker:
        (rootfs / image.marker).write_text(image.marker + "\n")
    tar = directory / "image.tar"
    build_image_tar(rootfs, tar, ref, cmd=list(image.cmd), user=image.user)
    return tar


def push_stand_ins(ctrd: PrivateContainerd, registry: Registry, work: Path) -> None:
    names = applets()
    for image in STAND_INS:
        ref = f"{registry.host}/{image.path}"
        ctrd.ctr("images", "import", str(build_stand_in(image, ref, work, names)), namespace=IMAGE_NAMESPACE)
        ctrd.ctr("images", "push", "--plain-http", ref, namespace=IMAGE_NAMESPACE)
    print(f"pushed {len(STAND_INS)} stand-in images to {registry.url}", flush=True)


@dataclass
class Verdict:
    status: str  # passed, failed, skipped
    reason: str = ""


def read_junit(report: Path) -> dict[str, Verdict]:
    verdicts: dict[str, Verdict] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")  # suite hooks ([BeforeSuite] ...) included: they explain a run where all fail
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            message = (failure.get("message") or failure.text or "").strip().splitlines()
            verdicts[name] = Verdict("failed", message[0][:200] if message else "")
        elif case.find("skipped") is not None:
            verdicts[name] = Verdict("skipped")
        else:
            verdicts[name] = Verdict("passed")
    return verdicts


def run_critest(critest: Path, ctrd: PrivateContainerd, handler: str, out: Path,
                focus: str | None) -> dict[str, Verdict]:
    report = out / f"junit-{handler}.xml"
    log = out / f"critest-{handler}.log"
    endpoint = f"unix://{ctrd.address}"
    argv = [str(critest), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
            f"--runtime-handler={handler}",
            f"--ginkgo.junit-report={report}", "--ginkgo.no-color", "--ginkgo.timeout=55m"]
    if focus:
        argv.append(f"--ginkgo.focus={focus}")
    print(f"critest --runtime-handler={handler} (output: {log})", flush=True)
    with log.open("w") as sink:
        result = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, timeout=CRITEST_TIMEOUT_S, check=False)
    if not report.exists():
        raise RuntimeError(f"critest --runtime-handler={handler} exited {result.returncode} without a report; "
                           f"see {log}")
    return read_junit(report)


def print_results(results: dict[str, dict[str, Verdict]]) -> None:
    handlers = list(results)
    for handler, verdicts in results.items():
        counts = {status: sum(1 for v in verdicts.values() if v.status == status)
                  for status in ("passed", "failed", "skipped")}
        print(f"\n{handler}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
              f"of {len(verdicts)} specs")
    if len(handlers) < 2:
        names = sorted(results[handlers[0]])
        for name in names:
            verdict = results[handlers[0]][name]
            if verdict.status == "failed":
                print(f"  FAILED {name}\n         {verdict.reason}")
        return
    first, second = handlers[:2]
    names = sorted(set(results[first]) | set(results[second]))
    missing = Verdict("absent")
    differing = [n for n in names if results[first].get(n, missing).status != results[second].get(n, missing).status]
    print(f"\nspecs whose verdict differs ({first} vs {second}): {len(differing)}")
    for name in differing:
        a, b = results[first].get(name, missing), results[second].get(name, missing)
        print(f"  {first}={a.status} {second}={b.status}: {name}")
        for handler, verdict in ((first, a), (second, b)):
            if verdict.status == "failed":
                print(f"      {handler}: {verdict.reason}")
    both = [n for n in names if results[first].get(n, missing).status == "failed"
            and results[second].get(n, missing).status == "failed"]
    print(f"\nspecs failed with both handlers: {len(both)}")
    for name in both:
        print(f"  {name}\n      {results[first][name].reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handlers", nargs="+", default=["spin", "runc"], choices=["spin", "runc"])
    parser.add_argument("--version", default="2.1", choices=SUPPORTED_VERSIONS, help="containerd version")
    parser.add_argument("--focus", help="only the specs matching this regex (ginkgo.focus)")
    parser.add_argument("--out", type=Path, help="where the JUnit reports and logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    critest = kube_bin_dir() / "critest"  # scripts/build_kube.sh builds it (cri-tools v1.34.0) if not cached
    out = (args.out or Path(tempfile.mkdtemp(prefix="critest-out-"))).absolute()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="critest-"))
    shim_dir = work / "bin"
    shim_dir.mkdir()
    (shim_dir / SHIM.name).symlink_to(SHIM)
    registry = Registry(work / "registry")
    ctrd = PrivateContainerd(args.version, work / "containerd", shim_dir,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(work / "shim-cache")})
    results: dict[str, dict[str, Verdict]] = {}
    # The spin handler's first start leaves this build's fork server behind; the run stops what it started.
    with new_fork_servers_stopped(build_key()):
        try:
            registry.start()
            ctrd.enable_cni()
            ctrd.start()
            ctrd.import_pause_image()
            trust_registry(ctrd, registry)
            for upstream in UPSTREAMS:
                mirror_to_registry(ctrd, upstream, registry)
            print(f"containerd {ctrd.version_string}, critest of cri-tools v1.34.0", flush=True)
            push_stand_ins(ctrd, registry, work)
            for handler in args.handlers:
                results[handler] = run_critest(critest, ctrd, handler, out, args.focus)
            print_results(results)
            print(f"\nreports and logs: {out}")
        finally:
            with contextlib.suppress(Exception):
                ctrd.stop()
            registry.stop()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
