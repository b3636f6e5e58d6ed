"""Fixtures: a real ``bentoml serve`` on a free 127.0.0.1 port, over a given model store.

Starting, waiting for and stopping the server is ``harness.server``'s job (the benchmark uses
the same helper); this file only adapts it to pytest.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.server import ROOT, bentoml_serve

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


@contextlib.contextmanager
def serve(
    tmp: Path, store: Path = COMMITTED_STORE, wait_ready: bool = True, **settings: str
) -> Iterator[Server]:
    """Run ``bentoml serve`` with ``MODELSERVE_<KEY>=value`` for each keyword; stop it after.

    Waits for ``/readyz`` (every model loaded), or only for ``/livez`` with ``wait_ready=False``.
    The log and the server's BentoML home stay in ``tmp``.
    """
    with bentoml_serve(
        store,
        {f"MODELSERVE_{key.upper()}": str(value) for key, value in settings.items()},
        probe="/readyz" if wait_ready else "/livez",
        timeout_s=START_TIMEOUT_S,
        workdir=tmp,
        name="server",
    ) as running:
        yield Server(running.url, running.log_path, running.process)


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
