"""What a run leaves behind, and Locust's own CPU use.

A headless run given neither ``--csv`` nor ``--html`` writes Locust's CSV files (with the
full stats history) and its HTML report into a new ``<results-dir>/<date-time>/`` folder.
Beside the CSV files (or the report) go ``<prefix>_cpu.csv``, Locust's CPU use sampled every
second, and ``<prefix>_verdict.json``, the gate's verdict with the figures behind it.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import gevent
import psutil
from locust.runners import MasterRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

from .run_folder import new_run_folder

CPU_SAMPLE_S = 1.0


def _write_last_rows(writer: StatsCSVFileWriter) -> None:
    """Rewrite the CSV tables and add a last history row from the final statistics."""
    tables = (
        (
            writer.requests_csv_filehandle,
            writer.requests_csv_writer,
            writer.requests_csv_columns,
            writer._requests_data_rows,
        ),
        (
            writer.failures_csv_filehandle,
            writer.failures_csv_writer,
            writer.failures_columns,
            writer._failures_data_rows,
        ),
        (
            writer.exceptions_csv_filehandle,
            writer.exceptions_csv_writer,
            writer.exceptions_columns,
            writer._exceptions_data_rows,
        ),
    )
    for handle, table, columns, rows in tables:
        handle.seek(0)
        handle.truncate()
        table.writerow(columns)
        rows(table)
    writer._stats_history_data_rows(writer.stats_history_csv_writer, time.time())


def write_last_rows_on_close() -> None:
    """Make Locust's CSV files end with the run's final figures.

    Locust rewrites its CSV files every second and closes them at the end without a last
    write, so they miss up to a second of requests (all of them in a run of a few seconds).
    Patched here: closing first writes the final statistics. Applies to ``--csv`` files and
    to the default result files alike.
    """
    close = StatsCSVFileWriter.close_files
    if getattr(close, "writes_last_rows", False):
        return

    def close_files(self: StatsCSVFileWriter) -> None:
        if not self.requests_csv_filehandle.closed:
            _write_last_rows(self)
        close(self)

    close_files.writes_last_rows = True  # type: ignore[attr-defined]
    StatsCSVFileWriter.close_files = close_files  # type: ignore[method-assign]


class LocustCpu:
    """Samples the CPU use of Locust itself: this process, and with workers the busiest one.

    A load generator near 100% of a core measures itself rather than the service, and Locust
    warns above 90%; docs/loadtesting.md says when to add processes.
    """

    def __init__(self, runner) -> None:
        self.runner = runner
        self.process = psutil.Process()
        self.rows: list[tuple[float, int, float, float | None]] = []  # time, users, own %, busiest worker %
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start sampling, or start again from now, dropping what was sampled so far."""
        self.stop()
        self.rows.clear()
        self.process.cpu_percent(None)  # the first reading only sets the baseline
        self._greenlet = gevent.spawn(self._sample)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _sample(self) -> None:
        while True:
            gevent.sleep(CPU_SAMPLE_S)
            workers = None
            if isinstance(self.runner, MasterRunner) and self.runner.clients:
                workers = max(float(worker.cpu_usage) for worker in self.runner.clients.values())
            self.rows.append((time.time(), self.runner.user_count, self.process.cpu_percent(None), workers))

    def summary(self) -> dict:
        """Mean and maximum CPU (% of one core) over the samples taken while users ran."""
        busy = [row for row in self.rows if row[1] > 0] or self.rows
        own = [row[2] for row in busy]
        workers = [row[3] for row in busy if row[3] is not None]
        result = {
            "samples": len(busy),
            "process_mean_percent": round(sum(own) / len(own), 1) if own else None,
            "process_max_percent": round(max(own), 1) if own else None,
        }
        if workers:
            result["busiest_worker_mean_percent"] = round(sum(workers) / len(workers), 1)
            result["busiest_worker_max_percent"] = round(max(workers), 1)
        return result

    def line(self) -> str:
        s = self.summary()
        if s["process_mean_percent"] is None:
            return "Locust CPU: not sampled (the run was shorter than a second)"
        if "busiest_worker_mean_percent" in s:
            return (
                f"Locust CPU: busiest worker mean {s['busiest_worker_mean_percent']:.0f}%, "
                f"max {s['busiest_worker_max_percent']:.0f}% of one core; master mean "
                f"{s['process_mean_percent']:.0f}% (Locust warns above 90%)"
            )
        return (
            f"Locust CPU: mean {s['process_mean_percent']:.0f}%, max {s['process_max_percent']:.0f}% "
            "of one core while users ran (one process; Locust warns above 90%)"
        )

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Timestamp", "User Count", "Locust CPU %", "Busiest Worker CPU %"])
            for stamp, users, own, workers in self.rows:
                writer.writerow(
                    [int(stamp), users, f"{own:.1f}", "" if workers is None else f"{workers:.1f}"]
                )


class RunRecords:
    """The files of one run; ``prefix`` is where ``_cpu.csv`` and ``_verdict.json`` go."""

    def __init__(self, environment) -> None:
        self.environment = environment
        options = environment.parsed_options
        self.writer: StatsCSVFileWriter | None = None
        self._writer_greenlet: gevent.Greenlet | None = None
        self.prefix: str | None = None
        if options.csv_prefix:
            self.prefix = options.csv_prefix
        elif options.html_file:
            self.prefix = str(Path(options.html_file).with_suffix(""))
        elif options.headless and not options.no_results:
            folder = new_run_folder(options.results_dir)
            self.prefix = str(folder / "locust")
            options.html_file = str(folder / "locust_report.html")
            self.writer = StatsCSVFileWriter(environment, PERCENTILES_TO_REPORT, self.prefix, True)
            self._writer_greenlet = gevent.spawn(self.writer.stats_writer)

    @property
    def folder(self) -> Path | None:
        return Path(self.prefix).parent if self.prefix else None

    def finish(self, cpu: LocustCpu, verdict: dict) -> None:
        """The last CSV rows, Locust's CPU samples and the verdict, once the run is over."""
        if self._writer_greenlet is not None:
            self._writer_greenlet.kill(block=True)
        if self.writer is not None:
            self.writer.close_files()  # with the last rows (write_last_rows_on_close)
        if self.prefix is None:
            return
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        cpu.write_csv(Path(f"{self.prefix}_cpu.csv"))
        Path(f"{self.prefix}_verdict.json").write_text(json.dumps(verdict, indent=2) + "\n")
