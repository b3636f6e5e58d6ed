"""The servers under test: how each is started, checked, watched and stopped.

Every server is started through ``harness.server`` (the same helper the tests use): a free port
on 127.0.0.1, a private work folder, a process group of its own, stopped with SIGTERM then
SIGKILL. This module adds what the benchmark reads from the running process tree (CPU, memory,
connections per worker, garbage-collection pauses) and the answer check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench import ROOT, log
from harness.server import (
    SETTINGS_PREFIX,
    ServerProcess,
    ServerStartError,
    service_env,
    start_bentoml,
    start_server,
)

SERVERS = {  # key -> label, in the order they are run and shown
    "service": "service (defaults)",
    "service_nobatch": "service, batching off",
    "baseline": "bare FastAPI baseline",
    "baseline_2w": "bare FastAPI, two workers",
}
BASELINE_WORKERS = {"baseline": 1, "baseline_2w": 2}
GC_PROBE = ROOT / "bench" / "gc_probe"
GC_VARIABLES = ("BENCH_GC_MODE", "BENCH_GC_STATS_DIR")
START_TRIES = 2  # a start that fails is retried once on another port
# Answer checks go straight to 127.0.0.1, never through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MeasuredServer:
    """A started server (``harness.server.ServerProcess``) and what the benchmark reads from it."""

    def __init__(self, process: ServerProcess, gc_stats_dir: Path | None = None) -> None:
        self.process = process
        self.name, self.port, self.url = process.name, process.port, process.url
        self.root = psutil.Process(process.pid)
        self.gc_stats_dir = gc_stats_dir

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """User + system CPU seconds of every live process of the tree."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        """Resident memory summed over the tree (shared pages count once per process)."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children that accept on the server's port (not
        helpers such as multiprocessing's resource tracker), else all children, else the root."""
        children = self.processes()[1:]
        accepting = [p.pid for p in children if self._listens(p)]
        return accepting or [p.pid for p in children] or [self.root.pid]

    def _listens(self, process: psutil.Process) -> bool:
        try:
            conns = process.net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns)

    def connections_per_worker(self) -> list[int]:
        """Established connections to the server's port held by each serving process."""
        counts = []
        for pid in self.worker_pids():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            counts.append(
                sum(
                    1
                    for c in conns
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == self.port
                )
            )
        return counts

    def gc_pauses(self, since: float, until: float) -> list[tuple[int, float]]:
        """(generation, pause ms) of every collection the workers started in [since, until]
        (unix seconds); empty without the GC probe."""
        if self.gc_stats_dir is None:
            return []
        pauses = []
        for pid in self.worker_pids():
            path = self.gc_stats_dir / f"{pid}.gc"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                started, generation, ms = line.split()
                if since <= float(started) <= until:
                    pauses.append((int(generation), float(ms)))
        return pauses

    def stop(self) -> None:
        self.process.stop()
        if self.gc_stats_dir is not None:
            shutil.rmtree(self.gc_stats_dir, ignore_errors=True)


