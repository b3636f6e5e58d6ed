"""Soak test: a steady load for 10 minutes, with the server's memory sampled throughout.

    python loadtests/soak.py --users 40 --plots-dir docs/images

Starts the service (or uses ``--host`` with ``--server-pid``), samples the RSS of its whole
process tree every few seconds, runs Locust at a constant ``--users`` for ``--minutes``,
then plots latency and throughput over time (from Locust's stats history) and memory over
time, and judges: no failed request, and memory growth after warm-up under 5%. Pick the
users from a ramp first (``capacity.py``): about 80% of capacity. docs/loadtesting.md has
the procedure and the last result.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from modelserve_locust.history import Point, aggregated
from modelserve_locust.local_service import LocalService, local_service, stop_on_sigterm
from modelserve_locust.options import DEFAULT_RATE_PER_USER
from modelserve_locust.run_folder import headless_locust, new_run_folder

HERE = Path(__file__).resolve().parent
MAX_MEMORY_GROWTH = 0.05
MIB = 1024 * 1024


class MemorySampler(threading.Thread):
    """The RSS of a process and all its descendants, summed, every ``every_s`` seconds."""

    def __init__(self, pid: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []  # time, RSS bytes, processes
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), *self.tree_rss()))
            self._done.wait(self.every_s)

    def tree_rss(self) -> tuple[int, int]:
        total, count = 0, 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
                count += 1
        return total, count

    def stop(self) -> None:
        self._done.set()
        self.join()

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Timestamp", "RSS MiB", "Processes"])
            for stamp, rss, count in self.samples:
                writer.writerow([f"{stamp:.1f}", f"{rss / MIB:.1f}", count])


@contextlib.contextmanager
def the_service(args: argparse.Namespace, folder: Path) -> Iterator[LocalService]:
    if args.host:
        yield LocalService(args.host, args.server_pid, Path("/dev/null"))
    else:
        with local_service(folder) as service:
            yield service


def run_locust(url: str, folder: Path, args: argparse.Namespace) -> int:
    spawn_rate = max(1, args.users // 10)  # all users within about 10 s
    command = headless_locust(
        url,
        folder,
        args.users,
        spawn_rate,
        args.minutes * 60,
        *("--rate-per-user", str(args.rate_per_user), "--max-fail-ratio", "0"),
    )
    return subprocess.run(command, check=False).returncode


def mean_between(samples: list[tuple[float, int, int]], start: float, end: float) -> float:
    chosen = [rss for stamp, rss, _ in samples if start <= stamp < end]
    if not chosen:
        raise ValueError("no memory samples in the window; sample more often or run longer")
    return sum(chosen) / len(chosen)


def summarise(points: list[Point], samples: list[tuple[float, int, int]], warmup_s: float) -> dict:
    """Throughput, latency, failures, and memory growth from just after warm-up to the end.

    Memory is compared as the mean over a minute (or the warm-up, if shorter) right after
    warm-up against the mean over the last such stretch, so that one sample's noise (a
    garbage collection, a batch in flight) does not decide the result.
    """
    running = [p for p in points if p.users > 0 and p.p99_ms is not None]
    start, end = samples[0][0], samples[-1][0]
    window = min(60.0, warmup_s)
    after_warmup = mean_between(samples, start + warmup_s, start + warmup_s + window)
    final = mean_between(samples, end - window, end + 1)
    last = points[-1]
    steady = [p for p in running if p.timestamp >= start + warmup_s]
    return {
        "seconds": end - start,
        "requests": last.total_requests,
        "failures": last.total_failures,
        "mean_rps_after_warmup": round(sum(p.rps for p in steady) / len(steady), 1) if steady else None,
        "p50_ms_median_window": sorted(p.p50_ms for p in steady)[len(steady) // 2] if steady else None,
        "p99_ms_worst_window": max(p.p99_ms for p in steady) if steady else None,
        "rss_mib_after_warmup": round(after_warmup / MIB, 1),
        "rss_mib_at_end": round(final / MIB, 1),
        "rss_growth": round(final / after_warmup - 1, 4),
        "rss_mib_peak": round(max(rss for _, rss, _ in samples) / MIB, 1),
    }


def plot(
    points: list[Point],
    samples: list[tuple[float, int, int]],
    warmup_s: float,
    baseline_mib: float,
    out: Path,
) -> list[Path]:
    """Two PNGs: latency (p50, p99) and requests/s over time; server memory over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = samples[0][0]
    running = [p for p in points if p.p99_ms is not None]
    minutes = [(p.timestamp - start) / 60 for p in running]
    fig, latency = plt.subplots(figsize=(9, 4))
    latency.plot(minutes, [p.p50_ms for p in running], label="p50", color="tab:blue")
    latency.plot(minutes, [p.p99_ms for p in running], label="p99", color="tab:red")
    latency.set_xlabel("minutes")
    latency.set_ylabel("response time, ms (10-s window)")
    latency.set_ylim(bottom=0)
    rate = latency.twinx()
    rate.plot(minutes, [p.rps for p in running], label="requests/s", color="tab:green", alpha=0.5)
    rate.set_ylabel("requests/s")
    rate.set_ylim(bottom=0)
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.88))
    latency.set_title("Soak: latency and throughput over time")
    fig.tight_layout()
    paths = [out / "soak-latency.png", out / "soak-memory.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, memory = plt.subplots(figsize=(9, 4))
    memory.plot(
        [(t - start) / 60 for t, _, _ in samples], [rss / MIB for _, rss, _ in samples], color="tab:purple"
    )
    memory.axvspan(0, warmup_s / 60, color="grey", alpha=0.15, label="warm-up")
    bound = baseline_mib * (1 + MAX_MEMORY_GROWTH)
    memory.axhline(bound, color="tab:red", linestyle="--", label=f"after warm-up +{MAX_MEMORY_GROWTH:.0%}")
    memory.set_xlabel("minutes")
    memory.set_ylabel("server RSS, MiB (all processes)")
    memory.set_ylim(0, max(bound, max(rss for _, rss, _ in samples) / MIB) * 1.15)
    memory.legend(loc="lower right")
    memory.set_title("Soak: server memory over time")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, required=True, help="about 80%% of capacity (capacity.py)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate-per-user", type=float, default=DEFAULT_RATE_PER_USER)
    parser.add_argument("--warmup-s", type=float, default=120, help="memory growth is measured after this")
    parser.add_argument("--sample-s", type=float, default=2, help="memory sampling interval")
    parser.add_argument("--host", help="a running service (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --host: its `bentoml serve` process")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--plots-dir", type=Path, help="also copy the plots here (e.g. docs/images)")
    args = parser.parse_args()
    if args.host and not args.server_pid:
        parser.error("--host needs --server-pid, the process whose memory to sample")
    stop_on_sigterm()
    folder = new_run_folder(args.results_dir)
    print(f"soak: results in {folder}", flush=True)
    with the_service(args, folder) as service:
        sampler = MemorySampler(service.pid, args.sample_s)
        sampler.start()
        try:
            locust_code = run_locust(service.url, folder, args)
        finally:
            sampler.stop()
    sampler.write_csv(folder / "server_memory.csv")
    points = aggregated(folder / "locust_stats_history.csv")
    summary = {"users": args.users, "rate_per_user": args.rate_per_user, "warmup_s": args.warmup_s}
    summary |= summarise(points, sampler.samples, args.warmup_s)
    for path in plot(points, sampler.samples, args.warmup_s, summary["rss_mib_after_warmup"], folder):
        if args.plots_dir:
            args.plots_dir.mkdir(parents=True, exist_ok=True)
            (args.plots_dir / path.name).write_bytes(path.read_bytes())
    cpu = json.loads((folder / "locust_verdict.json").read_text()).get("locust_cpu", {})
    summary["locust_cpu"] = cpu
    (folder / "soak_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    grew = summary["rss_growth"] >= MAX_MEMORY_GROWTH
    print(json.dumps(summary, indent=2))
    print(
        f"Soak {'FAILED' if grew or locust_code else 'PASSED'}: {summary['failures']} of "
        f"{summary['requests']:,} requests failed; server RSS {summary['rss_mib_after_warmup']:.0f} MiB "
        f"after warm-up, {summary['rss_mib_at_end']:.0f} MiB at the end ({summary['rss_growth']:+.1%}, "
        f"bound +{MAX_MEMORY_GROWTH:.0%})"
    )
    return locust_code or int(grew)


if __name__ == "__main__":
    sys.exit(main())
