"""Fixtures: a real ``bentoml serve`` on a free 127.0.0.1 port, over a given model store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_STORE = ROOT / "model_store"
START_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    tmp: Path, store: Path = COMMITTED_STORE, wait_ready: bool = True, **settings: str
) -> Iterator[Server]:
    """Run ``bentoml serve`` with ``MODELSERVE_<KEY>=value`` for each keyword; stop it after."""
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp / "bentoml"),  # a private Prometheus multi-process folder
        "MODELSERVE_MODEL_STORE": str(store),
        "PYTHONUNBUFFERED": "1",
        **{f"MODELSERVE_{key.upper()}": str(value) for key, value in settings.items()},
    }
    log = tmp / f"server-{port}.log"
    bentoml = Path(sys.executable).parent / "bentoml"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", log, process)
    try:
        _wait_until_up(server, "/readyz" if wait_ready else "/livez")
        yield server
    finally:
        _stop(process)


def _wait_until_up(server: Server, probe: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + probe, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{probe} did not answer 200 within {START_TIMEOUT_S} s:\n{server.log_text()}")


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """The committed models, served by two workers (as in production on two cores)."""
    with serve(tmp_path_factory.mktemp("server"), workers="2") as running:
        yield running


@pytest.fixture
def store_copy(tmp_path) -> Path:
    """A private copy of the committed model store, safe to tamper with."""
    copy = tmp_path / "model_store"
    shutil.copytree(COMMITTED_STORE, copy)
    return copy
