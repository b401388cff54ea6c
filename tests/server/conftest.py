"""Real server processes on loopback for the server tests.

``main_server``: ``postemb serve --model base --backend onnxruntime --port 0`` with an API key and
small limits (one per session). ``fault_server``: the same app behind ``fault_server.py``, whose
backend fails or slows down while a file exists in its fault directory. Every process is
started once, waited for (``GET /ready``) and stopped with SIGTERM at the end.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_TEXTS


def require_serve_extra():
    """Call at a test module's top: skips the module unless the [serve] extra and httpx are
    installed; returns the httpx module."""
    for name in ("fastapi", "uvicorn", "prometheus_client", "orjson"):
        pytest.importorskip(name, reason="the server needs the [serve] extra")
    return pytest.importorskip("httpx")

API_KEY = "test-key-7f3a"
READY_TIMEOUT_S = 180  # the first onnxruntime load exports the model (~15 s, more on busy cores)
ROOT = Path(__file__).resolve().parents[2]
LIMITS = dict(max_inputs=32, max_input_chars=2000, max_body_bytes=64 * 1024, max_concurrent_requests=64)
# the sample posts a request may hold: no empty string (refused, as TEI and OpenAI do), none over max_input_chars
TEXTS = [t for t in SAMPLE_TEXTS if t and len(t) <= LIMITS["max_input_chars"]]


class ServerProc:
    """A server subprocess: ``url``, ``proc``, ``stop()`` (SIGTERM; returns the exit code)."""

    def __init__(self, argv: list[str], env: dict | None = None, preexec_fn=None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        for line in self.proc.stdout:  # warnings, then "postemb serve: listening on http://127.0.0.1:PORT (...)"
            self.lines.append(line)
            if "listening on" in line:
                break
        else:
            self.proc.kill()  # never leave a server behind
            self.proc.wait()
            raise RuntimeError(f"server did not start: {''.join(self.lines)}")
        self.url = line.split("listening on ")[1].split()[0]
        import threading

        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {''.join(self.lines)}")
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s: {''.join(self.lines)}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def serve_argv(*extra: str) -> list[str]:
    # --precision fp32: the tests compare answers with an exact encoder (the CLI's default is auto)
    return [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", "base", "--backend", "onnxruntime",
            "--precision", "fp32", "--host", "127.0.0.1", "--port", "0", *extra]


def fault_argv(fault_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).with_name("fault_server.py")), str(fault_dir), *extra]


def ready_until_done(srv: "ServerProc"):
    """A fixture's body for a server process: yields it once ready, then stops it with SIGTERM and
    checks that it exited 0 (the tail of its output in the message otherwise)."""
    try:
        srv.wait_ready()
        yield srv
    finally:
        rc = srv.stop()
    assert rc == 0, f"postemb serve exited {rc} after SIGTERM: {''.join(srv.lines)[-3000:]}"


@pytest.fixture(scope="session")
def main_server():
    limits = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    yield from ready_until_done(ServerProc(serve_argv(*limits), env={"POSTEMB_API_KEY": API_KEY}))


@pytest.fixture(scope="session")
def client(main_server):
    import httpx

    with httpx.Client(base_url=main_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def server_encoder(main_server):
    """The in-process reference (after the server exported the model, so the cache is warm)."""
    from postemb_rt import Encoder

    return Encoder.from_pretrained("base", backend="onnxruntime", device="cpu")
