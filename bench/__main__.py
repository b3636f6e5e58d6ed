"""Benchmark: the service vs bare FastAPI servers vs in-process ONNX Runtime, in one run.

Starts every server itself (127.0.0.1, free ports), drives it with ``wrk`` at several
concurrencies, measures throughput, latency, the server's CPU per request and memory
(summed over its whole process tree) and the load generator's own CPU, then stops it.
Writes bench/results/latest.json, docs/evidence/benchmarks.md and docs/images/bench-throughput.png.

    python -m bench                      # the full run
    python -m bench --only classify-c64 --seconds 10   # the service vs two FastAPI workers

See bench/README.md for what each mode does.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench import RESULTS, ROOT, log
from bench.report import print_comparison, print_report, print_sweep, regenerate_docs, shown_path
from bench.runs import SWEEP, compare_run, main_run, sweep_run
from bench.servers import SERVERS, parse_env


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--store",
        type=Path,
        default=ROOT / "model_store",
        help="model store to serve (default: model_store/)",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2 s cells, 5 s soak")
    p.add_argument("--duration", "--seconds", type=int, help="seconds per cell (default 10; 2 with --quick)")
    p.add_argument(
        "--soak-duration",
        type=int,
        help="seconds of the stall/leak run (default 60; 5 with --quick; 0 skips it)",
    )
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--baseline-threads", type=int, default=1, help="intra-op threads of each baseline worker")
    p.add_argument(
        "--in-process-threads",
        type=int,
        default=1,
        help="intra-op threads of the in-process sessions (default 1, as a service worker's)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="MODELSERVE_X=V",
        help="a service setting for every service server (repeatable)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="first run the service under each setting of SWEEP (bench/results/sweep.json)",
    )
    p.add_argument("--sweep-only", action="store_true", help="the sweep alone; docs are not rewritten")
    p.add_argument(
        "--variants",
        nargs="*",
        metavar="LABEL",
        help="sweep only these rows; with --only, also run the service under each of them."
        f" Rows: {', '.join(label for label, _ in SWEEP)}",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="ENDPOINT-cN",
        help="the quick comparison: only these cells (e.g. classify-c64 classify-c1), the service"
        " against the two-worker baseline; bench/results/compare.json, docs untouched",
    )
    p.add_argument(
        "--gc-stats",
        action="store_true",
        help="time every garbage collection in the servers' workers (bench/gc_probe/) and report"
        " the pauses per cell",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs and plot from bench/results/latest.json without running",
    )
    p.add_argument(
        "--no-docs", action="store_true", help="leave docs/evidence/benchmarks.md and the plot alone"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="raw results (JSON; default bench/results/latest.json, bench/results/with-env.json"
        " with --env, bench/results/compare.json with --only, bench/results/sweep.json with"
        " --sweep-only)",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["in_process", *SERVERS, "soak"],
        help="parts of the run to leave out (targets that need them are dropped)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each cell, wait up to this long for other processes to go idle",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each cell N times (fresh connections each time) and keep the medians",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the request bodies")
    return p


def settle_options(args: argparse.Namespace) -> None:
    """Fill in the options that follow from others (--quick, --env, --only)."""
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
    if args.only:
        default_out = RESULTS / "compare.json"
    elif args.sweep_only:
        default_out = RESULTS / "sweep.json"
    else:
        default_out = RESULTS / ("with-env.json" if args.env else "latest.json")
    args.out = args.out or default_out


def check_can_run(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)")
    for name in ("classifier", "forecaster"):
        if not (args.store / name).is_dir():
            raise SystemExit(f"the store has no {name}: train the models first, or pass --store")


def save(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    log(f"raw results: {shown_path(path)}")


def main() -> None:
    args = parser().parse_args()
    settle_options(args)
    if args.report_only:
        print_report(json.loads(args.out.read_text()))
        regenerate_docs()
        return
    check_can_run(args)
    if args.only:
        result = compare_run(args)
        save(result, args.out)
        print_comparison(result)
        return
    if args.sweep or args.sweep_only:
        sweep = sweep_run(args)
        save(sweep, args.out if args.sweep_only else RESULTS / "sweep.json")
        print_sweep(sweep)
        if args.sweep_only:
            return
    result = main_run(args)
    save(result, args.out)
    print_report(result)
    if not args.no_docs:
        regenerate_docs()


if __name__ == "__main__":
    main()
