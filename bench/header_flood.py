"""A flood of clients each sending one endless header: what it costs the server in memory.

``python -m bench.header_flood`` starts the service on 127.0.0.1 (the committed models, the
default header bounds: a line of 8 KiB, 64 KiB of headers, 100 lines), lets 48 clients at once
each send a request whose one header is 16 MiB long and never ends, 64 KiB a write, and reads
what each is answered: the status, how many bytes it had sent when the answer came, and how the
connection ended. Meanwhile the resident memory of every process of the server (psutil, the
arbiter and its workers) is sampled every 50 ms; the growth is the peak over the baseline taken
just before the flood. A normal request is sent after it. The same flood runs again with the
bounds at the largest the settings allow (a line of 1 MiB, 16 MiB of headers), to show that the
memory follows the bound.

Bounded: 127.0.0.1 only, each client stops at 16 MiB or after 60 s, the server is stopped
however the run ends. Prints a table and writes docs/evidence/header-flood.md (``--no-docs``:
the table only). Issue 29's measure, before the bounds: 48 such clients grew the server from
591 MB to 1,453 MB within 2 s, and every header was read whole.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness.server import ROOT, ServerProcess, bentoml_serve

CLIENTS = 48
HEADER_BYTES = 16 * 1024 * 1024
WRITE_BYTES = 64 * 1024
CLIENT_LIMIT_S = 60.0
SAMPLE_S = 0.05
EVIDENCE = ROOT / "docs" / "evidence" / "header-flood.md"
START = b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Flood: "
DIGIT = b'{"images": [' + b",".join([b"[" + b",".join([b"[0,0,5,13,9,1,0,0]"] * 8) + b"]"]) + b"]}"

# (label, settings): the defaults, and the bounds at the largest the settings allow.
RUNS = [
    ("default bounds (line 8 KiB, total 64 KiB)", {}),
    (
        "largest bounds (line 1 MiB, total 16 MiB)",
        {
            "MODELSERVE_MAX_HEADER_LINE_BYTES": str(1024 * 1024),
            "MODELSERVE_MAX_HEADER_BYTES": str(HEADER_BYTES),
        },
    ),
]


@dataclass
class Outcome:
    status: int | None = None  # None: no answer
    setting: str = ""  # the bound the answer names
    sent_before_answer: int = 0
    ending: str = ""


def flood_client(port: int, outcome: Outcome, go: threading.Event) -> None:
    """One client: the request's start, then the header 64 KiB a write until answered."""
    chunk = b"a" * WRITE_BYTES
    deadline = time.monotonic() + CLIENT_LIMIT_S
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_LIMIT_S) as sock:
            go.wait()
            sock.sendall(START)
            sent = 0
            while sent < HEADER_BYTES and time.monotonic() < deadline:
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(chunk)
                except OSError:  # closed by the server: its answer may be waiting to be read
                    break
                sent += len(chunk)
            outcome.sent_before_answer = sent
            data = b""
            try:
                while more := sock.recv(65536):  # the answer, then the server's close
                    data += more
                outcome.ending = "closed"
            except ConnectionResetError:
                outcome.ending = "reset"
            except TimeoutError:
                outcome.ending = "open"
            if data.startswith(b"HTTP/1.1 "):
                outcome.status = int(data.split()[1])
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    outcome.setting = json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]["setting"]
    except OSError as exc:
        outcome.ending = f"error: {exc.__class__.__name__}"


def server_rss(server: ServerProcess) -> int:
    """Resident bytes of the server's processes: the main one and every descendant."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(server.process.pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
    return total


def normal_request(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/classify", DIGIT, {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def flood(label: str, settings: dict[str, str]) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="header-flood-") as workdir,
        bentoml_serve(settings=settings, workdir=Path(workdir), name="header-flood") as server,
    ):
        for _ in range(20):  # warm: the workers' first answers allocate what they keep
            normal_request(server.port)
        time.sleep(1)
        baseline = server_rss(server)
        peak = baseline
        outcomes = [Outcome() for _ in range(CLIENTS)]
        go = threading.Event()
        clients = [threading.Thread(target=flood_client, args=(server.port, o, go)) for o in outcomes]
        for client in clients:
            client.start()
        started = time.monotonic()
        go.set()
        while any(client.is_alive() for client in clients):
            peak = max(peak, server_rss(server))
            time.sleep(SAMPLE_S)
        took_s = time.monotonic() - started
        for client in clients:
            client.join()
        after = server_rss(server)
        served = normal_request(server.port)
    sent = [o.sent_before_answer for o in outcomes]
    return {
        "label": label,
        "statuses": Counter(f"{o.status} ({o.setting or 'no bound named'})" for o in outcomes),
        "endings": Counter(o.ending for o in outcomes),
        "sent_min": min(sent),
        "sent_max": max(sent),
        "baseline_mb": baseline / 1e6,
        "peak_mb": peak / 1e6,
        "growth_mb": (peak - baseline) / 1e6,
        "after_mb": after / 1e6,
        "took_s": took_s,
        "normal_after": served,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def commit() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "service")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " with uncommitted changes to service/" if dirty else ""
    )


def table(results: list[dict]) -> str:
    rows = [
        "| run | answers (the bound they name) | connections | bytes a client sent before it saw the answer "
        "| server RSS before | peak | growth | after the flood | normal request after |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(r["statuses"].items()))
        endings = ", ".join(f"{n} {e}" for e, n in sorted(r["endings"].items()))
        rows.append(
            f"| {r['label']} | {answers} | {endings} | {r['sent_min']:,}-{r['sent_max']:,} | "
            f"{r['baseline_mb']:,.0f} MB | {r['peak_mb']:,.0f} MB | **{r['growth_mb']:,.1f} MB** | "
            f"{r['after_mb']:,.0f} MB | {r['normal_after']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-docs", action="store_true", help=f"print the table only, leave {EVIDENCE.name} alone"
    )
    parser.add_argument("--default-only", action="store_true", help="only the run with the default bounds")
    args = parser.parse_args()
    runs = RUNS[:1] if args.default_only else RUNS
    results = [flood(label, settings) for label, settings in runs]
    text = table(results)
    print(text)
    if args.no_docs:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    EVIDENCE.write_text(
        "# Header flood: 48 clients, each one endless 16 MiB header\n\n"
        "Written by `python -m bench.header_flood` (bench/header_flood.py); the bounds are "
        "service/transport/connections.py's, the settings MODELSERVE_MAX_HEADER_LINE_BYTES, "
        "MODELSERVE_MAX_HEADER_BYTES and MODELSERVE_MAX_HEADER_COUNT.\n\n"
        f"- run: {stamp}, git commit `{commit()}`\n"
        f"- machine: {cpu_model()}, {psutil.cpu_count()} CPUs, shared with other work\n"
        f"- server: `bentoml serve` on 127.0.0.1, the committed models, {CLIENTS} clients at once, "
        f"each `POST /classify` with one header of {HEADER_BYTES:,} bytes sent {WRITE_BYTES:,} bytes "
        "a write and never ended; a client stops writing once an answer can be read\n"
        "- memory: resident memory of every server process (arbiter and workers) summed, sampled "
        f"every {SAMPLE_S * 1000:.0f} ms; growth is the peak over the value just before the flood\n"
        "- before the bounds (issue 29): the same flood grew the server from 591 MB to 1,453 MB within "
        "2 s, every header read whole\n\n" + text + "\n"
    )
    print(f"written: {EVIDENCE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
