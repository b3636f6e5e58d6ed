"""Bad input, overload and a tampered model: 4xx/503 JSON objects, and the server stays ready."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from store_format import latest_version
from tests.conftest import serve
from tests.test_service import co2_like, digit_images, metric_values

pytestmark = pytest.mark.slow

IMAGE = digit_images(1)[0][0]
JSON = {"content-type": "application/json"}

BAD_REQUESTS = [
    # (name, method, path, kwargs, expected status, text the error must contain)
    ("malformed json", "POST", "/classify", {"content": b'{"images": [', "headers": JSON}, 400, "invalid"),
    ("not an object", "POST", "/classify", {"json": [1, 2, 3]}, 400, "body"),
    ("missing field", "POST", "/classify", {"json": {}}, 400, "images"),
    ("unknown field", "POST", "/classify", {"json": {"images": [IMAGE], "x": 1}}, 400, "x"),
    ("empty images", "POST", "/classify", {"json": {"images": []}}, 400, "images"),
    ("wrong shape", "POST", "/classify", {"json": {"images": [[[0] * 8] * 7]}}, 400, "images[0]"),
    (
        "pixel out of range",
        "POST",
        "/classify",
        {"json": {"images": [[[0] * 7 + [17]] + [[0] * 8] * 7]}},
        400,
        "images[0][0][7]",
    ),
    (
        "pixel is a string",
        "POST",
        "/classify",
        {"json": {"images": [[["a"] + [0] * 7] + [[0] * 8] * 7]}},
        400,
        "images[0][0][0]",
    ),
    (
        "pixel is NaN",
        "POST",
        "/classify",
        {
            "content": b'{"images": [[[NaN,0,0,0,0,0,0,0]' + b",[0,0,0,0,0,0,0,0]" * 7 + b"]]}",
            "headers": JSON,
        },
        400,
        "images[0][0][0]",
    ),
    (
        "wrong media type",
        "POST",
        "/classify",
        {"content": json.dumps({"images": [IMAGE]}), "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
    ),
    ("too many items", "POST", "/classify", {"json": {"images": [IMAGE] * 1025}}, 413, "limit"),
    (
        "body too large",
        "POST",
        "/forecast",
        {"content": b"[" + b"1," * 5_000_000 + b"1]", "headers": JSON},
        413,
        "limit",
    ),
    (
        "too many series values",
        "POST",
        "/forecast",
        {"json": {"series": [[330.0] * 1040] * 127}},  # 132,080 values, over the 131,072 limit
        413,
        "MODELSERVE_MAX_SERIES_POINTS_PER_REQUEST",
    ),
    ("series too short", "POST", "/forecast", {"json": {"series": [[1.0, 2.0]]}}, 400, "series[0]"),
    ("series not numbers", "POST", "/forecast", {"json": {"series": [["x"] * 200]}}, 400, "series[0][0]"),
    (
        "series value overflows float32",
        "POST",
        "/forecast",
        {"json": {"series": [[1e39] * 200]}},
        400,
        "series[0]",
    ),
    ("label out of range", "POST", "/generate", {"json": {"labels": [10]}}, 400, "labels[0]"),
    ("label is a float", "POST", "/generate", {"json": {"labels": [1.5]}}, 400, "labels[0]"),
    ("negative seed", "POST", "/generate", {"json": {"labels": [1], "seed": -1}}, 400, "seed"),
    ("unknown format", "POST", "/generate", {"json": {"labels": [1], "format": "gif"}}, 400, "format"),
    (
        "image not multipart",
        "POST",
        "/classify_image",
        {"content": b"abc", "headers": JSON},
        415,
        "multipart",
    ),
    ("image field missing", "POST", "/classify_image", {"files": {"other": ("a.png", b"x")}}, 400, "image"),
    (
        "image not an image",
        "POST",
        "/classify_image",
        {"files": {"image": ("a.png", b"not a png")}},
        415,
        "PNG",
    ),
    (
        "image truncated",
        "POST",
        "/classify_image",
        {"files": {"image": ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10")}},
        400,
        "image",
    ),
    ("unknown path", "GET", "/nope", {}, 404, "Not Found"),
    ("wrong method", "GET", "/classify", {}, 405, "Method"),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "kwargs", "status", "mentions"),
    BAD_REQUESTS,
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_4xx_json_object_naming_the_fault(
    server, name, method, path, kwargs, status, mentions
):
    with server.client() as http:
        response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and isinstance(body["error"], str)
    assert mentions in json.dumps(body), body


def test_the_server_stays_ready_and_correct_after_every_bad_request(server):
    images, labels = digit_images(20)
    with server.client() as http:
        for _, method, path, kwargs, _, _ in BAD_REQUESTS:
            http.request(method, path, **kwargs)
        assert http.get("/readyz").status_code == 200
        answer = http.post("/classify", json={"images": images})
    assert answer.status_code == 200
    assert sum(a == b for a, b in zip(answer.json()["labels"], labels, strict=True)) >= 18


def test_a_decompression_bomb_is_refused(server):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000), 1).save(buffer, format="PNG")  # 400 Mpx, a few KB
    with server.client() as http:
        response = http.post("/classify_image", files={"image": ("bomb.png", buffer.getvalue())})
        assert response.status_code == 413 and "pixels" in response.json()["error"]
        assert http.get("/readyz").status_code == 200


def test_a_tampered_model_keeps_the_service_unready_and_is_named(tmp_path, store_copy):
    model = store_copy / "classifier" / str(latest_version(store_copy, "classifier")) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with serve(tmp_path, store=store_copy, wait_ready=False) as server, server.client() as http:
        # The other models load and serve; the tampered one never does.
        for _ in range(100):
            if http.post("/forecast", json={"series": [co2_like(200)]}).status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.2))
        ready = http.get("/readyz")
        assert ready.status_code == 503 and isinstance(ready.json()["error"], str)
        refused = http.post("/classify", json={"images": [IMAGE]})
        assert refused.status_code == 503
        assert "classifier" in refused.json()["error"] and "sha256" in refused.json()["detail"]["reason"]
        assert "Retry-After" in refused.headers
    assert "model classifier is NOT served" in server.log_text()
    assert "sha256" in server.log_text()


def test_overload_is_refused_fast_with_retry_after_and_the_server_recovers(tmp_path):
    # A tiny queue: 1 worker, at most 4 queued rows, so 64 concurrent forecasts overflow it.
    settings = {
        "workers": "1",
        "max_items_per_request": "4",
        "batch__max_queue_size": "4",
        "batch__max_batch_size": "4",
    }
    with serve(tmp_path, **settings) as server:
        rows = [co2_like(400, phase) for phase in range(64)]

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=64)
            ) as client:
                return await asyncio.gather(*(client.post("/forecast", json={"series": [r]}) for r in rows))

        responses = asyncio.run(burst())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert refused, "a 4-row queue took 64 concurrent requests"
        assert all(r.headers.get("Retry-After") and "overloaded" in r.json()["error"] for r in refused)
        with server.client() as http:
            assert http.get("/readyz").status_code == 200
            after = [http.post("/forecast", json={"series": [r]}).status_code for r in rows[:8]]
            assert after == [200] * 8
            metrics = http.get("/metrics").text
        rejected = metric_values(metrics, "modelserve_rejected_total", "forecaster")
        assert rejected == {"": float(len(refused))}, rejected
