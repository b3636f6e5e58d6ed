"""Measuring a server: wrk runs, and the cells built from them.

A cell is one server, one endpoint, one concurrency: throughput and latency from wrk, the
server's CPU and memory over its whole process tree, wrk's own CPU, how busy everything else
kept the machine (other processes, the hypervisor), how the connections were spread over the
workers and, with the GC probe, the workers' garbage-collection pauses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench import ROOT, log
from bench.servers import MeasuredServer, check_answers
from bench.workload import CONCURRENCY, ENDPOINTS, Workload

LUA = ROOT / "bench" / "wrk" / "post.lua"
NOISE_CORES = 0.15  # other processes busier than this during a cell: the cell is flagged
GC_FLUSH_WAIT_S = 0.7  # the GC probe appends its pauses twice a second
LONG_GC_PAUSE_MS = 5.0


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
    result, cpu_s = run_bounded_wrk(command, seconds)
    result["cpu_s"] = cpu_s
    result["wall_s"] = time.perf_counter() - started
    return result


def run_bounded_wrk(command: list[str], seconds: int) -> tuple[dict, float]:
    """Run a wrk ``command`` whose Lua script prints ``BENCH_JSON {...}``: that summary, and wrk's
    own CPU seconds (from wait4's rusage). Killed 30 s past its duration at the latest."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(seconds + 30, proc.kill)  # every load run is bounded in time
    killer.start()
    try:
        out = proc.stdout.read().decode()
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({returncode}): {err.strip()}\n{out[-2000:]}")
    return json.loads(line.removeprefix("BENCH_JSON ")), usage.ru_utime + usage.ru_stime


def system_busy_s() -> float:
    """CPU seconds all processes of the machine have used (everything but idle and iowait)."""
    t = psutil.cpu_times()
    # guest time is already part of user time on Linux; steal is time the host took away
    return t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq"))


def steal_s() -> float:
    """CPU seconds the hypervisor has given to other guests (0 on bare metal)."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def others_load(server: MeasuredServer | None, window_s: float = 1.0) -> float:
    """Cores that processes other than ``server``, or the hypervisor, took over the next ``window_s``."""
    busy0, own0, steal0 = system_busy_s(), server.cpu_s() if server else 0.0, steal_s()
    t0 = time.perf_counter()
    time.sleep(window_s)
    own = server.cpu_s() - own0 if server else 0.0
    taken = max(0.0, system_busy_s() - busy0 - own) + steal_s() - steal0
    return taken / (time.perf_counter() - t0)


def wait_quiet(server: MeasuredServer | None, limit_s: float) -> None:
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


def spread_text(split: list) -> str:
    """Connections per worker as ``a/b``, one spread per round separated by commas."""
    if split and isinstance(split[0], list):
        return ", ".join("/".join(str(v) for v in x) for x in split)
    return "/".join(str(v) for v in split) or "–"


def gc_summary(server: MeasuredServer, since: float, until: float, seconds: float) -> dict[str, Any] | None:
    """The workers' collections in [since, until], or None without the GC probe."""
    if server.gc_stats_dir is None:
        return None
    time.sleep(GC_FLUSH_WAIT_S)  # let the workers write out the cell's last pauses
    pauses = server.gc_pauses(since, until)
    by_generation = {g: [ms for gen, ms in pauses if gen == g] for g in (0, 1, 2)}
    return {
        "collections": {str(g): len(v) for g, v in by_generation.items()},
        "pause_ms": {str(g): round(sum(v), 2) for g, v in by_generation.items()},
        "pause_ms_per_s": sum(ms for _, ms in pauses) / seconds,
        "max_pause_ms": max((ms for _, ms in pauses), default=0.0),
        f"pauses_over_{LONG_GC_PAUSE_MS:g}_ms": sum(1 for _, ms in pauses if ms > LONG_GC_PAUSE_MS),
    }


def gc_text(gc: dict[str, Any] | None) -> str:
    if not gc:
        return ""
    counts = "/".join(str(n) for n in gc["collections"].values())
    return (
        f"  gc {counts} (gen 0/1/2), {gc['pause_ms_per_s']:.1f} ms/s paused, "
        f"max pause {gc['max_pause_ms']:.1f} ms"
    )


def measure_cell(
    server: MeasuredServer,
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
    wall0 = time.time()
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
    gc = gc_summary(server, wall0, time.time(), duration)
    if gc is not None:
        cell["gc"] = gc
    flag = f"  ERRORS {w['errors']}" if errors else ""
    if cell["others_cores_busy"] > NOISE_CORES:
        flag += f"  NOISY: other processes used {cell['others_cores_busy']:.2f} cores"
    if cell["stolen_cores"] > NOISE_CORES:
        flag += f"  NOISY: the hypervisor took {cell['stolen_cores']:.2f} cores"
    log(
        f"  {server.name:16} /{endpoint:8} c={concurrency:<3} {cell['req_per_s']:8.0f} req/s  "
        f"p50 {cell['p50_ms']:6.2f}  p99 {cell['p99_ms']:7.2f}  max {cell['max_ms']:7.1f} ms  "
        f"cpu {cell['server_cpu_ms_per_req']:.3f} ms/req  wrk {cell['wrk_cores_busy']:.2f} cores  "
        f"conns {spread_text(split)}{flag}{gc_text(gc)}"
    )
    return cell


def measure_server(
    server: MeasuredServer,
    workload: Workload,
    args: argparse.Namespace,
    cells: dict[str, tuple[int, ...]] | None = None,
) -> list[dict]:
    """Every cell of one server (or those of ``cells``: endpoint -> concurrencies); with
    ``--rounds N``, each cell is the median of N rounds."""
    plan = cells or {endpoint: CONCURRENCY for endpoint in ENDPOINTS}
    measured = []
    for endpoint, concurrencies in plan.items():
        bodies_file = workload.files[endpoint]
        diff = check_answers(server, endpoint, workload.bodies[endpoint], workload.references[endpoint])
        log(f"  {server.name} /{endpoint}: answers OK, max |diff| vs in-process {diff:.2e}")
        run_wrk(f"{server.url}/{endpoint}", bodies_file, 16, args.server_warmup, args.wrk_threads)
        rounds: dict[int, list[dict]] = {c: [] for c in concurrencies}
        for _ in range(args.rounds):  # each round opens fresh connections: a new spread over workers
            for c in concurrencies:
                rounds[c].append(
                    measure_cell(
                        server,
                        endpoint,
                        bodies_file,
                        c,
                        args.duration,
                        args.cell_warmup,
                        args.wrk_threads,
                        args.quiet_wait,
                    )
                )
        for c in concurrencies:
            cell = rounds[c][0] if len(rounds[c]) == 1 else median_cell(rounds[c])
            cell["max_abs_diff_vs_in_process"] = diff
            measured.append(cell)
    return measured


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
    kept = ("req_per_s", "p50_ms", "p99_ms", "max_ms", "connections_per_worker", "gc")
    cell["rounds"] = [{k: r[k] for k in kept if k in r} for r in rounds]
    return cell


def soak(server: MeasuredServer, bodies_file: Path, args: argparse.Namespace) -> dict:
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
    wall0 = time.time()
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
    gc = gc_summary(server, wall0, time.time(), duration)
    if gc is not None:
        result["gc"] = gc
    log(
        f"  soak: connections per worker {spread_text(split)}, {result['req_per_s']:.0f} req/s, "
        f"p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.1f} ms, RSS {result['rss_after_warmup_mb']:.1f} -> "
        f"{result['rss_after_mb']:.1f} MB, errors {result['error_count']}, "
        f"other processes {result['others_cores_busy']:.2f} cores{gc_text(gc)}"
    )
    return result
