"""The service's capacity, read from a ramp run: the most requests per second it sustained.

    locust -f loadtests/locustfile.py --headless --shape ramp --shape-users 120 --shape-seconds 120
    python loadtests/capacity.py loadtests/results/<date-time>/locust_stats_history.csv

Each user asks for ``--rate-per-user`` requests per second, so the offered load grows with
the users. While the service keeps up, requests per second follow the offer; past its
capacity they stop growing and latency climbs instead. The capacity is the highest rate
answered over any 10 seconds, and the soak runs at about 80% of it.
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


WINDOW_S = 10  # seconds over which both the offered and the achieved rate are averaged


def window(points: list[Point], at: Point) -> list[Point]:
    return [p for p in points if at.timestamp - WINDOW_S <= p.timestamp <= at.timestamp]


def offered(points: list[Point], at: Point, rate_per_user: float) -> float:
    """Requests per second the users asked for, averaged over the 10 s up to ``at``."""
    users = [p.users for p in window(points, at)]
    return rate_per_user * sum(users) / len(users)


def achieved(points: list[Point], at: Point) -> float:
    """Requests per second answered over the same 10 s, from the running request count.

    (Locust's own Requests/s column trails a ramp by several seconds.)
    """
    first = window(points, at)[0]
    seconds = at.timestamp - first.timestamp
    return (at.total_requests - first.total_requests) / seconds if seconds else 0.0


def report(points: list[Point], rate_per_user: float) -> list[str]:
    running = [p for p in points if p.users > 0 and p.p99_ms is not None]
    if not running:
        raise ValueError("the history holds no rows with users and requests")
    rates = {p.timestamp: achieved(points, p) for p in running}
    best = max(running, key=lambda p: rates[p.timestamp])
    capacity = rates[best.timestamp]
    kept_up = [p for p in running if rates[p.timestamp] >= KEEPING_UP * offered(points, p, rate_per_user)]
    lines = [f"{'users':>6} {'offered/s':>10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail/s':>7}"]
    for p in running[:: max(1, len(running) // 24)]:
        lines.append(
            f"{p.users:>6} {offered(points, p, rate_per_user):>10.0f} {rates[p.timestamp]:>8.1f} "
            f"{p.p50_ms or 0:>7.0f} {p.p99_ms or 0:>7.0f} {p.failures_per_s:>7.1f}"
        )
    lines.append(
        f"capacity: {capacity:.0f} requests/s (at {best.users} users; p50 {best.p50_ms:.0f} ms, "
        f"p99 {best.p99_ms:.0f} ms in Locust's window)"
    )
    if kept_up:
        last = max(kept_up, key=lambda p: rates[p.timestamp])
        lines.append(
            f"kept up with the offered load (at least {KEEPING_UP:.0%} of it) up to "
            f"{rates[last.timestamp]:.0f} requests/s ({last.users} users, p99 {last.p99_ms:.0f} ms)"
        )
    soak_rps = SOAK_FRACTION * capacity
    lines.append(
        f"{SOAK_FRACTION:.0%} of capacity: {soak_rps:.0f} requests/s = "
        f"{math.floor(soak_rps / rate_per_user)} users at {rate_per_user:g} requests/s each"
    )
    failed = running[-1].total_failures
    if failed:
        lines.append(
            f"note: {failed} requests failed during the ramp (see the failures CSV; 503 = overloaded)"
        )
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
