"""The fleet test (`make fleet-test`): HAProxy in front of three replicas, under a steady load.

    python loadtests/fleet.py [--evidence docs/evidence/fleet.md]

Starts three single-worker replicas (``bentoml serve`` through ``harness/server.py``, each on its
own 127.0.0.1 port with a private BENTOML_HOME) over a temporary copy of ``model_store/``, and
HAProxy with ``deploy/haproxy/haproxy.cfg`` as shipped (addresses from the environment). Then,
each under its own steady Locust run of every workload (V2 binary included) through HAProxy:

1. **rolling restart**: each replica in turn gets SIGTERM (its main process only, as Kubernetes
   sends it), is waited for until every process of it is gone, is started again on its port and
   waited for until HAProxy sees it up. Passes with 0 failed requests; p99 reported.
2. **rollout**: a new version of every model is published into the store (the next version
   number, through ``store_format.manifest.publish``); every replica must swap it in, release the
   old one, and from then on answer only from it: each replica's V2 metadata lists only the new
   version, its ``modelserve_requests_total`` series of the old version stop moving while the new
   ones grow, and V2 ``infer`` answers through HAProxy name the new version. 0 failed requests.
3. **SIGKILL**: every process of one replica is killed at once (a crash, the OOM killer); the
   failed requests, if any, are counted and reported; the replica is started again and the fleet
   is whole when HAProxy has all three up and each one answers requests again.

Every process it starts (replicas, HAProxy, Locust) is stopped however the run ends: failure,
Ctrl-C, SIGTERM or the ``--deadline-s`` alarm. Results (each Locust run's CSV files, the
replicas' and HAProxy's logs, ``fleet.json``) go to ``loadtests/results/fleet-<date-time>/``;
``--evidence`` also writes the Markdown report there. Exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as `python loadtests/fleet.py`: the harness is at the root
    sys.path.append(str(REPOSITORY))

from harness.server import (  # noqa: E402
    ServerProcess,
    _alive,
    _descendants,
    bentoml_command,
    free_port,
    service_env,
)
from store_format.manifest import (  # noqa: E402
    Manifest,
    latest_version,
    list_models,
    publish,
    read_manifest,
)

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
HAPROXY_CFG = REPOSITORY / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "replicas"
REPLICAS = ("replica1", "replica2", "replica3")
# One worker and one ONNX Runtime thread per replica (three replicas share a small machine), and a
# store poll every second so that a rollout is quick to watch.
REPLICA_SETTINGS = {
    "MODELSERVE_WORKERS": "1",
    "MODELSERVE_INTRA_OP_THREADS": "1",
    "MODELSERVE_PROVIDER": "cpu",
    "MODELSERVE_MODEL_POLL_S": "1",
}
START_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 30.0
LB_TIMEOUT_S = 30.0
# Steady load before and after each scenario's action, so that both edges are under load.
SETTLE_S = 5.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FleetError(RuntimeError):
    """The fleet did not do what a check expected; the message says what."""


class Deadline(BaseException):
    """The whole run took longer than --deadline-s (raised by SIGALRM, past any except Exception)."""


def log(message: str) -> None:
    print(f"fleet {time.strftime('%H:%M:%S')} {message}", flush=True)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_post_json(url: str, body: dict, timeout: float = 10.0) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with _DIRECT.open(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")}


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> float:
    """Seconds until ``condition()`` held; FleetError naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(OSError):
            if condition():
                return time.monotonic() - started
        time.sleep(every_s)
    raise FleetError(f"{what}: not within {timeout_s:.0f} s")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text page, with their labels."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            found.append((dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return found


# ---- the replicas ------------------------------------------------------------------------------


