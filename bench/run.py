#!/usr/bin/env python3
"""Benchmark: the service vs a bare FastAPI server vs in-process ONNX Runtime, in one run.

Starts every server itself (127.0.0.1, free ports), drives it with ``wrk`` at several
concurrencies, measures throughput, latency, the server's CPU per request and memory
(summed over its whole process tree) and the load generator's own CPU, then stops it.
Writes bench/results/latest.json, docs/benchmarks.md and docs/images/bench-throughput.png.
See bench/README.md for how to run it; ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store_format import load_verified  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "bench-throughput.png"
LUA = ROOT / "bench" / "wrk" / "post.lua"
CONCURRENCY = (1, 16, 64)
N_BODIES = 64  # distinct request bodies per endpoint, rotated by wrk
ENDPOINTS = ("classify", "forecast")
NOISE_CORES = 0.15  # other processes busier than this during a cell: the cell is flagged
SERVERS = {  # key -> label, in the order they are run and shown
    "service": "service (defaults)",
    "service_nobatch": "service, batching off",
    "baseline": "bare FastAPI baseline",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- request bodies ----------------------------------------------------------------------


def classify_bodies(n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` one-image bodies: digit-like 8x8 images, integer ink levels 0..16 as floats."""
    bodies = []
    for _ in range(n):
        image = np.clip(rng.normal(0, 7, size=(8, 8)), 0, 16).round()
        bodies.append({"images": [image.astype(float).tolist()]})
    return bodies


def co2_row(length: int, rng: np.random.Generator) -> list[float]:
    """Weekly CO2-like readings (ppm): trend from ~315, a yearly cycle, noise; ends below ~420."""
    start = rng.uniform(0, 2600 - length)  # weeks since the late 1950s
    t = start + np.arange(length)
    values = 315 + 0.0297 * t + 1.9e-5 * t**2 / 1.5 + 3.0 * np.sin(2 * np.pi * t / 52.18)
    values += rng.normal(0, 0.3, size=length)
    return [round(float(v), 2) for v in values]


def forecast_bodies(n: int, rng: np.random.Generator, lo: int, hi: int) -> list[dict]:
    """``n`` one-row bodies, each of a different length in [lo, hi]."""
    return [{"series": [co2_row(int(rng.integers(lo, hi + 1)), rng)]} for _ in range(n)]


# --- models (for the in-process runs and the answer checks) -------------------------------


class Model:
    """One model from the store, in an ONNX Runtime session set up like the service's."""

    def __init__(self, store: Path, name: str, threads: int) -> None:
        import onnxruntime as ort

        self.manifest, self.path = load_verified(store, name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.inputs = [t.name for t in self.manifest.inputs]
        self.output = self.manifest.outputs[0].name
        self.threads = threads

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]

    def feeds(self, endpoint: str, bodies: list[dict]) -> dict[str, np.ndarray]:
        """The batch the service would build from ``bodies`` (rows right-padded)."""
        if endpoint == "classify":
            images = np.asarray([b["images"][0] for b in bodies], dtype=np.float32).reshape(-1, 1, 8, 8)
            return {self.inputs[0]: images}
        rows = [b["series"][0] for b in bodies]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        history = np.zeros((len(rows), int(lengths.max())), dtype=np.float32)
        for i, row in enumerate(rows):
            history[i, : len(row)] = row
        return dict(zip(self.inputs, (history, lengths), strict=True))


