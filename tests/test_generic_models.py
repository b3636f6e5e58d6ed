"""Models a user brings, imported with ``python -m store_format import`` and served with no code.

Every graph is built here with onnx.helper, imported by the real command into a temporary
store, and served by one real ``bentoml serve`` (one worker, so that concurrent requests
share batches). Each is called with ``tritonclient.http`` over JSON and over the binary tensor
extension, and its answers are compared with the same file run in process by ONNX Runtime:
exactly equal for the same rows in the same batch, within 1e-5 when the batch differs.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tritonclient.utils import InferenceServerException

from harness.server import ROOT
from store_format import load_verified
from tests.conftest import Server, serve
from tests.test_service import metric_values
from tests.test_store_import import iris_pipeline, mlp, run_import, save, two_by_two, value

pytestmark = pytest.mark.slow
ACROSS_BATCHES = 1e-5
MAX_ITEMS = 256  # MODELSERVE_MAX_ITEMS_PER_REQUEST of the server below


# --- graphs, beyond those tests/test_store_import.py builds ------------------------------------


# tests/test_store_import.py's two-input, two-output graph, served here as "two-kinds"; the name
# is also what tests/test_new_models.py imports
two_kinds = two_by_two


def centred(path: Path) -> Path:
    """x [batch, 3, height, width] -> x less its mean over height and width, and that mean.

    Padding a small image to a batch mate's size would change its mean: any padding shows.
    """
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    nodes = [
        oh.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
        oh.make_node("Sub", ["x", "mean"], ["y"]),
    ]
    return save(
        path,
        nodes,
        [value("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [
            value("y", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
            value("mean", TensorProto.FLOAT, ["batch", 3, 1, 1]),
        ],
        [axes],
        opset=18,
    )


def scaled(path: Path) -> Path:
    """x FP32 [n, 4] times a rank-0 scale: no batch axis."""
    return save(
        path,
        [oh.make_node("Mul", ["x", "scale"], ["y"])],
        [value("x", TensorProto.FLOAT, ["n", 4]), value("scale", TensorProto.FLOAT, [])],
        [value("y", TensorProto.FLOAT, ["n", 4])],
    )


def columns(path: Path) -> Path:
    """x FP32 [4, n] -> softmax over each row of n columns: the batch (if any) is axis 1."""
    return save(
        path,
        [oh.make_node("Softmax", ["x"], ["y"], axis=1)],
        [value("x", TensorProto.FLOAT, [4, "n"])],
        [value("y", TensorProto.FLOAT, [4, "n"])],
    )


def words(path: Path) -> Path:
    """x BYTES [n] -> the same strings, and whether each is "a" (BOOL)."""
    is_a = numpy_helper.from_array(np.array(["a"], dtype=object), "a")
    return save(
        path,
        [oh.make_node("Identity", ["x"], ["y"]), oh.make_node("Equal", ["x", "a"], ["is_a"])],
        [value("x", TensorProto.STRING, ["n"])],
        [value("y", TensorProto.STRING, ["n"]), value("is_a", TensorProto.BOOL, ["n"])],
        [is_a],
        opset=19,  # Equal on strings
    )


def half(path: Path) -> Path:
    """x FP16 [n, 4] -> y FP32 (cast) and twice FP16 (x + x)."""
    return save(
        path,
        [
            oh.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT),
            oh.make_node("Add", ["x", "x"], ["twice"]),
        ],
        [value("x", TensorProto.FLOAT16, ["n", 4])],
        [value("y", TensorProto.FLOAT, ["n", 4]), value("twice", TensorProto.FLOAT16, ["n", 4])],
    )


# Every other datatype V2 and ONNX Runtime share, each through an Identity.
KINDS = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "FP64": np.float64,
    "BOOL": np.bool_,
}
_ONNX_TYPES = {
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "UINT8": TensorProto.UINT8,
    "FP64": TensorProto.DOUBLE,
    "BOOL": TensorProto.BOOL,
}


def datatypes(path: Path) -> Path:
    nodes = [oh.make_node("Identity", [f"in_{k.lower()}"], [f"out_{k.lower()}"]) for k in KINDS]
    return save(
        path,
        nodes,
        [value(f"in_{k.lower()}", _ONNX_TYPES[k], ["n", 2]) for k in KINDS],
        [value(f"out_{k.lower()}", _ONNX_TYPES[k], ["n", 2]) for k in KINDS],
    )


def lookup(path: Path, offset: float = 0.0) -> Path:
    """index INT64 [n] -> rows of a 10 x 2 table (Gather): an index out of range fails in ONNX Runtime."""
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2) + offset, "table")
    return save(
        path,
        [oh.make_node("Gather", ["table", "index"], ["rows"], axis=0)],
        [value("index", TensorProto.INT64, ["n"])],
        [value("rows", TensorProto.FLOAT, ["n", 2])],
        [table],
    )


def blur(path: Path) -> Path:
    """x [batch, 1, height, width] -> a 3 x 3 mean filter without padding: at least 3 x 3 pixels.

    Warm-up feeds every dynamic axis 1, which this graph refuses: it must still be served.
    """
    kernel = numpy_helper.from_array(np.full((1, 1, 3, 3), 1 / 9, dtype=np.float32), "kernel")
    return save(
        path,
        [oh.make_node("Conv", ["x", "kernel"], ["y"])],
        [value("x", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [value("y", TensorProto.FLOAT, ["batch", 1, "out_height", "out_width"])],
        [kernel],
    )


GRAPHS = {
    "mlp": mlp,
    "two-kinds": two_kinds,
    "centred": centred,
    "scaled": scaled,
    "columns": columns,
    "words": words,
    "half": half,
    "datatypes": datatypes,
    "lookup": lookup,
    "blur": blur,
}


# --- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generic")
    store = folder / "store"
    sources = {name: build(folder / f"{name}.onnx") for name, build in GRAPHS.items()}
    try:
        import skl2onnx  # the dev extra: optional here
    except ImportError:
        skl2onnx = None
    if skl2onnx is not None:
        # skl2onnx's own example of a classifier with probabilities, converted without ZipMap.
        pipeline, features = iris_pipeline()
        onx = skl2onnx.to_onnx(pipeline, features[:1], options={id(pipeline[-1]): {"zipmap": False}})
        sources["iris"] = folder / "iris.onnx"
        sources["iris"].write_bytes(onx.SerializeToString())
    for name, source in sources.items():
        result = run_import(source, "--name", name, "--store", store)
        assert result.returncode == 0, result.stderr
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, store) -> Iterator[Server]:
    with serve(
        tmp_path_factory.mktemp("generic-server"),
        store=store,
        workers="1",
        model_poll_s="1",
        max_items_per_request=str(MAX_ITEMS),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def in_process(store: Path, name: str, feeds: dict[str, np.ndarray], version: int | None = None) -> dict:
    """The published file run by ONNX Runtime here: the reference for the served answers."""
    manifest, model_path = load_verified(store, name, version)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in manifest.outputs]
    return dict(zip(names, session.run(names, feeds), strict=True))


def tensors(feeds: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64"}
    datatypes.update({np.dtype(t): k for k, t in KINDS.items()})
    inputs = []
    for name, array in feeds.items():
        datatype = "BYTES" if array.dtype == object else datatypes[array.dtype]
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def served(client, name: str, feeds: dict[str, np.ndarray], binary: bool, version: str = "") -> dict:
    outputs = [
        triton.InferRequestedOutput(o["name"], binary_data=binary)
        for o in client.get_model_metadata(name)["outputs"]
    ]
    result = client.infer(name, tensors(feeds, binary), outputs=outputs, model_version=version)
    return {o.name(): result.as_numpy(o.name()) for o in outputs}


def assert_same(got: dict, want: dict, atol: float = 0.0) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].shape == array.shape, name
        if array.dtype == object:
            assert [_text(v) for v in got[name].ravel()] == list(array.ravel()), name
        elif atol == 0.0 or array.dtype.kind not in "f":
            assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
        else:
            assert got[name].dtype == array.dtype, name
            np.testing.assert_allclose(got[name], array, atol=atol, rtol=0)


def _text(element) -> str:
    return element.decode("utf-8") if isinstance(element, bytes) else element


RNG = np.random.default_rng(28)
EXAMPLES = {
    "mlp": {"x": RNG.normal(size=(5, 4)).astype(np.float32)},
    "two-kinds": {
        "features": RNG.normal(size=(3, 3)).astype(np.float32),
        "counts": np.array([1, -7, 2**40], np.int64),
    },
    "centred": {"x": RNG.normal(size=(2, 3, 5, 7)).astype(np.float32)},
    "scaled": {"x": RNG.normal(size=(3, 4)).astype(np.float32), "scale": np.array(2.5, np.float32)},
    "columns": {"x": RNG.normal(size=(4, 6)).astype(np.float32)},
    "words": {"x": np.array(["a", "héllo", "", "a b", "日本"], dtype=object)},
    "half": {"x": np.linspace(-3, 3, 12, dtype=np.float16).reshape(3, 4)},
    "datatypes": {
        "in_int8": np.array([[-128, 127], [0, 1]], np.int8),
        "in_int16": np.array([[-32768, 32767], [5, -5]], np.int16),
        "in_int32": np.array([[-(2**31), 2**31 - 1], [3, 4]], np.int32),
        "in_uint8": np.array([[0, 255], [7, 8]], np.uint8),
        "in_fp64": np.array([[1e-300, -1e300], [np.pi, 0.1]], np.float64),
        "in_bool": np.array([[True, False], [False, True]]),
    },
    "lookup": {"index": np.array([0, 9, 3, 3], np.int64)},
    "blur": {"x": RNG.normal(size=(3, 1, 6, 5)).astype(np.float32)},
}


# --- metadata --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GRAPHS))
def test_metadata_lists_the_manifest_tensors_batching_and_the_unchecked_verdict(client, store, name):
    manifest, _ = load_verified(store, name)
    metadata = client.get_model_metadata(name)
    assert client.is_model_ready(name) and metadata["versions"] == [str(manifest.version)]
    assert metadata["inputs"] == [spec.to_dict() for spec in manifest.inputs]
    assert metadata["outputs"] == [spec.to_dict() for spec in manifest.outputs]
    parameters = metadata["parameters"]
    assert parameters["task"] == "tensor" and parameters["verdict"] == "unchecked"
    batched = name not in ("scaled", "columns")
    assert parameters["batch_axis"] == (0 if batched else None)
    assert parameters["max_batch_size"] == (64 if batched else 1)


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_answers_equal_onnx_runtime_in_process(client, store, name, binary):
    feeds = EXAMPLES[name]
    assert_same(served(client, name, feeds, binary), in_process(store, name, feeds))


@pytest.mark.parametrize("name", ["mlp", "two-kinds", "centred", "words", "half", "datatypes", "lookup"])
def test_rows_sent_one_at_a_time_and_concurrently_equal_the_whole_batch(server, store, name):
    """Batch mates never change an answer: each row alone, all rows at once, across batch sizes."""
    feeds = EXAMPLES[name]
    rows = len(next(iter(feeds.values())))
    whole = in_process(store, name, feeds)

    async def each_row() -> list[dict]:
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as aio:
            calls = []
            for i in range(rows):
                inputs = tensors({k: v[i : i + 1] for k, v in feeds.items()}, binary=i % 2 == 1)
                calls.append(aio.infer(name, inputs))
            results = await asyncio.gather(*calls)
        return [{o["name"]: r.as_numpy(o["name"]) for o in r.get_response()["outputs"]} for r in results]

    answers = asyncio.run(each_row())
    # The server may have run these rows in batches of any size: within 1e-5 of each row alone
    # and of the whole batch (integers, booleans and strings exactly).
    for i, answer in enumerate(answers):
        alone = in_process(store, name, {k: v[i : i + 1] for k, v in feeds.items()})
        assert_same(answer, alone, atol=ACROSS_BATCHES)
        assert_same(answer, {k: v[i : i + 1] for k, v in whole.items()}, atol=ACROSS_BATCHES)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_request_larger_than_the_largest_batch_is_split_and_put_back_in_order(client, store, binary):
    x = RNG.normal(size=(200, 4)).astype(np.float32)  # runs of 64, 64, 64 and 8 rows
    answer = served(client, "mlp", {"x": x}, binary)
    assert_same(answer, in_process(store, "mlp", {"x": x}), atol=ACROSS_BATCHES)
    words = {"x": np.array([f"w{i}" if i % 3 else "a" for i in range(150)], dtype=object)}
    answer = served(client, "words", words, binary)
    assert_same(answer, in_process(store, "words", words))


def test_images_of_different_sizes_at_once_are_each_answered_unpadded(server, store):
    sizes = [(4, 4), (5, 7), (4, 4), (9, 2), (1, 1), (5, 7), (16, 3), (4, 4)] * 4
    images = [RNG.normal(size=(1 + i % 3, 3, h, w)).astype(np.float32) for i, (h, w) in enumerate(sizes)]

    async def fire() -> list:
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as aio:
            return await asyncio.gather(
                *(aio.infer("centred", tensors({"x": x}, binary=i % 2 == 0)) for i, x in enumerate(images))
            )

    results = asyncio.run(fire())
    for x, result in zip(images, results, strict=True):
        want = in_process(store, "centred", {"x": x})
        got = {"y": result.as_numpy("y"), "mean": result.as_numpy("mean")}
        assert_same(got, want, atol=ACROSS_BATCHES)


def test_a_model_without_a_batch_axis_answers_each_request_on_its_own(server, store):
    xs = [RNG.normal(size=(4, n)).astype(np.float32) for n in (3, 8, 1, 5, 3, 3)]

    async def fire() -> list:
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as aio:
            return await asyncio.gather(*(aio.infer("columns", tensors({"x": x}, binary=True)) for x in xs))

    with server.client() as http:
        before = metric_values(http.get("/metrics").text, "modelserve_batches_total", "columns").get("", 0)
    results = asyncio.run(fire())
    for x, result in zip(xs, results, strict=True):
        assert_same({"y": result.as_numpy("y")}, in_process(store, "columns", {"x": x}))
    with server.client() as http:
        after = metric_values(http.get("/metrics").text, "modelserve_batches_total", "columns")[""]
    assert after - before == len(xs)  # one ONNX Runtime run per request


def test_a_rank_0_input_over_json_and_binary(client, store):
    for scale in (0.0, -1.5, 3.0):
        feeds = {"x": EXAMPLES["scaled"]["x"], "scale": np.array(scale, np.float32)}
        for binary in (False, True):
            assert_same(served(client, "scaled", feeds, binary), in_process(store, "scaled", feeds))


def test_strings_carry_any_utf8_over_json_and_binary(client, store):
    feeds = {"x": np.array(["ünïcødé", "a", "tab\there", "a" * 1000, ""], dtype=object)}
    for binary in (False, True):
        answer = served(client, "words", feeds, binary)
        assert [_text(v) for v in answer["y"]] == list(feeds["x"])
        assert answer["is_a"].tolist() == [False, True, False, False, False]


def test_a_model_that_refuses_the_warm_up_example_is_served_and_refuses_only_small_images(
    server, client, store
):
    assert "blur/1: warm-up on example inputs (every dynamic axis 1) failed" in server.log_text()
    for binary in (False, True):
        x = RNG.normal(size=(2, 1, 5, 4)).astype(np.float32)
        assert_same(served(client, "blur", {"x": x}, binary), in_process(store, "blur", {"x": x}))
        message = refusal(client, "blur", tensors({"x": np.ones((1, 1, 2, 9), np.float32)}, binary))
        assert "ONNX Runtime cannot run blur on these inputs" in message


# --- refusals --------------------------------------------------------------------------------


def refusal(client, name: str, inputs: list[triton.InferInput]) -> str:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, inputs)
    assert caught.value.status() == "400", caught.value
    return caught.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_wrong_names_datatypes_and_shapes_are_400_naming_the_tensor(client, binary):
    x = EXAMPLES["mlp"]["x"]
    wrong_name = tensors({"X": x}, binary)
    assert "mlp has no input 'X'; its inputs are ['x']" in refusal(client, "mlp", wrong_name)
    wrong_type = tensors({"x": x.astype(np.float16)}, binary)
    assert "input 'x' must be FP32, not FP16" in refusal(client, "mlp", wrong_type)
    wrong_shape = tensors({"x": np.zeros((2, 5), np.float32)}, binary)
    assert "input 'x' has shape [2, 5]; the model takes [-1, 4]" in refusal(client, "mlp", wrong_shape)
    wrong_rank = tensors({"x": x, "scale": np.zeros(1, np.float32)}, binary)
    assert "input 'scale' has shape [1]; the model takes []" in refusal(client, "scaled", wrong_rank)
    missing = tensors({"features": EXAMPLES["two-kinds"]["features"]}, binary)
    assert "two-kinds needs the inputs ['counts']" in refusal(client, "two-kinds", missing)
    disagree = tensors({"features": np.zeros((2, 3), np.float32), "counts": np.zeros(3, np.int64)}, binary)
    assert "the inputs disagree on the batch size" in refusal(client, "two-kinds", disagree)


def test_values_that_break_the_datatype_or_encoding_are_400(server):
    with server.client() as http:
        overflow = {"inputs": [{"name": "in_int8", "shape": [1, 2], "datatype": "INT8", "data": [1, 300]}]}
        answer = http.post("/v2/models/datatypes/infer", json=overflow)
        assert answer.status_code == 400 and "values overflow INT8" in answer.json()["error"]
        numbers = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}]}
        answer = http.post("/v2/models/words/infer", json=numbers)
        assert answer.status_code == 400 and "data must hold strings (BYTES)" in answer.json()["error"]
        for raw, message in [
            (b"\x02\x00\x00\x00\xff\xfe", "element 0 is not UTF-8"),
            (b"\x09\x00\x00\x00abc", "end inside element 0"),
            (b"\x01\x00\x00\x00ab", "the 1 elements of shape [1] take 5 bytes"),
        ]:
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(raw)},
                        }
                    ]
                }
            ).encode()
            answer = http.post(
                "/v2/models/words/infer",
                content=header + raw,
                headers={
                    "Inference-Header-Content-Length": str(len(header)),
                    "Content-Type": "application/octet-stream",
                },
            )
            assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_more_rows_than_the_item_limit_is_413(client):
    inputs = tensors({"x": np.zeros((MAX_ITEMS + 1, 4), np.float32)}, binary=True)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mlp", inputs)
    assert caught.value.status() == "413" and "MODELSERVE_MAX_ITEMS_PER_REQUEST" in caught.value.message()


def test_a_request_onnx_runtime_refuses_is_400_and_its_batch_mates_are_answered(server, store):
    good = [np.array([i % 10, 9 - i % 10], np.int64) for i in range(12)]
    bad = np.array([3, 10], np.int64)  # 10 is past the table's last row

    async def fire() -> list:
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as aio:
            calls = [aio.infer("lookup", tensors({"index": i}, binary=True)) for i in good]
            calls.insert(5, aio.infer("lookup", tensors({"index": bad}, binary=True)))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(fire())
    refused = results.pop(5)
    assert isinstance(refused, InferenceServerException) and refused.status() == "400"
    assert "ONNX Runtime cannot run lookup on these inputs" in refused.message()
    for index, result in zip(good, results, strict=True):
        assert_same({"rows": result.as_numpy("rows")}, in_process(store, "lookup", {"index": index}))


# --- everything else that applies to every model ------------------------------------------------


def test_metrics_are_labelled_by_model_and_version(server, client):
    served(client, "half", EXAMPLES["half"], binary=True)
    with server.client() as http:
        text = http.get("/metrics").text
    assert 'modelserve_requests_total{model="half",version="1"}' in text
    assert 'modelserve_model_ready{model="columns",version="1"} 1.0' in text


def test_the_openapi_document_lists_the_v2_routes(server):
    with server.client() as http:
        paths = http.get("/docs.json").json()["paths"]
    assert "/v2/models/{name}/infer" in paths and "/v2/models/{name}/versions/{version}/infer" in paths


@pytest.mark.parametrize(
    ("name", "extra"),
    [("blur", ("--v2-dim-sizes", "3,5,8")), ("words", ()), ("two-kinds", ()), ("scaled", ())],
)
def test_locust_v2_workloads_point_at_an_imported_model(server, tmp_path, name, extra):
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        pytest.skip("Locust is not installed (the `load` extra)")
    run = subprocess.run(
        [
            str(locust),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--host",
            server.url,
            "--headless",
            "--only-summary",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "4s",
            "--tags",
            "v2-json",
            "v2-binary",
            "--v2-model",
            name,
            "--csv",
            str(tmp_path / "run"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    for kind in ("json", "binary"):
        row = rows[f"/v2/models/{name}/infer [{kind}]"]
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0


def test_a_new_version_imported_while_serving_is_swapped_in(server, store, tmp_path):
    """Last in this file: it changes what lookup serves."""
    result = run_import(lookup(tmp_path / "lookup.onnx", offset=100.0), "--name", "lookup", "--store", store)
    assert result.returncode == 0, result.stderr
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        deadline = time.monotonic() + 60
        while client.get_model_metadata("lookup")["versions"][0] != "2" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get_model_metadata("lookup")["versions"][0] == "2"
        feeds = EXAMPLES["lookup"]
        assert_same(
            served(client, "lookup", feeds, binary=True), in_process(store, "lookup", feeds, version=2)
        )
        assert_same(
            served(client, "lookup", feeds, binary=False, version="2"),
            in_process(store, "lookup", feeds, version=2),
        )
    finally:
        client.close()


def test_pinned_versions_and_sha256_verification_apply_to_imported_models(tmp_path):
    """A server of its own: lookup pinned to version 1 of 2, and an MLP whose file changed after import."""
    store = tmp_path / "store"
    for source in (lookup(tmp_path / "v1.onnx"), lookup(tmp_path / "v2.onnx", offset=100.0)):
        assert run_import(source, "--name", "lookup", "--store", store).returncode == 0
    assert run_import(mlp(tmp_path / "mlp.onnx"), "--name", "tampered", "--store", store).returncode == 0
    with open(store / "tampered" / "1" / "model.onnx", "ab") as model_file:
        model_file.write(b"\0")
    with serve(
        tmp_path / "server", store=store, workers="1", model_versions='{"lookup": 1}', wait_ready=False
    ) as server:
        with server.client() as http:
            deadline = time.monotonic() + 120
            while http.get("/v2/models/lookup/ready").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.25)
            ready = http.get("/readyz")
            tampered = http.get("/v2/models/tampered/ready")
            metrics = http.get("/metrics").text
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            metadata = client.get_model_metadata("lookup")
            answer = served(client, "lookup", EXAMPLES["lookup"], binary=True)
        finally:
            client.close()
    assert metadata["versions"] == ["1"]
    assert_same(answer, in_process(store, "lookup", EXAMPLES["lookup"], version=1))
    assert ready.status_code == 503
    assert tampered.status_code == 503
    assert tampered.json()["error"] == "its model.onnx does not match the sha256 in its manifest"
    assert 'modelserve_model_load_failures_total{model="tampered",reason="sha256",version="1"} 1.0' in metrics
    assert "tampered/1 failed (sha256) and is NOT served" in server.log_text()


def test_skl2onnx_classifier_served_equals_predict_proba(client):
    pytest.importorskip("skl2onnx", reason="skl2onnx (the dev extra) is not installed in this environment")
    pipeline, features = iris_pipeline()
    batch = features[:40]
    for binary in (False, True):
        answer = served(client, "iris", {"X": batch}, binary)
        np.testing.assert_allclose(answer["probabilities"], pipeline.predict_proba(batch), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(answer["label"], pipeline.predict(batch))


def test_no_answer_went_wrong_on_the_server(server):
    """Every refusal above was the client's: no request to these models was answered 500."""
    with httpx.Client(base_url=server.url) as http:
        text = http.get("/metrics").text
    errors = [line for line in text.splitlines() if line.startswith("modelserve_errors_total")]
    assert not [line for line in errors if 'status="500"' in line], errors
