"""The benchmark's runs: the default run, the settings sweep, and the quick comparison.

Each returns a dict of plain values (saved as JSON under bench/results/) that ``report`` turns
into tables and docs. Every server is started fresh for its cells and stopped after them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench import ROOT, log
from bench.measure import measure_server, soak, wait_quiet
from bench.report import env_text, targets
from bench.servers import SERVERS, MeasuredServer, resolved_settings, running, start_baseline, start_service
from bench.workload import CONCURRENCY, ENDPOINTS, N_BODIES, Workload, in_process, prepare

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
    # Every request through ASGI: what the direct lane (service/transport/direct_lane.py) saves.
    ("DIRECT_LANE=false", {"MODELSERVE_DIRECT_LANE": "false"}),
    # Where the tail comes from: BentoML's per-request timer lives as long as this timeout...
    ("HTTP_TIMEOUT_S=1", {"MODELSERVE_HTTP_TIMEOUT_S": "1"}),
    # (A replaced model version must outlive the longest request: the release grace follows.)
    (
        "HTTP_TIMEOUT_S=60 (BentoML's default)",
        {"MODELSERVE_HTTP_TIMEOUT_S": "60", "MODELSERVE_MODEL_RELEASE_GRACE_S": "60"},
    ),
    # ...and garbage collection, through the benchmark's GC probe (bench/gc_probe/).
    ("GC freeze off", {"BENCH_GC_MODE": "no-freeze"}),
    ("GC disabled", {"BENCH_GC_MODE": "disabled"}),
]


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


@contextlib.contextmanager
def workload_for(args: argparse.Namespace):
    """The run's bodies and models, their files in a temporary folder removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        yield prepare(args.store, args.seed, args.in_process_threads, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def starter(
    key: str, args: argparse.Namespace, env: dict[str, str] | None = None
) -> Callable[[], MeasuredServer]:
    """How to start server ``key`` (a key of SERVERS) for this run; ``env`` for the service only."""
    if key in ("baseline", "baseline_2w"):
        return lambda: start_baseline(key, args.store, args.baseline_threads, args.gc_stats)
    return lambda: start_service(key, args.store, env or {}, args.gc_stats)


def in_process_cells(workload: Workload, args: argparse.Namespace) -> list[dict]:
    """ONNX Runtime alone, in this process, at batch 1 and 64 per endpoint: the ceiling."""
    log("in-process ONNX Runtime")
    measured = []
    for endpoint in ENDPOINTS:
        for batch in () if "in_process" in args.skip else (1, 64):
            wait_quiet(None, args.quiet_wait)
            model = workload.models[endpoint]
            r = in_process(model, endpoint, workload.bodies[endpoint], batch, args.in_process_s)
            log(
                f"  {endpoint} batch {batch:2}: {r['items_per_s']:9.0f} items/s, "
                f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms per call"
            )
            measured.append(r)
    return measured


def main_run(args: argparse.Namespace) -> dict:
    """The default run: in-process ceiling, every server's cells, the soak, the targets."""
    started = time.time()
    nobatch_env = {**args.env, "MODELSERVE_BATCHING": "false"}
    with workload_for(args) as workload:
        bodies = workload.bodies
        result: dict[str, Any] = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "store": store_label(args.store),
            "revision": revision(),
            "models": {
                e: {"name": m.manifest.name, "version": m.manifest.version, "sha256": m.manifest.sha256}
                for e, m in workload.models.items()
            },
            "options": {
                "cell_seconds": args.duration,
                "cell_warmup_s": args.cell_warmup,
                "server_warmup_s": args.server_warmup,
                "wrk_threads": args.wrk_threads,
                "concurrency": list(CONCURRENCY),
                "bodies_per_endpoint": N_BODIES,
                "forecast_lengths": [
                    min(len(b["series"][0]) for b in bodies["forecast"]),
                    max(len(b["series"][0]) for b in bodies["forecast"]),
                ],
                "baseline_threads": args.baseline_threads,
                "env": args.env,
                "quiet_wait_s": args.quiet_wait,
                "rounds": args.rounds,
                **({"gc_stats": True} if args.gc_stats else {}),
            },
            "settings": {
                "service": resolved_settings(args.store, args.env),
                "service_nobatch": resolved_settings(args.store, nobatch_env),
            },
        }
        result["in_process"] = in_process_cells(workload, args)
        workload.models.clear()  # free the sessions' threads and memory before the servers run

        envs = {"service": args.env, "service_nobatch": nobatch_env}
        result["cells"] = []
        for key, label in SERVERS.items():
            if key in args.skip:
                continue
            log(label)
            with running(starter(key, args, envs.get(key))) as server:
                result["cells"] += measure_server(server, workload, args)
        if args.soak_duration and "soak" not in args.skip:
            log(f"soak: service /classify c=16 for {args.soak_duration} s on a fresh server")
            with running(starter("service", args, args.env)) as server:
                result["soak"] = soak(server, workload.files["classify"], args)
    result["targets"] = targets(result)
    result["total_seconds"] = time.time() - started
    return result


