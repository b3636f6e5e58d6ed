"""Acceptance test of the built image (`make image-test`): run it as a user would, check it.

Starts the image with podman limited to one CPU (``--cpus 1``), read-only root filesystem
and a writable ``/tmp``, published on a free port of 127.0.0.1; waits for ``/readyz``; then
checks real answers from ``/classify``, ``/forecast``, ``/generate`` and a V2 binary ``infer``
with tritonclient, that no process runs as root, that ``/metrics`` reports the resolved
runtime (one worker for one CPU), that the image holds no build-time CA bundle and no
training code, and the image's size and user. The container is removed whatever happens.

Prints one line per check and ends with ``N passed, N failed``; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton
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

MAX_IMAGE_BYTES = 500 * 1000 * 1000
# Not a speed assert: only how long to wait before calling the start a failure.
READY_DEADLINE_S = 180.0
# What the service must export for a container limited to one CPU.
EXPECTED_RUNTIME_LABELS = {
    "workers": "1",
    "intra_op_threads": "1",
    "provider": "CPUExecutionProvider",
    "cpus": "1",
}


class ImageTest:
    """One run of the image, and the checks made against it."""

    def __init__(self, image: str, name: str, host_ca: Path | None) -> None:
        self.image = image
        self.name = name
        self.host_ca = host_ca
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        self.results: list[tuple[str, str | None]] = []

    # ---- the container ----

    def start(self) -> float:
        """Run the image detached; return when it is ready, with the seconds it took."""
        started = time.monotonic()
        podman(
            "run", "--detach", "--name", self.name, "--cpus", "1",
            "--read-only", "--tmpfs", "/tmp",
            "--publish", f"127.0.0.1:{self.port}:3000",
            self.image,
        )  # fmt: skip
        while time.monotonic() - started < READY_DEADLINE_S:
            state = podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip()
            expect(state == "true", f"the container stopped before it was ready:\n{self.logs()}")
            try:
                if self.http.get("/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise CheckFailed(f"/readyz not 200 after {READY_DEADLINE_S:.0f} s:\n{self.logs()}")

    def logs(self) -> str:
        return podman("logs", "--tail", "40", self.name, check=False).stdout

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", self.name, check=False)

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    # ---- running the checks ----

    def check(self, name: str, function: Callable[[], str]) -> None:
        errors = (AssertionError, httpx.HTTPError, subprocess.SubprocessError, ValueError)
        error, _ = run_check(name, function, errors)
        self.results.append((name, error))

    def post_json(self, path: str, body: dict) -> dict:
        response = self.http.post(path, json=body)
        expect(response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    # ---- the checks ----

    def image_properties(self) -> str:
        inspected = json.loads(podman("image", "inspect", self.image).stdout)[0]
        size, config = inspected["Size"], inspected["Config"]
        user = config.get("User", "")
        uid = user.split(":")[0]
        expect(size < MAX_IMAGE_BYTES, f"image is {size / 1e6:.0f} MB, over {MAX_IMAGE_BYTES / 1e6:.0f} MB")
        expect(uid.isdigit() and int(uid) != 0, f"USER is {user!r}: it must be a numeric, non-zero UID")
        ports = config.get("ExposedPorts") or {}
        expect("3000/tcp" in ports, f"port 3000 not exposed: {sorted(ports)}")
        return f"{size / 1e6:.0f} MB, USER {user}, exposes 3000/tcp"

    def classify(self) -> str:
        answer = self.post_json("/classify", {"images": [DIGIT_ZERO, DIGIT_ZERO]})
        probabilities = np.asarray(answer["probabilities"])
        expect(probabilities.shape == (2, 10), f"probabilities shape {probabilities.shape}, expected (2, 10)")
        expect(np.allclose(probabilities.sum(axis=1), 1, atol=1e-4), "probabilities do not sum to 1")
        expect(answer["labels"] == [0, 0], f"a handwritten 0 classified as {answer['labels']}")
        return f"labels {answer['labels']}, p(0) = {probabilities[0, 0]:.3f}"

    def forecast(self) -> str:
        horizon = self.http.get("/v2/models/forecaster").json()["outputs"][0]["shape"][-1]
        weeks = np.arange(260)
        # Mauna Loa-like weekly CO2: a trend and a yearly cycle, in ppm.
        history = 400 + 0.045 * weeks + 3 * np.sin(2 * math.pi * weeks / 52.18)
        answer = self.post_json("/forecast", {"series": [history.tolist(), history[-120:].tolist()]})
        forecasts = np.asarray(answer["forecasts"])
        expect(forecasts.shape == (2, horizon), f"forecasts shape {forecasts.shape}, expected (2, {horizon})")
        low, high = history[-52:].min() - 5, history[-52:].max() + 10
        expect(
            bool(np.all((forecasts > low) & (forecasts < high))),
            f"forecasts outside the plausible {low:.0f}..{high:.0f} ppm: "
            f"{forecasts.min():.1f}..{forecasts.max():.1f}",
        )
        return f"2 x {horizon} weeks, {forecasts.min():.1f}..{forecasts.max():.1f} ppm"

    def generate(self) -> str:
        labels = list(range(10))
        arrays = self.post_json("/generate", {"labels": labels, "seed": 7, "format": "array"})
        images = np.asarray(arrays["images"])
        expect(images.shape[0] == 10 and images.shape[-2:] == (8, 8), f"images shape {images.shape}")
        expect(bool(images.min() >= 0 and images.max() <= 16), "pixel values outside 0..16")
        again = self.post_json("/generate", {"labels": labels, "seed": 7, "format": "array"})
        expect(np.array_equal(images, np.asarray(again["images"])), "same labels and seed, different images")
        pngs = self.post_json("/generate", {"labels": [3], "seed": 7})["images"]
        expect(base64.b64decode(pngs[0]).startswith(b"\x89PNG"), "format png did not give a PNG")
        # The classifier must recognise what the generator drew (0.984 measured on 1,000).
        recognised = self.post_json("/classify", {"images": images.reshape(10, 8, 8).tolist()})["labels"]
        hits = sum(int(a == b) for a, b in zip(recognised, labels, strict=True))
        expect(hits >= 8, f"the classifier recognised {hits} of 10 generated digits: {recognised}")
        return f"10 images 8x8, deterministic, PNG ok, {hits}/10 recognised by the classifier"

    def v2_binary_infer(self) -> str:
        client = triton.InferenceServerClient(f"127.0.0.1:{self.port}")
        try:
            images = np.asarray([DIGIT_ZERO, DIGIT_ZERO], np.float32).reshape(2, 1, 8, 8)
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images, binary_data=True)
            output = triton.InferRequestedOutput("probabilities", binary_data=True)
            probabilities = client.infer("classifier", [tensor], outputs=[output]).as_numpy("probabilities")
        finally:
            client.close()
        expect(probabilities is not None and probabilities.shape == (2, 10), "no [2, 10] probabilities")
        expect(probabilities.argmax(axis=1).tolist() == [0, 0], "a handwritten 0 not classified as 0")
        return f"binary tensors, probabilities {list(probabilities.shape)}, argmax [0, 0]"

    def not_root(self) -> str:
        # Every process in the container, by its real, effective, saved and filesystem UIDs.
        script = "for f in /proc/[0-9]*/status; do awk '/^Uid:/ {print $2, $3, $4, $5}' $f; done 2>/dev/null"
        script += "; true"  # a process that ended between the glob and awk is no failure
        found = set(self.exec("sh", "-c", script).split())
        expect(bool(found), "no processes found")
        expect("0" not in found, f"a process runs as root: UIDs {sorted(found)}")
        return f"every process runs as UID {', '.join(sorted(found))}"

    def runtime_metrics(self) -> str:
        text = self.http.get("/metrics").text
        lines = runtime_info_lines(text)
        wanted = ",".join(f'{key}="{value}"' for key, value in EXPECTED_RUNTIME_LABELS.items())
        expect(
            bool(lines),
            f"/metrics has no modelserve_runtime_info gauge; expected modelserve_runtime_info{{{wanted}}} 1",
        )
        labels = labels_of(lines[0])
        gauge = float(lines[0].rsplit(" ", 1)[1])
        wrong = {key for key, expected in EXPECTED_RUNTIME_LABELS.items() if labels.get(key) != expected}
        expect(
            not wrong and gauge == 1,
            f"expected modelserve_runtime_info{{{wanted}}} 1 with --cpus 1, found {lines[0]}",
        )
        return lines[0]

    def no_build_secrets(self) -> str:
        expect(
            self.exec("sh", "-c", "ls -A /run/secrets 2>/dev/null || true").strip() == "",
            "/run/secrets is not empty",
        )
        if self.host_ca is None or not self.host_ca.is_file():
            return "/run/secrets empty (no host CA bundle to look for)"
        data = self.host_ca.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        same_size = self.exec(
            "sh", "-c", f"find / -xdev -type f -size {len(data)}c -exec sha256sum {{}} + 2>/dev/null || true"
        )
        copies = [line.split()[1] for line in same_size.splitlines() if line.startswith(digest)]
        expect(not copies, f"the build host's CA bundle is in the image: {copies}")
        return f"/run/secrets empty; no copy of {self.host_ca} (sha256 {digest[:12]}) anywhere in the image"

    def serving_only(self) -> str:
        # onnx is served: `python -m store_format import` checks a user's model with onnx.checker.
        probe = (
            "import importlib.util as u; "
            "print([m for m in ('torch', 'training', 'tests', 'sklearn') if u.find_spec(m)])"
        )
        present = self.exec("python", "-c", probe).strip()
        expect(present == "[]", f"training-side modules in the image: {present}")
        return "no torch, training, tests or sklearn module"

    def stop(self) -> str:
        started = time.monotonic()
        podman("stop", "--time", "30", self.name, timeout=60)
        seconds = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        expect(code == "0", f"exit code {code} after SIGTERM:\n{self.logs()}")
        return f"exited 0 on SIGTERM after {seconds:.1f} s"

    def run(self) -> int:
        self.check("image", self.image_properties)
        try:
            ready_s = self.start()
        except (CheckFailed, subprocess.SubprocessError) as error:
            self.results.append(("ready", str(error)))
            print(f"FAIL ready: {error}", flush=True)
        else:
            self.results.append(("ready", None))
            print(f"ok   ready: /readyz 200 {ready_s:.1f} s after podman run (--cpus 1, read-only root)")
            for name, function in [
                ("classify", self.classify),
                ("forecast", self.forecast),
                ("generate", self.generate),
                ("v2 infer", self.v2_binary_infer),
                ("not root", self.not_root),
                ("metrics", self.runtime_metrics),
                ("no build secrets", self.no_build_secrets),
                ("serving only", self.serving_only),
                ("stop", self.stop),
            ]:
                self.check(name, function)
        failed = sum(1 for _, error in self.results if error)
        print(f"{len(self.results) - failed} passed, {failed} failed")
        return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/modelserve:latest")
    parser.add_argument("--name", default=f"modelserve-image-test-{int(time.time())}")
    parser.add_argument("--host-ca", type=Path, default=Path("/etc/ssl/certs/ca-certificates.crt"))
    args = parser.parse_args()
    # A SIGTERM or SIGHUP (a cancelled CI job) still removes the container.
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    test = ImageTest(args.image, args.name, args.host_ca)
    try:
        return test.run()
    finally:
        test.remove()
        test.http.close()


if __name__ == "__main__":
    sys.exit(main())
