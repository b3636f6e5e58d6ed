"""Draw the panels of modelserve-dashboard.json from a real Prometheus, as one picture.

Grafana is not packaged for Debian, so the docs show the dashboard's panels drawn by this script
instead: every panel's queries, exactly as the JSON holds them (Grafana's variables replaced:
``$instance`` and ``$model`` by ``.*``, ``$__rate_interval`` by ``--rate-interval``,
``$__range`` by the plotted range), run as range queries against Prometheus.

Two ways to run it (from the repository root, in the project's virtual environment):

    # panels of the last hour from a Prometheus that scrapes modelserve
    python deploy/grafana/plot_panels.py --prometheus http://127.0.0.1:9090 --minutes 60

    # start a server and a Prometheus (deploy/prometheus/prometheus.yml, 2 s scrapes), send
    # traffic in phases (steady, busier, overload bursts, calm) for about 3 minutes, then draw
    python deploy/grafana/plot_panels.py --demo

The demo needs Debian's ``prometheus`` package (``make ops-check`` installs it); both write
docs/images/operations-dashboard.png unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "modelserve-dashboard.json"
DEFAULT_OUT = ROOT / "docs" / "images" / "operations-dashboard.png"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    instant: bool  # a table panel's query: one value per series, not a line


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # "timeseries" or "table"
    unit: str
    queries: tuple[Query, ...]


def panels(rate_interval: str, range_: str, dashboard: Path = DASHBOARD) -> list[Panel]:
    """The dashboard's panels in order (rows left out), their queries ready for Prometheus."""
    found = []
    for panel in json.loads(dashboard.read_text())["panels"]:
        if panel["type"] == "row":
            continue
        queries = tuple(
            Query(
                expand(target["expr"], rate_interval, range_),
                target.get("legendFormat", ""),
                bool(target.get("instant")),
            )
            for target in panel["targets"]
        )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        found.append(Panel(panel["title"], panel["type"], unit, queries))
    return found


def expand(expr: str, rate_interval: str, range_: str) -> str:
    """A Grafana query as Prometheus reads it: every server and model, the given windows."""
    for variable, value in (
        ("$__rate_interval", rate_interval),
        ("$__range", range_),
        ("$instance", ".*"),
        ("$model", ".*"),
    ):
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"a Grafana variable this script does not know in {expr!r}")
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text if text and template != "__auto" else ",".join(f"{k}={v}" for k, v in labels.items())


# ---- the demo: a server, a Prometheus and traffic --------------------------------------------

# A small forecaster queue, so the overload phase is refused (503) rather than queued.
DEMO_SETTINGS = {
    "MODELSERVE_WORKERS": "1",
    "MODELSERVE_MAX_ITEMS_PER_REQUEST": "8",
    "MODELSERVE_BATCH_OVERRIDES": json.dumps({"forecaster": {"max_queue_size": 8, "max_batch_size": 8}}),
}
# (name, seconds, concurrent clients, overload bursts)
PHASES = (
    ("steady", 50, 2, False),
    ("busier", 50, 8, False),
    ("overload bursts", 25, 2, True),
    ("calm", 45, 1, False),
)
SCRAPE_INTERVAL = "2s"


def co2_like(length: int, phase: float) -> list[float]:
    return [round(330 + 0.03 * t + 3 * math.sin(2 * math.pi * (t + phase) / 52.18), 2) for t in range(length)]


def requests_mix(rng: random.Random) -> Iterator[tuple[str, dict]]:
    """An endless mix of requests: mostly good, one in 20 malformed (a 400)."""
    while True:
        draw = rng.random()
        if draw < 0.05:
            yield "/classify", {"images": [[1, 2, 3]]}
        elif draw < 0.55:
            n = rng.randint(1, 8)
            yield "/classify", {"images": [[[rng.randint(0, 16) for _ in range(8)] for _ in range(8)]] * n}
        elif draw < 0.8:
            rows = rng.randint(1, 4)
            yield (
                "/forecast",
                {"series": [co2_like(rng.randint(104, 400), rng.random() * 52) for _ in range(rows)]},
            )
        else:
            yield (
                "/generate",
                {"labels": [rng.randint(0, 9) for _ in range(rng.randint(1, 8))], "format": "array"},
            )


async def drive(url: str) -> list[tuple[str, float, float]]:
    """Send the phases' traffic; returns (phase, start, end) in epoch seconds."""
    import httpx

    spans = []
    async with httpx.AsyncClient(
        base_url=url, timeout=30, trust_env=False, limits=httpx.Limits(max_connections=128)
    ) as client:

        async def client_loop(seed: int, until: float) -> None:
            mix = requests_mix(random.Random(seed))
            while time.time() < until:
                path, body = next(mix)
                await client.post(path, json=body)
                await asyncio.sleep(0.02)

        async def bursts(until: float) -> None:
            rows = [[co2_like(400, p + q) for q in range(4)] for p in range(64)]
            while time.time() < until:
                await asyncio.gather(*(client.post("/forecast", json={"series": r}) for r in rows))
                await asyncio.sleep(0.5)

        for number, (name, seconds, clients, overload) in enumerate(PHASES):
            start = time.time()
            until = start + seconds
            tasks = [client_loop(1000 * number + i, until) for i in range(clients)]
            if overload:
                tasks.append(bursts(until))
            await asyncio.gather(*tasks)
            spans.append((name, start, time.time()))
            print(f"  {name}: {time.time() - start:.0f} s", file=sys.stderr)
    return spans


