"""Overload: /classify at 64 connections, then 512, then 64 again, on one server.

    python -m bench.overload                      # 10 s per phase, about a minute in all
    python -m bench.overload --seconds 20 --high 1024
    python -m bench.overload --env MODELSERVE_MAX_INFLIGHT_PER_WORKER=64   # the service under other settings
    python -m bench.overload --gc-stats           # the workers' garbage-collection pauses per phase
    python -m bench.overload --gc-mode disabled   # no automatic garbage collection (what GC costs)

Starts the service on a free 127.0.0.1 port (``harness.server``, as every benchmark does), warms
it up, then drives it with wrk (``bench/wrk/overload.lua``) through three phases back to back:
``before`` (``--low`` connections), ``overload`` (``--high``) and ``after`` (``--low`` again),
and stops it. The Lua script records every response (status, latency, when it came back,
Retry-After), so accepted and refused requests are told apart:

* 2xx/s, refused/s (503 or 429; how many carried ``Retry-After``), other errors;
* accepted latency p50/p99/max, and how fast refusals came back (p50/p99);
* recovery: after the overload phase ends, how long until a whole second answers at least 90%
  of the ``before`` 2xx rate with nothing refused;
* peak RSS of the server's whole process tree (sampled every 0.2 s), server and wrk CPU, how
  busy other processes kept the machine, the accept queue of the listening socket and the
  connections each worker holds (sampled mid-phase);

and judges them against the goals (2xx rate under overload at least 90% of the rate before;
accepted p99 at most 340 ms; every refusal with Retry-After; recovery within 5 s). Everything is
bounded: each wrk run by ``-d`` plus a kill 30 s later, the server start by 180 s, and the
server is stopped however the run ends. Writes bench/results/overload.json and
bench/results/overload.md (the table); the same seed sends the same bodies.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS, ROOT, log
from bench.measure import gc_summary, run_bounded_wrk, steal_s, system_busy_s
from bench.runs import machine, revision, store_label
from bench.servers import MeasuredServer, parse_env, post, start_service
from bench.workload import classify_bodies

LUA = ROOT / "bench" / "wrk" / "overload.lua"
GOAL_RATE_RATIO = 0.90  # 2xx/s under overload against 2xx/s before it
GOAL_P99_MS = 340.0  # accepted requests' p99 under overload
GOAL_RECOVERY_S = 5.0
RECOVERED_FRACTION = 0.90  # of the `before` 2xx rate, over a whole second with nothing refused
RSS_SAMPLE_S = 0.2
REFUSED = (503, 429)  # a server shedding load says one of these


@dataclass
class Phase:
    """One wrk run of the overload sequence: what came back, and what the machine did meanwhile."""

    name: str
    connections: int
    started: float  # time.monotonic() when wrk was started
    ended: float  # ... and when it had exited
    wrk: dict[str, Any]
    records: np.ndarray  # [n, 4]: status, latency us (-1 unknown), monotonic ms, Retry-After 0/1
    server_cpu_s: float
    wrk_cpu_s: float
    others_cores: float
    stolen_cores: float
    samples: dict[str, list] = field(default_factory=dict)  # accept queue, connections per worker
    gc: dict[str, Any] | None = None


def run_wrk_recording(url: str, bodies: Path, connections: int, seconds: int, threads: int) -> tuple:
    """One wrk run with overload.lua: (its JSON summary, the records array, its CPU seconds)."""
    with tempfile.NamedTemporaryFile(prefix="overload-", suffix=".records", delete=False) as f:
        records_path = Path(f.name)
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(bodies),
        str(records_path),
    ]
    try:
        summary, cpu_s = run_bounded_wrk(command, seconds)
        text = records_path.read_text()
        records = np.zeros((0, 4), np.int64)
        if text:
            records = np.loadtxt(text.splitlines(), dtype=np.int64, ndmin=2)
        return summary, records, cpu_s
    finally:
        records_path.unlink(missing_ok=True)


def accept_queue(port: int) -> int | None:
    """Connections waiting in the listening socket's accept queue (``ss``), or None without ss."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    return int(out[1]) if len(out) > 1 else None