class Replica:
    """One replica: a fixed port (HAProxy's configuration names it), started again as often as asked."""

    def __init__(self, name: str, port: int, store: Path, folder: Path) -> None:
        self.name, self.port, self.folder = name, port, folder
        self.url = f"http://127.0.0.1:{port}"
        self.env = service_env(store, REPLICA_SETTINGS)
        self.server: ServerProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.server = ServerProcess(
            bentoml_command(self.port),
            self.env,
            self.port,
            name=self.name,
            workdir=self.folder / f"{self.name}-start{self.starts}",  # each start keeps its log
        )

    def wait_ready(self) -> float:
        assert self.server is not None
        return self.server.wait_until_up("/readyz", START_TIMEOUT_S)

    def sigterm_and_wait(self) -> float:
        """SIGTERM to the main process; seconds until every process of the replica was gone."""
        assert self.server is not None
        self.server.send_sigterm()
        took = self.server.wait_for_exit(EXIT_TIMEOUT_S)
        self.server.stop()  # reaps it (and ends any straggler)
        if took is None:
            raise FleetError(f"{self.name} still running {EXIT_TIMEOUT_S:.0f} s after SIGTERM")
        return took

    def sigkill(self) -> None:
        """SIGKILL to every process of the replica at once, as a crash or the OOM killer ends it."""
        assert self.server is not None
        tree = _descendants(self.server.pid)
        for pid in [self.server.pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.stop()
        left = _alive(tree)
        if left:
            raise FleetError(f"{self.name}: processes {left} survived SIGKILL")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        if status != 200:
            raise FleetError(f"{self.name}: /metrics answered {status}")
        return body.decode()

    def answered(self) -> dict[tuple[str, str], float]:
        """``modelserve_requests_total`` per (model, version)."""
        return {
            (labels["model"], labels["version"]): value
            for labels, value in metric_samples(self.metrics(), "modelserve_requests_total")
        }

    def served_versions(self, model: str) -> list[str]:
        status, body = http_get(f"{self.url}/v2/models/{model}")
        if status != 200:
            raise FleetError(f"{self.name}: /v2/models/{model} answered {status}")
        return json.loads(body)["versions"]


# ---- HAProxy -----------------------------------------------------------------------------------


class HAProxy:
    """HAProxy running deploy/haproxy/haproxy.cfg in the foreground, in a process group of its own."""

    def __init__(self, replicas: list[Replica], folder: Path, config: Path = HAPROXY_CFG) -> None:
        self.config = config
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_url = f"http://127.0.0.1:{self.stats_port}"
        self.env = {
            **os.environ,
            "MODELSERVE_LB_BIND": f"127.0.0.1:{self.port}",
            "MODELSERVE_LB_STATS": f"127.0.0.1:{self.stats_port}",
            "MODELSERVE_LB_SOCKET": str(folder / "haproxy.sock"),
        }
        for index, replica in enumerate(replicas, start=1):
            self.env[f"MODELSERVE_REPLICA{index}"] = f"127.0.0.1:{replica.port}"
        self.log_path = folder / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise FleetError("haproxy not found: apt-get install haproxy (make fleet-test does)")
        checked = subprocess.run(
            [binary, "-c", "-f", str(self.config)], env=self.env, capture_output=True, text=True, timeout=30
        )
        if checked.returncode != 0:
            raise FleetError(f"haproxy -c refused {self.config}:\n{checked.stdout}{checked.stderr}")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for("HAProxy's stats page", lambda: http_get(self.stats_url + "/lb-health")[0] == 200, 15)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stats(self) -> dict[str, dict[str, str]]:
        """The backend's rows of HAProxy's CSV statistics, by server name (and ``BACKEND``)."""
        status, body = http_get(self.stats_url + "/stats;csv")
        if status != 200:
            raise FleetError(f"HAProxy stats answered {status}")
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND}

    def status(self, server: str) -> str:
        return self.stats()[server]["status"]

    def wait_status(self, server: str, wanted: str, timeout_s: float = LB_TIMEOUT_S) -> float:
        return wait_for(f"HAProxy to see {server} {wanted}", lambda: self.status(server) == wanted, timeout_s)

    def counters(self) -> dict[str, int]:
        """The backend's retries, redispatches, 5xx answers and connection/response errors so far."""
        row = self.stats()["BACKEND"]
        names = {
            "retries": "wretr",
            "redispatches": "wredis",
            "5xx": "hrsp_5xx",
            "econ": "econ",
            "eresp": "eresp",
        }
        return {key: int(row.get(column) or 0) for key, column in names.items()}


# ---- Locust ------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    requests: int
    failures: int
    p99_ms: float
    failure_kinds: list[str]
    exit_code: int
    by_endpoint: dict[str, int]


