"""Start the service for a scripted run: ``bentoml serve`` on a free 127.0.0.1 port with a
private BENTOML_HOME, wait until it is ready, and always stop it (its whole process group)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 20


@dataclass(frozen=True)
class LocalService:
    url: str
    pid: int  # the `bentoml serve` process; its workers are its children
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the service."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@contextlib.contextmanager
def local_service(log: Path, env: dict[str, str] | None = None) -> Iterator[LocalService]:
    """The committed models served by ``bentoml serve``, ready; stopped on the way out."""
    home = Path(tempfile.mkdtemp(prefix="modelserve-load-"))
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPOSITORY,
            env={**os.environ, **(env or {}), "BENTOML_HOME": str(home / "bentoml"), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it reaches every worker
        )
    service = LocalService(f"http://127.0.0.1:{port}", process.pid, log)
    try:
        wait_until_ready(service, process)
        yield service
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def wait_until_ready(service: LocalService, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}; see {service.log}")
        # 503 (not ready yet) raises HTTPError, a URLError; a refused connection an OSError.
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{service.url}/readyz", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"/readyz did not answer 200 within {READY_TIMEOUT_S} s; see {service.log}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the service's process group, SIGKILL if it has not exited in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
