"""The service over real HTTP: a real ``bentoml serve`` of the committed models, two workers."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from store_format import read_manifest
from tests.conftest import COMMITTED_STORE

pytestmark = pytest.mark.slow

DIGITS = load_digits()
TOL = 1e-4


def digit_images(n: int, start: int = 0) -> tuple[list, list[int]]:
    images = DIGITS.images[start : start + n]
    return images.tolist(), DIGITS.target[start : start + n].tolist()


def co2_like(length: int, phase: int = 0) -> list[float]:
    t = np.arange(length) + phase
    return (330 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52.18)).round(2).tolist()


def png_of(digit: np.ndarray, size: int = 96, fmt: str = "PNG") -> bytes:
    """A digits-dataset image as a picture a person might upload: big, dark ink on white."""
    pixels = (255 - digit / 16 * 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
    image = Image.new("L", (size + 40, size + 40), 255).copy()
    image.paste(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR), (20, 20))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def metric_values(text: str, name: str, model: str) -> dict[str, float]:
    """{le: value} of a histogram's buckets (or {"": value} for a plain series) for one model."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            le = re.search(r'le="([^"]+)"', line)
            values[le.group(1) if le else ""] = float(line.rsplit(" ", 1)[1])
    return values


# --- health ----------------------------------------------------------------------------------


def test_health_endpoints(server):
    with server.client() as http:
        assert http.get("/livez").status_code == 200
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert "modelserve_model_ready" in metrics.text


def test_openapi_document_lists_every_task_route_with_examples(server):
    with server.client() as http:
        spec = http.get("/docs.json").json()
    for path in ("/classify", "/classify_image", "/forecast", "/generate"):
        assert "post" in spec["paths"][path], path
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["examples"][0]["images"]


# --- task endpoints --------------------------------------------------------------------------


def test_classify_recognises_held_in_digits(server):
    images, labels = digit_images(100)
    with server.client() as http:
        answer = http.post("/classify", json={"images": images}).json()
    assert len(answer["labels"]) == 100
    assert np.mean(np.array(answer["labels"]) == np.array(labels)) >= 0.95
    probabilities = np.array(answer["probabilities"])
    assert probabilities.shape == (100, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert answer["labels"] == probabilities.argmax(axis=1).tolist()


def test_classify_accepts_n_1_8_8_as_well_as_n_8_8(server):
    images, _ = digit_images(3)
    with server.client() as http:
        flat = http.post("/classify", json={"images": images}).json()
        channels = http.post("/classify", json={"images": [[image] for image in images]}).json()
    np.testing.assert_allclose(flat["probabilities"], channels["probabilities"], atol=TOL)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_classify_image_reads_an_uploaded_picture(server, fmt):
    hits = 0
    with server.client() as http:
        for i in range(20):
            data = png_of(DIGITS.images[i], fmt=fmt)
            answer = http.post("/classify_image", files={"image": (f"d.{fmt.lower()}", data)})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert len(body["probabilities"]) == 10 and body["label"] == int(np.argmax(body["probabilities"]))
            hits += body["label"] == DIGITS.target[i]
    assert hits >= 16, f"only {hits}/20 uploaded digits recognised"


def test_forecast_rows_of_different_lengths_equal_each_row_alone(server):
    manifest = read_manifest(COMMITTED_STORE / "forecaster" / "1")
    horizon = manifest.outputs[0].shape[-1]
    minimum = manifest.serving["min_length"]
    rows = [co2_like(minimum), co2_like(minimum + 150, 7), co2_like(minimum + 300, 20)]
    with server.client() as http:
        together = http.post("/forecast", json={"series": rows}).json()["forecasts"]
        alone = [http.post("/forecast", json={"series": [row]}).json()["forecasts"][0] for row in rows]
    assert np.array(together).shape == (3, horizon)
    np.testing.assert_allclose(together, alone, atol=TOL)
    # A smooth seasonal series continues near its last values, in its own units (ppm).
    for row, forecast in zip(rows, together, strict=True):
        assert abs(forecast[0] - row[-1]) < 5


def test_generate_is_reproducible_and_draws_the_asked_digits(server):
    labels = list(range(10)) * 3
    with server.client() as http:
        first = http.post("/generate", json={"labels": labels, "seed": 11, "format": "array"}).json()
        again = http.post("/generate", json={"labels": labels, "seed": 11, "format": "array"}).json()
        other = http.post("/generate", json={"labels": labels, "seed": 12, "format": "array"}).json()
        images = np.array(first["images"])
        assert images.shape == (30, 8, 8) and images.min() >= 0 and images.max() <= 16
        np.testing.assert_allclose(first["images"], again["images"], atol=TOL)
        assert not np.allclose(first["images"], other["images"], atol=TOL)
        judged = http.post("/classify", json={"images": first["images"]}).json()["labels"]
    assert np.mean(np.array(judged) == np.array(labels)) >= 0.8


def test_generate_png_round_trips_through_classify_image(server):
    with server.client() as http:
        answer = http.post("/generate", json={"labels": [3, 7], "seed": 5}).json()
        arrays = http.post("/generate", json={"labels": [3, 7], "seed": 5, "format": "array"}).json()
        for encoded, array in zip(answer["images"], arrays["images"], strict=True):
            image = Image.open(io.BytesIO(base64.b64decode(encoded)))
            assert image.format == "PNG" and image.size == (8, 8)
            ink = (255 - np.asarray(image, dtype=np.float32)) / 255 * 16
            np.testing.assert_allclose(ink, array, atol=16 / 255 + 1e-6)


def test_an_image_does_not_depend_on_the_labels_beside_it(server):
    with server.client() as http:
        alone = http.post("/generate", json={"labels": [4], "seed": 3, "format": "array"}).json()
        first_of_many = http.post(
            "/generate", json={"labels": [4, 1, 9, 9], "seed": 3, "format": "array"}
        ).json()
    np.testing.assert_allclose(alone["images"][0], first_of_many["images"][0], atol=TOL)


# --- batching --------------------------------------------------------------------------------


def test_64_concurrent_requests_are_batched_and_each_answer_equals_its_single_answer(server):
    images, _ = digit_images(64, start=200)
    with server.client() as http:
        single = [http.post("/classify", json={"images": [image]}).json() for image in images]
        before = metric_values(http.get("/metrics").text, "modelserve_batch_size_bucket", "classifier")

    async def fire() -> list[dict]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.post("/classify", json={"images": [image]}) for image in images)
            )
        return [r.json() for r in responses]

    # Several rounds: with two workers the 64 requests are spread over both.
    for _ in range(5):
        concurrent = asyncio.run(fire())
        for got, want in zip(concurrent, single, strict=True):
            assert got["labels"] == want["labels"]
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=TOL)

    with server.client() as http:
        after = metric_values(http.get("/metrics").text, "modelserve_batch_size_bucket", "classifier")
    batches = after["+Inf"] - before.get("+Inf", 0)
    batches_of_one = after["1.0"] - before.get("1.0", 0)
    assert batches > 0
    assert batches_of_one < batches, "no batch larger than one request was formed"


