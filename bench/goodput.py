"""Goodput under overload with big requests: 64 digits a request, at 16, 64 and 256 clients.

    python -m bench.goodput                 # 6 s a cell, about two minutes in all
    python -m bench.goodput --seconds 10

Clients of a model server send batches, and when too many do at once the server must refuse
some: what matters is how many answers it still gives (goodput), and that a refusal costs it
little, or the refusals themselves eat the capacity (congestion collapse). One server
(``harness.server``, default settings, 127.0.0.1) is driven by ``wrk`` with
``bench/wrk/goodput.lua`` through two workloads: V2 binary tensors
(``/v2/models/classifier/infer``) and ``/classify`` JSON, each with the same 64 images a
request, at each concurrency for ``--seconds``. Each cell reports 2xx/s (goodput), refusals/s
(503/429; how many carried ``Retry-After``), latency p50/p99 of answers and of refusals, and
the server's CPU (its whole process tree). CPU per answer is read from the c=16 cell (no
refusals there); CPU per refusal from an overloaded cell, after taking out its answers at
that price. Writes bench/results/goodput.json and docs/evidence/goodput.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT, log
from bench.runs import machine, revision
from bench.servers import start_service

CONCURRENCY = (16, 64, 256)
# A queue with room for one request of 64 items: every request that finds another queued is
# refused before it is parsed.
REFUSING = {"MODELSERVE_BATCH__MAX_QUEUE_SIZE": "64", "MODELSERVE_MAX_ITEMS_PER_REQUEST": "64"}
MANY = 1000  # refusals in a cell before their CPU is estimated
IMAGES = 64
LUA = ROOT / "bench" / "wrk" / "goodput.lua"
EVIDENCE = ROOT / "docs" / "evidence" / "goodput.md"


def served_versions(store: Path) -> str:
    """The version each model of the store is served at (the highest), e.g. ``classifier/1``."""
    return ", ".join(
        f"{model.name}/{max(int(v.name) for v in model.iterdir() if v.name.isdigit())}"
        for model in sorted(store.iterdir())
        if model.is_dir()
    )


def bodies(folder: Path) -> dict[str, dict[str, str]]:
    """The two request bodies (the same 64 images) and what wrk needs to send each."""
    rng = random.Random(0)
    images = [[[rng.randint(0, 16) for _ in range(8)] for _ in range(8)] for _ in range(IMAGES)]
    (folder / "cls64.json").write_text(json.dumps({"images": images}))
    flat = [float(v) for image in images for row in image for v in row]
    raw = struct.pack(f"<{len(flat)}f", *flat)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": [IMAGES, 1, 8, 8],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    (folder / "v2bin64.bin").write_bytes(header + raw)
    return {
        "v2-binary": {
            "path": "/v2/models/classifier/infer",
            "WRK_BODY": str(folder / "v2bin64.bin"),
            "WRK_CTYPE": "application/octet-stream",
            "WRK_HLEN": str(len(header)),
        },
        "classify-json": {"path": "/classify", "WRK_BODY": str(folder / "cls64.json")},
    }


def run_cell(url: str, workload: dict[str, str], connections: int, seconds: int) -> dict[str, Any]:
    env = {**os.environ, **{k: v for k, v in workload.items() if k.startswith("WRK_")}}
    command = [
        "wrk",
        f"-t{connections}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url + workload["path"],
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("OVLJSON "))
    return json.loads(line.removeprefix("OVLJSON "))


def measure(seconds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="goodput-") as folder:
        workloads = bodies(Path(folder))
        server = start_service("goodput", ROOT / "model_store", {})
        try:
            url = server.url
            cells = []
            for name, workload in workloads.items():
                run_cell(url, workload, 16, 2)  # warm-up
                for connections in CONCURRENCY:
                    cpu_before = server.cpu_s()
                    cell = run_cell(url, workload, connections, seconds)
                    cell.update(
                        workload=name,
                        connections=connections,
                        server_cpu_s=server.cpu_s() - cpu_before,
                        seconds=cell["duration_us"] / 1e6,
                    )
                    log(
                        f"{name} c={connections}: {cell['ok'] / cell['seconds']:,.0f} 2xx/s, "
                        f"{cell['rej'] / cell['seconds']:,.0f} refused/s"
                    )
                    cells.append(cell)
            rss = server.rss_bytes()
        finally:
            server.stop()
        # What a refusal costs, where nearly every request is refused: the same server with a
        # queue that holds one request, at 64 clients.
        server = start_service("goodput-refusing", ROOT / "model_store", REFUSING)
        try:
            for name, workload in workloads.items():
                cpu_before = server.cpu_s()
                cell = run_cell(server.url, workload, 64, seconds)
                cell.update(
                    workload=f"{name}, refusing",
                    base=name,
                    connections=64,
                    server_cpu_s=server.cpu_s() - cpu_before,
                    seconds=cell["duration_us"] / 1e6,
                )
                log(f"{name} refusing: {cell['rej'] / cell['seconds']:,.0f} refused/s")
                cells.append(cell)
        finally:
            server.stop()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "revision": revision(),
        "models": served_versions(ROOT / "model_store"),
        "seconds": seconds,
        "images_per_request": IMAGES,
        "server_rss_bytes_at_end": rss,
        "cells": cells,
    }


def derived(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cell: goodput, its ratio to c=16's, refusals, CPU per answer and per refusal."""
    rows = []
    for name in dict.fromkeys(c.get("base", c["workload"]) for c in result["cells"]):
        cells = [c for c in result["cells"] if c.get("base", c["workload"]) == name]
        base = cells[0]
        per_answer = base["server_cpu_s"] / max(base["ok"], 1)
        for cell in cells:
            goodput = cell["ok"] / cell["seconds"]
            rest = cell["server_cpu_s"] - per_answer * cell["ok"]
            rows.append(
                {
                    "workload": cell["workload"],
                    "c": cell["connections"],
                    "goodput": goodput,
                    "ratio": goodput / (base["ok"] / base["seconds"]),
                    "refused_s": cell["rej"] / cell["seconds"],
                    "retry_after": f"{cell['retry_after']}/{cell['rej']}",
                    "ok_p99_ms": cell["ok_p99_us"] / 1e3,
                    "rej_p99_ms": cell["rej_p99_us"] / 1e3 if cell["rej"] else None,
                    "cpu_ms_answer": per_answer * 1e3,
                    # Only where refusals are many: a few would divide the noise.
                    "cpu_ms_refusal": rest / cell["rej"] * 1e3 if cell["rej"] >= MANY else None,
                    "errors": cell["connect"] + cell["read"] + cell["write"] + cell["timeout"],
                }
            )
    return rows