@contextlib.contextmanager
def sampling(server: MeasuredServer, every_s: float) -> Iterator[dict[str, list]]:
    """While the block runs: the accept queue and the connections per worker, every ``every_s``."""
    samples: dict[str, list] = {"accept_queue": [], "connections_per_worker": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            queued = accept_queue(server.port)
            if queued is not None:
                samples["accept_queue"].append(queued)
            samples["connections_per_worker"].append(server.connections_per_worker())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


class PeakRss:
    """The largest RSS of the server's process tree, sampled every RSS_SAMPLE_S, per phase."""

    def __init__(self, server: MeasuredServer) -> None:
        self.server = server
        self.phase = "warm-up"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            rss = self.server.rss_bytes()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(
    server: MeasuredServer, name: str, bodies: Path, connections: int, args: argparse.Namespace
) -> Phase:
    url = f"{server.url}/classify"
    busy0, cpu0, steal0 = system_busy_s(), server.cpu_s(), steal_s()
    wall0 = time.time()
    started = time.monotonic()
    with sampling(server, max(0.5, args.seconds / 10)) as samples:
        summary, records, wrk_cpu = run_wrk_recording(
            url, bodies, connections, args.seconds, args.wrk_threads
        )
    ended = time.monotonic()
    cpu = server.cpu_s() - cpu0
    wall = ended - started
    others = max(0.0, system_busy_s() - busy0 - cpu - wrk_cpu)
    phase = Phase(
        name,
        connections,
        started,
        ended,
        summary,
        records,
        cpu,
        wrk_cpu,
        others / wall,
        (steal_s() - steal0) / wall,
        samples,
    )
    phase.gc = gc_summary(server, wall0, time.time(), wall)
    return phase


def percentile_ms(latencies_us: np.ndarray, q: float) -> float | None:
    known = latencies_us[latencies_us >= 0]
    return float(np.percentile(known, q)) / 1000 if known.size else None


def summarize(phase: Phase, peak_rss: int | None) -> dict[str, Any]:
    """The phase's figures: rates, latencies of accepted and refused requests, machine use."""
    status, latency, retry = phase.records[:, 0], phase.records[:, 1], phase.records[:, 3]
    seconds = phase.wrk["duration_us"] / 1e6
    ok = (status >= 200) & (status < 300)
    refused = np.isin(status, REFUSED)
    other = ~ok & ~refused
    socket_errors = {k: v for k, v in phase.wrk["errors"].items() if k != "status" and v}
    queue = phase.samples.get("accept_queue", [])
    spreads = phase.samples.get("connections_per_worker", [])
    return {
        "phase": phase.name,
        "connections": phase.connections,
        "seconds": round(seconds, 2),
        "responses": int(status.size),
        "accepted": int(ok.sum()),
        "refused": int(refused.sum()),
        "refused_with_retry_after": int((refused & (retry == 1)).sum()),
        "other_errors": {str(s): int((status[other] == s).sum()) for s in np.unique(status[other])},
        "socket_errors": socket_errors,
        "accepted_per_s": ok.sum() / seconds,
        "refused_per_s": refused.sum() / seconds,
        "accepted_p50_ms": percentile_ms(latency[ok], 50),
        "accepted_p99_ms": percentile_ms(latency[ok], 99),
        "accepted_max_ms": percentile_ms(latency[ok], 100),
        "refused_p50_ms": percentile_ms(latency[refused], 50),
        "refused_p99_ms": percentile_ms(latency[refused], 99),
        "responses_without_id": int((latency < 0).sum()),
        "server_cores_busy": phase.server_cpu_s / (phase.ended - phase.started),
        "server_cpu_ms_per_response": phase.server_cpu_s * 1000 / max(status.size, 1),
        "wrk_cores_busy": phase.wrk_cpu_s / (phase.ended - phase.started),
        "others_cores_busy": phase.others_cores,
        "stolen_cores": phase.stolen_cores,
        "peak_rss_mb": peak_rss / 2**20 if peak_rss else None,
        "accept_queue_mean": float(np.mean(queue)) if queue else None,
        "accept_queue_max": int(max(queue)) if queue else None,
        "connections_per_worker": spreads[len(spreads) // 2] if spreads else [],  # mid-phase
        **({"gc": phase.gc} if phase.gc else {}),
    }


def recovery(after: Phase, overload_ended: float, before_rate: float) -> dict[str, Any]:
    """How long after the overload phase ended until a whole second (in 100 ms steps) answered at
    least RECOVERED_FRACTION of ``before_rate`` 2xx/s with nothing refused; the 2xx rate of each
    second after the overload as well."""
    status, at_ms = after.records[:, 0], after.records[:, 2]
    end_ms = overload_ended * 1000
    ok = (status >= 200) & (status < 300)
    refused = np.isin(status, REFUSED)
    horizon_ms = (after.ended - overload_ended) * 1000
    recovered_after = None
    for start in np.arange(0, max(horizon_ms - 1000, 0) + 1, 100):
        window = (at_ms >= end_ms + start) & (at_ms < end_ms + start + 1000)
        if ok[window].sum() >= RECOVERED_FRACTION * before_rate and not refused[window].any():
            recovered_after = start / 1000
            break
    per_second = [
        int(ok[(at_ms >= end_ms + s * 1000) & (at_ms < end_ms + (s + 1) * 1000)].sum())
        for s in range(int(horizon_ms // 1000))
    ]
    first_ok = at_ms[ok].min() / 1000 - overload_ended if ok.any() else None
    return {
        "recovered_after_s": recovered_after,
        "first_2xx_after_s": first_ok,
        "gap_between_phases_s": after.started - overload_ended,
        "accepted_per_second_after": per_second,
    }


def goals(before: dict, overload: dict, rec: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, figures) for each goal of the overload run."""
    ratio = overload["accepted_per_s"] / before["accepted_per_s"] if before["accepted_per_s"] else 0.0
    p99 = overload["accepted_p99_ms"]
    refused = overload["refused"]
    recovered = rec["recovered_after_s"]
    return [
        (
            f"2xx/s at c={overload['connections']} >= {GOAL_RATE_RATIO:.0%} of c={before['connections']}",
            ratio >= GOAL_RATE_RATIO,
            f"{ratio:.2f}x ({overload['accepted_per_s']:,.0f} vs {before['accepted_per_s']:,.0f} 2xx/s)",
        ),
        (
            f"accepted p99 at c={overload['connections']} <= {GOAL_P99_MS:.0f} ms",
            p99 is not None and p99 <= GOAL_P99_MS,
            f"{p99:.0f} ms" if p99 is not None else "nothing accepted",
        ),
        (
            "every refusal carries Retry-After",
            overload["refused_with_retry_after"] == refused,
            f"{overload['refused_with_retry_after']} of {refused}"
            + (f", p99 {overload['refused_p99_ms']:.1f} ms" if refused else " (none refused)"),
        ),
        (
            f"recovered within {GOAL_RECOVERY_S:.0f} s",
            recovered is not None and recovered <= GOAL_RECOVERY_S,
            f"{recovered:.1f} s" if recovered is not None else "not within the after phase",
        ),
    ]


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else spec.format(value)


TABLE = [  # header, key, format
    ("connections", "connections", "{:d}"),
    ("2xx/s", "accepted_per_s", "{:,.0f}"),
    ("refused/s", "refused_per_s", "{:,.0f}"),
    ("refused with Retry-After", "refused_with_retry_after", "{:,d}"),
    ("accepted p50 ms", "accepted_p50_ms", "{:.1f}"),
    ("accepted p99 ms", "accepted_p99_ms", "{:.1f}"),
    ("accepted max ms", "accepted_max_ms", "{:.0f}"),
    ("refused p50 ms", "refused_p50_ms", "{:.2f}"),
    ("refused p99 ms", "refused_p99_ms", "{:.2f}"),
    ("other errors", "other_errors", "{}"),
    ("server cores", "server_cores_busy", "{:.2f}"),
    ("server CPU ms/response", "server_cpu_ms_per_response", "{:.3f}"),
    ("wrk cores", "wrk_cores_busy", "{:.2f}"),
    ("other processes' cores", "others_cores_busy", "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("accept queue mean/max", "accept_queue", "{}"),
    ("connections per worker", "connections_per_worker", "{}"),
]


def table(result: dict) -> list[str]:
    phases = result["phases"]
    lines = [
        "| | " + " | ".join(p["phase"] for p in phases) + " |",
        "|---|" + "---|" * len(phases),
    ]
    for header, key, spec in TABLE:
        cells = []
        for p in phases:
            if key == "accept_queue":
                value = (
                    None
                    if p["accept_queue_mean"] is None
                    else f"{p['accept_queue_mean']:.0f}/{p['accept_queue_max']}"
                )
            elif key == "connections_per_worker":
                value = "/".join(str(n) for n in p[key]) if p[key] else None
            elif key == "other_errors":
                value = ", ".join(f"{n} x {s}" for s, n in p[key].items()) or "0"
            else:
                value = p[key]
            cells.append(fmt(value, "{}" if isinstance(value, str) else spec))
        lines.append(f"| {header} | " + " | ".join(cells) + " |")
    if any("gc" in p for p in phases):
        lines.append(
            "| GC paused ms/s (longest pause ms) | "
            + " | ".join(
                f"{p['gc']['pause_ms_per_s']:.0f} ({p['gc']['max_pause_ms']:.0f})" if "gc" in p else "–"
                for p in phases
            )
            + " |"
        )
    return lines


def report(result: dict) -> list[str]:
    overload = result["phases"][1]
    rec = result["recovery"]
    lines = [
        f"Overload run, {result['started_at']}: /classify, one image per request, on "
        f"{result['machine']['nproc']} CPUs ({result['machine']['cpu_model']}); "
        f"{result['options']['seconds']} s per phase, settings: {result['options']['env'] or 'defaults'}"
        + (f", GC probe mode {result['options']['gc_mode']}" if result["options"].get("gc_mode") else ""),
        "",
        *table(result),
        "",
        f"During the overload phase ({overload['seconds']:.1f} s at c={overload['connections']}): "
        f"{overload['responses']:,} responses, {overload['accepted']:,} accepted (2xx), "
        f"{overload['refused']:,} refused ({overload['refused_with_retry_after']:,} with Retry-After), "
        f"other errors {overload['other_errors'] or 0}, socket errors {overload['socket_errors'] or 0}.",
        f"After it: first 2xx {fmt(rec['first_2xx_after_s'], '{:.2f}')} s after the overload ended; "
        f"recovered (a whole second at >= {RECOVERED_FRACTION:.0%} of the rate before, nothing refused) "
        f"after {fmt(rec['recovered_after_s'], '{:.1f}')} s; 2xx per second after: "
        f"{rec['accepted_per_second_after']}.",
        f"Peak RSS of the server tree over the whole run: {fmt(result['peak_rss_mb'], '{:.0f}')} MB.",
        "",
    ]
    for goal, met, figures in result["goals"]:
        lines.append(f"{'PASS' if met else 'MISS'}  {goal}: {figures}")
    noisy = max(p["others_cores_busy"] + p["stolen_cores"] for p in result["phases"])
    if noisy > 0.15:
        lines.append(
            f"NOISY: other processes or the hypervisor took up to {noisy:.2f} cores during a phase; "
            "rerun on a quiet machine before trusting the rates"
        )
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", type=Path, default=ROOT / "model_store", help="model store to serve")
    p.add_argument("--seconds", type=int, default=10, help="seconds per phase (default 10)")
    p.add_argument("--low", type=int, default=64, help="connections before and after (default 64)")
    p.add_argument("--high", type=int, default=512, help="connections during the overload (default 512)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load first (default 3)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="MODELSERVE_X=V",
        help="a service setting (repeatable)",
    )
    p.add_argument("--gc-stats", action="store_true", help="time the workers' garbage collections")
    p.add_argument(
        "--gc-mode",
        choices=["no-freeze", "disabled"],
        help="the GC probe's variants (bench/gc_probe/): gc.freeze() skipped, or no automatic collection",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the request bodies")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "overload.json",
        help="results (JSON; the table goes next to it as .md; default bench/results/overload.json)",
    )
    return p


def overload_run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    try:
        rng = np.random.default_rng(args.seed)
        bodies = classify_bodies(64, rng)
        bodies_file = workdir / "classify.bodies"
        bodies_file.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
        overrides = {**args.env, **({"BENCH_GC_MODE": args.gc_mode} if args.gc_mode else {})}
        server = start_service("service", args.store, overrides, args.gc_stats)
        try:
            answer = post(f"{server.url}/classify", bodies[0])
            if len(answer.get("labels", ())) != 1:
                raise RuntimeError(f"unexpected answer to /classify: {answer}")
            with PeakRss(server) as rss:
                if args.warmup:
                    run_wrk_recording(
                        f"{server.url}/classify", bodies_file, args.low, args.warmup, args.wrk_threads
                    )
                phases = []
                for name, connections in (("before", args.low), ("overload", args.high), ("after", args.low)):
                    rss.phase = name
                    phases.append(run_phase(server, name, bodies_file, connections, args))
                    log(f"  {name}: c={connections}, {phases[-1].records.shape[0]:,} responses")
            peaks = dict(rss.peaks)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summaries = [summarize(p, peaks.get(p.name)) for p in phases]
    rec = recovery(phases[2], phases[1].ended, summaries[0]["accepted_per_s"])
    result = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "store": store_label(args.store),
        "revision": revision(),
        "options": {
            "seconds": args.seconds,
            "low": args.low,
            "high": args.high,
            "warmup_s": args.warmup,
            "wrk_threads": args.wrk_threads,
            "env": args.env,
            "gc_mode": args.gc_mode,
            "seed": args.seed,
        },
        "phases": summaries,
        "recovery": rec,
        "peak_rss_mb": max(peaks.values()) / 2**20 if peaks else None,
    }
    result["goals"] = goals(summaries[0], summaries[1], rec)
    return result


def main() -> None:
    args = parser().parse_args()
    args.env = parse_env(args.env)
    args.store = args.store.resolve()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)")
    log(f"overload run: c={args.low}, c={args.high}, c={args.low}, {args.seconds} s each")
    result = overload_run(args)
    lines = report(result)
    print("\n".join(lines), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # NumPy scalars (counts, flags) as plain JSON values
    args.out.write_text(json.dumps(result, indent=1, default=lambda value: value.item()))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out.name}")


if __name__ == "__main__":
    main()
