"""Pictures of saved results, for the pages that quote them: ``python -m bench.plots``.

Nothing is measured here: each plot is drawn from a file a measuring command saved, so it can be
redrawn at any time and always shows what its evidence page's tables show.

- ``sweep``: the settings sweep of ``python -m bench --sweep-only`` (bench/results/sweep.json),
  throughput and p99 of every setting at 16 and 64 connections, against the defaults.
  Embedded in docs/evidence/benchmarks.md.
- ``overload``: ``python -m bench.overload`` at 512 and at 2,048 connections
  (bench/results/overload.json, overload-c2048.json): answers, refusals and latency before,
  during and after the overload, and the recovery second by second. Embedded in
  docs/evidence/reliability.md.
- ``backtest``: the forecaster's rolling-origin backtest as printed by
  ``python -m training.forecaster_backtest --gru`` (docs/evidence/forecaster_backtest.txt):
  every candidate's mean and worst fold, and the 13-week bands of the ones that matter.
  Embedded in docs/training.md.
- ``request-path``: a request's way through the service (docs/batching.md): no data, a diagram.

Writes PNGs under docs/images/ (``--out`` for another folder); ``--only`` draws some of them.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT

IMAGES = ROOT / "docs" / "images"
BACKTEST = ROOT / "docs" / "evidence" / "forecaster_backtest.txt"
DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log(axis: Any) -> None:
    """A log-scaled axis labelled 5, 10, 20, 50, ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _cell(variant: dict, endpoint: str, connections: int) -> dict:
    for cell in variant["cells"]:
        if (cell["endpoint"], cell["concurrency"]) == (endpoint, connections):
            return cell
    raise KeyError((variant["label"], endpoint, connections))


def _spread(cell: dict, key: str) -> tuple[float, float]:
    """The lowest and highest value of ``key`` over the cell's rounds (the median alone if none)."""
    values = [r[key] for r in cell.get("rounds", []) if key in r] or [cell[key]]
    return min(values), max(values)


def plot_sweep(sweep: dict, path: Path) -> None:
    """One bar per setting and concurrency: throughput (with the rounds' range) and p99 latency."""
    plt = _pyplot()
    variants = sweep["variants"]
    labels = [v["label"] for v in variants]
    defaults = next(v for v in variants if v["label"] == "defaults")
    fig, axes = plt.subplots(2, 2, figsize=(13, 12), constrained_layout=True, sharey=True)
    panels = (("classify", "req/s", "req_per_s"), ("forecast", "rows/s", "rows_per_s"))
    height = 0.38
    ys = range(len(variants))
    for row, (endpoint, unit, key) in enumerate(panels):
        for shift, connections, colour in ((-height / 2, 16, "#9ecae1"), (height / 2, 64, "#2171b5")):
            cells = [_cell(v, endpoint, connections) for v in variants]
            at = [y + shift for y in ys]
            value_key = key if key in cells[0] else "req_per_s"
            rate = [c[value_key] for c in cells]
            low_high = [_spread(c, "req_per_s") for c in cells]  # rounds record req/s (one row each)
            err = [
                [r - lo for r, (lo, _) in zip(rate, low_high, strict=True)],
                [hi - r for r, (_, hi) in zip(rate, low_high, strict=True)],
            ]
            axes[row][0].barh(
                at,
                rate,
                height,
                xerr=err,
                color=colour,
                ecolor="#444",
                capsize=2,
                label=f"{connections} connections (bar: median of the rounds, whisker: their range)",
            )
            axes[row][1].barh(at, [c["p99_ms"] for c in cells], height, color=colour)
        base = _cell(defaults, endpoint, 64)
        axes[row][0].axvline(
            base[key if key in base else "req_per_s"],
            color="#d94801",
            ls="--",
            lw=1.2,
            label="the defaults at 64 connections",
        )
        axes[row][1].axvline(base["p99_ms"], color="#d94801", ls="--", lw=1.2)
        axes[row][0].set_title(f"/{endpoint}: throughput ({unit}, longer is better)")
        axes[row][0].set_xlabel(unit)
        axes[row][1].set_title(f"/{endpoint}: p99 latency (ms, log scale, shorter is better)")
        axes[row][1].set_xlabel("p99 latency (ms)")
        axes[row][1].set_xscale("log")
        _plain_log(axes[row][1].xaxis)
        for ax in axes[row]:
            ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(ys), labels)
    axes[0][0].invert_yaxis()  # the axes share y: once for all, the defaults on top
    for ax in axes[:, 0]:
        for tick in ax.get_yticklabels():
            if tick.get_text() == "defaults":
                tick.set_fontweight("bold")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9)
    m, o = sweep["machine"], sweep["options"]
    fig.suptitle(
        f"Settings sweep: one MODELSERVE_* setting changed from the defaults per row, a fresh server each\n"
        f"{m['nproc']} cores ({m['cpu_model']}), wrk, {o.get('rounds', 1)} rounds of {o['cell_seconds']} s "
        f"per bar, {sweep['started_at'][:10]}, commit {sweep.get('revision', 'unknown')}, forecaster/1",
        fontsize=12,
    )
    _save(fig, path)


