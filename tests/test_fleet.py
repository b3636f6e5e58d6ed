"""The fleet kit: deploy/haproxy/haproxy.cfg and the pieces of loadtests/fleet.py, checked fast.

``make fleet-test`` runs the whole fleet under load (three replicas, three scenarios, a few
minutes); these tests check, in seconds, what it builds on: that HAProxy accepts the shipped
configuration, that the configuration's bounds fit the service's own (a replica's request and
drain timeouts, its readiness path), that HAProxy with it stops sending to replicas that are gone
and answers for itself, and that a rollout's published versions are real, verified versions.
HAProxy comes from Debian's package (``make fleet-test`` and ``make ops-check`` install it);
without it the tests that run it skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from harness.server import ROOT
from service.platform.settings import Settings
from store_format.manifest import latest_version, list_models, load_verified, read_manifest, sha256_of

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load_fleet():
    """loadtests/fleet.py as a module (loadtests/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("fleet", ROOT / "loadtests" / "fleet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet"] = module
    spec.loader.exec_module(module)
    return module


fleet = load_fleet()


def directives() -> list[list[str]]:
    """The configuration's lines, comments dropped, split into words."""
    lines = []
    for raw in CONFIG.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line.split())
    return lines


def value(*words: str) -> list[str]:
    """The words after the first directive that starts with ``words``."""
    for line in directives():
        if line[: len(words)] == list(words):
            return line[len(words) :]
    raise AssertionError(f"no {' '.join(words)!r} in {CONFIG}")


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", text).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 0.001}[unit]


def haproxy() -> str:
    found = shutil.which("haproxy")
    if found is None:
        pytest.skip("haproxy not installed (make fleet-test installs it from Debian's package)")
    return found


def test_haproxy_accepts_the_configuration():
    checked = subprocess.run(
        [haproxy(), "-c", "-f", str(CONFIG)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MODELSERVE_LB_SOCKET": "/tmp/unused.sock"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "warning" not in (checked.stdout + checked.stderr).lower()


def test_bounds_fit_the_service():
    settings = Settings()
    # A replica answers within its request timeout, or while draining within its drain timeout:
    # HAProxy must not give up on it (and retry the request elsewhere) before then.
    server_timeout = seconds(value("timeout", "server")[0])
    assert server_timeout > settings.http_timeout_s
    assert server_timeout > settings.drain_timeout_s + settings.linger_s
    # A client gets no longer for its headers than the service itself would give it.
    assert seconds(value("timeout", "http-request")[0]) <= settings.header_timeout_s
    # Readiness, not liveness, decides whether a replica gets traffic.
    assert value("http-check", "send")[:4] == ["meth", "GET", "uri", "/readyz"]
    assert value("http-check", "expect") == ["status", "200"]
    # What the service's drain and a crash leave a client with is retried on another replica.
    retry_on = set(value("retry-on"))
    assert {"conn-failure", "empty-response", "503"} <= retry_on
    assert value("option", "redispatch") == ["1"]
    assert int(value("retries")[0]) >= 2
    # Retrying needs the whole request in HAProxy's buffer.
    assert ["option", "http-buffer-request"] in directives()
    assert int(value("tune.bufsize")[0]) >= 256 * 1024
    servers = [line for line in directives() if line[0] == "server"]
    assert [line[1] for line in servers] == list(fleet.REPLICAS)
    assert all("check" in line for line in servers)


def get(url: str) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_haproxy_with_no_replica_up_answers_503_and_stops_cleanly(tmp_path):
    """HAProxy as the fleet test runs it, with every replica's port closed: each is marked down
    by its health checks, a request gets HAProxy's own 503 at once, and stopping it leaves
    nothing running."""
    haproxy()

    class Gone:
        def __init__(self) -> None:
            self.port = fleet.free_port()  # nothing listens there

    lb = fleet.HAProxy([Gone(), Gone(), Gone()], tmp_path)
    lb.start()
    try:
        for name in fleet.REPLICAS:
            lb.wait_status(name, "DOWN", timeout_s=15)
        status, _ = get(lb.url + "/classify")
        assert status == 503
        assert set(lb.counters()) == {"retries", "redispatches", "5xx", "econ", "eresp"}
    finally:
        lb.stop()
    assert lb.process.poll() is not None
    with pytest.raises(OSError):
        get(lb.stats_url + "/lb-health")


def test_published_versions_are_verified_versions_of_the_same_graphs(tmp_path):
    store = tmp_path / "model_store"
    shutil.copytree(ROOT / "model_store", store, ignore=shutil.ignore_patterns("*.png"))
    before = {name: latest_version(store, name) for name in list_models(store)}
    published = fleet.publish_next_versions(store)
    assert set(published) == set(before)
    for name, (old, new) in published.items():
        assert old == before[name]
        assert new == old + 1
        assert latest_version(store, name) == new
        manifest, model_file = load_verified(store, name, new)  # sha256 and manifest agree
        folder = model_file.parent
        assert manifest.version == new and folder.name == str(new)
        assert manifest.sha256 == sha256_of(store / name / str(old) / "model.onnx")
        previous = read_manifest(store / name / str(old))
        assert (manifest.inputs, manifest.outputs, manifest.serving) == (
            previous.inputs,
            previous.outputs,
            previous.serving,
        )
        assert json.loads((folder / "manifest.json").read_text())["version"] == new


def test_metric_samples_reads_labels_and_values():
    page = "\n".join(
        [
            "# HELP modelserve_requests_total Requests answered successfully",
            "# TYPE modelserve_requests_total counter",
            'modelserve_requests_total{model="classifier",version="1"} 12.0',
            'modelserve_requests_total{model="classifier",version="2"} 3.0',
            'modelserve_requests_created{model="classifier",version="1"} 1.7e9',
            'modelserve_runtime_info{cpu_source="cgroup v1 quota",cpus="2",workers="2"} 1.0',
        ]
    )
    assert fleet.metric_samples(page, "modelserve_requests_total") == [
        ({"model": "classifier", "version": "1"}, 12.0),
        ({"model": "classifier", "version": "2"}, 3.0),
    ]
    [(labels, one)] = fleet.metric_samples(page, "modelserve_runtime_info")
    assert labels["cpu_source"] == "cgroup v1 quota" and one == 1.0