# ---- drawing ----------------------------------------------------------------------------------


def draw(prometheus, start: float, end: float, out: Path, rate_interval: str, note: str, spans=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1.0, (end - start) / 300)
    shown = panels(rate_interval, f"{int(end - start)}s")
    series_panels = [p for p in shown if p.kind == "timeseries"]
    tables = [p for p in shown if p.kind == "table"]
    columns = 3
    rows = math.ceil(len(series_panels) / columns)
    height = 3.2 * rows + 1.8
    fig, axes = plt.subplots(rows, columns, figsize=(16, height), squeeze=False)
    colours = {"classifier": "tab:blue", "forecaster": "tab:orange", "generator": "tab:green"}
    for ax, panel in zip(axes.flat, series_panels, strict=False):
        drawn = 0
        for number, query in enumerate(panel.queries):
            for series in prometheus.query_range(query.expr, start, end, step):
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                if panel.unit == "s":
                    values = [v * 1000 for v in values]
                if panel.unit == "percentunit":
                    values = [v * 100 for v in values]
                labels = series["metric"]
                ax.plot(
                    times,
                    values,
                    label=legend(query.legend, labels),
                    color=colours.get(labels.get("model", "")),
                    linestyle=("-", "--", ":")[number % 3],
                    linewidth=1.2,
                    drawstyle="steps-post" if panel.title == "Model ready" else "default",
                )
                drawn += 1
        for name, span_start, span_end in spans:
            if "overload" in name:
                ax.axvspan(span_start - start, span_end - start, color="red", alpha=0.08, linewidth=0)
        unit = {"s": "ms", "percentunit": "%", "reqps": "per second"}.get(panel.unit, "")
        ax.set_xlim(0, end - start)
        if panel.title == "Model ready":
            ax.set_ylim(-0.05, 1.05)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no series in this range", ha="center", va="center", transform=ax.transAxes)
    for ax in axes.flat[len(series_panels) : rows * columns]:
        ax.axis("off")
    lines = []
    for panel in tables:
        for query in panel.queries:
            for series in prometheus.query(query.expr):
                labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "job")}
                lines.append(", ".join(f"{k}={v}" for k, v in labels.items()))
    fig.text(
        0.01,
        1.4 / height,
        f"{tables[0].title if tables else 'Runtime'} (table panel, at the end):\n" + "\n".join(lines),
        va="top",
        fontsize=7,
        family="monospace",
    )
    for ax in axes[rows - 1]:
        ax.set_xlabel("seconds from the start", fontsize=8)
    fig.suptitle(f"modelserve dashboard panels, drawn from a real Prometheus scrape\n{note}", fontsize=11)
    fig.tight_layout(rect=(0, 1.5 / height, 1, 1 - 0.6 / height))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}", file=sys.stderr)


def commit() -> str:
    """The checkout's commit, ``-dirty`` when it has changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def cpu() -> str:
    """The CPU's model name and how many CPUs this process may use."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{len(os.sched_getaffinity(0))} x {model}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="URL of a Prometheus that scrapes modelserve")
    source.add_argument("--demo", action="store_true", help="start a server and a Prometheus, send traffic")
    parser.add_argument("--minutes", type=float, default=60, help="range to draw with --prometheus")
    parser.add_argument(
        "--rate-interval", default=None, help="window of rate() (default: 1m, 10s with --demo)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:  # run as a script: harness/ is imported from the repository
        sys.path.insert(0, str(ROOT))

    if args.prometheus:

        class Remote:
            def __init__(self, url: str) -> None:
                import httpx

                self._http = httpx.Client(base_url=url, timeout=30, trust_env=False)

            def _data(self, path: str, **params):
                body = self._http.get(f"/api/v1/{path}", params=params).json()
                if body.get("status") != "success":
                    raise RuntimeError(f"{path} {params}: {body}")
                return body["data"]["result"]

            def query(self, expr: str):
                return self._data("query", query=expr)

            def query_range(self, expr: str, start: float, end: float, step: float):
                return self._data("query_range", query=expr, start=start, end=end, step=step)

        end = time.time()
        start = end - args.minutes * 60
        stamp = f"{datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M} UTC"
        note = f"{args.prometheus}, {stamp}, last {args.minutes:g} min"
        draw(Remote(args.prometheus), start, end, args.out, args.rate_interval or "1m", note)
        return 0

    from harness.prometheus import run_prometheus
    from harness.server import bentoml_serve

    rate_interval = args.rate_interval or "10s"
    print("starting the server and Prometheus", file=sys.stderr)
    with (
        bentoml_serve(settings=DEMO_SETTINGS, name="demo") as server,
        run_prometheus([f"127.0.0.1:{server.port}"], interval=SCRAPE_INTERVAL) as prometheus,
    ):
        prometheus.wait_for('up{job="modelserve"}', lambda r: bool(r) and r[0]["value"][1] == "1")
        spans = asyncio.run(drive(server.url))
        time.sleep(6)  # the last scrapes
        start, end = spans[0][1] - 10, time.time()
        phases = ", ".join(f"{name} {b - a:.0f} s" for name, a, b in spans)
        note = (
            f"{datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {cpu()}\n"
            f"one server, 1 worker, "
            f"forecaster queue 8 items; scraped every {SCRAPE_INTERVAL}, rate over {rate_interval}; "
            f"phases: {phases} (shaded: overload)"
        )
        draw(prometheus, start, end, args.out, rate_interval, note, spans)
    return 0


if __name__ == "__main__":
    sys.exit(main())
