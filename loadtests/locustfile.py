"""Load scenarios for the service, for Locust.

Usage (the service must be running, e.g. ``make serve``)::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless --csv runs/locust

Users mix the endpoints the way a client fleet might: mostly single-image classification, some
forecasts of 300-500 weekly points, some generation, and V2 ``infer`` calls that share batches with
the task endpoints. Every answer is checked, not just its status: a 200 with the wrong shape is a
failure. The ``StepLoad`` shape drives every run: 8, 16, 32 then 64 users, 20 s each, then the
run stops by itself (80 s, bounded whatever the command line says).
"""

from __future__ import annotations

import random

import numpy as np
from locust import FastHttpUser, LoadTestShape, between, task

RNG = np.random.default_rng(0)
DIGITS = (RNG.uniform(0, 16, size=(256, 8, 8))).round(1).tolist()
SERIES = [
    (330 + 0.03 * np.arange(n) + 3 * np.sin(2 * np.pi * np.arange(n) / 52.18)).round(2).tolist()
    for n in RNG.integers(300, 501, size=64)
]


class ServiceUser(FastHttpUser):
    wait_time = between(0.0, 0.01)

    @task(8)
    def classify(self) -> None:
        with self.client.post(
            "/classify", json={"images": [random.choice(DIGITS)]}, catch_response=True
        ) as r:
            body = r.json() if r.status_code == 200 else None
            if body is None:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif len(body.get("labels", [])) != 1 or len(body["probabilities"][0]) != 10:
                r.failure(f"malformed answer: {r.text[:200]}")

    @task(3)
    def forecast(self) -> None:
        with self.client.post(
            "/forecast", json={"series": [random.choice(SERIES)]}, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif len(r.json().get("forecasts", [])) != 1:
                r.failure(f"malformed answer: {r.text[:200]}")

    @task(1)
    def generate(self) -> None:
        labels = random.sample(range(10), 4)
        with self.client.post(
            "/generate", json={"labels": labels, "seed": random.randrange(1000)}, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif len(r.json().get("images", [])) != 4:
                r.failure(f"malformed answer: {r.text[:200]}")

    @task(2)
    def v2_classify(self) -> None:
        data = np.ravel(random.choice(DIGITS)).tolist()
        body = {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}]}
        with self.client.post(
            "/v2/models/classifier/infer", json=body, name="/v2/models/classifier/infer", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif r.json()["outputs"][0]["shape"] != [1, 10]:
                r.failure(f"malformed answer: {r.text[:200]}")


class StepLoad(LoadTestShape):
    """8, 16, 32, then 64 users, 20 s each; then the test stops by itself."""

    steps = (8, 16, 32, 64)
    step_seconds = 20

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // self.step_seconds)
        if step >= len(self.steps):
            return None
        return self.steps[step], self.steps[step]