def plot_overload(runs: list[dict], path: Path) -> None:
    """Per run: answers per second by kind and latency in each phase, then the recovery."""
    plt = _pyplot()
    fig = plt.figure(figsize=(15, 5.2 * len(runs)), layout="constrained")
    for subfig, run in zip(fig.subfigures(len(runs), 1), runs, strict=True):
        axes = [subfig.subplots(1, 3)]
        row = 0
        phases = run["phases"]
        names = [f"{p['phase']}\n{p['connections']:,} conn." for p in phases]
        xs = range(len(phases))
        accepted = [p["accepted_per_s"] for p in phases]
        refused = [p["refused_per_s"] for p in phases]
        other = [sum(p["other_errors"].values()) / p["seconds"] for p in phases]
        ax = axes[row][0]
        ax.bar(xs, accepted, color="#2171b5", label="answered 2xx")
        ax.bar(xs, refused, bottom=accepted, color="#fd8d3c", label="refused 503 + Retry-After")
        ax.bar(
            xs,
            other,
            bottom=[a + r for a, r in zip(accepted, refused, strict=True)],
            color="#cb181d",
            label="other errors (504)",
        )
        ax.set_xticks(list(xs), names)
        ax.set_ylim(0, 1.4 * max(a + r + o for a, r, o in zip(accepted, refused, other, strict=True)))
        ax.set_ylabel("responses per second")
        ax.set_title("Responses per second, by kind")
        ax.legend(fontsize=8, loc="upper left", ncols=2)
        ax = axes[row][1]
        for key, label, marker in (("accepted_p50_ms", "p50", "o"), ("accepted_p99_ms", "p99", "s")):
            ax.plot(xs, [p[key] for p in phases], marker=marker, label=f"answered requests, {label}")
        refused_p99 = [p["refused_p99_ms"] for p in phases]
        if any(v is not None for v in refused_p99):
            ax.plot(
                xs,
                [v if v is not None else float("nan") for v in refused_p99],
                marker="^",
                ls=":",
                color="#fd8d3c",
                label="refusals, p99",
            )
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("Latency in each phase")
        ax.legend(fontsize=8)
        ax = axes[row][2]
        after = run["recovery"]["accepted_per_second_after"]
        ax.plot(
            range(1, len(after) + 1), after, marker="o", color="#2171b5", label="2xx in each second after"
        )
        ax.axhline(phases[0]["accepted_per_s"], color="#d94801", ls="--", label="2xx/s before the overload")
        ax.axhline(0.9 * phases[0]["accepted_per_s"], color="#d94801", ls=":", label="90% of it")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds after the overload ended")
        ax.set_ylabel("2xx responses per second")
        ax.set_title(f"Recovery: 90% of the rate again after {run['recovery']['recovered_after_s']:.1f} s")
        ax.legend(fontsize=8, loc="lower right")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        others = max(p["others_cores_busy"] for p in phases)
        busy = (
            f"\na busy machine: other processes took up to {others:.2f} of its "
            f"{run['machine']['nproc']} cores, so the rates are low; read the shape"
            if others > 0.5
            else ""
        )
        subfig.suptitle(
            f"{phases[1]['connections']:,} connections: /classify, one image a request, "
            f"{run['options']['seconds']} s a phase, {run['started_at'][:16].replace('T', ' ')} UTC, "
            f"commit {run['revision']}{busy}",
            fontsize=11.5,
            fontweight="bold",
        )
    fig.suptitle(
        "python -m bench.overload: 64 connections, then an overload, then 64 again"
        " (one server, 2 workers, 2 cores)",
        fontsize=13,
    )
    _save(fig, path)


