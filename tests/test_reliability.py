"""Reliability: faults answered with a JSON error that names them (and carries the request id),
outputs within their range, pictures decoded off the event loop, and readiness and metrics that
another server's start cannot break.

Each test drives a real ``bentoml serve`` over real HTTP on 127.0.0.1 (the shared ``server``
fixture, or a server of its own where the test needs a special model store or settings).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from starlette.requests import Request
from starlette.responses import Response

from harness.server import ServerProcess, bentoml_command, free_port, service_env
from service.platform.server_folder import folder_of
from store_format import latest_version, read_manifest
from tests.conftest import COMMITTED_STORE, serve
from tests.test_service import co2_like, digit_images, metric_values

pytestmark = pytest.mark.slow

V2_CLASSIFY = "/v2/models/classifier/infer"
IMAGE_BYTES = 64 * 4  # one [1,1,8,8] FP32 image


def binary_request(header: dict, tail: bytes) -> dict:
    """httpx keyword arguments of a V2 request with the binary tensor data extension."""
    head = json.dumps(header).encode()
    return {
        "content": head + tail,
        "headers": {
            "Inference-Header-Content-Length": str(len(head)),
            "content-type": "application/octet-stream",
        },
    }


def one_image(parameters: dict, request_parameters: dict | None = None, outputs: list | None = None) -> dict:
    header: dict = {
        "inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": parameters}]
    }
    if request_parameters is not None:
        header["parameters"] = request_parameters
    if outputs is not None:
        header["outputs"] = outputs
    return header


IMAGE_TAIL = np.asarray(digit_images(1)[0], dtype=np.float32).tobytes()
HISTORY = np.asarray([co2_like(200)], dtype=np.float32)

# (name, header, binary tail, tensor the error must name, parameter it must name)
BAD_BINARY = [
    ("size is a float", one_image({"binary_data_size": 256.0}), IMAGE_TAIL, "images", "binary_data_size"),
    ("size is negative", one_image({"binary_data_size": -256}), IMAGE_TAIL, "images", "binary_data_size"),
    ("size is a bool", one_image({"binary_data_size": True}), IMAGE_TAIL, "images", "binary_data_size"),
    ("size is a string", one_image({"binary_data_size": "256"}), IMAGE_TAIL, "images", "binary_data_size"),
    ("size is a list", one_image({"binary_data_size": [256]}), IMAGE_TAIL, "images", "binary_data_size"),
    ("size is null", one_image({"binary_data_size": None}), IMAGE_TAIL, "images", "binary_data_size"),
    (
        "size over the bytes left",
        one_image({"binary_data_size": IMAGE_BYTES}),
        IMAGE_TAIL[:100],
        "images",
        "binary_data_size",
    ),
    (
        "size is not the shape's",
        one_image({"binary_data_size": 128}),
        IMAGE_TAIL[:128],
        "images",
        "binary_data_size",
    ),
    (
        "bytes left over",
        one_image({"binary_data_size": IMAGE_BYTES}),
        IMAGE_TAIL + b"\0" * 8,
        None,
        "binary_data_size",
    ),
    (
        "binary_data_output is a string",
        one_image({"binary_data_size": IMAGE_BYTES}, {"binary_data_output": "yes"}),
        IMAGE_TAIL,
        None,
        "binary_data_output",
    ),
    (
        "output binary_data is a number",
        one_image(
            {"binary_data_size": IMAGE_BYTES},
            outputs=[{"name": "probabilities", "parameters": {"binary_data": 1}}],
        ),
        IMAGE_TAIL,
        "probabilities",
        "binary_data",
    ),
    (
        "classification is not supported",
        one_image(
            {"binary_data_size": IMAGE_BYTES},
            outputs=[{"name": "probabilities", "parameters": {"classification": 3}}],
        ),
        IMAGE_TAIL,
        "probabilities",
        "classification",
    ),
    (
        "shared memory is not supported",
        one_image({"shared_memory_region": "r0", "shared_memory_byte_size": IMAGE_BYTES}),
        b"",
        "images",
        "shared_memory_region",
    ),
]


@pytest.mark.parametrize(
    ("name", "header", "tail", "tensor", "parameter"), BAD_BINARY, ids=[case[0] for case in BAD_BINARY]
)
def test_every_binary_extension_parameter_is_validated(server, name, header, tail, tensor, parameter):
    with server.client() as http:
        response = http.post(V2_CLASSIFY, **binary_request(header, tail))
        assert response.status_code == 400, response.text
        body = response.json()
        assert isinstance(body["error"], str) and parameter in body["error"], body
        assert body["detail"]["parameter"] == parameter, body
        if tensor is not None:
            assert tensor in body["error"] and body["detail"]["tensor"] == tensor, body
        assert http.get("/readyz").status_code == 200


def test_float_sizes_over_two_tensors_are_a_400_not_a_500(server):
    """The case of the issue: the second tensor's offset was a float, and np.frombuffer raised."""
    lengths = np.asarray([200], dtype=np.int64)
    header = {
        "inputs": [
            {
                "name": "history",
                "shape": [1, 200],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 800.0},
            },
            {"name": "lengths", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8.0}},
        ]
    }
    with server.client() as http:
        response = http.post(
            "/v2/models/forecaster/infer", **binary_request(header, HISTORY.tobytes() + lengths.tobytes())
        )
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == {"tensor": "history", "parameter": "binary_data_size"}


