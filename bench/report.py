"""Targets, tables and the generated docs: everything the benchmark shows of its results.

Works from the results alone (the dicts ``runs`` returns and saves as bench/results/*.json), so
docs/evidence/benchmarks.md and its plot can be rewritten from saved results without running anything
(``python -m bench --report-only``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ANALYSIS, DOCS, GPU_BEGIN, GPU_END, PLOT, RESULTS, ROOT, log
from bench.measure import NOISE_CORES, spread_text
from bench.servers import SERVERS
from bench.workload import CONCURRENCY, ENDPOINTS

# /classify c=64: the service must serve this many times the two-worker baseline's req/s.
TWO_WORKER_RATIO = 1.5


def cell_of(result: dict, server: str, endpoint: str, c: int) -> dict:
    """The cell, or KeyError when the run skipped it."""
    for x in result["cells"]:
        if (x["server"], x["endpoint"], x["concurrency"]) == (server, endpoint, c):
            return x
    raise KeyError((server, endpoint, c))


def targets(result: dict) -> list[dict]:
    """Each target with PASS/MISS, from cells of this run; a target whose cells were skipped is left out."""
    out = []

    def add(name: str, ok: bool, measured: str, cells: list[dict]) -> None:
        errors = sum(c.get("error_count", 0) for c in cells)
        if errors:
            measured += f" ({errors} failed requests)"
        noisy = max(c.get("others_cores_busy", 0.0) for c in cells)
        if noisy > NOISE_CORES:
            measured += f" (other processes used up to {noisy:.2f} cores meanwhile)"
        stolen = max(c.get("stolen_cores", 0.0) for c in cells)
        if stolen > NOISE_CORES:
            measured += f" (the hypervisor took up to {stolen:.2f} cores meanwhile)"
        out.append({"target": name, "pass": bool(ok and not errors), "measured": measured})

    def throughput(endpoint: str, unit: str, key: str) -> None:
        svc, base = cell_of(result, "service", endpoint, 64), cell_of(result, "baseline", endpoint, 64)
        ratio = svc[key] / base[key]
        add(
            f"/{endpoint} c=64: service {unit} >= 1.5x baseline, p99 <= baseline p99",
            ratio >= 1.5 and svc["p99_ms"] <= base["p99_ms"],
            f"{ratio:.2f}x ({svc[key]:,.0f} vs {base[key]:,.0f} {unit}); "
            f"p99 {svc['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms",
            [svc, base],
        )

    def throughput_vs_two_workers() -> None:
        svc, base = cell_of(result, "service", "classify", 64), cell_of(result, "baseline_2w", "classify", 64)
        ratio = svc["req_per_s"] / base["req_per_s"]
        add(
            f"/classify c=64: service req/s >= {TWO_WORKER_RATIO}x the two-worker baseline, p99 <= its p99",
            ratio >= TWO_WORKER_RATIO and svc["p99_ms"] <= base["p99_ms"],
            f"{ratio:.2f}x ({svc['req_per_s']:,.0f} vs {base['req_per_s']:,.0f} req/s); "
            f"p99 {svc['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms",
            [svc, base],
        )

    def latency_c1() -> None:
        s1, b1 = cell_of(result, "service", "classify", 1), cell_of(result, "baseline", "classify", 1)
        gap = s1["p50_ms"] - b1["p50_ms"]
        add(
            "/classify c=1: service p50 within 1 ms of baseline p50",
            gap <= 1.0,
            f"{s1['p50_ms']:.3f} vs {b1['p50_ms']:.3f} ms ({gap:+.3f} ms)",
            [s1, b1],
        )

    def batching() -> None:
        on = cell_of(result, "service", "forecast", 64)
        off = cell_of(result, "service_nobatch", "forecast", 64)
        ratio = on["rows_per_s"] / off["rows_per_s"]
        add(
            "/forecast c=64: batching on rows/s >= batching off, p99 no higher",
            ratio >= 1 and on["p99_ms"] <= off["p99_ms"],
            f"{ratio:.2f}x ({on['rows_per_s']:,.0f} vs {off['rows_per_s']:,.0f} rows/s); "
            f"p99 {on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms",
            [on, off],
        )

    def soak() -> None:
        s = result["soak"]
        add(
            f"/classify c=16 for {s['seconds']:.0f} s: max latency < 50 ms",
            s["max_ms"] < 50,
            f"max {s['max_ms']:.1f} ms (p99 {s['p99_ms']:.2f} ms)",
            [s],
        )
        growth = (s["rss_ratio"] - 1) * 100
        add(
            f"/classify c=16 for {s['seconds']:.0f} s: RSS after within 10% of RSS after warm-up",
            abs(growth) <= 10,
            f"{s['rss_after_warmup_mb']:.1f} -> {s['rss_after_mb']:.1f} MB ({growth:+.1f}%)",
            [s],
        )

    checks = [
        lambda: throughput("classify", "req/s", "req_per_s"),
        throughput_vs_two_workers,
        latency_c1,
        lambda: throughput("forecast", "rows/s", "rows_per_s"),
        batching,
        soak,
    ]
    for check in checks:
        with contextlib.suppress(KeyError):
            check()
    return out


COLUMNS = [  # header, key, format
    ("req/s", "req_per_s", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("server CPU ms/req", "server_cpu_ms_per_req", "{:.3f}"),
    ("server cores busy", "server_cores_busy", "{:.2f}"),
    ("wrk CPU µs/req", "wrk_cpu_us_per_req", "{:.1f}"),
    ("wrk cores busy", "wrk_cores_busy", "{:.2f}"),
    ("other processes' cores", "others_cores_busy", "{:.2f}"),
    ("stolen cores", "stolen_cores", "{:.2f}"),
    ("server RSS MB", "server_rss_mb", "{:.0f}"),
    ("connections per worker", "connections_per_worker", "{}"),
    ("failed", "error_count", "{:d}"),
]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cell_text(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):  # connections per worker, one spread per round
        return spread_text(value)
    return fmt.format(value)


def cells_table(cells: list[dict], endpoint: str, label: Callable[[dict], str]) -> str:
    unit = "rows/s" if endpoint == "forecast" else "req/s"
    header = ["server", "c", *(h.replace("req/s", unit) for h, _, _ in COLUMNS)]
    rows = [
        [label(c), str(c["concurrency"]), *(cell_text(c.get(k), f) for _, k, f in COLUMNS)]
        for c in cells
        if c["endpoint"] == endpoint
    ]
    return markdown_table(header, rows)


def in_process_table(result: dict) -> str:
    rows = [
        [
            f"/{r['endpoint']}",
            str(r["batch"]),
            str(r["threads"]),
            f"{r['items_per_s']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['cpu_ms_per_item'] * 1000:.1f}",
        ]
        for r in result["in_process"]
    ]
    return markdown_table(
        [
            "model of",
            "batch",
            "intra-op threads",
            "items/s",
            "p50 ms per call",
            "p99 ms per call",
            "CPU µs per item",
        ],
        rows,
    )


def targets_table(result: dict) -> str:
    rows = [[t["target"], "PASS" if t["pass"] else "MISS", t["measured"]] for t in result["targets"]]
    return markdown_table(["target", "result", "measured"], rows)


def print_report(result: dict) -> None:
    print()
    for endpoint in ENDPOINTS:
        print(f"/{endpoint}")
        print(cells_table(result["cells"], endpoint, lambda c: SERVERS[c["server"]]))
        print()
    print("in-process ONNX Runtime (the ceiling)")
    print(in_process_table(result))
    print()
    print("targets")
    for t in result["targets"]:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['measured']}")
    print()


def print_sweep(sweep: dict) -> None:
    for endpoint in ENDPOINTS:
        print(f"/{endpoint}, service under each setting")
        cells = [{**c, "label": v["label"]} for v in sweep["variants"] for c in v["cells"]]
        print(cells_table(cells, endpoint, lambda c: c["label"]))
        print()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for row, (endpoint, unit) in enumerate((("classify", "req/s"), ("forecast", "rows/s"))):
        for server, label in SERVERS.items():
            cells = [c for c in result["cells"] if c["server"] == server and c["endpoint"] == endpoint]
            if not cells:  # a server this run did not measure gets no line and no legend entry
                continue
            xs = [c["concurrency"] for c in cells]
            axes[row][0].plot(xs, [c["req_per_s"] for c in cells], marker="o", label=label)
            axes[row][1].plot(xs, [c["p99_ms"] for c in cells], marker="o", label=label)
        axes[row][0].set_title(f"/{endpoint}: throughput ({unit}, higher is better)")
        axes[row][0].set_ylabel(unit)
        axes[row][0].set_ylim(bottom=0)
        axes[row][1].set_title(f"/{endpoint}: p99 latency (ms, lower is better)")
        axes[row][1].set_ylabel("ms")
        axes[row][1].set_yscale("log")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
            ax.set_xlabel("concurrent connections")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    m = result["machine"]
    seconds = result["options"]["cell_seconds"]
    fig.suptitle(f"{m['nproc']} cores, {m['cpu_model']}; wrk, {seconds} s per point")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def two_worker_baseline_text(result: dict) -> list[str]:
    """The docs' description of the two-worker baseline, when the run measured it."""
    if not any(c["server"] == "baseline_2w" for c in result["cells"]):
        return []
    threads = result["options"]["baseline_threads"]
    return [
        "- **bare FastAPI, two workers**: the same app under `uvicorn --workers 2` (uvicorn's supervisor"
        " binds the port and both workers accept from that one socket, as the service's workers do), each"
        f" worker with its own sessions of {threads} intra-op thread: the same processes and threads as the"
        " service on two cores."
    ]