def in_process(model: Model, endpoint: str, bodies: list[dict], batch: int, seconds: float) -> dict:
    """Items/s and per-call latency of ``session.run`` alone, on prepared batches."""
    batches = [
        model.feeds(endpoint, [bodies[(i * batch + j) % len(bodies)] for j in range(batch)]) for i in range(8)
    ]
    for feeds in batches:  # warm-up
        model.run(feeds)
    times = []
    cpu0, started = time.process_time(), time.perf_counter()
    deadline = started + seconds
    i = 0
    while True:
        t0 = time.perf_counter_ns()
        model.run(batches[i % len(batches)])
        times.append(time.perf_counter_ns() - t0)
        i += 1
        if time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    ms = np.array(times) / 1e6
    return {
        "endpoint": endpoint,
        "batch": batch,
        "threads": model.threads,
        "calls": len(times),
        "items_per_s": len(times) * batch / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "cpu_ms_per_item": cpu * 1000 / (len(times) * batch),
    }


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(store: Path, overrides: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its MODELSERVE_* settings, plus the store and ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    env["MODELSERVE_MODEL_STORE"] = str(store)
    env.update(overrides)
    return env


class Server:
    """A server process tree started for one set of cells, and stopped afterwards."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.home = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        env = {**env, "BENTOML_HOME": str(self.home / "bentoml")}  # own Prometheus folder
        self.log_path = self.home / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.root = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout_s: float = 180) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

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
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children, or the root if it has none."""
        children = self.processes()[1:]
        return [p.pid for p in children] or [self.root.pid]

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

    def stop(self) -> None:
        tree = self.processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in 20 s; killing it")
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def start(name: str, command: Callable[[int], list[str]], env: dict[str, str], tries: int = 2) -> Server:
    """A ready server; a start that fails is retried once on another port (then the error is raised)."""
    for attempt in range(1, tries + 1):
        port = free_port()
        server = Server(name, command(port), env, port)
        try:
            took = server.wait_ready()
        except RuntimeError as exc:
            server.stop()
            if attempt == tries:
                raise
            log(f"{name} failed to start, trying again: {str(exc).splitlines()[0]}")
            continue
        log(f"{name} ready on port {port} after {took:.1f} s ({len(server.processes())} processes)")
        return server
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(name: str, command: Callable[[int], list[str]], env: dict[str, str]) -> Iterator[Server]:
    server = start(name, command, env)
    try:
        yield server
    finally:
        server.stop()


def bentoml_command(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "bentoml"
    return [
        str(exe if exe.exists() else shutil.which("bentoml")),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def baseline_command(store: Path, threads: int) -> Callable[[int], list[str]]:
    script = ROOT / "bench" / "baseline_app.py"
    return lambda port: [
        sys.executable,
        str(script),
        "--store",
        str(store),
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]


def post(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def check_answers(server: Server, endpoint: str, bodies: list[dict], reference: np.ndarray) -> float:
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


# --- load --------------------------------------------------------------------------------


def run_wrk(url: str, bodies_file: Path, concurrency: int, seconds: int, threads: int) -> dict:
    """One wrk run; its JSON summary plus its own CPU seconds (from wait4's rusage)."""
    threads = min(threads, concurrency)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        str(bodies_file),
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(seconds + 30, proc.kill)  # every load run is bounded in time
    killer.start()
    try:
        out = proc.stdout.read().decode()
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
    wall = time.perf_counter() - started
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()}\n{out[-2000:]}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["wall_s"] = wall
    return result


def system_busy_s() -> float:
    """CPU seconds all processes of the machine have used (everything but idle and iowait)."""
    t = psutil.cpu_times()
    # guest time is already part of user time on Linux; steal is time the host took away
    return t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq"))


def steal_s() -> float:
    """CPU seconds the hypervisor has given to other guests (0 on bare metal)."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def others_load(server: Server | None, window_s: float = 1.0) -> float:
    """Cores that processes other than ``server``, or the hypervisor, took over the next ``window_s``."""
    busy0, own0, steal0 = system_busy_s(), server.cpu_s() if server else 0.0, steal_s()
    t0 = time.perf_counter()
    time.sleep(window_s)
    own = server.cpu_s() - own0 if server else 0.0
    taken = max(0.0, system_busy_s() - busy0 - own) + steal_s() - steal0
    return taken / (time.perf_counter() - t0)


def wait_quiet(server: Server | None, limit_s: float) -> None:
    """With --quiet-wait: wait (at most ``limit_s``) until other processes leave the cores idle."""
    if limit_s <= 0:
        return
    deadline = time.monotonic() + limit_s
    load = others_load(server)
    if load < NOISE_CORES:
        return
    log(
        f"  other processes or the hypervisor take {load:.2f} cores; "
        f"waiting up to {limit_s:.0f} s for a quiet machine"
    )
    while load >= NOISE_CORES and time.monotonic() < deadline:
        load = others_load(server, 2.0)
    log(f"  {'quiet' if load < NOISE_CORES else 'still busy'} ({load:.2f} cores): going on")


def measure_cell(
    server: Server,
    endpoint: str,
    bodies_file: Path,
    concurrency: int,
    seconds: int,
    warmup_s: int,
    wrk_threads: int,
    quiet_wait_s: float = 0,
) -> dict:
    url = f"{server.url}/{endpoint}"
    wait_quiet(server, quiet_wait_s)
    if warmup_s:
        run_wrk(url, bodies_file, concurrency, warmup_s, wrk_threads)
    split: list[int] = []  # how the kernel spread wrk's connections over the workers, mid-cell
    probe = threading.Timer(seconds / 2, lambda: split.extend(server.connections_per_worker()))
    probe.start()
    busy0, cpu0, steal0 = system_busy_s(), server.cpu_s(), steal_s()
    w = run_wrk(url, bodies_file, concurrency, seconds, wrk_threads)
    cpu = server.cpu_s() - cpu0
    probe.cancel()
    others = max(0.0, system_busy_s() - busy0 - cpu - w["cpu_s"])
    stolen = steal_s() - steal0
    rss = server.rss_bytes()
    duration = w["duration_us"] / 1e6
    n = max(w["requests"], 1)
    errors = sum(w["errors"].values())
    lat = w["latency_us"]
    cell = {
        "server": server.name,
        "endpoint": endpoint,
        "concurrency": concurrency,
        "seconds": duration,
        "requests": w["requests"],
        "errors": w["errors"],
        "error_count": errors,
        "req_per_s": w["requests"] / duration,
        "rows_per_s": w["requests"] / duration,  # one image / one row per request
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000,
        "server_cpu_ms_per_req": cpu * 1000 / n,
        "server_cores_busy": cpu / duration,
        "server_rss_mb": rss / 2**20,
        "wrk_cpu_us_per_req": w["cpu_s"] * 1e6 / n,
        "wrk_cores_busy": w["cpu_s"] / w["wall_s"],
        "others_cores_busy": others / w["wall_s"],
        "stolen_cores": stolen / w["wall_s"],
        "connections_per_worker": split,
    }
    flag = f"  ERRORS {w['errors']}" if errors else ""
    if cell["others_cores_busy"] > NOISE_CORES:
        flag += f"  NOISY: other processes used {cell['others_cores_busy']:.2f} cores"
    if cell["stolen_cores"] > NOISE_CORES:
        flag += f"  NOISY: the hypervisor took {cell['stolen_cores']:.2f} cores"
    log(
        f"  {server.name:16} /{endpoint:8} c={concurrency:<3} {cell['req_per_s']:8.0f} req/s  "
        f"p50 {cell['p50_ms']:6.2f}  p99 {cell['p99_ms']:7.2f}  max {cell['max_ms']:7.1f} ms  "
        f"cpu {cell['server_cpu_ms_per_req']:.3f} ms/req  wrk {cell['wrk_cores_busy']:.2f} cores  "
        f"conns {cell_text(split, '')}{flag}"
    )
    return cell


def measure_server(
    server: Server,
    bodies: dict[str, Path],
    references: dict[str, np.ndarray],
    all_bodies: dict[str, list[dict]],
    args: argparse.Namespace,
) -> list[dict]:
    """Every cell of one server; with ``--rounds N``, each cell is the median of N rounds."""
    cells = []
    for endpoint in ENDPOINTS:
        diff = check_answers(server, endpoint, all_bodies[endpoint], references[endpoint])
        log(f"  {server.name} /{endpoint}: answers OK, max |diff| vs in-process {diff:.2e}")
        run_wrk(f"{server.url}/{endpoint}", bodies[endpoint], 16, args.server_warmup, args.wrk_threads)
        rounds: dict[int, list[dict]] = {c: [] for c in CONCURRENCY}
        for _ in range(args.rounds):  # each round opens fresh connections: a new spread over workers
            for c in CONCURRENCY:
                rounds[c].append(
                    measure_cell(
                        server,
                        endpoint,
                        bodies[endpoint],
                        c,
                        args.duration,
                        args.cell_warmup,
                        args.wrk_threads,
                        args.quiet_wait,
                    )
                )
        for c in CONCURRENCY:
            cell = rounds[c][0] if len(rounds[c]) == 1 else median_cell(rounds[c])
            cell["max_abs_diff_vs_in_process"] = diff
            cells.append(cell)
    return cells


def median_cell(rounds: list[dict]) -> dict:
    """One cell from several rounds: medians, the worst maximum, all errors, every spread."""
    cell = dict(rounds[-1])
    for key, value in rounds[0].items():
        if isinstance(value, float) and key != "max_ms":
            cell[key] = float(np.median([r[key] for r in rounds]))
    cell["max_ms"] = max(r["max_ms"] for r in rounds)
    cell["requests"] = sum(r["requests"] for r in rounds)
    cell["error_count"] = sum(r["error_count"] for r in rounds)
    cell["connections_per_worker"] = [r["connections_per_worker"] for r in rounds]
    cell["rounds"] = [
        {k: r[k] for k in ("req_per_s", "p50_ms", "p99_ms", "max_ms", "connections_per_worker")}
        for r in rounds
    ]
    return cell


def soak(server: Server, bodies_file: Path, args: argparse.Namespace) -> dict:
    """/classify at c=16 for ``--soak-duration`` s: max latency and RSS before vs after."""
    url = f"{server.url}/classify"
    wait_quiet(server, args.quiet_wait)
    run_wrk(url, bodies_file, 16, args.soak_warmup, args.wrk_threads)
    rss_warm = server.rss_bytes()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(5):
            samples.append((round(time.monotonic() - started, 1), server.rss_bytes() / 2**20))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    split: list[int] = []
    probe = threading.Timer(args.soak_duration / 2, lambda: split.extend(server.connections_per_worker()))
    probe.start()
    busy0, cpu0, steal0 = system_busy_s(), server.cpu_s(), steal_s()
    w = run_wrk(url, bodies_file, 16, args.soak_duration, args.wrk_threads)
    cpu = server.cpu_s() - cpu0
    others = max(0.0, system_busy_s() - busy0 - cpu - w["cpu_s"])
    stolen = steal_s() - steal0
    stop.set()
    probe.cancel()
    sampler.join()
    rss_after = server.rss_bytes()
    duration = w["duration_us"] / 1e6
    result = {
        "seconds": duration,
        "concurrency": 16,
        "requests": w["requests"],
        "errors": w["errors"],
        "error_count": sum(w["errors"].values()),
        "req_per_s": w["requests"] / duration,
        "p50_ms": w["latency_us"]["p50"] / 1000,
        "p99_ms": w["latency_us"]["p99"] / 1000,
        "p999_ms": w["latency_us"]["p999"] / 1000,
        "max_ms": w["latency_us"]["max"] / 1000,
        "server_cpu_ms_per_req": cpu * 1000 / max(w["requests"], 1),
        "warmup_s": args.soak_warmup,
        "rss_after_warmup_mb": rss_warm / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_ratio": rss_after / rss_warm,
        "rss_samples_mb": samples,
        "others_cores_busy": others / w["wall_s"],
        "stolen_cores": stolen / w["wall_s"],
        "connections_per_worker": split,
    }
    log(
        f"  soak: connections per worker {cell_text(split, '')}, {result['req_per_s']:.0f} req/s, "
        f"p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.1f} ms, RSS {result['rss_after_warmup_mb']:.1f} -> "
        f"{result['rss_after_mb']:.1f} MB, errors {result['error_count']}, "
        f"other processes {result['others_cores_busy']:.2f} cores"
    )
    return result


# --- the run -------------------------------------------------------------------------------


def resolved_settings(env: dict[str, str]) -> dict[str, Any]:
    """The service's settings as its workers will read them from ``env``."""
    saved = dict(os.environ)
    try:
        from service.settings import Settings

        os.environ.clear()
        os.environ.update(env)
        s = Settings()
        resolved = {
            "workers": s.worker_count,
            "intra_op_threads": s.threads_per_session,
            "batching": s.batching,
        }
        resolved.update({f"batch.{k}": v for k, v in s.batch.model_dump().items()})
        for name in ("http_timeout_s", "access_log", "max_body_bytes"):
            if hasattr(s, name):
                resolved[name] = getattr(s, name)
        return resolved
    except Exception as exc:  # the settings module changed shape: report, do not fail the run
        log(f"could not resolve the service's settings: {exc!r}")
        return {}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("bentoml", "onnxruntime", "uvicorn", "fastapi", "uvloop", "httptools", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    versions["wrk"] = (wrk.stdout + wrk.stderr).split("[")[0].replace("wrk", "").strip() or "?"
    versions["python"] = platform.python_version()
    memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "versions": versions,
    }


def revision() -> str:
    """The commit the servers ran, and whether service/ differed from it."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "service", "bentofile.yaml")
    return commit + (" with uncommitted changes to service/" if dirty else "")


def store_label(store: Path) -> str:
    """How the store is named in the results: relative to the repository, never an absolute path."""
    try:
        return str(store.resolve().relative_to(ROOT)) + "/"
    except ValueError:
        return "a store outside the repository (--store)"


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict, dict, dict]:
    """Bodies (in memory and as wrk files), the two models and their reference answers."""
    rng = np.random.default_rng(args.seed)
    threads = args.in_process_threads
    models = {
        "classify": Model(args.store, "classifier", threads),
        "forecast": Model(args.store, "forecaster", threads),
    }
    serving = models["forecast"].manifest.serving
    lo = max(300, int(serving.get("min_length", 1)))
    hi = min(500, int(serving.get("max_length", 500)))
    all_bodies = {
        "classify": classify_bodies(N_BODIES, rng),
        "forecast": forecast_bodies(N_BODIES, rng, lo, hi),
    }
    files = {}
    for endpoint, bodies in all_bodies.items():
        files[endpoint] = workdir / f"{endpoint}.bodies"
        files[endpoint].write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    references = {e: models[e].run(models[e].feeds(e, all_bodies[e][:1]))[0] for e in ENDPOINTS}
    return models, all_bodies, files, references


def main_run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    started = time.time()
    try:
        models, all_bodies, files, references = prepare(args, workdir)
        svc_env = service_env(args.store, args.env)
        nobatch_env = {**svc_env, "MODELSERVE_BATCHING": "false"}
        result: dict[str, Any] = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "store": store_label(args.store),
            "revision": revision(),
            "models": {
                e: {"name": m.manifest.name, "version": m.manifest.version, "sha256": m.manifest.sha256}
                for e, m in models.items()
            },
            "options": {
                "cell_seconds": args.duration,
                "cell_warmup_s": args.cell_warmup,
                "server_warmup_s": args.server_warmup,
                "wrk_threads": args.wrk_threads,
                "concurrency": list(CONCURRENCY),
                "bodies_per_endpoint": N_BODIES,
                "forecast_lengths": [
                    min(len(b["series"][0]) for b in all_bodies["forecast"]),
                    max(len(b["series"][0]) for b in all_bodies["forecast"]),
                ],
                "baseline_threads": args.baseline_threads,
                "env": args.env,
                "quiet_wait_s": args.quiet_wait,
                "rounds": args.rounds,
            },
            "settings": {
                "service": resolved_settings(svc_env),
                "service_nobatch": resolved_settings(nobatch_env),
            },
        }
        log("in-process ONNX Runtime")
        result["in_process"] = []
        for endpoint in ENDPOINTS:
            for batch in () if "in_process" in args.skip else (1, 64):
                wait_quiet(None, args.quiet_wait)
                r = in_process(models[endpoint], endpoint, all_bodies[endpoint], batch, args.in_process_s)
                log(
                    f"  {endpoint} batch {batch:2}: {r['items_per_s']:9.0f} items/s, "
                    f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms per call"
                )
                result["in_process"].append(r)
        del models  # free the sessions' threads and memory before the servers run

        plan = [
            ("service", bentoml_command, svc_env),
            ("service_nobatch", bentoml_command, nobatch_env),
            ("baseline", baseline_command(args.store, args.baseline_threads), svc_env),
        ]
        result["cells"] = []
        for name, command, env in plan:
            if name in args.skip:
                continue
            log(SERVERS[name])
            with running(name, command, env) as server:
                result["cells"] += measure_server(server, files, references, all_bodies, args)
        if args.soak_duration and "soak" not in args.skip:
            log(f"soak: service /classify c=16 for {args.soak_duration} s on a fresh server")
            with running("service", bentoml_command, svc_env) as server:
                result["soak"] = soak(server, files["classify"], args)
        result["targets"] = targets(result)
        result["total_seconds"] = time.time() - started
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


SWEEP = [  # label, environment; one setting changed from the defaults at a time
    ("defaults", {}),
    ("WORKERS=1", {"MODELSERVE_WORKERS": "1"}),
    ("WORKERS=1, INTRA_OP_THREADS=1", {"MODELSERVE_WORKERS": "1", "MODELSERVE_INTRA_OP_THREADS": "1"}),
    ("INTRA_OP_THREADS=2", {"MODELSERVE_INTRA_OP_THREADS": "2"}),
    ("RUN_IN_THREAD=true", {"MODELSERVE_BATCH__RUN_IN_THREAD": "true"}),
    ("RUN_IN_THREAD=false", {"MODELSERVE_BATCH__RUN_IN_THREAD": "false"}),
    ("MAX_CONCURRENT_BATCHES=2", {"MODELSERVE_BATCH__MAX_CONCURRENT_BATCHES": "2"}),
    ("MAX_WAIT_MS=0", {"MODELSERVE_BATCH__MAX_WAIT_MS": "0"}),
    ("MAX_WAIT_MS=1", {"MODELSERVE_BATCH__MAX_WAIT_MS": "1"}),
    ("BATCHING=false", {"MODELSERVE_BATCHING": "false"}),
    ("HTTP_TIMEOUT_S=5", {"MODELSERVE_HTTP_TIMEOUT_S": "5"}),
    ("MAX_CONNECTION_AGE_S=0", {"MODELSERVE_MAX_CONNECTION_AGE_S": "0"}),
]


def sweep_run(args: argparse.Namespace) -> dict:
    """The service alone under each setting of SWEEP (or those named with --variants)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    variants = [v for v in SWEEP if not args.variants or v[0] in args.variants]
    try:
        _, all_bodies, files, references = prepare(args, workdir)
        result: dict[str, Any] = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "store": store_label(args.store),
            "options": {
                "cell_seconds": args.duration,
                "wrk_threads": args.wrk_threads,
                "env": args.env,
                "rounds": args.rounds,
            },
            "revision": revision(),
            "variants": [],
        }
        for label, overrides in variants:
            env = service_env(args.store, {**args.env, **overrides})
            log(f"sweep: {label}")
            with running("service", bentoml_command, env) as server:
                cells = measure_server(server, files, references, all_bodies, args)
            result["variants"].append(
                {"label": label, "env": overrides, "settings": resolved_settings(env), "cells": cells}
            )
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- targets and reports ---------------------------------------------------------------------


def cell_of(result: dict, server: str, endpoint: str, c: int) -> dict:
    """The cell, or KeyError when the run skipped it."""
    for x in result["cells"]:
        if (x["server"], x["endpoint"], x["concurrency"]) == (server, endpoint, c):
            return x
    raise KeyError((server, endpoint, c))


def targets(result: dict) -> list[dict]:
    """Each target with PASS/MISS, from cells of this run; a target whose cells were skipped is left out."""
    out = []

    def add(name: str, ok: bool, measured: str, cells: list[dict]) -> None:
        errors = sum(c.get("error_count", 0) for c in cells)
        if errors:
            measured += f" ({errors} failed requests)"
        noisy = max(c.get("others_cores_busy", 0.0) for c in cells)
        if noisy > NOISE_CORES:
            measured += f" (other processes used up to {noisy:.2f} cores meanwhile)"
        stolen = max(c.get("stolen_cores", 0.0) for c in cells)
        if stolen > NOISE_CORES:
            measured += f" (the hypervisor took up to {stolen:.2f} cores meanwhile)"
        out.append({"target": name, "pass": bool(ok and not errors), "measured": measured})

    def throughput(endpoint: str, unit: str, key: str) -> None:
        svc, base = cell_of(result, "service", endpoint, 64), cell_of(result, "baseline", endpoint, 64)
        ratio = svc[key] / base[key]
        add(
            f"/{endpoint} c=64: service {unit} >= 1.5x baseline, p99 <= baseline p99",
            ratio >= 1.5 and svc["p99_ms"] <= base["p99_ms"],
            f"{ratio:.2f}x ({svc[key]:,.0f} vs {base[key]:,.0f} {unit}); "
            f"p99 {svc['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms",
            [svc, base],
        )

    def latency_c1() -> None:
        s1, b1 = cell_of(result, "service", "classify", 1), cell_of(result, "baseline", "classify", 1)
        gap = s1["p50_ms"] - b1["p50_ms"]
        add(
            "/classify c=1: service p50 within 1 ms of baseline p50",
            gap <= 1.0,
            f"{s1['p50_ms']:.3f} vs {b1['p50_ms']:.3f} ms ({gap:+.3f} ms)",
            [s1, b1],
        )

    def batching() -> None:
        on = cell_of(result, "service", "forecast", 64)
        off = cell_of(result, "service_nobatch", "forecast", 64)
        ratio = on["rows_per_s"] / off["rows_per_s"]
        add(
            "/forecast c=64: batching on rows/s >= batching off, p99 no higher",
            ratio >= 1 and on["p99_ms"] <= off["p99_ms"],
            f"{ratio:.2f}x ({on['rows_per_s']:,.0f} vs {off['rows_per_s']:,.0f} rows/s); "
            f"p99 {on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms",
            [on, off],
        )

    def soak() -> None:
        s = result["soak"]
        add(
            f"/classify c=16 for {s['seconds']:.0f} s: max latency < 50 ms",
            s["max_ms"] < 50,
            f"max {s['max_ms']:.1f} ms (p99 {s['p99_ms']:.2f} ms)",
            [s],
        )
        growth = (s["rss_ratio"] - 1) * 100
        add(
            f"/classify c=16 for {s['seconds']:.0f} s: RSS after within 10% of RSS after warm-up",
            abs(growth) <= 10,
            f"{s['rss_after_warmup_mb']:.1f} -> {s['rss_after_mb']:.1f} MB ({growth:+.1f}%)",
            [s],
        )

    checks = [
        lambda: throughput("classify", "req/s", "req_per_s"),
        latency_c1,
        lambda: throughput("forecast", "rows/s", "rows_per_s"),
        batching,
        soak,
    ]
    for check in checks:
        with contextlib.suppress(KeyError):
            check()
    return out


COLUMNS = [  # header, key, format
    ("req/s", "req_per_s", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("server CPU ms/req", "server_cpu_ms_per_req", "{:.3f}"),
    ("server cores busy", "server_cores_busy", "{:.2f}"),
    ("wrk CPU µs/req", "wrk_cpu_us_per_req", "{:.1f}"),
    ("wrk cores busy", "wrk_cores_busy", "{:.2f}"),
    ("other processes' cores", "others_cores_busy", "{:.2f}"),
    ("stolen cores", "stolen_cores", "{:.2f}"),
    ("server RSS MB", "server_rss_mb", "{:.0f}"),
    ("connections per worker", "connections_per_worker", "{}"),
    ("failed", "error_count", "{:d}"),
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cell_text(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, list) and value and isinstance(value[0], list):  # one spread per round
        return ", ".join("/".join(str(v) for v in x) for x in value)
    if isinstance(value, list):
        return "/".join(str(v) for v in value) or "–"
    return fmt.format(value)


def cells_table(cells: list[dict], endpoint: str, label: Callable[[dict], str]) -> str:
    unit = "rows/s" if endpoint == "forecast" else "req/s"
    header = ["server", "c", *(h.replace("req/s", unit) for h, _, _ in COLUMNS)]
    rows = [
        [label(c), str(c["concurrency"]), *(cell_text(c.get(k), f) for _, k, f in COLUMNS)]
        for c in cells
        if c["endpoint"] == endpoint
    ]
    return markdown_table(header, rows)


def in_process_table(result: dict) -> str:
    rows = [
        [
            f"/{r['endpoint']}",
            str(r["batch"]),
            str(r["threads"]),
            f"{r['items_per_s']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['cpu_ms_per_item'] * 1000:.1f}",
        ]
        for r in result["in_process"]
    ]
    return markdown_table(
        [
            "model of",
            "batch",
            "intra-op threads",
            "items/s",
            "p50 ms per call",
            "p99 ms per call",
            "CPU µs per item",
        ],
        rows,
    )


def targets_table(result: dict) -> str:
    rows = [[t["target"], "PASS" if t["pass"] else "MISS", t["measured"]] for t in result["targets"]]
    return markdown_table(["target", "result", "measured"], rows)


def print_report(result: dict) -> None:
    print()
    for endpoint in ENDPOINTS:
        print(f"/{endpoint}")
        print(cells_table(result["cells"], endpoint, lambda c: SERVERS[c["server"]]))
        print()
    print("in-process ONNX Runtime (the ceiling)")
    print(in_process_table(result))
    print()
    print("targets")
    for t in result["targets"]:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['measured']}")
    print()


def print_sweep(sweep: dict) -> None:
    for endpoint in ENDPOINTS:
        print(f"/{endpoint}, service under each setting")
        cells = [{**c, "label": v["label"]} for v in sweep["variants"] for c in v["cells"]]
        print(cells_table(cells, endpoint, lambda c: c["label"]))
        print()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for row, (endpoint, unit) in enumerate((("classify", "req/s"), ("forecast", "rows/s"))):
        for server, label in SERVERS.items():
            cells = [c for c in result["cells"] if c["server"] == server and c["endpoint"] == endpoint]
            xs = [c["concurrency"] for c in cells]
            axes[row][0].plot(xs, [c["req_per_s"] for c in cells], marker="o", label=label)
            axes[row][1].plot(xs, [c["p99_ms"] for c in cells], marker="o", label=label)
        axes[row][0].set_title(f"/{endpoint}: throughput ({unit}, higher is better)")
        axes[row][0].set_ylabel(unit)
        axes[row][0].set_ylim(bottom=0)
        axes[row][1].set_title(f"/{endpoint}: p99 latency (ms, lower is better)")
        axes[row][1].set_ylabel("ms")
        axes[row][1].set_yscale("log")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
            ax.set_xlabel("concurrent connections")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    m = result["machine"]
    seconds = result["options"]["cell_seconds"]
    fig.suptitle(f"{m['nproc']} cores, {m['cpu_model']}; wrk, {seconds} s per point")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def env_text(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


def write_docs(result: dict, sweep: dict | None, alt: dict | None, path: Path) -> None:
    m, o = result["machine"], result["options"]
    v = m["versions"]
    settings = result["settings"]["service"]
    env = o["env"]
    lines = [
        "<!-- Generated by bench/run.py: do not edit by hand, rerun the benchmark instead. -->",
        "# Benchmarks",
        "",
        "This file is generated in full by `bench/run.py` (see bench/README.md for how to run it);"
        " every figure below comes from the run it describes. Single runs on a shared machine:"
        " read the ratios, not the third digit.",
        "",
        f"Run of {result['started_at']}, {result['total_seconds'] / 60:.1f} minutes in all.",
        "",
        "## Machine and software",
        "",
        f"- {m['nproc']} CPU cores (nproc), {m['cpu_model']}, {m['memory_gb']} GiB memory,"
        f" Linux {m['kernel']}",
        f"- Python {v['python']}, bentoml {v['bentoml']}, onnxruntime {v['onnxruntime']}, "
        f"uvicorn {v['uvicorn']}, fastapi {v['fastapi']}, uvloop {v['uvloop']}, httptools {v['httptools']}, "
        f"numpy {v['numpy']}, wrk {v['wrk']}",
        f"- Service at commit {result.get('revision', 'unknown')}; models from {result['store']}: "
        + ", ".join(
            f"{x['name']}/{x['version']} (sha256 {x['sha256'][:12]}…)" for x in result["models"].values()
        ),
        "",
        "## What was measured",
        "",
        f"- Load: `wrk -t{o['wrk_threads']} --latency` (threads capped at the concurrency), closed loop, "
        f"keep-alive connections, {o['bodies_per_endpoint']} different bodies per endpoint rotated "
        "(bench/wrk/post.lua). One image per `/classify` request; one row per `/forecast` request, "
        f"{o['forecast_lengths'][0]}–{o['forecast_lengths'][1]} CO2-like values (~315–420 ppm), the length"
        " varying per request, so rows/s = req/s.",
        f"- Each cell: {o['cell_seconds']} s measured after {o['cell_warmup_s']} s unmeasured at the same "
        f"concurrency; each server also got {o['server_warmup_s']} s at c=16 per endpoint first, and every"
        " body was sent once and its answer checked against in-process ONNX Runtime.",
        "- Server CPU: user + system CPU time summed over the server's whole process tree (psutil), before"
        " and after each cell, divided by the requests. *Cores busy* is the same CPU time over the cell's"
        " wall time. Server RSS: summed over the tree after the cell (shared pages count once per process).",
        "- wrk's own CPU (its rusage) is shown beside the server's: it runs on the same cores. *Other"
        " processes' cores*: the machine's busy CPU time (all processes) during the cell minus the server's"
        f" and wrk's, over the wall time; above {NOISE_CORES} the cell was disturbed by something else."
        " *Stolen cores*: CPU time the hypervisor gave to other guests during the cell (a virtual"
        " machine's steal time), which slows every process here alike.",
        "- Connections per worker: how the kernel had spread wrk's connections over the server's"
        " processes, counted halfway through the cell (the workers share one listening socket).",
        "- Failed: connection errors, timeouts and responses with status >= 400 (wrk's count); any"
        " failure in a cell makes the targets that use it MISS.",
        "",
        "## Servers",
        "",
        "- **service (defaults)**: `bentoml serve` of this repository with no `MODELSERVE_*` settings"
        + (" beyond `" + env_text(env) + "`" if env else "")
        + (
            ". As the service resolved them: "
            + ", ".join(f"`{k}={'auto' if v is None else v}`" for k, v in settings.items())
            + "."
            if settings
            else "."
        ),
        "- **service, batching off**: the same with `MODELSERVE_BATCHING=false` (one ONNX Runtime call per"
        " request).",
        f"- **bare FastAPI baseline** (bench/baseline_app.py): FastAPI on uvicorn with uvloop and httptools,"
        f" one worker, one ONNX Runtime session per model (CPU provider, {o['baseline_threads']} intra-op"
        " thread, same model files), `await request.json()`, no batching, no validation, no metrics;"
        " `/forecast` runs one call per row, so it pads nothing.",
        "- **in-process ONNX Runtime**: `session.run` alone on prepared batches, in the benchmark's own"
        " process, session options as the service's: the ceiling no server can pass.",
        "",
        "## Targets",
        "",
        targets_table(result),
        "",
        "## /classify (one 8x8 image per request)",
        "",
        cells_table(result["cells"], "classify", lambda c: SERVERS[c["server"]]),
        "",
        "## /forecast (one row per request)",
        "",
        cells_table(result["cells"], "forecast", lambda c: SERVERS[c["server"]]),
        "",
        "## In-process ONNX Runtime (the ceiling)",
        "",
        in_process_table(result),
        "",
        "![throughput and p99 latency per server and concurrency](images/bench-throughput.png)",
        "",
    ]
    s = result.get("soak")
    if s:
        lines += [
            f"## Stall and leak run: service /classify at c=16 for {s['seconds']:.0f} s",
            "",
            f"After {s['warmup_s']} s of warm-up at c=16 on a fresh server: {s['req_per_s']:,.0f} req/s,"
            f" p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, p99.9 {s['p999_ms']:.2f} ms,"
            f" max {s['max_ms']:.1f} ms, {s['error_count']} failed, connections per worker"
            f" {cell_text(s.get('connections_per_worker'), '')}; server RSS"
            f" {s['rss_after_warmup_mb']:.1f} MB after warm-up, {s['rss_after_mb']:.1f} MB after the run"
            f" ({(s['rss_ratio'] - 1) * 100:+.1f}%). RSS every 5 s (MB): "
            + ", ".join(f"{mb:.1f}" for _, mb in s["rss_samples_mb"])
            + ".",
            "",
        ]
    if alt:
        alt_env = env_text(alt["options"]["env"])
        label = lambda c: SERVERS[c["server"]].replace("(defaults)", "(these settings)")  # noqa: E731
        lines += [
            f"## The same run with `{alt_env}`",
            "",
            f"A separate full run ({alt['started_at']}, service at commit {alt.get('revision', 'unknown')},"
            f" {alt['options']['cell_seconds']} s per cell), with these settings given to both service"
            " servers (`python bench/run.py --env ...`, bench/results/with-env.json); the baseline and"
            " in-process figures are from that run too.",
            "",
            targets_table(alt),
            "",
            "### /classify",
            "",
            cells_table(alt["cells"], "classify", label),
            "",
            "### /forecast",
            "",
            cells_table(alt["cells"], "forecast", label),
            "",
        ]
        s_alt = alt.get("soak")
        if s_alt:
            lines += [
                f"Stall and leak run: {s_alt['req_per_s']:,.0f} req/s, p99 {s_alt['p99_ms']:.2f} ms,"
                f" max {s_alt['max_ms']:.1f} ms, RSS {s_alt['rss_after_warmup_mb']:.1f} ->"
                f" {s_alt['rss_after_mb']:.1f} MB ({(s_alt['rss_ratio'] - 1) * 100:+.1f}%), connections per"
                f" worker {cell_text(s_alt.get('connections_per_worker'), '')}.",
                "",
            ]
    if sweep:
        so = sweep["options"]
        lines += [
            "## The service's settings on this machine (`--sweep`)",
            "",
            f"A separate run ({sweep['started_at']}, service at commit {sweep.get('revision', 'unknown')},"
            f" models from {sweep['store']}, same harness, a fresh server per setting); each row changes"
            f" one `MODELSERVE_*` setting from the defaults. Each cell was measured {so.get('rounds', 1)}"
            f" time(s) for {so['cell_seconds']} s, each time on fresh connections; the table shows the"
            " medians (the maximum of the maxima) and every round's spread of connections over the"
            " workers, which moves the results more than most settings do.",
            "",
        ]
        cells = [{**c, "label": x["label"]} for x in sweep["variants"] for c in x["cells"]]
        for endpoint in ENDPOINTS:
            lines += [f"### /{endpoint}", "", cells_table(cells, endpoint, lambda c: c["label"]), ""]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "python bench/run.py            # the full run: about 7 minutes, rewrites this file",
        "python bench/run.py --sweep-only --rounds 3 --duration 4   # the settings table: ~20 minutes",
        "python bench/run.py --env MODELSERVE_X=V ...   # the alternative-settings section",
        "python bench/run.py --report-only   # rewrite this file from bench/results/*.json",
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("MODELSERVE_"):
            raise SystemExit(f"--env takes MODELSERVE_NAME=VALUE, got {item!r}")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=ROOT / "model_store",
        help="model store to serve (default: model_store/)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 2 s cells, 5 s soak")
    parser.add_argument("--duration", type=int, help="seconds per cell (default 10; 2 with --quick)")
    parser.add_argument(
        "--soak-duration",
        type=int,
        help="seconds of the stall/leak run (default 60; 5 with --quick; 0 skips it)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--baseline-threads", type=int, default=1, help="intra-op threads of the baseline")
    parser.add_argument(
        "--in-process-threads",
        type=int,
        default=1,
        help="intra-op threads of the in-process sessions (default 1, as a service worker's)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="MODELSERVE_X=V",
        help="a service setting for every service server (repeatable)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="first run the service under each setting of SWEEP (bench/results/sweep.json)",
    )
    parser.add_argument("--sweep-only", action="store_true", help="the sweep alone; docs are not rewritten")
    parser.add_argument("--variants", nargs="*", help="sweep only these labels")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs and plot from bench/results/latest.json without running",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md and the plot alone")
    parser.add_argument(
        "--out",
        type=Path,
        help="raw results (JSON; default bench/results/latest.json, or"
        " bench/results/with-env.json with --env)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["in_process", *SERVERS, "soak"],
        help="parts of the run to leave out (targets that need them are dropped)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each cell, wait up to this long for other processes to go idle",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each cell N times (fresh connections each time) and keep the medians",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the request bodies")
    args = parser.parse_args()
    args.env = parse_env(args.env)
    args.duration = args.duration or (2 if args.quick else 10)
    if args.soak_duration is None:
        args.soak_duration = 5 if args.quick else 60
    args.cell_warmup = 1
    args.server_warmup = 1 if args.quick else 2
    # Long enough for the heap to level off: BentoML keeps each request's timeout timer (and its
    # context) for the whole `traffic.timeout`, so memory grows for that long before it plateaus.
    args.soak_warmup = 2 if args.quick else 30
    args.in_process_s = 1.0 if args.quick else 3.0
    args.store = args.store.resolve()
    sweep_path, latest_path = RESULTS / "sweep.json", RESULTS / "latest.json"
    env_path = RESULTS / "with-env.json"
    args.out = args.out or (env_path if args.env else latest_path)

    def regenerate_docs() -> None:
        """docs/benchmarks.md and the plot from the saved defaults run, sweep and --env run."""
        if not latest_path.exists():
            log("no bench/results/latest.json (a run with default settings): docs not written")
            return
        paths = (latest_path, sweep_path, env_path)
        saved = [json.loads(p.read_text()) if p.exists() else None for p in paths]
        write_docs(saved[0], saved[1], saved[2], DOCS)
        plot(saved[0], PLOT)
        log(f"wrote {DOCS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")

    if args.report_only:
        print_report(json.loads(args.out.read_text()))
        regenerate_docs()
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)")
    for name in ("classifier", "forecaster"):
        if not (args.store / name).is_dir():
            raise SystemExit(f"the store has no {name}: train the models first, or pass --store")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.sweep or args.sweep_only:
        sweep = sweep_run(args)
        sweep_path.write_text(json.dumps(sweep, indent=1))
        print_sweep(sweep)
        if args.sweep_only:
            return
    result = main_run(args)
    args.out.write_text(json.dumps(result, indent=1))
    print_report(result)
    log(f"raw results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if not args.no_docs:
        regenerate_docs()


if __name__ == "__main__":
    main()