def test_a_well_formed_binary_request_still_answers(server):
    header = one_image({"binary_data_size": IMAGE_BYTES}, {"binary_data_output": True})
    with server.client() as http:
        response = http.post(V2_CLASSIFY, **binary_request(header, IMAGE_TAIL))
    assert response.status_code == 200, response.text
    head_length = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:head_length])
    probabilities = np.frombuffer(response.content[head_length:], dtype="<f4")
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert probabilities.argmax() == digit_images(1)[1][0]


# --- item: generator outputs honour their declared range -------------------------------------


def test_generated_images_stay_in_the_declared_range_and_classify_accepts_them(server):
    low, high = read_manifest(COMMITTED_STORE / "generator" / "1").serving["value_range"]
    labels = list(range(10)) * 10
    with server.client() as http:
        for seed in range(30):
            answer = http.post("/generate", json={"labels": labels, "seed": seed, "format": "array"})
            images = np.asarray(answer.json()["images"])
            assert images.shape == (100, 8, 8)
            assert images.min() >= low and images.max() <= high, (seed, images.min(), images.max())
            classified = http.post("/classify", json={"images": images.tolist()})
            assert classified.status_code == 200, classified.text


# --- item: one error shape ---------------------------------------------------------------------

ERROR_KEYS = {"error", "detail", "request_id"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/classify", 405), ("DELETE", "/v2/models/classifier/infer", 405)],
)
def test_framework_errors_have_the_one_error_shape(server, method, path, status):
    with server.client() as http:
        response = http.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) <= ERROR_KEYS and {"error", "detail"} <= set(body), body
    assert body["detail"]["status"] == status and body["detail"]["path"] == path, body


def image_with(value: float) -> list[list[float]]:
    image = [[0.0] * 8 for _ in range(8)]
    image[0][7] = value
    return image


@pytest.mark.parametrize(
    ("images", "field"),
    [([image_with(17)], "images[0][0][7]"), ([[image_with(17)]], "images[0][0][0][7]")],
    ids=["n,8,8", "n,1,8,8"],
)
def test_a_refused_image_is_named_by_its_one_real_fault(server, images, field):
    with server.client() as http:
        response = http.post("/classify", json={"images": images})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == f"invalid request: {field}: Input should be less than or equal to 16", body
    assert body["detail"] == [{"field": field, "message": "Input should be less than or equal to 16"}]


def test_an_unexpected_error_keeps_its_class_and_text_out_of_the_body():
    """The one place no client input reaches: a route that fails, on the service's own app."""
    from service.api.routes import create_app

    app = create_app()

    async def broken(request: Request) -> Response:
        raise KeyError("/secret/server/path.onnx")

    app.add_api_route("/broken", broken, methods=["GET"])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/broken")

    response = asyncio.run(call())
    assert response.status_code == 500
    assert "KeyError" not in response.text and "secret" not in response.text
    assert response.json()["error"] == "internal server error"


# --- item: faults that say what failed -------------------------------------------------------


def wait_until_loaded(http: httpx.Client, path: str = "/forecast") -> None:
    """Until the forecaster answers: every model that will load has loaded by then."""
    for _ in range(150):
        if http.post(path, json={"series": [co2_like(200)]}).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the forecaster never answered")


