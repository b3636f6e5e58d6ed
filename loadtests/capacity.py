"""The service's capacity, read from a ramp run: the most requests per second it sustained.

    locust -f loadtests/locustfile.py --headless --shape ramp --shape-users 120 --shape-seconds 120
    python loadtests/capacity.py loadtests/results/<date-time>/locust_stats_history.csv

Each user asks for ``--rate-per-user`` requests per second, so the offered load grows with
the users. While the service keeps up, requests per second follow the offer; past its
capacity they stop growing and latency climbs instead. The capacity is the highest rate
measured (Locust's 10-second window), and the soak runs at about 80% of it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from modelserve_locust.history import Point, aggregated
from modelserve_locust.options import DEFAULT_RATE_PER_USER

SOAK_FRACTION = 0.8
KEEPING_UP = 0.9  # achieved / offered above this: the service still keeps up


def report(points: list[Point], rate_per_user: float) -> list[str]:
    running = [p for p in points if p.users > 0 and p.p99_ms is not None]
    if not running:
        raise ValueError("the history holds no rows with users and requests")
    best = max(running, key=lambda p: p.rps)
    kept_up = [p for p in running if p.rps >= KEEPING_UP * p.users * rate_per_user]
    soak_rps = SOAK_FRACTION * best.rps
    lines = [f"{'users':>6} {'offered/s':>10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail/s':>7}"]
    for p in running[:: max(1, len(running) // 24)]:
        lines.append(
            f"{p.users:>6} {p.users * rate_per_user:>10.0f} {p.rps:>8.1f} {p.p50_ms or 0:>7.0f} "
            f"{p.p99_ms or 0:>7.0f} {p.failures_per_s:>7.1f}"
        )
    lines.append(
        f"capacity: {best.rps:.0f} requests/s (at {best.users} users, p50 {best.p50_ms:.0f} ms, "
        f"p99 {best.p99_ms:.0f} ms over Locust's 10-s window)"
    )
    if kept_up:
        last = kept_up[-1]
        lines.append(f"kept up with the offered load up to {last.users} users ({last.rps:.0f} requests/s)")
    lines.append(
        f"{SOAK_FRACTION:.0%} of capacity: {soak_rps:.0f} requests/s = "
        f"{math.floor(soak_rps / rate_per_user)} users at {rate_per_user:g} requests/s each"
    )
    failed = running[-1].total_failures
    if failed:
        lines.append(f"note: {failed} requests failed during the ramp")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("history", type=Path, help="the ramp's <prefix>_stats_history.csv")
    parser.add_argument("--rate-per-user", type=float, default=DEFAULT_RATE_PER_USER)
    args = parser.parse_args()
    print("\n".join(report(aggregated(args.history), args.rate_per_user)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