def env_text(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


def write_docs(result: dict, sweep: dict | None, alt: dict | None, path: Path) -> None:
    m, o = result["machine"], result["options"]
    v = m["versions"]
    settings = result["settings"]["service"]
    env = o["env"]
    lines = [
        "<!-- Generated by bench/report.py: do not edit by hand, rerun the benchmark instead. -->",
        "# Benchmarks",
        "",
        "This file is generated in full by the benchmark, `python -m bench` (see bench/README.md for"
        " how to run it);"
        " every figure below comes from the run it describes. Single runs on a shared machine:"
        " read the ratios, not the third digit.",
        "",
        f"Run of {result['started_at']}, {result['total_seconds'] / 60:.1f} minutes in all.",
        "",
        "## Machine and software",
        "",
        f"- {m['nproc']} CPU cores (nproc), {m['cpu_model']}, {m['memory_gb']} GiB memory,"
        f" Linux {m['kernel']}",
        f"- Python {v['python']}, bentoml {v['bentoml']}, onnxruntime {v['onnxruntime']}, "
        f"uvicorn {v['uvicorn']}, fastapi {v['fastapi']}, uvloop {v['uvloop']}, httptools {v['httptools']}, "
        f"numpy {v['numpy']}, wrk {v['wrk']}",
        f"- Service at commit {result.get('revision', 'unknown')}; models from {result['store']}: "
        + ", ".join(
            f"{x['name']}/{x['version']} (sha256 {x['sha256'][:12]}…)" for x in result["models"].values()
        ),
        "",
        "## What was measured",
        "",
        f"- Load: `wrk -t{o['wrk_threads']} --latency` (threads capped at the concurrency), closed loop, "
        f"keep-alive connections, {o['bodies_per_endpoint']} different bodies per endpoint rotated "
        "(bench/wrk/post.lua). One image per `/classify` request; one row per `/forecast` request, "
        f"{o['forecast_lengths'][0]}–{o['forecast_lengths'][1]} CO2-like values (~315–420 ppm), the length"
        " varying per request, so rows/s = req/s.",
        f"- Each cell: {o['cell_seconds']} s measured after {o['cell_warmup_s']} s unmeasured at the same "
        f"concurrency; each server also got {o['server_warmup_s']} s at c=16 per endpoint first, and every"
        " body was sent once and its answer checked against in-process ONNX Runtime.",
        "- Server CPU: user + system CPU time summed over the server's whole process tree (psutil), before"
        " and after each cell, divided by the requests. *Cores busy* is the same CPU time over the cell's"
        " wall time. Server RSS: summed over the tree after the cell (shared pages count once per process).",
        "- wrk's own CPU (its rusage) is shown beside the server's: it runs on the same cores. *Other"
        " processes' cores*: the machine's busy CPU time (all processes) during the cell minus the server's"
        f" and wrk's, over the wall time; above {NOISE_CORES} the cell was disturbed by something else."
        " *Stolen cores*: CPU time the hypervisor gave to other guests during the cell (a virtual"
        " machine's steal time), which slows every process here alike.",
        "- Connections per worker: how the kernel had spread wrk's connections over the server's"
        " processes, counted halfway through the cell (the workers share one listening socket).",
        "- Failed: connection errors, timeouts and responses with status >= 400 (wrk's count); any"
        " failure in a cell makes the targets that use it MISS.",
        "",
        "## Servers",
        "",
        "- **service (defaults)**: `bentoml serve` of this repository with no `MODELSERVE_*` settings"
        + (" beyond `" + env_text(env) + "`" if env else "")
        + (
            ". As the service resolved them: "
            + ", ".join(f"`{k}={'auto' if v is None else v}`" for k, v in settings.items())
            + "."
            if settings
            else "."
        ),
        "- **service, batching off**: the same with `MODELSERVE_BATCHING=false` (one ONNX Runtime call per"
        " request).",
        f"- **bare FastAPI baseline** (bench/baseline_app.py): FastAPI on uvicorn with uvloop and httptools,"
        f" one worker, one ONNX Runtime session per model (CPU provider, {o['baseline_threads']} intra-op"
        " thread, same model files), `await request.json()`, no batching, no validation, no metrics;"
        " `/forecast` runs one call per row, so it pads nothing.",
        *two_worker_baseline_text(result),
        "- **in-process ONNX Runtime**: `session.run` alone on prepared batches, in the benchmark's own"
        " process, session options as the service's: the ceiling no server can pass.",
        "",
        "## Targets",
        "",
        targets_table(result),
        "",
        "## /classify (one 8x8 image per request)",
        "",
        cells_table(result["cells"], "classify", lambda c: SERVERS[c["server"]]),
        "",
        "## /forecast (one row per request)",
        "",
        cells_table(result["cells"], "forecast", lambda c: SERVERS[c["server"]]),
        "",
        "## In-process ONNX Runtime (the ceiling)",
        "",
        in_process_table(result),
        "",
        "![throughput and p99 latency per server and concurrency](../images/bench-throughput.png)",
        "",
    ]
    s = result.get("soak")
    if s:
        lines += [
            f"## Stall and leak run: service /classify at c=16 for {s['seconds']:.0f} s",
            "",
            f"After {s['warmup_s']} s of warm-up at c=16 on a fresh server: {s['req_per_s']:,.0f} req/s,"
            f" p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, p99.9 {s['p999_ms']:.2f} ms,"
            f" max {s['max_ms']:.1f} ms, {s['error_count']} failed, connections per worker"
            f" {cell_text(s.get('connections_per_worker'), '')}; server RSS"
            f" {s['rss_after_warmup_mb']:.1f} MB after warm-up, {s['rss_after_mb']:.1f} MB after the run"
            f" ({(s['rss_ratio'] - 1) * 100:+.1f}%). RSS every 5 s (MB): "
            + ", ".join(f"{mb:.1f}" for _, mb in s["rss_samples_mb"])
            + ".",
            "",
        ]
    if alt:
        alt_env = env_text(alt["options"]["env"])
        label = lambda c: SERVERS[c["server"]].replace("(defaults)", "(these settings)")  # noqa: E731
        lines += [
            f"## The same run with `{alt_env}`",
            "",
            f"A separate full run ({alt['started_at']}, service at commit {alt.get('revision', 'unknown')},"
            f" {alt['options']['cell_seconds']} s per cell), with these settings given to both service"
            " servers (`python -m bench --env ...`, bench/results/with-env.json); the baseline and"
            " in-process figures are from that run too.",
            "",
            targets_table(alt),
            "",
            "### /classify",
            "",
            cells_table(alt["cells"], "classify", label),
            "",
            "### /forecast",
            "",
            cells_table(alt["cells"], "forecast", label),
            "",
        ]
        s_alt = alt.get("soak")
        if s_alt:
            lines += [
                f"Stall and leak run: {s_alt['req_per_s']:,.0f} req/s, p99 {s_alt['p99_ms']:.2f} ms,"
                f" max {s_alt['max_ms']:.1f} ms, RSS {s_alt['rss_after_warmup_mb']:.1f} ->"
                f" {s_alt['rss_after_mb']:.1f} MB ({(s_alt['rss_ratio'] - 1) * 100:+.1f}%), connections per"
                f" worker {cell_text(s_alt.get('connections_per_worker'), '')}.",
                "",
            ]
    if sweep:
        so = sweep["options"]
        lines += [
            "## The service's settings on this machine (`--sweep`)",
            "",
            f"A separate run ({sweep['started_at']}, service at commit {sweep.get('revision', 'unknown')},"
            f" models from {sweep['store']}, same harness, a fresh server per setting); each row changes"
            f" one `MODELSERVE_*` setting from the defaults. Each cell was measured {so.get('rounds', 1)}"
            f" time(s) for {so['cell_seconds']} s, each time on fresh connections; the table shows the"
            " medians (the maximum of the maxima) and every round's spread of connections over the"
            " workers, which moves the results more than most settings do.",
            "",
        ]
        cells = [{**c, "label": x["label"]} for x in sweep["variants"] for c in x["cells"]]
        for endpoint in ENDPOINTS:
            lines += [f"### /{endpoint}", "", cells_table(cells, endpoint, lambda c: c["label"]), ""]
    if ANALYSIS.exists():  # hand-written, so it survives every regeneration
        lines += [ANALYSIS.read_text().rstrip(), ""]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "python -m bench            # the full run: about 7 minutes, rewrites this file",
        "python -m bench --sweep-only --rounds 3 --duration 4   # the settings table: ~27 minutes",
        "python -m bench --env MODELSERVE_X=V ...   # the alternative-settings section",
        "python -m bench --report-only   # rewrite this file from bench/results/*.json",
        "python -m bench --only classify-c64 --seconds 10   # service vs two bare FastAPI workers, quickly",
        "```",
        "",
    ]
    gpu_section = kept_gpu_section(path)
    if gpu_section:  # measured on another machine by `python -m bench.gpu`: not this run's to drop
        lines += [gpu_section, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def kept_gpu_section(path: Path) -> str | None:
    """The block ``python -m bench.gpu`` wrote into ``path``, markers included, if there is one."""
    text = path.read_text() if path.exists() else ""
    if GPU_BEGIN not in text or GPU_END not in text:
        return None
    return GPU_BEGIN + text.split(GPU_BEGIN, 1)[1].split(GPU_END, 1)[0] + GPU_END


def regenerate_docs(results: Path = RESULTS, docs: Path = DOCS, plot_path: Path = PLOT) -> bool:
    """docs/evidence/benchmarks.md and the plot from the saved defaults run, sweep and --env run.

    Nothing runs: the files are rebuilt from ``results``/latest.json (required), sweep.json and
    with-env.json (each optional). False when there is no latest.json.
    """
    paths = [results / name for name in ("latest.json", "sweep.json", "with-env.json")]
    if not paths[0].exists():
        log("no bench/results/latest.json (a run with default settings): docs not written")
        return False
    latest, sweep, alt = (json.loads(p.read_text()) if p.exists() else None for p in paths)
    write_docs(latest, sweep, alt, docs)
    plot(latest, plot_path)
    log(f"wrote {shown_path(docs)} and {shown_path(plot_path)}")
    return True


def shown_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


COMPARE_COLUMNS = [  # header, key, format: the quick comparison's console table
    ("req/s", "req_per_s", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("p99.9 ms", "p999_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("server CPU ms/req", "server_cpu_ms_per_req", "{:.3f}"),
    ("server cores busy", "server_cores_busy", "{:.2f}"),
    ("server RSS MB", "server_rss_mb", "{:.0f}"),
    ("connections per worker", "connections_per_worker", "{}"),
    ("other processes' cores", "others_cores_busy", "{:.2f}"),
    ("failed", "error_count", "{:d}"),
]
GC_COLUMNS = [  # shown when the run had the GC probe on
    ("GC collections gen 0/1/2", lambda gc: "/".join(str(n) for n in gc["collections"].values())),
    ("GC paused ms/s", lambda gc: f"{gc['pause_ms_per_s']:.1f}"),
    ("longest GC pause ms", lambda gc: f"{gc['max_pause_ms']:.1f}"),
]


def comparison_table(cells: list[dict]) -> str:
    """One row per server and cell: the figures the two-worker comparison is judged on."""
    with_gc = any("gc" in c for c in cells)
    header = ["server", "cell", *(h for h, _, _ in COMPARE_COLUMNS)]
    header += [h for h, _ in GC_COLUMNS] if with_gc else []
    rows = []
    for c in cells:
        row = [c["label"], f"/{c['endpoint']} c={c['concurrency']}"]
        row += [cell_text(c.get(k), f) for _, k, f in COMPARE_COLUMNS]
        if with_gc:
            row += [show(c["gc"]) if "gc" in c else "–" for _, show in GC_COLUMNS]
        rows.append(row)
    return markdown_table(header, rows)


def comparison_verdicts(cells: list[dict]) -> list[str]:
    """Each service cell against the two-worker baseline's same cell; /classify c=64 is judged
    against the target (req/s ratio and p99), the other cells are only compared."""
    base = {(c["endpoint"], c["concurrency"]): c for c in cells if c["server"] == "baseline_2w"}
    lines = []
    for c in cells:
        b = base.get((c["endpoint"], c["concurrency"]))
        if c["server"] == "baseline_2w" or b is None:
            continue
        ratio = c["req_per_s"] / b["req_per_s"]
        verdict = "    "
        if (c["endpoint"], c["concurrency"]) == ("classify", 64):
            ok = ratio >= TWO_WORKER_RATIO and c["p99_ms"] <= b["p99_ms"] and not c["error_count"]
            verdict = "PASS" if ok else "MISS"
        lines.append(
            f"{verdict}  {c['label']}, /{c['endpoint']} c={c['concurrency']}: "
            f"{ratio:.2f}x the two-worker baseline's req/s, p50 {c['p50_ms']:.2f} vs {b['p50_ms']:.2f} ms,"
            f" p99 {c['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms"
        )
    if any(k == ("classify", 64) for k in base):
        lines.append(f"(target at /classify c=64: at least {TWO_WORKER_RATIO}x the req/s, p99 no higher)")
    return lines


def print_comparison(result: dict) -> None:
    print()
    print(comparison_table(result["cells"]))
    print()
    for line in comparison_verdicts(result["cells"]):
        print("  " + line)
    print()
