"""Each server's own folder for its workers' shared state: Prometheus files and ready notes.

BentoML gives its workers ``PROMETHEUS_MULTIPROC_DIR`` = ``$BENTOML_HOME/prometheus_multiproc_dir``
and empties that folder whenever a ``bentoml serve`` starts. Two servers with the same
``BENTOML_HOME`` (a test or a benchmark beside a running server) then share it, and the
second one's start deletes the first one's metrics and ready notes: its ``/readyz`` turned
503 for good while it kept serving, and its counters restarted from zero.

So each server uses a folder of its own, named after the process that supervises its
workers (``bentoml serve``'s process, the workers' parent), under the system's temporary
folder. That process makes it afresh when it loads the service, before any worker starts;
each worker points ``PROMETHEUS_MULTIPROC_DIR`` at it before the service creates any
metric, and the last worker to shut down removes it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

from prometheus_client import multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"


def folder_of(supervisor_pid: int) -> Path:
    """The shared folder of the server whose workers' parent is ``supervisor_pid``."""
    return Path(tempfile.gettempdir()) / f"modelserve-{os.getuid()}-{supervisor_pid}"


def use_server_folder(is_worker: bool) -> Path | None:
    """Point this process at its server's own folder (made by the supervisor, joined by workers).

    Outside ``bentoml serve`` (no ``PROMETHEUS_MULTIPROC_DIR``: one process, in-memory metrics)
    nothing changes and None is returned.
    """
    if not os.environ.get(ENV):
        return None
    if is_worker:
        folder = folder_of(os.getppid())
        folder.mkdir(mode=0o700, exist_ok=True)
        forget_dead_workers(folder)
    else:
        remove_folders_of_dead_servers()
        folder = folder_of(os.getpid())
        shutil.rmtree(folder, ignore_errors=True)  # a dead server's, whose pid this one reuses
        folder.mkdir(mode=0o700)
    os.environ[ENV] = str(folder)
    return folder


def leave_server_folder() -> None:
    """At a worker's shutdown: remove its own files; the last worker out removes the folder.

    (``bentoml serve`` itself ends without running exit handlers, so its workers tidy up, and
    the next server's start removes what a killed server left.)
    """
    folder = os.environ.get(ENV)
    if not folder or not Path(folder).name.startswith("modelserve-"):
        return
    pid = os.getpid()
    for path in Path(folder).iterdir():
        if path.name.endswith(f"_{pid}.db") or (path.name.startswith("ready-") and _note_of(path) == pid):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: another worker is still there
        os.rmdir(folder)


def remove_folders_of_dead_servers() -> None:
    for folder in Path(tempfile.gettempdir()).glob(f"modelserve-{os.getuid()}-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _note_of(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return None


def forget_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that died (a restarted worker takes a new pid)."""
    for path in glob.glob(str(folder / "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match is None:
            continue
        pid = int(match.group(1))
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(folder))