BACKTEST_ROW = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<score>[\d.]+)\s+(?P<pooled>[\d.]+)\s+(?P<b1>[\d.]+)\s+(?P<b2>[\d.]+)\s+"
    r"(?P<b3>[\d.]+)\s+(?P<b4>[\d.]+)\s+(?P<worst>[\d.]+)\s+(?P<goal>\d+)/(?P<folds>\d+)\s+(?P<bias>[-+][\d.]+)"
)


def read_backtest(text: str) -> tuple[list[dict], str]:
    """The candidates and bounds of the backtest's printed table, in its order, and its choice."""
    rows, chosen = [], ""
    for line in text.splitlines():
        if line.startswith("chosen: "):
            chosen = line.removeprefix("chosen: ").strip()
        match = BACKTEST_ROW.match(line)
        if match and not line.startswith("#"):
            g = match.groupdict()
            rows.append(
                {
                    "name": g["name"].strip(),
                    "score": float(g["score"]),
                    "bands": [float(g[b]) for b in ("b1", "b2", "b3", "b4")],
                    "worst": float(g["worst"]),
                    "meeting_goal": int(g["goal"]),
                    "folds": int(g["folds"]),
                }
            )
    return rows, chosen


def _family(name: str) -> str:
    if name.startswith("bound"):
        return "bounds (read the weeks they score: not candidates)"
    if name.startswith("gru"):
        return "the GRU recipe (forecaster/2's)"
    if name.startswith("mean of gru"):
        return "mean of the GRU and the ridge"
    if name.startswith(("prior", "anchored prior")):
        return "a seasonal prior + a linear map"
    return "a linear map of the last weeks"


FAMILY_STYLE = {
    "the GRU recipe (forecaster/2's)": ("#cb181d", "D", 90),
    "mean of the GRU and the ridge": ("#6a51a3", "s", 70),
    "a linear map of the last weeks": ("#2171b5", "o", 30),
    "a seasonal prior + a linear map": ("#74c476", "o", 30),
    "bounds (read the weeks they score: not candidates)": ("#969696", "x", 60),
}


