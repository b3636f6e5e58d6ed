"""Run a real Prometheus (Debian's ``prometheus`` package) with the shipped scrape config.

The tests and ``deploy/grafana/plot_panels.py`` use it to scrape running servers with
``deploy/prometheus/prometheus.yml`` and its alert rules, and to query what was scraped. The
Prometheus it starts:

- listens on 127.0.0.1 only, on a free port;
- keeps its time-series database in its own temporary folder, removed when it stops;
- runs under ``timeout``, so it exits by itself after ``lifetime_s`` even if whoever started it
  dies without stopping it;
- is started and stopped like a server of ``harness.server`` (its own process group, SIGTERM,
  then SIGKILL of anything left).

The shipped config is used as it is, except for three things a test must choose: the targets
(the servers it started), the scrape and evaluation intervals (1-2 s instead of 15 s, so that
a test does not wait minutes), and the rule files' paths (made absolute).
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.server import ROOT, ServerProcess, start_server

CONFIG_DIR = ROOT / "deploy" / "prometheus"
CONFIG = CONFIG_DIR / "prometheus.yml"
JOB = "modelserve"
START_TIMEOUT_S = 60.0
# The longest a Prometheus started here may run before `timeout` ends it.
DEFAULT_LIFETIME_S = 900


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable, or None where it is not installed (``make ops-check`` installs it)."""
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


def scrape_config(targets: Sequence[str], interval: str = "1s", config: Path = CONFIG) -> dict[str, Any]:
    """The shipped config with ``targets`` (host:port) as the modelserve job's targets."""
    loaded = yaml.safe_load(config.read_text())
    result = copy.deepcopy(loaded)
    result["global"]["scrape_interval"] = interval
    result["global"]["evaluation_interval"] = interval
    result["rule_files"] = [str((config.parent / name).resolve()) for name in loaded.get("rule_files", [])]
    jobs = [job for job in result["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError(f"{config}: expected one scrape job named {JOB!r}, found {len(jobs)}")
    job = jobs[0]
    job["static_configs"] = [{"targets": list(targets)}]
    # A scrape must end before the next one starts.
    job["scrape_timeout"] = interval
    return result


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.url = process.url
        self._http = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    def api(self, path: str, **params: Any) -> Any:
        """``GET /api/v1/<path>``'s ``data``; raises on an error answer."""
        answer = self._http.get(f"/api/v1/{path}", params=params)
        body = answer.json()
        if answer.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path} {params}: {answer.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series: ``[{"metric": {labels}, "value": [t, "v"]}, ...]``."""
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for(self, expr: str, check, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Query ``expr`` until ``check(result)`` is true; the result, or TimeoutError with the last one."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr!r} after {timeout_s:.0f} s: {result}")
            time.sleep(0.5)

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self._http.close()
        self.process.stop()


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """The values of an instant query's series that are numbers (histogram_quantile gives NaN
    where nothing was observed)."""
    values = [float(series["value"][1]) for series in result]
    return [v for v in values if math.isfinite(v)]


@contextlib.contextmanager
def run_prometheus(
    targets: Sequence[str], interval: str = "1s", lifetime_s: int = DEFAULT_LIFETIME_S
) -> Iterator[Prometheus]:
    """A Prometheus scraping ``targets`` with the shipped config, for a ``with`` block."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
    workdir = Path(tempfile.mkdtemp(prefix="prometheus-"))
    try:
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(scrape_config(targets, interval), sort_keys=False))

        timeout = shutil.which("timeout")

        def command(port: int) -> list[str]:
            return [
                *([timeout, "--kill-after=5", str(lifetime_s)] if timeout else []),
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ]

        process = start_server(
            command, {}, name="prometheus", probe="/-/ready", timeout_s=START_TIMEOUT_S, workdir=workdir
        )
        prometheus = Prometheus(process)
        try:
            yield prometheus
        finally:
            prometheus.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