def split_env(overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``overrides`` as (service settings, GC probe variables); anything else is refused."""
    settings = {k: v for k, v in overrides.items() if k.startswith(SETTINGS_PREFIX)}
    probe = {k: v for k, v in overrides.items() if k in GC_VARIABLES}
    unknown = set(overrides) - set(settings) - set(probe)
    if unknown:
        raise ValueError(f"not a service setting nor a GC probe variable: {sorted(unknown)}")
    return settings, probe


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env MODELSERVE_X=V`` options as a dict; anything but a service setting is refused."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(SETTINGS_PREFIX):
            raise SystemExit(f"--env takes MODELSERVE_NAME=VALUE, got {item!r}")
        env[key] = value
    return env


def probe_env(probe: Mapping[str, str], gc_stats_dir: Path | None) -> dict[str, str]:
    """The variables that load the GC probe into every Python process of a server (none if unused)."""
    probe = dict(probe)
    if gc_stats_dir is not None:
        probe["BENCH_GC_STATS_DIR"] = str(gc_stats_dir)
    if not probe:
        return {}
    path = os.pathsep.join(p for p in (str(GC_PROBE), os.environ.get("PYTHONPATH", "")) if p)
    return {**probe, "PYTHONPATH": path}


def _retrying(name: str) -> Callable[[ServerStartError], None]:
    return lambda exc: log(f"{name} failed to start, trying again: {str(exc).splitlines()[0]}")


def _measured(start: Callable[[], ServerProcess], stats_dir: Path | None) -> MeasuredServer:
    """The server ``start()`` returns, announced; the GC folder is removed if it fails to start."""
    try:
        server = MeasuredServer(start(), stats_dir)
    except BaseException:
        if stats_dir is not None:
            shutil.rmtree(stats_dir, ignore_errors=True)
        raise
    log(
        f"{server.name} ready on port {server.port} after {server.process.ready_after_s:.1f} s "
        f"({len(server.processes())} processes)"
    )
    return server


def _gc_stats_dir(name: str, wanted: bool) -> Path | None:
    return Path(tempfile.mkdtemp(prefix=f"bench-gc-{name}-")) if wanted else None


def start_service(
    name: str, store: Path, overrides: Mapping[str, str], gc_stats: bool = False
) -> MeasuredServer:
    """``bentoml serve`` with ``overrides`` (``MODELSERVE_*`` settings, GC probe variables)."""
    settings, probe = split_env(overrides)
    stats_dir = _gc_stats_dir(name, gc_stats)
    return _measured(
        lambda: start_bentoml(
            store,
            settings,
            extra_env=probe_env(probe, stats_dir),
            name=name,
            tries=START_TRIES,
            on_retry=_retrying(name),
        ),
        stats_dir,
    )


def baseline_command(workers: int) -> Callable[[int], list[str]]:
    """uvicorn serving ``bench/baseline_app.py`` with ``workers`` worker processes.

    With more than one, uvicorn's supervisor binds the port and its workers share that one
    listening socket, as the service's workers do, so both spread connections the same way.
    """
    return lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def start_baseline(name: str, store: Path, threads: int, gc_stats: bool = False) -> MeasuredServer:
    """The bare FastAPI baseline ``name`` (``baseline``: one worker, ``baseline_2w``: two)."""
    stats_dir = _gc_stats_dir(name, gc_stats)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    env |= {"BASELINE_STORE": str(store), "BASELINE_THREADS": str(threads)}
    env |= probe_env({}, stats_dir)
    return _measured(
        lambda: start_server(
            baseline_command(BASELINE_WORKERS[name]),
            env,
            name=name,
            tries=START_TRIES,
            on_retry=_retrying(name),
        ),
        stats_dir,
    )


@contextlib.contextmanager
def running(start: Callable[[], MeasuredServer]) -> Iterator[MeasuredServer]:
    """The server ``start()`` returns, for the length of a ``with`` block."""
    server = start()
    try:
        yield server
    finally:
        server.stop()


def post(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def check_answers(server: MeasuredServer, endpoint: str, bodies: list[dict], reference: np.ndarray) -> float:
    """POST every body once; check each answer's shape; max |diff| of body 0 vs in-process."""
    key = {"classify": "probabilities", "forecast": "forecasts"}[endpoint]
    first = None
    for body in bodies:
        try:
            answer = np.asarray(post(f"{server.url}/{endpoint}", body)[key])
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{server.name} /{endpoint}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        if answer.shape != (1, reference.shape[-1]):
            raise RuntimeError(f"{server.name} /{endpoint}: answer of shape {answer.shape}")
        first = answer if first is None else first
    return float(np.abs(first[0] - reference).max())


# Run in a child process with the server's environment, so the benchmark's own stays untouched.
_RESOLVE_SETTINGS = """
import json
from service.platform.settings import Settings
s = Settings()
resolved = {"workers": s.worker_count, "intra_op_threads": s.threads_per_session, "batching": s.batching}
resolved.update({f"batch.{k}": v for k, v in s.batch.model_dump().items()})
for name in ("http_timeout_s", "access_log", "max_body_bytes"):
    if hasattr(s, name):
        resolved[name] = getattr(s, name)
print(json.dumps(resolved))
"""


def resolved_settings(store: Path, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The service's settings as its workers will read them from their environment."""
    settings, _ = split_env(overrides)
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE_SETTINGS],
        cwd=ROOT,
        env=service_env(store, settings),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # the settings module changed shape: report, do not fail the run
        log(f"could not resolve the service's settings: {done.stderr.strip().splitlines()[-1:]}")
        return {}
    return json.loads(done.stdout)