def chosen_variants(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """The SWEEP rows named with --variants (every row when none is named)."""
    labels = [label for label, _ in SWEEP]
    unknown = [v for v in args.variants or () if v not in labels]
    if unknown:
        raise SystemExit(f"--variants: no such sweep row {unknown}; the rows are {labels}")
    return [v for v in SWEEP if not args.variants or v[0] in args.variants]


def sweep_run(args: argparse.Namespace) -> dict:
    """The service alone under each setting of SWEEP (or those named with --variants)."""
    with workload_for(args) as workload:
        result: dict[str, Any] = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "store": store_label(args.store),
            "options": {
                "cell_seconds": args.duration,
                "wrk_threads": args.wrk_threads,
                "env": args.env,
                "rounds": args.rounds,
                **({"gc_stats": True} if args.gc_stats else {}),
            },
            "revision": revision(),
            "variants": [],
        }
        variants = chosen_variants(args)
        for _label, overrides in variants:  # a setting the service refuses fails now, not a row later
            resolved_settings(args.store, {**args.env, **overrides})
        for label, overrides in variants:
            env = {**args.env, **overrides}
            log(f"sweep: {label}")
            with running(starter("service", args, env)) as server:
                cells = measure_server(server, workload, args)
            result["variants"].append(
                {
                    "label": label,
                    "env": overrides,
                    "settings": resolved_settings(args.store, env),
                    "cells": cells,
                }
            )
        return result


def parse_only(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``["classify-c64", "classify-c1"]`` -> ``{"classify": (64, 1)}``."""
    cells: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        endpoint, _, c = spec.partition("-c")
        if endpoint not in ENDPOINTS or not c.isdigit() or int(c) < 1:
            raise SystemExit(f"--only takes ENDPOINT-cN with ENDPOINT in {ENDPOINTS}, got {spec!r}")
        cells[endpoint] = (*cells.get(endpoint, ()), int(c))
    return cells


def compare_run(args: argparse.Namespace) -> dict:
    """The quick comparison (--only): the two-worker baseline, then the service (with --env),
    then the service under each --variants row, on the named cells only."""
    cells = parse_only(args.only)
    plan = [("baseline_2w", SERVERS["baseline_2w"], starter("baseline_2w", args))]
    service_label = f"service, {env_text(args.env)}" if args.env else "service"
    plan.append(("service", service_label, starter("service", args, args.env)))
    for label, overrides in chosen_variants(args) if args.variants else ():
        env = {**args.env, **overrides}
        plan.append(("service", f"{service_label}, {label}", starter("service", args, env)))
    with workload_for(args) as workload:
        workload.models.clear()  # only the reference answers are needed
        result: dict[str, Any] = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "store": store_label(args.store),
            "revision": revision(),
            "options": {
                "only": args.only,
                "variants": args.variants or [],
                "cell_seconds": args.duration,
                "cell_warmup_s": args.cell_warmup,
                "server_warmup_s": args.server_warmup,
                "wrk_threads": args.wrk_threads,
                "baseline_threads": args.baseline_threads,
                "env": args.env,
                "rounds": args.rounds,
                "gc_stats": args.gc_stats,
            },
            "cells": [],
        }
        for _, label, start in plan:
            log(label)
            with running(start) as server:
                measured = measure_server(server, workload, args, cells)
            result["cells"] += [{**c, "label": label} for c in measured]
    return result
