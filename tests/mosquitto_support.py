"""A real mosquitto (Debian's, installed by scripts/setup.sh) on 127.0.0.1 for the tests of Spin's MQTT APIs, and a
test-side subscriber that records what the broker delivers.

Two listeners, ``per_listener_settings true``: ``port`` lets anyone in (``allow_anonymous true``), ``auth_port``
needs ``USERNAME``/``PASSWORD`` from a password file (made with ``mosquitto_passwd -b`` when it is installed, else
written in its documented sha512 form ``user:$6$<base64 salt>$<base64 sha512(password + salt)>``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USERNAME = "spin"
PASSWORD = "s3cr3t-mqtt-pw"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    """A CONNECT gets a CONNACK (any return code): the listener is up and speaks MQTT."""
    connect = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 0])
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            conn.sendall(connect)
            return conn.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def write_password_file(path: Path, username: str, password: str) -> None:
    binary = shutil.which("mosquitto_passwd")
    if binary is not None:
        path.write_text("")
        subprocess.run([binary, "-b", str(path), username, password], check=True, capture_output=True)
    else:
        salt = os.urandom(12)
        digest = hashlib.sha512(password.encode() + salt).digest()
        path.write_text(f"{username}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n")
    path.chmod(0o600)


@dataclass
class Mosquitto:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    auth_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def url(self, client_id: str = "spin-test", port: int | None = None, host: str | None = None) -> str:
        return f"mqtt://{host or self.host}:{port or self.port}?client_id={client_id}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed; run scripts/setup.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port(self.host)
        self.auth_port = self.auth_port or _free_port(self.host)
        passwords = self.workdir / "passwords"
        if not passwords.exists():
            write_password_file(passwords, USERNAME, PASSWORD)
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join([
            "per_listener_settings true",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            # started as root, mosquitto would switch to the 'mosquitto' user, which cannot read this workdir
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"listener {self.auth_port} {self.host}",
            "allow_anonymous false",
            f"password_file {passwords}",
            "",
        ]))
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not (_accepts(self.host, self.port) and _accepts(self.host, self.auth_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text()[-2000:] if self.log_path.exists() else "(no log)"
                raise RuntimeError(f"mosquitto did not start: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the broker, stay down ``down_for`` seconds, start it again on the same ports."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def connected_clients(self) -> set[str]:
        """Client ids connected now, from the broker's own log (its connect and disconnect lines)."""
        connected: set[str] = set()
        for line in self.log_path.read_text(errors="replace").splitlines():
            joined = re.search(r"New client connected from \S+ as (\S+) \(", line)
            if joined:
                connected.add(joined.group(1))
            left = re.search(r"Client (\S+) (?:disconnected|closed its connection|has exceeded timeout)", line)
            if left:
                connected.discard(left.group(1))
        return connected


@contextlib.contextmanager
def running_mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class TestSubscriber:
    """A paho client in its own thread, subscribed before it is handed out; ``messages`` holds what arrived."""

    __test__ = False

    def __init__(self, broker: Mosquitto, topics: list[tuple[str, int]]) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[Received] = queue.Queue()
        self._subscribed = queue.Queue[Any]()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{time.monotonic_ns()}")
        self.client.on_message = lambda _c, _u, m: self.messages.put(Received(m.topic, m.payload, m.qos, m.retain))
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self._subscribed.put(codes)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topics)
        codes = self._subscribed.get(timeout=10)
        assert all(not code.is_failure for code in codes), codes

    def next(self, timeout: float = 10) -> Received:
        return self.messages.get(timeout=timeout)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(broker: Mosquitto, *topics: tuple[str, int]) -> Iterator[TestSubscriber]:
    subscriber = TestSubscriber(broker, list(topics))
    try:
        yield subscriber
    finally:
        subscriber.close()
