"""Start the service for a scripted run (smoke, soak), through the project's one server harness.

``harness/server.py`` starts ``bentoml serve`` on a free 127.0.0.1 port with a private
BENTOML_HOME, waits for ``/readyz`` and always stops the whole process tree; this module only
adapts it to the scripts here, which run as ``python loadtests/<script>.py``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # the scripts run from loadtests/; the harness lives at the root
    sys.path.append(str(REPOSITORY))

from harness.server import bentoml_serve, free_port  # noqa: E402

__all__ = ["REPOSITORY", "LocalService", "free_port", "local_service", "stop_on_sigterm"]


@dataclass(frozen=True)
class LocalService:
    url: str
    pid: int  # the `bentoml serve` process; its workers are its descendants
    log: Path


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the service."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@contextlib.contextmanager
def local_service(folder: Path) -> Iterator[LocalService]:
    """The committed models served by ``bentoml serve``, ready; its log and home in ``folder``."""
    with bentoml_serve(workdir=folder) as server:
        yield LocalService(server.url, server.pid, server.log_path)