def test_the_largest_forecast_request_the_limits_allow_is_answered(server):
    # 126 rows of the longest history: 131,040 values, just under the per-request limit of
    # 131,072. It must finish inside the framework's timeout, not end in a 504.
    series = [co2_like(1040, phase=i) for i in range(126)]
    with server.client() as http:
        response = http.post("/forecast", json={"series": series}, timeout=30)
        assert response.status_code == 200, response.text
        alone = http.post("/forecast", json={"series": series[-1:]}).json()["forecasts"][0]
    forecasts = response.json()["forecasts"]
    assert len(forecasts) == 126
    np.testing.assert_allclose(forecasts[-1], alone, atol=TOL)


def test_a_request_larger_than_the_max_batch_size_is_answered_whole(server):
    images, _ = digit_images(300)
    with server.client() as http:
        whole = http.post("/classify", json={"images": images}).json()
        parts = [
            http.post("/classify", json={"images": images[i : i + 50]}).json() for i in range(0, 300, 50)
        ]
    assert len(whole["labels"]) == 300
    np.testing.assert_allclose(
        whole["probabilities"], [p for part in parts for p in part["probabilities"]], atol=TOL
    )


def test_metrics_report_per_model_series(server):
    with server.client() as http:
        http.post("/forecast", json={"series": [co2_like(200), co2_like(400)]})
        text = http.get("/metrics").text
    for name in (
        "modelserve_requests_total",
        "modelserve_batch_size_count",
        "modelserve_queue_wait_seconds_count",
        "modelserve_inference_seconds_count",
    ):
        assert metric_values(text, name, "forecaster"), name
    padded = metric_values(text, "modelserve_padded_fraction_count", "forecaster")
    assert padded[""] >= 1


def test_keep_alive_connections_are_asked_to_reconnect_once_past_their_age(server):
    # Two workers, connections closed once about 2 s old (1.5 to 2.5 s, the default): a client
    # sending for 3.5 s on one keep-alive connection is asked to reconnect once or twice, and
    # its reconnects are invisible in the answers.
    image = DIGITS.images[0].tolist()
    responses = []
    with server.client() as http:
        want = http.post("/classify", json={"images": [image]}).json()
        started = time.monotonic()
        while time.monotonic() - started < 3.5:
            responses.append(http.post("/classify", json={"images": [image]}))
    closes = sum(r.headers.get("connection") == "close" for r in responses)
    assert 1 <= closes <= 2, f"{closes} of {len(responses)} responses closed their connection"
    assert all(r.status_code == 200 and r.json() == want for r in responses)