def break_for_onnx_runtime(version_folder: Path) -> None:
    """A model.onnx that passes its sha256 check but that ONNX Runtime cannot parse."""
    model = version_folder / "model.onnx"
    model.write_bytes(b"this is not an ONNX graph")
    manifest = json.loads((version_folder / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (version_folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_model_that_fails_to_load_is_named_without_paths_and_reported_in_metrics(tmp_path, store_copy):
    break_for_onnx_runtime(store_copy / "classifier" / str(latest_version(store_copy, "classifier")))
    orphan = store_copy / "digits_v2" / "1"  # a model folder whose manifest was never written
    orphan.mkdir(parents=True)
    shutil.copyfile(COMMITTED_STORE / "classifier" / "1" / "model.onnx", orphan / "model.onnx")
    with serve(tmp_path, store=store_copy, wait_ready=False) as server, server.client() as http:
        wait_until_loaded(http)
        ready = http.get("/readyz")
        refused = http.post("/classify", json={"images": digit_images(1)[0]})
        v2_ready = http.get("/v2/models/classifier/ready")
        metrics = http.get("/metrics").text
    assert ready.status_code == 503 and ready.headers["content-type"] == "application/json"
    models = ready.json()["detail"]["models"]
    assert models["forecaster"] == models["generator"] == "ready", models
    assert models["classifier"] != "ready" and models["digits_v2"] != "ready", models
    assert "classifier" in ready.json()["error"] and "digits_v2" in ready.json()["error"]
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.json()["detail"]["model"] == "classifier"
    for answer in (ready, refused, v2_ready):
        assert str(tmp_path) not in answer.text and "model_store/" not in answer.text, answer.text
        assert "ONNXRuntimeError" not in answer.text and "INVALID_PROTOBUF" not in answer.text, answer.text
    assert metric_values(metrics, "modelserve_model_ready", "classifier") == {"": 0.0}
    assert metric_values(metrics, "modelserve_model_ready", "digits_v2") == {"": 0.0}
    assert metric_values(metrics, "modelserve_model_ready", "forecaster") == {"": 1.0}
    log = server.log_text()
    assert "model classifier is NOT served" in log and "INVALID_PROTOBUF" in log  # the detail stays here
    assert "digits_v2" in log and "manifest.json" in log


def test_an_empty_model_store_answers_503_not_ready(tmp_path):
    empty = tmp_path / "empty_store"
    empty.mkdir()
    with serve(tmp_path, store=empty, wait_ready=False) as server, server.client() as http:
        classify = http.post("/classify", json={"images": digit_images(1)[0]})
        ready = http.get("/readyz")
    assert classify.status_code == 503 and classify.headers["Retry-After"], classify.text
    assert "not ready" in classify.json()["error"]
    assert ready.status_code == 503 and "no model" in ready.json()["error"]
    assert "no models to serve" in server.log_text()


# --- item: request ids -------------------------------------------------------------------------


def test_a_client_request_id_is_echoed_and_one_is_made_when_absent(server):
    with server.client() as http:
        echoed = [
            http.get("/livez", headers={"X-Request-ID": "client-id-1"}),
            http.post(
                "/classify", json={"images": digit_images(1)[0]}, headers={"X-Request-ID": "client-id-2"}
            ),
        ]
        made = [http.get("/livez"), http.post("/classify", json={"images": digit_images(1)[0]})]
    assert [r.headers["x-request-id"] for r in echoed] == ["client-id-1", "client-id-2"]
    ids = [r.headers["x-request-id"] for r in made]
    assert all(ids) and len(set(ids)) == 2 and not {"client-id-1", "client-id-2"} & set(ids)


@pytest.mark.parametrize(
    "sent",
    [b"x" * 129, "caf\u00e9".encode(), b"two\tfields", b""],
    ids=["too long", "not ascii", "control character", "empty"],
)
def test_an_unfit_request_id_is_replaced(server, sent):
    with server.client() as http:
        response = http.get("/livez", headers=[(b"X-Request-ID", sent)])
    assert response.status_code == 200
    assert response.headers["x-request-id"] not in ("", sent.decode("latin-1"))


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/classify", {"json": {"images": []}}, 400),
        ("POST", "/forecast", {"content": b"[" + b"1," * 5_000_000 + b"1]"}, 413),
        ("GET", "/nope", {}, 404),
        ("GET", "/classify", {}, 405),
        ("POST", "/v2/models/nope/infer", {"json": {}}, 404),
    ],
)
def test_every_error_body_and_its_log_line_carry_the_request_id(server, method, path, kwargs, status):
    request_id = f"err-{status}-{time.monotonic_ns()}"
    with server.client() as http:
        response = http.request(method, path, headers={"X-Request-ID": request_id}, **kwargs)
    assert response.status_code == status
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id
    for _ in range(20):  # the worker's log line reaches the file a moment later
        if f"answered {status}" in server.log_text() and request_id in server.log_text():
            break
        time.sleep(0.1)
    line = next(line for line in server.log_text().splitlines() if request_id in line)
    assert f"{method} {path} answered {status}" in line


def test_json_logs_carry_the_request_id_of_a_failed_request(tmp_path):
    with serve(tmp_path, workers="1", log_format="json") as server, server.client() as http:
        http.post("/classify", json={"images": []}, headers={"X-Request-ID": "json-log-1"})
        time.sleep(0.5)
        log = server.log_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    failed = [entry for entry in entries if entry["request_id"] == "json-log-1"]
    assert len(failed) == 1 and failed[0]["level"] == "INFO", failed
    assert "POST /classify answered 400" in failed[0]["message"]
    assert any("ready on" in entry["message"] for entry in entries)  # loading goes the same way


# --- item: pictures are decoded off the event loop ---------------------------------------------


def big_jpeg() -> bytes:
    """A 4000x3900 photo-sized JPEG of a dark "0" on white (15.6 Mpx, under the 16 Mpx limit)."""
    image = Image.new("L", (4000, 3900), 255)
    ImageDraw.Draw(image).ellipse((1200, 700, 2800, 3200), outline=0, width=300)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_other_requests_are_answered_while_a_big_picture_is_decoding(tmp_path):
    picture = big_jpeg()

    async def scenario(url: str) -> tuple[httpx.Response, int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            upload = asyncio.create_task(http.post("/classify_image", files={"image": ("0.jpg", picture)}))
            await asyncio.sleep(0.05)  # the upload is on its way: its body is 0.2 MB
            before, after = 0, 0
            while not upload.done():
                probe = await http.get("/livez")
                assert probe.status_code == 200
                if upload.done():
                    after += 1
                else:
                    before += 1
            return await upload, before, after

    # One worker: the probes and the upload share its event loop.
    with serve(tmp_path, workers="1") as server:
        upload, answered_meanwhile, _ = asyncio.run(scenario(server.url))
    assert upload.status_code == 200 and upload.json()["label"] == 0, upload.text
    # Decoding on the loop, no probe can be answered until the decode is over (at most the
    # one in flight then); off the loop, they go on being answered while it runs.
    assert answered_meanwhile >= 5, answered_meanwhile


# --- item: readiness and metrics that another server cannot break ------------------------------


def requests_counted(http: httpx.Client) -> float:
    return metric_values(http.get("/metrics").text, "modelserve_requests_total", "classifier").get("", 0.0)


def test_a_second_server_with_the_same_bentoml_home_leaves_the_first_ready_and_counting(tmp_path):
    images = digit_images(1)[0]
    with serve(tmp_path, workers="2") as first, first.client() as http:
        for _ in range(20):
            assert http.post("/classify", json={"images": images}).status_code == 200
        assert requests_counted(http) == 20
        # The second server gets the first one's BENTOML_HOME (`env` sets it over the one the
        # harness gives each server), whose Prometheus folder BentoML empties at every start.
        home = tmp_path / f"bentoml-{first.url.rsplit(':', 1)[1]}"
        assert (home / "prometheus_multiproc_dir").is_dir()
        port = free_port()
        command = ["env", f"BENTOML_HOME={home}", *bentoml_command(port)]
        env = service_env(COMMITTED_STORE, {"MODELSERVE_WORKERS": "1"})
        with ServerProcess(command, env, port, name="second", workdir=tmp_path) as second:
            second.wait_until_up("/readyz", timeout_s=120)
            for _ in range(5):  # the probe lands on either worker of the first server
                assert http.get("/readyz").status_code == 200
            assert requests_counted(http) == 20
            for _ in range(5):
                assert http.post("/classify", json={"images": images}).status_code == 200
            assert requests_counted(http) == 25
        for _ in range(5):  # and after the second server is gone
            assert http.get("/readyz").status_code == 200
        assert requests_counted(http) == 25
        folders = [folder_of(first.process.pid), folder_of(second.process.pid)]
        assert folders[0].is_dir() and not folders[1].exists()  # the second's last worker tidied up
    assert not folders[0].exists()
