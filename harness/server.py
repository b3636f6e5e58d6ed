"""Start a server on a free 127.0.0.1 port, wait until it answers, and stop it again.

The one place that starts ``bentoml serve`` for the tests and the benchmark. Every server:

- runs in its own process group (a new session), and stopping it reaches every process it
  started (BentoML's arbiter and workers, uvicorn's workers);
- gets a private ``BENTOML_HOME`` inside its work folder, so nothing it writes (Prometheus
  multi-process files, bentos) is shared with another server or with the user's home;
- gets exactly the ``MODELSERVE_*`` settings it is given: those of the caller's environment
  are left out, so a stray exported setting never changes what a test or a benchmark measures;
- writes stdout and stderr to one log file, whose tail is quoted when the server fails to start.

Stopping sends SIGTERM to the process group, waits for the server to exit, then SIGKILLs
whatever is left of its process tree. The tree is read from /proc before the signal, because
BentoML starts each worker in a session of its own, out of reach of the group's signals.
``terminate()`` instead sends SIGTERM to the main process only (as Kubernetes does) and measures
how long the whole tree takes to exit.
"""

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
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = ROOT / "model_store"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
# After the main process has exited, how long its children get to follow before SIGKILL.
STRAGGLER_TIMEOUT_S = 5.0
SETTINGS_PREFIX = "MODELSERVE_"

# Readiness probes go straight to 127.0.0.1, never through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """The server exited, or did not answer its probe in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(
    store: Path = DEFAULT_STORE,
    settings: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a service process: the caller's, with only the given service settings.

    ``settings`` are full variable names (``MODELSERVE_WORKERS``); ``extra`` holds anything else
    the server should see. The caller's own environment is read, never changed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"  # the log shows everything up to a crash
    env[SETTINGS_PREFIX + "MODEL_STORE"] = str(store)
    for key, value in (settings or {}).items():
        if not key.startswith(SETTINGS_PREFIX):
            raise ValueError(f"service settings are {SETTINGS_PREFIX}* variables, got {key!r}")
        env[key] = str(value)
    env.update(extra or {})
    return env


