"""The Open Inference Protocol routes, driven by a standard client (tritonclient.http)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from store_format import latest_version, read_manifest
from tests.conftest import COMMITTED_STORE
from tests.test_service import co2_like, digit_images, metric_values

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture
def client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelserve" and "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("name", ["classifier", "forecaster", "generator"])
def test_model_metadata_reports_the_manifest_tensors_exactly(client, name):
    version = str(latest_version(COMMITTED_STORE, name))  # the version a server starts with
    manifest = read_manifest(COMMITTED_STORE / name / version)
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    metadata = client.get_model_metadata(name)
    assert metadata["name"] == name and metadata["versions"] == [version]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [spec.to_dict() for spec in manifest.inputs]
    assert metadata["outputs"] == [spec.to_dict() for spec in manifest.outputs]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classifier_infer_equals_the_task_endpoint(server, client, binary):
    images = np.array(digit_images(5)[0], dtype=np.float32).reshape(5, 1, 8, 8)
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("classifier", [tensor], outputs=[wanted], request_id="r1")
    probabilities = result.as_numpy("probabilities")
    with server.client() as http:
        task = http.post("/classify", json={"images": images.tolist()}).json()
    assert result.get_response()["id"] == "r1"
    np.testing.assert_allclose(probabilities, task["probabilities"], atol=TOL)


def test_forecaster_infer_with_padded_rows_equals_each_row_alone(server, client):
    rows = [co2_like(150), co2_like(420, 9)]
    history = np.zeros((2, 420), dtype=np.float32)
    for i, row in enumerate(rows):
        history[i, : len(row)] = row
    inputs = [triton.InferInput("history", [2, 420], "FP32"), triton.InferInput("lengths", [2], "INT64")]
    inputs[0].set_data_from_numpy(history)
    inputs[1].set_data_from_numpy(np.array([150, 420], dtype=np.int64))
    forecast = client.infer("forecaster", inputs).as_numpy("forecast")
    with server.client() as http:
        alone = [http.post("/forecast", json={"series": [row]}).json()["forecasts"][0] for row in rows]
    np.testing.assert_allclose(forecast, alone, atol=TOL)


def test_generator_infer_draws_the_asked_digits(server, client):
    latent_dim = read_manifest(COMMITTED_STORE / "generator" / "1").input("latent").shape[-1]
    labels = np.arange(10, dtype=np.int64).repeat(3)
    latent = np.random.default_rng(0).standard_normal((30, latent_dim), dtype=np.float32)
    inputs = [
        triton.InferInput("latent", list(latent.shape), "FP32"),
        triton.InferInput("labels", [30], "INT64"),
    ]
    inputs[0].set_data_from_numpy(latent, binary_data=True)
    inputs[1].set_data_from_numpy(labels, binary_data=True)
    images = client.infer("generator", inputs).as_numpy("images")
    assert images.shape == (30, 1, 8, 8) and images.min() >= 0 and images.max() <= 16
    with server.client() as http:
        judged = http.post("/classify", json={"images": images.tolist()}).json()["labels"]
    assert np.mean(np.array(judged) == labels) >= 0.8


def test_v2_and_task_requests_share_batches(server):
    images = digit_images(32)[0]
    v2_body = {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": None}]}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            calls = []
            for i, image in enumerate(images):
                if i % 2:
                    body = json.loads(json.dumps(v2_body))
                    body["inputs"][0]["data"] = np.ravel(image).tolist()
                    calls.append(http.post("/v2/models/classifier/infer", json=body))
                else:
                    calls.append(http.post("/classify", json={"images": [image]}))
            return await asyncio.gather(*calls)

    with server.client() as http:
        before = metric_values(http.get("/metrics").text, "modelserve_requests_total", "classifier")[""]
        batches_before = metric_values(http.get("/metrics").text, "modelserve_batches_total", "classifier")[
            ""
        ]
    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    with server.client() as http:
        text = http.get("/metrics").text
    assert metric_values(text, "modelserve_requests_total", "classifier")[""] - before == 32
    # Both kinds of request count against one model's batcher: fewer calls than requests.
    assert metric_values(text, "modelserve_batches_total", "classifier")[""] - batches_before <= 32


BAD_V2 = [
    ("unknown model", "/v2/models/nope/infer", {"inputs": []}, 404),
    ("unknown version", "/v2/models/classifier/versions/9/infer", {"inputs": []}, 404),
    ("no inputs", "/v2/models/classifier/infer", {"inputs": []}, 400),
    (
        "wrong datatype",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "INT64", "data": [0] * 64}]},
        400,
    ),
    (
        "wrong shape",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "images", "shape": [1, 8, 8], "datatype": "FP32", "data": [0] * 64}]},
        400,
    ),
    (
        "too little data",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0] * 63}]},
        400,
    ),
    (
        "strings as data",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["a"] * 64}]},
        400,
    ),
    (
        "pixel out of range",
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [99] * 64}]},
        400,
    ),
    (
        "missing input",
        "/v2/models/forecaster/infer",
        {"inputs": [{"name": "history", "shape": [1, 200], "datatype": "FP32", "data": [1.0] * 200}]},
        400,
    ),
    (
        "length beyond the row",
        "/v2/models/forecaster/infer",
        {
            "inputs": [
                {"name": "history", "shape": [1, 200], "datatype": "FP32", "data": [1.0] * 200},
                {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [500]},
            ]
        },
        400,
    ),
    (
        "too many history values",
        "/v2/models/forecaster/infer",
        {
            "inputs": [
                {"name": "history", "shape": [127, 1040], "datatype": "FP32", "data": [330.0] * 132_080},
                {"name": "lengths", "shape": [127], "datatype": "INT64", "data": [1040] * 127},
            ]
        },
        413,
    ),
    (
        "latent of the wrong width",
        "/v2/models/generator/infer",
        {
            "inputs": [
                {"name": "latent", "shape": [1, 1], "datatype": "FP32", "data": [0.0]},
                {"name": "labels", "shape": [1], "datatype": "INT64", "data": [12]},
            ]
        },
        400,
    ),
    (
        "unknown output",
        "/v2/models/classifier/infer",
        {
            "inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0] * 64}],
            "outputs": [{"name": "logits"}],
        },
        400,
    ),
]


@pytest.mark.parametrize(("name", "path", "body", "status"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_requests_get_json_errors(server, name, path, body, status):
    with server.client() as http:
        response = http.post(path, json=body)
        assert response.status_code == status, response.text
        assert isinstance(response.json()["error"], str)
        assert http.get("/v2/health/ready").status_code == 200


def test_a_label_out_of_range_is_named(server):
    latent_dim = read_manifest(COMMITTED_STORE / "generator" / "1").input("latent").shape[-1]
    body = {
        "inputs": [
            {"name": "latent", "shape": [1, latent_dim], "datatype": "FP32", "data": [0.0] * latent_dim},
            {"name": "labels", "shape": [1], "datatype": "INT64", "data": [12]},
        ]
    }
    with server.client() as http:
        response = http.post("/v2/models/generator/infer", json=body)
    assert response.status_code == 400 and "labels[0]" in response.json()["error"]


def test_a_bad_binary_header_length_is_a_400(server):
    with server.client() as http:
        response = http.post(
            "/v2/models/classifier/infer",
            content=b'{"inputs": []}',
            headers={"Inference-Header-Content-Length": "999"},
        )
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