class Load:
    """One headless Locust run of every workload through HAProxy, until ``stop()``."""

    def __init__(self, url: str, folder: Path, users: int, rate: float, max_s: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = folder / "locust"
        command = [
            str(Path(sys.executable).parent / "locust"),
            *("-f", str(LOCUSTFILE), "--host", url, "--headless", "--only-summary"),
            *("-u", str(users), "-r", str(users), "-t", f"{max_s:.0f}s"),
            *("--rate-per-user", f"{rate:g}", "--max-fail-ratio", "0"),
            *("--csv", str(self.prefix), "--csv-full-history"),
        ]
        self.output = open(folder / "locust.log", "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            command, cwd=HERE, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started = time.monotonic()

    def wait_flowing(self, timeout_s: float = 60.0) -> None:
        """Until the users run (the input pools are drawn first): the stats file shows requests."""

        def flowing() -> bool:
            if self.process.poll() is not None:
                raise FleetError(f"Locust exited early with {self.process.returncode}")
            stats = Path(f"{self.prefix}_stats.csv")
            if not stats.exists():
                return False
            rows = list(csv.DictReader(stats.open()))
            return any(row["Name"] == "Aggregated" and int(row["Request Count"]) > 0 for row in rows)

        wait_for("Locust's users to send requests", flowing, timeout_s, every_s=0.5)

    def stop(self) -> LoadResult:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Locust stops, writes its files and its verdict
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
        self.output.close()
        verdict_file = Path(f"{self.prefix}_verdict.json")
        if not verdict_file.exists():
            raise FleetError(f"Locust ended with {self.process.returncode} and no verdict (see its log)")
        verdict = json.loads(verdict_file.read_text())
        measured = verdict["measured"]
        kinds = []
        failures_csv = Path(f"{self.prefix}_failures.csv")
        if failures_csv.exists():
            for row in csv.DictReader(failures_csv.open()):
                kinds.append(f"{row['Occurrences']} x {row['Method']} {row['Name']}: {row['Error']}")
        by_endpoint = {
            f"{row['Type']} {row['Name']}": int(row["Request Count"])
            for row in csv.DictReader(io.StringIO(Path(f"{self.prefix}_stats.csv").read_text()))
            if row["Name"] != "Aggregated"
        }
        return LoadResult(
            measured["requests"],
            measured["failures"],
            measured["p99_ms"],
            kinds,
            self.process.returncode,
            by_endpoint,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process)
        self.output.close()


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# ---- the store ---------------------------------------------------------------------------------


def store_versions(store: Path) -> dict[str, int]:
    return {name: latest_version(store, name) for name in list_models(store)}


def publish_next_versions(store: Path) -> dict[str, tuple[int, int]]:
    """Publish each model's served version again as the next version number; (old, new) by model.

    The same graph under a new number: what a client sees must not change, except which version
    answers. ``publish`` assembles the folder under a temporary name and renames it into place, so
    a replica polling the store never sees half a version.
    """
    published = {}
    for name in list_models(store):
        old = latest_version(store, name)
        manifest = read_manifest(store / name / str(old))
        fields = {
            f.name: getattr(manifest, f.name)
            for f in dataclasses.fields(Manifest)
            if f.name not in ("version", "sha256", "created_at")
        }
        fields["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        new = publish(store, fields, store / name / str(old) / "model.onnx").version
        published[name] = (old, new)
    return published


def infer_body(model: str) -> dict:
    """A small valid V2 JSON request for each default model."""
    if model == "classifier":
        return {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    if model == "forecaster":
        history = [330.0 + (i % 52) / 10 for i in range(208)]
        return {
            "inputs": [
                {"name": "history", "shape": [1, 208], "datatype": "FP32", "data": history},
                {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [208]},
            ]
        }
    if model == "generator":
        return {
            "inputs": [
                {"name": "latent", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32},
                {"name": "labels", "shape": [1], "datatype": "INT64", "data": [3]},
            ]
        }
    raise ValueError(model)


# ---- the run -----------------------------------------------------------------------------------


class Fleet:
    def __init__(self, args: argparse.Namespace, folder: Path, store: Path) -> None:
        self.args, self.folder, self.store = args, folder, store
        self.replicas = [Replica(name, free_port(), store, folder) for name in REPLICAS]
        self.haproxy = HAProxy(self.replicas, folder, args.haproxy_config)
        self.loads: list[Load] = []

    def start(self) -> float:
        started = time.monotonic()
        for replica in self.replicas:  # all three start at once
            replica.start()
        for replica in self.replicas:
            replica.wait_ready()
        self.haproxy.start()
        for replica in self.replicas:
            self.haproxy.wait_status(replica.name, "UP")
        return time.monotonic() - started

    def stop(self) -> None:
        for load in self.loads:
            load.kill()
        self.haproxy.stop()
        for replica in self.replicas:
            replica.stop()

    @contextlib.contextmanager
    def load(self, scenario: str) -> Iterator[dict]:
        """A steady Locust load for the length of the block; the block's dict gets its figures."""
        load = Load(self.haproxy.url, self.folder / scenario, self.args.users, self.args.rate, 900)
        self.loads.append(load)
        figures: dict = {}
        before = self.haproxy.counters()
        load.wait_flowing()
        time.sleep(SETTLE_S)
        started = time.monotonic()
        yield figures
        time.sleep(SETTLE_S)
        result = load.stop()
        self.loads.remove(load)
        after = self.haproxy.counters()
        figures["load"] = dataclasses.asdict(result)
        figures["action_s"] = round(time.monotonic() - started - SETTLE_S, 1)
        figures["haproxy"] = {key: after[key] - before[key] for key in after}
        log(
            f"{scenario}: {result.requests:,} requests, {result.failures:,} failed, "
            f"p99 {result.p99_ms:,.0f} ms; HAProxy retried {figures['haproxy']['retries']}, "
            f"redispatched {figures['haproxy']['redispatches']}"
        )

    def rolling_restart(self) -> dict:
        with self.load("rolling-restart") as figures:
            steps = []
            for replica in self.replicas:
                exit_s = replica.sigterm_and_wait()
                replica.start()
                ready_s = replica.wait_ready()
                up_s = self.haproxy.wait_status(replica.name, "UP")
                steps.append(
                    {"replica": replica.name, "exit_s": round(exit_s, 1), "ready_s": round(ready_s, 1)}
                )
                log(
                    f"{replica.name}: gone {exit_s:.1f} s after SIGTERM, ready {ready_s:.1f} s after "
                    f"start, UP in HAProxy {up_s:.1f} s later"
                )
            figures["steps"] = steps
        failures = figures["load"]["failures"]
        figures["passed"] = failures == 0 and figures["load"]["requests"] > 0
        figures["checks"] = [f"{failures} failed requests (0 allowed)"]
        return figures

    def rollout(self) -> dict:
        with self.load("rollout") as figures:
            published = publish_next_versions(self.store)
            figures["versions"] = {name: {"from": old, "to": new} for name, (old, new) in published.items()}
            log("published " + ", ".join(f"{name}/{new}" for name, (_, new) in published.items()))
            started = time.monotonic()

            def swapped(only_new: bool) -> bool:
                return all(
                    (replica.served_versions(name) == [str(new)])
                    if only_new
                    else replica.served_versions(name)[0] == str(new)
                    for replica in self.replicas
                    for name, (_, new) in published.items()
                )

            wait_for("every replica to serve the new versions", lambda: swapped(False), 60, every_s=0.25)
            figures["all_swapped_s"] = round(time.monotonic() - started, 1)
            wait_for("every replica to release the old versions", lambda: swapped(True), 60, every_s=0.5)
            figures["old_released_s"] = round(time.monotonic() - started, 1)
            log(
                f"every replica serves the new versions {figures['all_swapped_s']} s after publishing, "
                f"the old ones released after {figures['old_released_s']} s"
            )
            # From here on, no answer may come from an old version: watch each replica's counters
            # and ask through HAProxy which version answers.
            before = {replica.name: replica.answered() for replica in self.replicas}
            wrong, probes = [], 0
            window_end = time.monotonic() + self.args.rollout_window_s
            while time.monotonic() < window_end:
                for name, (_, new) in published.items():
                    status, answer = http_post_json(
                        f"{self.haproxy.url}/v2/models/{name}/infer", infer_body(name)
                    )
                    probes += 1
                    if status != 200 or answer.get("model_version") != str(new):
                        wrong.append(f"{name}: HTTP {status}, model_version {answer.get('model_version')!r}")
                time.sleep(0.1)
            after = {replica.name: replica.answered() for replica in self.replicas}
        moved_old, grew_new = [], []
        for replica in self.replicas:
            for name, (old, new) in published.items():
                old_key, new_key = (name, str(old)), (name, str(new))
                delta_old = after[replica.name].get(old_key, 0) - before[replica.name].get(old_key, 0)
                delta_new = after[replica.name].get(new_key, 0) - before[replica.name].get(new_key, 0)
                if delta_old:
                    moved_old.append(f"{replica.name} {name}/{old}: +{delta_old:g}")
                grew_new.append(delta_new > 0)
        figures["probes"] = {"sent": probes, "wrong_version": wrong[:10], "wrong_count": len(wrong)}
        figures["old_version_answers_after_swap"] = moved_old
        failures = figures["load"]["failures"]
        figures["passed"] = failures == 0 and not wrong and not moved_old and all(grew_new)
        figures["checks"] = [
            f"{failures} failed requests (0 allowed)",
            f"{probes - len(wrong)} of {probes} V2 infer answers through HAProxy from the new version",
            "old versions' request counters after the swap: "
            + (", ".join(moved_old) or "unchanged on every replica"),
            f"new versions answered on every replica: {all(grew_new)}",
        ]
        return figures

    def sigkill(self) -> dict:
        victim = self.replicas[1]
        with self.load("sigkill") as figures:
            victim.sigkill()
            killed = time.monotonic()
            down_s = self.haproxy.wait_status(victim.name, "DOWN")
            log(f"{victim.name}: killed, HAProxy saw it DOWN after {down_s:.1f} s")
            time.sleep(SETTLE_S)  # two replicas carry the load for a while
            victim.start()
            ready_s = victim.wait_ready()
            self.haproxy.wait_status(victim.name, "UP")
            figures["whole_again_s"] = round(time.monotonic() - killed, 1)
            log(
                f"{victim.name}: started again, ready {ready_s:.1f} s later; fleet whole "
                f"{figures['whole_again_s']} s after the kill"
            )
            before = {replica.name: sum(replica.answered().values()) for replica in self.replicas}
            time.sleep(SETTLE_S)
            after = {replica.name: sum(replica.answered().values()) for replica in self.replicas}
            statuses = {
                name: row["status"] for name, row in self.haproxy.stats().items() if name != "BACKEND"
            }
        figures["killed"] = victim.name
        figures["down_after_s"] = round(down_s, 1)
        figures["answered_after_restart"] = {name: after[name] - before[name] for name in after}
        figures["haproxy_status"] = statuses
        whole = all(status == "UP" for status in statuses.values()) and all(
            count > 0 for count in figures["answered_after_restart"].values()
        )
        figures["passed"] = whole and figures["load"]["requests"] > 0
        figures["checks"] = [
            f"{figures['load']['failures']} failed requests (counted, not bounded)",
            f"HAProxy: {statuses}; requests answered per replica after the restart: "
            f"{figures['answered_after_restart']}",
        ]
        return figures


# ---- the report --------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "commit": commit or "unknown",
        "python": platform.python_version(),
        "haproxy": haproxy[0] if haproxy else "unknown",
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Fleet test: HAProxy in front of three replicas",
        "",
        "Written by `make fleet-test` (`python loadtests/fleet.py --evidence docs/evidence/fleet.md`); "
        "docs/fleet.md explains the setup.",
        "",
        f"- run: {m['date']}, git commit `{m['commit']}`",
        f"- machine: {m['cpu']}, {m['cpus']} CPUs, shared with other work; Python {m['python']}; "
        f"{m['haproxy']}",
        "- model versions at the start: "
        + ", ".join(f"{k}/{v}" for k, v in report["versions_at_start"].items()),
        f"- fleet: 3 replicas x 1 worker ({', '.join(f'{k}={v}' for k, v in REPLICA_SETTINGS.items())}), "
        f"HAProxy with {report['haproxy_config']}, all on 127.0.0.1",
        f"- load: Locust, every workload of loadtests/locustfile.py (V2 binary included), "
        f"{report['users']} users x {report['rate']:g} requests/s, through HAProxy; a fresh run per "
        "scenario, "
        f"steady for {SETTLE_S:g} s before and after the scenario's action",
        f"- fleet started (three replicas ready, HAProxy sees them up) in {report['started_s']:.1f} s",
        "",
        "| scenario | requests | failed | p99 | HAProxy retries / redispatches | took | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, figures in report["scenarios"].items():
        if "load" not in figures:
            lines.append(f"| {name} | | | | | | FAILED: {figures.get('error', '')} |")
            continue
        load, lb = figures["load"], figures["haproxy"]
        lines.append(
            f"| {name} | {load['requests']:,} | {load['failures']:,} | {load['p99_ms']:,.0f} ms | "
            f"{lb['retries']} / {lb['redispatches']} | {figures['action_s']:.0f} s | "
            f"{'passed' if figures['passed'] else 'FAILED'} |"
        )
    lines.append("")
    for name, figures in report["scenarios"].items():
        lines.append(f"**{name}**")
        lines.append("")
        for check in figures.get("checks", []):
            lines.append(f"- {check}")
        for step in figures.get("steps", []):
            lines.append(
                f"- {step['replica']}: every process gone {step['exit_s']} s after SIGTERM, "
                f"ready {step['ready_s']} s after its start"
            )
        if "versions" in figures:
            versions = ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in figures["versions"].items())
            lines.append(
                f"- published {versions}; every replica served them {figures['all_swapped_s']} s later "
                f"and had released the old ones {figures['old_released_s']} s later"
            )
        if "down_after_s" in figures:
            lines.append(
                f"- {figures['killed']}: HAProxy saw it down {figures['down_after_s']} s after SIGKILL; "
                f"the fleet was whole again {figures['whole_again_s']} s after it"
            )
        endpoints = figures.get("load", {}).get("by_endpoint", {})
        if endpoints:
            lines.append(
                "- requests by endpoint: " + ", ".join(f"`{k}` {v:,}" for k, v in sorted(endpoints.items()))
            )
        for kind in figures.get("load", {}).get("failure_kinds", []):
            lines.append(f"- failure: {kind}")
        if "error" in figures:
            lines.append(f"- error: {figures['error']}")
        lines.append("")
    if "error" in report:
        lines += [f"The run stopped early: {report['error']}", ""]
    verdict = "passed" if report["passed"] else "FAILED"
    lines.append(f"Overall: **{verdict}**.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=8, help="Locust users (default 8)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per user (default 10)")
    parser.add_argument(
        "--rollout-window-s",
        type=float,
        default=8.0,
        help="how long answers are watched after the swap (default 8)",
    )
    parser.add_argument("--deadline-s", type=int, default=420, help="the whole run's bound (default 420)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--evidence", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--haproxy-config",
        type=Path,
        default=HAPROXY_CFG,
        help="another HAProxy configuration to put to the same test (default: deploy/haproxy/haproxy.cfg)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    def out_of_time(*_: object) -> None:
        raise Deadline(f"the fleet test ran past --deadline-s {args.deadline_s}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.deadline_s)
    folder = new_run_folder(args.results_dir, prefix="fleet-")
    log(f"results and logs in {folder}")
    config = args.haproxy_config.resolve()
    shipped = config == HAPROXY_CFG.resolve()
    report: dict = {
        "machine": machine(),
        "users": args.users,
        "rate": args.rate,
        "haproxy_config": "deploy/haproxy/haproxy.cfg as shipped" if shipped else f"`{config}`",
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="fleet-store-") as tmp:
        store = Path(tmp) / "model_store"
        shutil.copytree(REPOSITORY / "model_store", store, ignore=shutil.ignore_patterns("*.png"))
        report["versions_at_start"] = store_versions(store)
        fleet = Fleet(args, folder, store)
        try:
            report["started_s"] = fleet.start()
            log(
                f"three replicas ready and up in HAProxy after {report['started_s']:.1f} s "
                f"({fleet.haproxy.url})"
            )
            for name, scenario in (
                ("rolling restart", fleet.rolling_restart),
                ("rollout", fleet.rollout),
                ("SIGKILL", fleet.sigkill),
            ):
                try:
                    report["scenarios"][name] = scenario()
                except FleetError as error:
                    log(f"{name}: {error}")
                    report["scenarios"][name] = {"passed": False, "error": str(error)}
                    break
        except (FleetError, Deadline, RuntimeError) as error:
            log(f"stopped: {error}")
            report["error"] = str(error)
        finally:
            signal.alarm(0)
            fleet.stop()
    report["passed"] = (
        "error" not in report
        and len(report["scenarios"]) == 3
        and all(s["passed"] for s in report["scenarios"].values())
    )
    (folder / "fleet.json").write_text(json.dumps(report, indent=2) + "\n")
    if "started_s" in report:
        page = markdown(report)
        (folder / "fleet.md").write_text(page)
        if args.evidence:
            args.evidence.parent.mkdir(parents=True, exist_ok=True)
            args.evidence.write_text(page)
        print(page)
    log("PASSED" if report["passed"] else "FAILED")
    return 0 if report["passed"] else 1


def new_run_folder(results_dir: Path, prefix: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        folder = results_dir / (f"{prefix}{stamp}" if attempt == 1 else f"{prefix}{stamp}-{attempt}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            return folder
    raise FileExistsError(f"no free run folder in {results_dir}")


if __name__ == "__main__":
    sys.exit(main())