def bentoml_command(port: int) -> list[str]:
    """``bentoml serve`` of this repository's service on 127.0.0.1:``port``."""
    exe = Path(sys.executable).parent / "bentoml"
    return [
        str(exe if exe.exists() else shutil.which("bentoml")),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


class ServerProcess:
    """A server's process tree, started in its own process group; ``stop()`` ends all of it."""

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        port: int,
        name: str = "server",
        workdir: Path | None = None,
    ) -> None:
        """Start ``command`` (which must listen on ``port``); ``workdir`` holds its log and home.

        Without ``workdir`` a temporary folder is made, and removed again by ``stop()``.
        """
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}-{port}.log"
        env = {**env, "BENTOML_HOME": str(self.workdir / f"bentoml-{port}")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        try:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError:  # no such program, say: nothing to stop, but nothing left behind either
            self._log.close()
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.pid = self.process.pid
        self.ready_after_s: float | None = None  # set by wait_until_up()
        self._stopped = False
        self._sigterm_at: float | None = None  # set by send_sigterm()
        self._tree_at_sigterm: dict[int, str] = {}

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_until_up(self, probe: str = "/readyz", timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds until ``GET probe`` answered 200; ServerStartError if the server died or took too long."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), _DIRECT.open(self.url + probe, timeout=2) as response:
                if response.status == 200:
                    self.ready_after_s = time.monotonic() - started
                    return self.ready_after_s
            time.sleep(0.25)
        raise ServerStartError(
            f"{self.name}: {probe} did not answer 200 within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_text(self) -> str:
        """Everything the server has written so far (readable after ``stop()`` too, unless the
        work folder was a temporary one)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def send_sigterm(self) -> None:
        """SIGTERM to the main process only, as Kubernetes sends it to a container's first process
        (BentoML's arbiter, which passes it on to its workers); ``wait_for_exit()`` then waits."""
        self._tree_at_sigterm = _descendants(self.pid)  # read now: once it exits, children are reparented
        self._sigterm_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def wait_for_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> float | None:
        """Seconds from ``send_sigterm()`` until every process of the server's tree was gone, or None
        if some were still running ``timeout_s`` after the signal (``stop()`` still ends them)."""
        if self._sigterm_at is None:
            raise RuntimeError("wait_for_exit() comes after send_sigterm()")
        while time.monotonic() - self._sigterm_at < timeout_s:
            if self.process.poll() is not None and not _alive(self._tree_at_sigterm):
                return time.monotonic() - self._sigterm_at
            time.sleep(0.05)
        return None

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> float | None:
        """``send_sigterm()``, then ``wait_for_exit(timeout_s)``."""
        self.send_sigterm()
        return self.wait_for_exit(timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the process group, up to ``timeout_s`` for a clean exit, then SIGKILL the rest
        of the group and of the process tree."""
        if self._stopped:
            return
        self._stopped = True
        tree = _descendants(self.pid)  # read now: once the server exits, its children are reparented
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        else:  # the main process is gone; its workers may still be finishing
            deadline = time.monotonic() + STRAGGLER_TIMEOUT_S
            while (_group_alive(self.pid) or _alive(tree)) and time.monotonic() < deadline:
                time.sleep(0.05)
        _signal_group(self.pid, signal.SIGKILL)
        for pid in _alive(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its start time (so a reused pid is never mistaken for it).

    Empty where there is no /proc: the process group is then all that stop() reaches.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
            if stat:
                children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        for child, started in children.get(frontier.pop(), []):
            if child not in found:
                found[child] = started
                frontier.append(child)
    return found


def _alive(tree: dict[int, str]) -> list[int]:
    """The processes of ``tree`` still running (the same pid and start time, not a zombie)."""
    alive = []
    for pid, started in tree.items():
        stat = _proc_stat(pid)
        if stat and stat[2] == started and stat[0] != "Z":
            alive.append(pid)
    return alive


def start_server(
    command_for_port: Callable[[int], list[str]],
    env: Mapping[str, str],
    *,
    name: str = "server",
    probe: str = "/readyz",
    timeout_s: float = START_TIMEOUT_S,
    workdir: Path | None = None,
    tries: int = 1,
    on_retry: Callable[[ServerStartError], None] | None = None,
) -> ServerProcess:
    """A server that answers ``probe``; a failed start is retried on another port up to ``tries`` times.

    (A port found free can be taken by someone else before the server binds it.) ``on_retry``
    hears of each failure that is retried.
    """
    for attempt in range(1, tries + 1):
        port = free_port()
        server = ServerProcess(command_for_port(port), env, port, name=name, workdir=workdir)
        try:
            server.wait_until_up(probe, timeout_s)
        except ServerStartError as exc:
            server.stop()
            if attempt == tries:
                raise
            if on_retry:
                on_retry(exc)
            continue
        return server
    raise ValueError(f"tries must be at least 1, got {tries}")


def start_bentoml(
    store: Path = DEFAULT_STORE,
    settings: Mapping[str, str] | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
    name: str = "service",
    probe: str = "/readyz",
    timeout_s: float = START_TIMEOUT_S,
    workdir: Path | None = None,
    tries: int = 1,
    on_retry: Callable[[ServerStartError], None] | None = None,
) -> ServerProcess:
    """``bentoml serve`` of the service over ``store`` with ``settings`` (``MODELSERVE_*`` names),
    once ``probe`` answers 200 (``/readyz``: every model loaded; ``/livez``: the process is up)."""
    env = service_env(store, settings, extra_env)
    return start_server(
        bentoml_command,
        env,
        name=name,
        probe=probe,
        timeout_s=timeout_s,
        workdir=workdir,
        tries=tries,
        on_retry=on_retry,
    )


@contextlib.contextmanager
def bentoml_serve(
    store: Path = DEFAULT_STORE, settings: Mapping[str, str] | None = None, **options
) -> Iterator[ServerProcess]:
    """``start_bentoml(...)`` for the length of a ``with`` block; stopped however the block ends."""
    server = start_bentoml(store, settings, **options)
    try:
        yield server
    finally:
        server.stop()
