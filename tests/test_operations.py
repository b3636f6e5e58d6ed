"""The operations kit against real programs: promtool over the alert rules, a real Prometheus
scraping real servers with deploy/prometheus/prometheus.yml, the Grafana dashboard's queries
run against what it scraped, and the TLS example (HAProxy from Debian's package) in front of a
real server.

Prometheus, promtool, HAProxy and openssl come from Debian's packages; ``make ops-check``
installs them where missing (CI runs it before ``make test``). Without them these tests skip,
saying which program is missing.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from harness.prometheus import (
    CONFIG,
    CONFIG_DIR,
    finite_values,
    prometheus_binary,
    promtool_binary,
    run_prometheus,
)
from harness.server import ROOT, ServerProcess, free_port
from store_format import latest_version
from tests.conftest import COMMITTED_STORE, serve

pytestmark = pytest.mark.slow

RULES = CONFIG_DIR / "alerts.yml"
RULE_TESTS = CONFIG_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "modelserve-dashboard.json"
TLS_DIR = ROOT / "deploy" / "tls"
INSTALL_HINT = "make ops-check installs it from Debian's package"

# One worker and a 4-item forecaster queue: a burst of 64 one-row forecasts is refused in part.
OVERLOAD_SETTINGS = {
    "workers": "1",
    "max_items_per_request": "4",
    "batch__max_queue_size": "4",
    "batch__max_batch_size": "4",
}


def need(program: str | None, name: str) -> str:
    if program is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINT})")
    return program


def plot_panels_module():
    """deploy/grafana/plot_panels.py, whose variable substitution the test shares."""
    name = "deploy_grafana_plot_panels"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "deploy/grafana/plot_panels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def co2_like(length: int, phase: int = 0) -> list[float]:
    t = np.arange(length) + phase
    return (330 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52.18)).round(2).tolist()


def digits(n: int) -> list:
    rng = np.random.default_rng(0)
    return rng.integers(0, 17, size=(n, 8, 8)).tolist()


# --- static checks: promtool and the dashboard's structure ------------------------------------


def test_promtool_checks_the_config_the_rules_and_the_rule_unit_tests():
    promtool = need(promtool_binary(), "promtool")
    for args in (["check", "config", CONFIG], ["check", "rules", RULES], ["test", "rules", RULE_TESTS]):
        done = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {args}:\n{done.stdout}\n{done.stderr}"


def test_every_alert_is_unit_tested_and_has_a_runbook_section():
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"ModelServe[A-Z][A-Za-z0-9]+", name), name
        assert name in tested, f"{name} never fires in {RULE_TESTS.name}"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {name}" in operations and anchor == name.lower(), name


def test_the_dashboard_is_grafana_json_with_unique_ids_and_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"instance", "model"} <= set(variables)
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}


# --- a real Prometheus scraping real servers --------------------------------------------------


@pytest.fixture(scope="module")
def overload_server(tmp_path_factory):
    """A server that refuses part of a forecast burst: its queue holds 4 items."""
    with serve(tmp_path_factory.mktemp("ops-server"), **OVERLOAD_SETTINGS) as running:
        yield running


def burst_of_forecasts(url: str, n: int = 64) -> list[int]:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(
            base_url=url, timeout=60, trust_env=False, limits=httpx.Limits(max_connections=n)
        ) as client:
            rows = [co2_like(400, phase) for phase in range(n)]
            answers = await asyncio.gather(*(client.post("/forecast", json={"series": [r]}) for r in rows))
            return [a.status_code for a in answers]

    return asyncio.run(burst())


def test_prometheus_scrapes_the_service_with_the_shipped_config(overload_server, tmp_path):
    """Prometheus with deploy/prometheus/prometheus.yml (1 s scrapes) and its rules over two
    servers: one serving traffic and refusing a burst, one whose classifier file was tampered
    with. The service's series, the dashboard's queries and the alerts all come out of it."""
    need(prometheus_binary(), "prometheus")
    store = tmp_path / "model_store"
    shutil.copytree(COMMITTED_STORE, store)
    model = store / "classifier" / str(latest_version(store, "classifier")) / "model.onnx"  # the served one
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    with serve(tmp_path / "tampered", store=store, wait_ready=False, workers="1") as tampered:
        good = overload_server.url.removeprefix("http://")
        bad = tampered.url.removeprefix("http://")
        with run_prometheus([good, bad]) as prometheus:
            up = prometheus.wait_for('up{job="modelserve"} == 1', lambda r: len(r) == 2, timeout_s=60)
            assert {s["metric"]["instance"] for s in up} == {good, bad}

            # Traffic: every model, a 400, then two bursts a few scrapes apart (a counter's rate
            # needs two samples of it), so that refusals are a rate Prometheus can see.
            with httpx.Client(base_url=overload_server.url, timeout=30, trust_env=False) as http:
                assert http.post("/classify", json={"images": digits(4)}).status_code == 200
                assert http.post("/forecast", json={"series": [co2_like(200)]}).status_code == 200
                assert http.post("/generate", json={"labels": [1, 2], "format": "array"}).status_code == 200
                assert http.post("/classify", json={"images": [[1, 2]]}).status_code == 400
            first = burst_of_forecasts(overload_server.url)
            time.sleep(3)
            second = burst_of_forecasts(overload_server.url)
            refused = first.count(503) + second.count(503)
            assert set(first + second) <= {200, 503} and second.count(503), (first, second)
            with httpx.Client(base_url=tampered.url, timeout=30, trust_env=False) as http:
                assert http.get("/readyz").status_code == 503

            # The service's series, as scraped: every model's, labelled by model and version.
            served = {"classifier", "forecaster", "generator"}
            ready = prometheus.wait_for(
                f'modelserve_model_ready{{instance="{good}"}} == 1', lambda r: len(r) == 3
            )
            assert {s["metric"]["model"] for s in ready} == served
            assert all(s["metric"]["version"].isdigit() for s in ready)
            rejected = prometheus.wait_for(
                f'sum(modelserve_rejected_total{{instance="{good}", model="forecaster"}})',
                lambda r: bool(r) and float(r[0]["value"][1]) == refused,
            )
            assert float(rejected[0]["value"][1]) == refused
            errors = prometheus.query(f'modelserve_errors_total{{instance="{good}"}}')
            assert {(s["metric"]["model"], s["metric"]["status"]) for s in errors} == {
                ("classifier", "400"),
                ("forecaster", "503"),
            }
            failures = prometheus.query(f'modelserve_model_load_failures_total{{instance="{bad}"}}')
            assert [(s["metric"]["model"], s["metric"]["reason"]) for s in failures] == [
                ("classifier", "sha256")
            ]

            # Every series the alert rules read exists in what was scraped.
            names = {s["metric"]["__name__"] for s in prometheus.query('{job="modelserve"}')}
            for name in set(re.findall(r"modelserve_\w+", RULES.read_text())):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in names or base in names, f"{name} is in alerts.yml but not in a scrape"

            # Every panel of the dashboard returns the service's series (queries as Grafana sends
            # them, with its variables filled in).
            for panel in plot_panels_module().panels(rate_interval="30s", range_="5m"):
                results = [prometheus.query(query.expr) for query in panel.queries]
                assert any(results), f"panel {panel.title!r} returns nothing: {panel.queries}"
                if panel.kind == "timeseries" and panel.title != "Model lifecycle events":
                    assert any(finite_values(r) for r in results), f"panel {panel.title!r}: only NaN"

            # The rules load and evaluate; the alerts follow what the servers did.
            rules = prometheus.api("rules")["groups"][0]["rules"]
            assert {r["name"] for r in rules} == {
                r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
            }
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

            def alerts() -> dict[str, set[tuple[str, str, str]]]:
                found: dict[str, set[tuple[str, str, str]]] = {}
                for alert in prometheus.api("alerts")["alerts"]:
                    labels = alert["labels"]
                    found.setdefault(labels["alertname"], set()).add(
                        (labels.get("instance", ""), labels.get("model", ""), alert["state"])
                    )
                return found

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                active = alerts()
                if {"ModelServeModelNotReady", "ModelServeModelLoadFailed", "ModelServeOverloaded"} <= set(
                    active
                ):
                    break
                time.sleep(1)
            # A tampered model: not ready (pending: it must last 2 minutes to fire) and a load
            # failure (firing at once); 4 refused of 5 forecasts: overloaded (pending, 5 minutes).
            assert active.get("ModelServeModelNotReady") == {(bad, "classifier", "pending")}, active
            assert active.get("ModelServeModelLoadFailed") == {(bad, "classifier", "firing")}, active
            assert active.get("ModelServeOverloaded") == {(good, "forecaster", "pending")}, active
            # Nothing else: no 500s, both targets up, every model quick.
            assert set(active) == {
                "ModelServeModelNotReady",
                "ModelServeModelLoadFailed",
                "ModelServeOverloaded",
            }, active
            assert "level=error" not in prometheus.log_text()


# --- the TLS example: HAProxy in front of a real server ----------------------------------------


def test_haproxy_example_terminates_tls_and_checks_clients(overload_server, tmp_path):
    """deploy/tls/run-example.sh as a user runs it, in front of a running server: HTTPS with the
    certificate it made, an API key or basic auth required, /metrics not exposed."""
    need(shutil.which("haproxy"), "haproxy")
    need(shutil.which("openssl"), "openssl")
    port = free_port()
    api_key, password = "test-key-0123456789abcdef", "test-password-42"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "BACKEND": overload_server.url.removeprefix("http://"),
        "HTTPS_BIND": f"127.0.0.1:{port}",
        "TLS_EXAMPLE_DIR": str(tmp_path / "tls"),
        "API_KEY": api_key,
        "BASIC_AUTH_USER": "client",
        "BASIC_AUTH_PASSWORD": password,
    }
    proxy = ServerProcess(
        ["bash", str(TLS_DIR / "run-example.sh")], env, port, name="haproxy", workdir=tmp_path / "proxy"
    )
    cert = tmp_path / "tls" / "modelserve.crt"
    https = f"https://127.0.0.1:{port}"

    def trusting() -> ssl.SSLContext:  # a client that trusts the example's certificate
        return ssl.create_default_context(cafile=str(cert))

    images = digits(3)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proxy.process.poll() is None, proxy.log_tail()
            try:
                with httpx.Client(base_url=https, verify=trusting(), trust_env=False, timeout=5) as client:
                    if client.get("/readyz", headers={"X-API-Key": api_key}).status_code == 200:
                        break
            except (httpx.TransportError, OSError):
                pass
            assert time.monotonic() < deadline, f"no 200 through the proxy:\n{proxy.log_tail()}"
            time.sleep(0.5)

        with httpx.Client(base_url=overload_server.url, trust_env=False, timeout=30) as direct:
            expected = direct.post("/classify", json={"images": images}).json()
            assert direct.get("/metrics").status_code == 200

        basic = "Basic " + base64.b64encode(f"client:{password}".encode()).decode()
        wrong_basic = "Basic " + base64.b64encode(b"client:guess").decode()
        with httpx.Client(base_url=https, verify=trusting(), trust_env=False, timeout=30) as client:
            for headers in ({"X-API-Key": api_key}, {"Authorization": basic}):
                answer = client.post("/classify", json={"images": images}, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.json()["labels"] == expected["labels"]
                assert answer.headers["strict-transport-security"] == "max-age=31536000"
                assert answer.headers["x-request-id"]  # the service's own header, passed through
                assert answer.http_version == "HTTP/1.1"

            for headers in ({}, {"X-API-Key": "not-the-key"}, {"Authorization": wrong_basic}):
                refused = client.post("/classify", json={"images": images}, headers=headers)
                assert refused.status_code == 401, (headers, refused.status_code)
                assert refused.headers["www-authenticate"] == 'Basic realm="modelserve"'

            assert client.get("/metrics", headers={"X-API-Key": api_key}).status_code == 404
            assert client.get("/v2/models/classifier", headers={"X-API-Key": api_key}).status_code == 200

        # It is really TLS, with the example's own certificate: untrusted by default, and no
        # plain HTTP on the same port.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{https}/livez", trust_env=False, timeout=5)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/livez", trust_env=False, timeout=5)
    finally:
        proxy.stop()
    # HAProxy logged each request with its status, the refused ones too: what an operator audits.
    log = Path(proxy.log_path).read_text()
    assert re.search(r' 200 .*"POST /classify HTTP/1.1"', log), log[-2000:]
    assert re.search(r' 401 .*"POST /classify HTTP/1.1"', log), log[-2000:]