def report(result: dict[str, Any]) -> list[str]:
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "# Goodput under overload: 64 images a request",
        "",
        f"Made by `python -m bench.goodput --seconds {result['seconds']}` on {result['date']}, "
        f"{result['machine']['nproc']} x {result['machine']['cpu_model']}, commit {result['revision']}, "
        f"models: {result['models']}.",
        "",
        "One server with the default settings; wrk with one connection per client, each sending the same",
        f"{result['images_per_request']} digits a request without pause. Goodput is 2xx answers a second.",
        "CPU per answer is the server's CPU over the c=16 cell's answers; CPU per refusal is what an",
        "overloaded cell's CPU leaves once its answers are paid at that price (shown where a cell has",
        f"{MANY:,} refusals or more). The `refusing` rows are a second server whose queue holds one",
        "request (`MODELSERVE_BATCH__MAX_QUEUE_SIZE=64`, `MODELSERVE_MAX_ITEMS_PER_REQUEST=64`), so that",
        "nearly every request is refused before it is parsed: what a refusal costs, against an answer.",
        "",
        "| workload | clients | 2xx/s | vs c=16 | refused/s | with Retry-After | answer p99 ms "
        "| refusal p99 ms | CPU ms / answer | CPU ms / refusal | socket errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in derived(result):
        lines.append(
            f"| {row['workload']} | {row['c']} | {row['goodput']:,.0f} | {row['ratio']:.2f} | "
            f"{row['refused_s']:,.0f} | {row['retry_after']} | {row['ok_p99_ms']:.1f} | "
            f"{num(row['rej_p99_ms'], '.1f')} | {row['cpu_ms_answer']:.2f} | "
            f"{num(row['cpu_ms_refusal'], '.3f')} | {row['errors']} |"
        )
    lines += ["", f"Server RSS at the end: {result['server_rss_bytes_at_end'] / 2**20:.0f} MiB.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=6, help="seconds per cell (default 6)")
    parser.add_argument("--out", type=Path, default=RESULTS / "goodput.json")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/evidence/goodput.md")
    args = parser.parse_args()
    result = measure(args.seconds)
    args.out.write_text(json.dumps(result, indent=1))
    text = "\n".join(report(result))
    print(text)
    if not args.no_docs:
        EVIDENCE.parent.mkdir(parents=True, exist_ok=True)
        EVIDENCE.write_text(text)


if __name__ == "__main__":
    main()