def plot_backtest(rows: list[dict], chosen: str, path: Path) -> None:
    """Left: every candidate's mean over the folds against its worst fold. Right: the bands."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(15, 6.5), constrained_layout=True, gridspec_kw={"width_ratios": [1.25, 1]}
    )
    seen = set()
    for row in rows:
        family = _family(row["name"])
        colour, marker, size = FAMILY_STYLE[family]
        left.scatter(
            row["score"],
            row["worst"],
            color=colour,
            marker=marker,
            s=size,
            label=None if family in seen else family,
            zorder=3,
        )
        seen.add(family)
    for x, text in ((1.0, "the ridge (1.0)"), (0.85, "the goal (0.85)")):
        left.axvline(x, color="#444", ls="--" if x == 1.0 else ":", lw=1)
        left.annotate(
            text,
            xy=(x, 0.72),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="center",
            ha="right",
            fontsize=9,
        )
    left.axhline(1.0, color="#444", ls="--", lw=0.8)
    picked: dict[str, tuple[str, tuple[int, int] | None]] = {  # name: label, its offset in points
        "gru (the default recipe)": ("GRU recipe", None),  # their markers say which they are
        "mean of gru (the default recipe) and the ridge": ("mean of GRU and ridge", None),
        chosen: ("the backtest's choice (a linear map)", (-30, 95)),
        "bound: ridge less its window's mean error": ("a bound", (10, 40)),
    }
    for row in rows:
        text, offset = picked.get(row["name"], ("", None))
        if offset is not None:
            left.annotate(
                text,
                (row["score"], row["worst"]),
                xytext=offset,
                textcoords="offset points",
                fontsize=9,
                arrowprops={"arrowstyle": "-", "color": "#555", "lw": 0.8},
            )
    left.set_xlabel("score: mean over the 12 folds of MAE / the ridge's MAE (lower is better)")
    left.set_ylabel("worst fold: highest MAE / ridge MAE of the 12")
    left.set_title(f"Every candidate ({len(rows)}): its mean and its worst fold")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    bands = ["weeks 1-13", "14-26", "27-39", "40-52"]
    for row in rows:
        if row["name"] in picked:
            colour, marker, _ = FAMILY_STYLE[_family(row["name"])]
            right.plot(
                range(4),
                row["bands"],
                marker=marker,
                color=colour,
                label=f"{picked[row['name']][0]} (score {row['score']:.3f}; goal met in "
                f"{row['meeting_goal']} of {row['folds']} folds)",
            )
    right.axhline(1.0, color="#444", ls="--", lw=1, label="the ridge")
    right.axhline(0.85, color="#444", ls=":", lw=1, label="the goal")
    right.set_xticks(range(4), bands)
    right.set_xlabel("forecast horizon band (weeks ahead)")
    right.set_ylabel("mean over the folds of MAE / the ridge's MAE (lower is better)")
    right.set_title("By how far ahead: the candidates above")
    right.grid(alpha=0.3)
    right.set_ylim(0.45, 1.2)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "The forecaster's rolling-origin backtest: 12 folds (1987-1988 to 1998-1999), no test week; "
        "each point is a recipe trained in every fold",
        fontsize=12,
    )
    _save(fig, path)


def plot_request_path(path: Path) -> None:
    """Boxes and arrows: connection, direct lane or ASGI, the handler, pipeline, batcher, ONNX Runtime."""
    plt = _pyplot()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(13, 12.5))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 12.5)
    ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    boxes: dict[str, tuple[float, float, float, float]] = {}

    def box(key: str, x: float, y: float, w: float, h: float, title: str, body: str, colour: str) -> None:
        boxes[key] = (x, y, w, h)
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=colour,
                edgecolor="#333",
                lw=1.2,
            )
        )
        ax.text(x + w / 2, y + h - 0.18, title, ha="center", va="top", fontsize=12, fontweight="bold")
        ax.text(x + w / 2, y + h - 0.55, body, ha="center", va="top", fontsize=9.5, linespacing=1.35)

    def arrow(start: tuple[float, float], end: tuple[float, float], colour: str) -> None:
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, color=colour, lw=1.7))

    def note(x: float, y: float, text: str, colour: str, ha: str = "left") -> None:
        ax.text(x, y, text, ha=ha, va="center", fontsize=9, color=colour, style="italic")

    transport, api, inference = "#deebf7", "#fee6ce", "#e5f5e0"
    blue, red = "#08519c", "#a50f15"
    ax.text(
        6.5,
        12.45,
        "A request's path through one worker of the service (docs/batching.md)\n"
        "blue arrows: the request; red arrows: its answer, which leaves by the adapter that brought it in",
        ha="center",
        va="top",
        fontsize=12.5,
    )
    ax.text(
        6.5,
        11.7,
        "blue boxes: service/transport; orange: service/api; green: service/inference."
        " An error at any step is answered\nas JSON with the request id by render_error"
        " (service/platform/errors.py), whichever way the request came.",
        ha="center",
        va="top",
        fontsize=10,
        color="#333",
    )
    box("client", 4.5, 9.95, 4, 0.8, "client", "HTTP/1.1, keep-alive", "#f0f0f0")
    box(
        "conn",
        3,
        8.2,
        7,
        1.25,
        "connection (the worker's protocol)",
        "service/transport/connections.py: bounds on headers, idle time\n"
        "and slow bodies; the drain on SIGTERM",
        transport,
    )
    box(
        "lane",
        0.6,
        5.85,
        5.2,
        1.65,
        "direct lane",
        "service/transport/direct_lane.py: a POST to a task\n"
        "route with a body of known length within the limit,\n"
        "under ASGI's in-flight limit and recycling; no ASGI\ncycle, so about half the CPU of a request",
        transport,
    )
    box(
        "asgi",
        7.2,
        5.85,
        5.5,
        1.65,
        "ASGI",
        "what the lane does not take (a query string, a chunked\n"
        "body, V2): BentoML's app, the service's middleware\n"
        "(in-flight limit, body limit, recycling), then FastPathApp\n"
        "(service/transport/fast_path.py): the route by path",
        transport,
    )
    box(
        "handler",
        0.6,
        3.7,
        5.2,
        1.45,
        "the one task handler",
        "TaskHandler (service/api/handler.py): the route's\n"
        "body reader, one await pipeline.answer(body) under\n"
        "the request deadline, then encode (or render_error)",
        api,
    )
    box(
        "v2",
        7.2,
        3.7,
        5.5,
        1.45,
        "V2 infer route",
        "service/api/open_inference.py: decode the\ntensors (JSON or binary), then\n"
        "await pipeline.answer_tensors(tensors)",
        api,
    )
    box(
        "pipeline",
        3,
        1.95,
        7,
        1.2,
        "the model's pipeline",
        "service/inference/pipelines.py: prepare, decode into items (checking\n"
        "what only the model knows); encode each request's own results",
        inference,
    )
    box(
        "batcher",
        0.6,
        0.05,
        5.2,
        1.5,
        "the model's batcher",
        "service/inference/batcher.py: a queue per model\nand worker; merges concurrent requests' items,\n"
        "up to max_batch_size; 503 + Retry-After when\nthe queue would not drain in time",
        inference,
    )
    box(
        "ort",
        7.4,
        0.05,
        5.3,
        1.5,
        "ONNX Runtime",
        "service/inference/runtime.py: a session per\nmodel version; one run_batch call per batch\n"
        "(inline on the event loop, or on a helper\nthread for a model whose batches take ms)",
        inference,
    )

    arrow((5.9, 9.95), (5.9, 9.45), blue)
    note(5.8, 9.7, "request", blue, ha="right")
    arrow((7.1, 9.45), (7.1, 9.95), red)
    note(7.2, 9.7, "answer", red)
    arrow((4.2, 8.2), (3.6, 7.5), blue)
    note(3.8, 7.85, "a plain task POST", blue, ha="right")
    arrow((8.8, 8.2), (9.5, 7.5), blue)
    note(9.3, 7.85, "everything else", blue)
    arrow((2.6, 5.85), (2.6, 5.15), blue)
    note(2.7, 5.5, "route, body bytes,\nrequest id", blue)
    arrow((8.0, 5.85), (5.0, 5.15), blue)
    note(6.9, 5.35, "task routes", blue)
    arrow((11.8, 5.85), (11.8, 5.15), blue)
    note(11.9, 5.5, "V2 infer", blue)
    arrow((4.4, 3.7), (4.8, 3.15), blue)
    note(4.75, 3.45, "body", blue)
    arrow((3.8, 3.15), (3.4, 3.7), red)
    note(3.5, 3.45, "answer body", red, ha="right")
    arrow((8.4, 3.7), (8.0, 3.15), blue)
    note(8.05, 3.45, "tensors", blue, ha="right")
    arrow((9.2, 3.15), (9.6, 3.7), red)
    note(9.55, 3.45, "answer tensors", red)
    arrow((4.0, 1.95), (3.6, 1.55), blue)
    note(3.95, 1.72, "items", blue)
    arrow((2.4, 1.55), (3.2, 1.95), red)
    note(2.55, 1.78, "each request's own results", red, ha="right")
    arrow((5.8, 1.05), (7.4, 1.05), blue)
    note(6.6, 1.25, "a batch of items", blue, ha="center")
    arrow((7.4, 0.55), (5.8, 0.55), red)
    note(6.6, 0.35, "its outputs", red, ha="center")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


PLOTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "sweep": ("bench-sweep.png", lambda p: plot_sweep(_load("sweep.json"), p)),
    "overload": (
        "overload.png",
        lambda p: plot_overload([_load("overload.json"), _load("overload-c2048.json")], p),
    ),
    "backtest": ("forecaster-backtest.png", lambda p: plot_backtest(*read_backtest(BACKTEST.read_text()), p)),
    "request-path": ("request-path.png", plot_request_path),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", choices=sorted(PLOTS), help="draw only these")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs (default docs/images/)")
    args = parser.parse_args(argv)
    for name in args.only or PLOTS:
        filename, draw = PLOTS[name]
        draw(args.out / filename)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
