"""Before and after a change: the quick comparison run on two checkouts, side by side.

    python -m bench --only classify-c64 classify-c1 forecast-c16 --no-docs --out after.json
    (cd <checkout of the earlier commit> && python -m bench --only ... --no-docs --out before.json)
    python -m bench.before_after before.json after.json     # prints the Markdown table

Each run measures the service and the bare FastAPI baseline (two workers) in the same sitting,
so each run's ratio to its own baseline is the figure to compare: the machine's load moves
both alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cells(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str, int], dict[str, Any]]]:
    run = json.loads(path.read_text())
    return run, {(c["server"], c["endpoint"], c["concurrency"]): c for c in run["cells"]}


def table(before: Path, after: Path) -> list[str]:
    runs = [cells(before), cells(after)]
    lines = [
        f"- before: commit {runs[0][0]['revision']}, run {runs[0][0]['started_at']}",
        f"- after: commit {runs[1][0]['revision']}, run {runs[1][0]['started_at']}",
        "",
        "| cell | run | service req/s | baseline req/s | service / baseline | service p50 ms | "
        "service p99 ms | baseline p99 ms | service CPU ms/req | rows/s | other processes' cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(e, c) for _, by in runs for (s, e, c) in by if s == "service"}, key=lambda k: (k[0], -k[1])
    )
    for endpoint, concurrency in keys:
        for label, (_, by) in zip(("before", "after"), runs, strict=True):
            service = by.get(("service", endpoint, concurrency))
            base = by.get(("baseline_2w", endpoint, concurrency))
            if service is None or base is None:
                continue
            lines.append(
                f"| /{endpoint} c={concurrency} | {label} | {service['req_per_s']:,.0f} | "
                f"{base['req_per_s']:,.0f} | {service['req_per_s'] / base['req_per_s']:.2f}x | "
                f"{service['p50_ms']:.2f} | {service['p99_ms']:.2f} | {base['p99_ms']:.2f} | "
                f"{service['server_cpu_ms_per_req']:.3f} | {service['rows_per_s']:,.0f} | "
                f"{service['others_cores_busy']:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    print("\n".join(table(args.before, args.after)))


if __name__ == "__main__":
    main()
