"""The benchmark's garbage-collection probe, loaded at start-up by every Python process of a server.

The benchmark puts this folder on ``PYTHONPATH`` of a server it starts with a GC variant or with
``--gc-stats``, so that Python imports this module in the server's main process and in each of its
workers before anything else; other servers never see it. It reads two variables:

- ``BENCH_GC_MODE=no-freeze``: ``gc.freeze()`` does nothing (the service calls it once after
  start-up to take the loaded framework out of every later collection);
  ``BENCH_GC_MODE=disabled``: automatic collection is off for the life of the process.
- ``BENCH_GC_STATS_DIR=DIR``: every collection is timed; ``DIR/<pid>.gc`` gets one line per
  collection, ``<start, unix seconds> <generation> <pause ms>``, appended twice a second by a
  background thread (the collection itself only appends to a list).

Another ``sitecustomize`` further down ``sys.path`` (a distribution's) still runs after this one.
"""

from __future__ import annotations

import atexit
import gc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

FLUSH_EVERY_S = 0.5


def _no_freeze() -> None:
    """Stands in for ``gc.freeze``: leaves every object where it is."""


class _PauseLog:
    """Times each collection and appends the pauses to this process's file, off the GC path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pending: list[tuple[float, int, float]] = []
        self.started_at = 0.0
        self.started_wall = 0.0
        gc.callbacks.append(self.on_gc)
        os.register_at_fork(after_in_child=self.start_flusher)
        atexit.register(self.flush)
        self.start_flusher()

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started_wall, self.started_at = time.time(), time.perf_counter()
        else:  # list.append is atomic under the GIL: no lock on the collection's path
            pause_ms = (time.perf_counter() - self.started_at) * 1000
            self.pending.append((self.started_wall, info["generation"], pause_ms))

    def start_flusher(self) -> None:
        threading.Thread(target=self.flush_forever, name="gc-probe", daemon=True).start()

    def flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            self.flush()

    def flush(self) -> None:
        done, self.pending = self.pending, []
        if done:
            with open(self.folder / f"{os.getpid()}.gc", "a") as out:
                out.writelines(f"{t:.6f} {generation} {ms:.4f}\n" for t, generation, ms in done)


def _run_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this module hides, if there is one further down ``sys.path``."""
    here = str(Path(__file__).resolve().parent)
    later = [p for p in sys.path if p and os.path.abspath(p) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", later)
    if spec and spec.loader and Path(spec.origin or "").resolve() != Path(__file__).resolve():
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _install() -> None:
    mode = os.environ.get("BENCH_GC_MODE", "")
    if mode == "no-freeze":
        gc.freeze = _no_freeze
    elif mode == "disabled":
        gc.disable()
    elif mode:
        print(f"gc probe: unknown BENCH_GC_MODE {mode!r}, left alone", file=sys.stderr)
    stats_dir = os.environ.get("BENCH_GC_STATS_DIR")
    if stats_dir:
        _PauseLog(Path(stats_dir))


_install()
_run_next_sitecustomize()
