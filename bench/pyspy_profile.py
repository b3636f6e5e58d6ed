#!/usr/bin/env python3
"""Where a server's CPU goes under load: py-spy on every worker while wrk drives one cell.

Starts the server as the benchmark does (``bench.servers``), warms it up, then samples each
serving process with ``py-spy record --format raw`` for the length of one wrk run, and prints
the samples by area (the file of the innermost frame), the busiest functions counted
inclusively, and the split between threads. Needs py-spy (``pip install py-spy``) and ptrace
rights.

    python -m bench.pyspy_profile --endpoint classify --concurrency 64
    python -m bench.pyspy_profile --server baseline_2w --endpoint forecast --native
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import ROOT
from bench.measure import run_wrk
from bench.servers import parse_env, running, start_baseline, start_service
from bench.workload import ENDPOINTS, prepare

AREAS = [  # (area, substrings of the innermost frame's file); first match wins
    ("ONNX Runtime session.run", ("onnxruntime/",)),
    ("pydantic validation", ("pydantic/", "pydantic_core", "model_validate")),
    ("json encode/decode", ("json/",)),
    ("numpy", ("numpy/",)),
    ("HTTP protocol (uvicorn, httptools, h11)", ("uvicorn/", "httptools", "h11/")),
    ("starlette / fastapi", ("starlette/", "fastapi/")),
    ("bentoml", ("bentoml/", "_bentoml_impl/", "_bentoml_sdk/")),
    ("opentelemetry", ("opentelemetry/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("asyncio / uvloop event loop", ("asyncio/", "uvloop/", "selectors.py")),
    ("threads, futures", ("concurrent/", "threading.py", "queue.py")),
    ("service code", ("service/",)),
    ("baseline app", ("baseline_app.py",)),
    ("contextvars, logging, typing", ("contextvars", "logging/", "typing.py")),
]


def area_of(frame: str) -> str:
    for area, needles in AREAS:
        if any(n in frame for n in needles):
            return area
    if "(" not in frame or frame.endswith("()"):
        return "native (no Python frame)"
    return "other: " + frame.split("(")[-1].rstrip(")").split("/")[0]


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


# Innermost frames of threads that wait for work but that py-spy still samples as running: a
# thread pool's idle workers, and the event loop in its C poll (uvloop's run_forever has no
# Python frame of its own; `--native` shows such samples sitting in epoll_wait). uvloop's own
# C-level socket work is counted as waiting too; `--native` shows it's small.
WAITING = (
    "Condition.wait (threading.py)",
    "Queue.get (queue.py)",
    "_worker (concurrent/futures/thread.py)",
    "Event.wait (threading.py)",
    "select (selectors.py)",
    "Runner.run (asyncio/runners.py)",
    "run_forever (asyncio/base_events.py)",
    "asyncio_run (uvicorn/_compat.py)",
    # uvicorn's multi-worker health check: each worker's thread waits for the supervisor's ping
    "Connection._recv (multiprocessing/connection.py)",
)


def report(stacks: list[tuple[list[str], int]], cpu_ms_per_req: float, top: int) -> None:
    """Print the samples of threads that were running (not blocked waiting for work)."""
    waiting = sum(n for frames, n in stacks if frames[-1] in WAITING)
    stacks = [(frames, n) for frames, n in stacks if frames[-1] not in WAITING]
    total = sum(n for _, n in stacks)
    print(f"left out {waiting} samples of threads waiting for work (idle pool threads, event loop poll)")
    if not total:
        print("no samples")
        return
    print(
        f"{total} samples; server CPU {cpu_ms_per_req * 1000:.0f} µs per request"
        " (percentages below are of the server's sampled CPU)"
    )

    def show(title: str, counter: collections.Counter, limit: int) -> None:
        print(f"\n{title}")
        for key, n in counter.most_common(limit):
            share = n / total
            print(f"  {share * 100:5.1f}%  {share * cpu_ms_per_req * 1000:6.0f} µs/req  {key}")

    threads: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for frames, n in stacks:
        threads[frames[0].split(":")[-1].strip() if frames[0].startswith("thread") else "?"] += n
        body = frames[1:] if frames[0].startswith("thread") else frames
        areas[area_of(body[-1]) if body else "?"] += n
        for frame in set(body):
            inclusive[frame] += n
    show("by thread", threads, 10)
    show("by area (self time: the innermost frame's file)", areas, 30)
    skip = (
        "_run_module_as_main",
        "_run_code",
        "<module>",
        "Command.",
        "Context.invoke",
        "main (",
        "Server.run",
        "asyncio_run",
        "Runner.run",
        "run_forever",
        "_bootstrap",
        "Thread.run",
        "_worker (concurrent",
    )
    show(
        "by function, inclusive (each counted once per stack)",
        collections.Counter({f: n for f, n in inclusive.items() if not any(s in f for s in skip)}),
        top,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--server", choices=["service", "baseline", "baseline_2w"], default="service")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="classify")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames, e.g. GC)")
    parser.add_argument("--env", action="append", default=[], metavar="MODELSERVE_X=V")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="folder to keep the raw py-spy files in")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.store = args.store.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        files = prepare(args.store, seed=0, threads=1, workdir=workdir).files
        if args.server == "service":
            start = functools.partial(start_service, "service", args.store, parse_env(args.env))
        else:
            start = functools.partial(start_baseline, args.server, args.store, 1)
        with running(start) as server:
            url = f"{server.url}/{args.endpoint}"
            run_wrk(url, files[args.endpoint], args.concurrency, 3, 1)
            spies = []
            for pid in server.worker_pids():
                out = workdir / f"{pid}.txt"
                cmd = [
                    pyspy,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(args.duration),
                    "-r",
                    str(args.rate),
                    "-f",
                    "raw",
                    "-t",
                    "--nolineno",
                    "-o",
                    str(out),
                ]
                if args.native:
                    cmd.append("--native")
                spies.append((out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            cpu0 = server.cpu_s()
            w = run_wrk(url, files[args.endpoint], args.concurrency, args.duration, 1)
            cpu = server.cpu_s() - cpu0
            for _, spy in spies:
                if spy.wait(timeout=60) != 0:
                    print(spy.stderr.read().decode()[-2000:])
        seconds = w["duration_us"] / 1e6
        cpu_ms_per_req = cpu * 1000 / w["requests"]
        print(
            f"\n{args.server} /{args.endpoint} c={args.concurrency}: {w['requests'] / seconds:,.0f} req/s, "
            f"p99 {w['latency_us']['p99'] / 1000:.2f} ms, server CPU {cpu_ms_per_req:.3f} ms/req "
            "(py-spy's sampling slows the server: compare shares, not the throughput)"
        )
        stacks = [s for out, _ in spies if out.exists() for s in read_raw(out)]
        report(stacks, cpu_ms_per_req, args.top)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for out, _ in spies:
                if out.exists():
                    shutil.copy(out, args.keep / out.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
