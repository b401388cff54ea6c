"""Fixtures for the near-line tests: a real ``redis-server`` on a free loopback port.

Every test here needs the binary (Debian: ``apt-get install -y redis-server``) and
redis-py (``pip install redis``); without either, they skip with that reason.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port p <= 55535 whose cluster-bus port p + 10000 is free too (redis-server in
    cluster mode refuses a higher port; the kernel's ephemeral range often hands one out)."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, 55536)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair (p, p + 10000) below 55536 on 127.0.0.1")


class RedisServer:
    """A redis-server subprocess bound to 127.0.0.1. ``persistent``: AOF with fsync on
    every write, so a restart keeps every acknowledged write (the restart test)."""

    def __init__(self, workdir, persistent: bool = False):
        self.binary = shutil.which("redis-server")
        self.dir = str(workdir)
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None
        self.start_args: list[str] = []  # extra redis-server arguments (e.g. cluster mode)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
               "--save", "", "--protected-mode", "yes", "--daemonize", "no",
               "--logfile", os.path.join(self.dir, "redis.log")]
        cmd += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        cmd += self.start_args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.dir}/redis.log")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def _need_binary():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (Debian: apt-get install -y redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One non-persistent redis-server for the session."""
    _need_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path):
    """A redis-server of this test's own, with AOF persistence, that it may restart."""
    _need_binary()
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client on an empty database."""
    from postemb_rt import nearline

    client = nearline.connect(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def nearline_encoder():
    """The runtime's default model (what ``postemb nearline --model default`` loads)."""
    from postemb_rt import Encoder

    return Encoder.from_pretrained("default")
