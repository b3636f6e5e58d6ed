"""The Open Inference Protocol (KServe V2) over HTTP/REST, so that standard clients work.

Implements server and model metadata, health, and ``infer`` with JSON tensors and the
binary tensor data extension (``Inference-Header-Content-Length``). ``infer`` requests go
through the same per-model batchers as the task endpoints, so the two kinds of request
share ONNX Runtime calls.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service.api.handler import registry_of
from service.api.request_bodies import parse, require_json
from service.inference import schemas
from service.inference.pipelines import Pipeline
from service.inference.runtime import NUMPY_DTYPES
from service.platform.errors import InvalidInput
from service.transport.fast_path import FastRoute
from service.transport.responses import json_response
from store_format import Manifest, TensorSpec

SERVER_NAME = "modelserve"
SERVER_VERSION = "0.1.0"
HEADER_LENGTH = "inference-header-content-length"


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] = {}
    data: list[Any] | None = None  # flat or nested, row-major; absent with binary data


class InferOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(BaseModel):
    """The JSON part of a V2 inference request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
                    ]
                }
            ]
        },
    )
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: Annotated[list[InferInput], Field(min_length=1)]
    outputs: list[InferOutput] | None = None


# --- decoding ------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail of a request (the tail is empty without the extension)."""
    if header_length is None:
        return body, memoryview(b"")
    length = int(header_length) if header_length.isdigit() else -1  # no sign, space or "_"
    if not 0 < length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length!r}; it must be 1..{len(body)}",
            {"header": "Inference-Header-Content-Length"},
        )
    return body[:length], memoryview(body)[length:]


def decode_inputs(
    request: InferRequest, binary: memoryview, manifest: Manifest, batched: bool = True
) -> dict[str, np.ndarray]:
    """Input tensors by name, each checked against the model's declared inputs.

    ``batched``: axis 0 of every input is the batch, so the inputs must agree on its size and
    it must not be 0. A model without a batch axis takes each input as it is, rank 0 included.
    """
    declared = {spec.name: spec for spec in manifest.inputs}
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"{manifest.name} has no input {tensor.name!r}; its inputs are {sorted(declared)}",
                {"tensor": tensor.name},
            )
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name!r} is given twice", {"tensor": tensor.name})
        check_declared(tensor, spec)
        array, used = tensor_data(tensor, binary, offset)
        offset += used
        tensors[tensor.name] = array
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data belong to no input: the inputs' "
            f"binary_data_size add up to {offset}, the binary data holds {len(binary)}",
            {"parameter": "binary_data_size"},
        )
    missing = sorted(set(declared) - set(tensors))
    if missing:
        raise InvalidInput(f"{manifest.name} needs the inputs {missing}", {"tensor": missing[0]})
    if not batched:
        return tensors
    batch_sizes = {name: array.shape[0] for name, array in tensors.items()}
    if len(set(batch_sizes.values())) > 1:
        raise InvalidInput(f"the inputs disagree on the batch size: {batch_sizes}")
    if 0 in batch_sizes.values():
        raise InvalidInput("the batch is empty (the first dimension is 0)")
    return tensors


def check_declared(tensor: InferInput, spec: TensorSpec) -> None:
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input {tensor.name!r} must be {spec.datatype}, not {tensor.datatype}", {"tensor": tensor.name}
        )
    fits = len(tensor.shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    )
    if not fits:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {tensor.shape}; the model takes {list(spec.shape)} "
            "(-1: any size)",
            {"tensor": tensor.name},
        )


# Parameters of the binary tensor data extension and of Triton's extensions this server does
# not implement: a request that relies on one must hear so, not get an answer without it.
_UNSUPPORTED_INPUT_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification", *_UNSUPPORTED_INPUT_PARAMETERS)


def bad_parameter(where: str, tensor: str | None, parameter: str, problem: str) -> InvalidInput:
    """A 400 naming the tensor (if any) and the parameter at fault."""
    detail = {"tensor": tensor, "parameter": parameter} if tensor is not None else {"parameter": parameter}
    return InvalidInput(f"{where}: parameter {parameter!r} {problem}", detail)


def refuse_unsupported(
    where: str, tensor: str | None, parameters: dict[str, Any], names: tuple[str, ...]
) -> None:
    """A 400 when a parameter of an extension this server does not implement is given."""
    for name in names:
        if name in parameters:
            raise bad_parameter(where, tensor, name, "is not supported by this server")


def binary_data_size(tensor: InferInput) -> int | None:
    """The input's ``binary_data_size``: absent, or a whole number of bytes (not 128.0, not True)."""
    parameters = tensor.parameters
    refuse_unsupported(f"input {tensor.name!r}", tensor.name, parameters, _UNSUPPORTED_INPUT_PARAMETERS)
    if "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if type(size) is not int or size < 0:  # bool is an int subclass; JSON 128.0 is a float
        raise bad_parameter(
            f"input {tensor.name!r}",
            tensor.name,
            "binary_data_size",
            f"must be a whole number >= 0, not {size!r}",
        )
    return size


def boolean_parameter(where: str, tensor: str | None, parameters: dict[str, Any], name: str) -> bool | None:
    """A true/false parameter (``binary_data_output``, ``binary_data``): absent, or a JSON bool."""
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_parameter(where, tensor, name, f"must be true or false, not {value!r}")
    return value


def tensor_data(tensor: InferInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """The tensor's array, and how many bytes of the binary tail it used."""
    count = math.prod(tensor.shape)
    size = binary_data_size(tensor)
    if size is not None:
        if tensor.data is not None:
            raise bad_parameter(
                f"input {tensor.name!r}", tensor.name, "binary_data_size", "is given together with data"
            )
        left = len(binary) - offset
        if tensor.datatype == "BYTES":
            if size > left:
                raise bad_parameter(
                    f"input {tensor.name!r}",
                    tensor.name,
                    "binary_data_size",
                    f"is {size}, and {left} bytes of binary data are left",
                )
            strings = bytes_elements(tensor, binary[offset : offset + size], count)
            return strings.reshape(tensor.shape), size
        dtype = NUMPY_DTYPES[tensor.datatype].newbyteorder("<")
        if size != count * dtype.itemsize or size > left:
            raise bad_parameter(
                f"input {tensor.name!r}",
                tensor.name,
                "binary_data_size",
                f"is {size}: shape {tensor.shape} of {tensor.datatype} takes {count * dtype.itemsize} "
                f"bytes, and {left} bytes of binary data are left",
            )
        return np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(tensor.shape), size
    if tensor.data is None:
        raise InvalidInput(f"input {tensor.name!r} has no data", {"tensor": tensor.name})
    if tensor.datatype == "BYTES":
        return json_strings(tensor, count), 0
    return json_array(tensor, NUMPY_DTYPES[tensor.datatype], count), 0


def bytes_elements(tensor: InferInput, data: memoryview, count: int) -> np.ndarray:
    """``count`` strings from BYTES binary data: each a 4-byte little-endian length, then its bytes.

    As an object array of ``str``, which is what ONNX Runtime takes for a string tensor (it
    would turn a ``bytes`` element into the text ``"b'...'"``); an element that is not UTF-8 is
    refused rather than altered.
    """
    strings = np.empty(count, dtype=object)
    position = 0
    for i in range(count):
        length = int.from_bytes(data[position : position + 4], "little") if position + 4 <= len(data) else -1
        end = position + 4 + length
        if length < 0 or end > len(data):
            raise bad_parameter(
                f"input {tensor.name!r}",
                tensor.name,
                "binary_data_size",
                f"is {len(data)}: those bytes end inside element {i} of {count} (BYTES elements are "
                "each a 4-byte little-endian length followed by that many bytes)",
            )
        try:
            strings[i] = str(data[position + 4 : end], "utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input {tensor.name!r}: element {i} is not UTF-8 text", {"tensor": tensor.name, "index": i}
            ) from None
        position = end
    if position != len(data):
        raise bad_parameter(
            f"input {tensor.name!r}",
            tensor.name,
            "binary_data_size",
            f"is {len(data)}, but the {count} elements of shape {tensor.shape} take {position} bytes",
        )
    return strings


def json_strings(tensor: InferInput, count: int) -> np.ndarray:
    """A BYTES tensor from JSON: strings, flat or nested, as an object array of ``str``."""
    try:
        raw = np.asarray(tensor.data, dtype=object)
    except ValueError:
        raise InvalidInput(f"input {tensor.name!r}: data is a ragged list", {"tensor": tensor.name}) from None
    # A ragged nested list becomes an array of lists here: those elements are not strings either.
    if not all(isinstance(element, str) for element in raw.flat):
        raise InvalidInput(f"input {tensor.name!r}: data must hold strings (BYTES)", {"tensor": tensor.name})
    if raw.size != count:
        raise InvalidInput(
            f"input {tensor.name!r}: {raw.size} values do not fill shape {tensor.shape}",
            {"tensor": tensor.name},
        )
    return raw.reshape(tensor.shape)


def json_array(tensor: InferInput, dtype: np.dtype, count: int) -> np.ndarray:
    try:
        raw = np.asarray(tensor.data)
    except ValueError:
        raise InvalidInput(f"input {tensor.name!r}: data is a ragged list", {"tensor": tensor.name}) from None
    allowed = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if raw.size and raw.dtype.kind not in allowed:
        raise InvalidInput(
            f"input {tensor.name!r}: data must hold {tensor.datatype} values", {"tensor": tensor.name}
        )
    if raw.size != count:
        raise InvalidInput(
            f"input {tensor.name!r}: {raw.size} values do not fill shape {tensor.shape}",
            {"tensor": tensor.name},
        )
    with np.errstate(over="ignore", invalid="ignore"):
        array = raw.astype(dtype).reshape(tensor.shape)
    if dtype.kind in "iu" and not np.array_equal(array, raw.reshape(tensor.shape)):
        raise InvalidInput(
            f"input {tensor.name!r}: values overflow {tensor.datatype}", {"tensor": tensor.name}
        )
    return array


# --- encoding ------------------------------------------------------------------------------


def requested_outputs(request: InferRequest, manifest: Manifest) -> list[tuple[str, bool]]:
    """The outputs to answer, each with whether it goes as binary data; checked before inference."""
    wanted = request.outputs or [InferOutput(name=spec.name) for spec in manifest.outputs]
    declared = [spec.name for spec in manifest.outputs]
    binary_default = boolean_parameter("the request", None, request.parameters, "binary_data_output")
    plan = []
    for output in wanted:
        if output.name not in declared:
            raise InvalidInput(
                f"{manifest.name} has no output {output.name!r}; its outputs are {sorted(declared)}",
                {"tensor": output.name},
            )
        where = f"output {output.name!r}"
        refuse_unsupported(where, output.name, output.parameters, _UNSUPPORTED_OUTPUT_PARAMETERS)
        as_binary = boolean_parameter(where, output.name, output.parameters, "binary_data")
        plan.append((output.name, bool(binary_default) if as_binary is None else as_binary))
    return plan


def encode_outputs(
    plan: list[tuple[str, bool]], outputs: dict[str, np.ndarray], manifest: Manifest
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output tensor descriptions and, for those asked as binary, their bytes."""
    described, chunks = [], []
    for name, as_binary in plan:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": manifest.output(name).datatype,
            "shape": list(array.shape),
        }
        if array.dtype.kind == "O":  # BYTES: strings, as ONNX Runtime gives them
            strings = [_utf8(element) for element in array.ravel().tolist()]
            if as_binary:
                data = b"".join(len(b).to_bytes(4, "little") + b for b in strings)
                entry["parameters"] = {"binary_data_size": len(data)}
                chunks.append(data)
            else:
                entry["data"] = [b.decode("utf-8", "replace") for b in strings]
        elif as_binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        described.append(entry)
    return described, chunks


def _utf8(element: Any) -> bytes:
    """One BYTES element as bytes: ONNX Runtime gives ``str``; ``bytes`` pass as they are."""
    return element if isinstance(element, bytes) else str(element).encode("utf-8")


# --- routes --------------------------------------------------------------------------------

router = APIRouter(
    prefix="/v2",
    tags=["open inference protocol (v2)"],
    route_class=FastRoute,
    responses=schemas.V2_ERROR_RESPONSES,
)

# The path parameters as the OpenAPI document describes them (the endpoints check them).
ModelName = Annotated[
    str, PathParameter(description="a model of the store", examples=["classifier", "forecaster", "generator"])
]
ModelVersion = Annotated[
    str, PathParameter(pattern=r"^[0-9]+$", description="a version number", examples=["1"])
]


def _pipeline(request: Request, name: str, version: str | None) -> Pipeline:
    # A version asked for by number is found while it is served: the default one, or one
    # replaced by a newer version and still inside its release grace period (404 otherwise).
    return registry_of(request).pipeline(name, version)


@router.get("", summary="Server metadata", response_model=schemas.ServerMetadataResponse)
async def server_metadata(_: Request) -> Response:
    return json_response(
        {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
    )


@router.get("/health/live", summary="Server liveness", response_model=schemas.LiveResponse)
async def server_live(_: Request) -> Response:
    return json_response({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness: every model loaded, verified and warm",
    response_model=schemas.ReadyResponse,
    responses={503: {"model": schemas.ReadyResponse, "description": "not ready"}},
)
async def server_ready(request: Request) -> Response:
    is_ready = getattr(request.app.state, "is_ready", None)
    ready = bool(is_ready and is_ready())
    return json_response({"ready": ready}, 200 if ready else 503)


# Each route with a version has a twin without it; the twins share their operation's name.

_NOT_READY = {503: {"model": schemas.ModelReadyResponse, "description": "the model failed to load"}}


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata of a version",
    name="model_metadata",
    response_model=schemas.ModelMetadataResponse,
)
async def model_version_metadata(request: Request, name: ModelName, version: ModelVersion) -> Response:
    model = _pipeline(request, name, version).model
    manifest = model.manifest
    # The provider the session really got, which can differ from the one asked for.
    runtime = {"execution_provider": model.provider}
    # The quality verdict the version was published with: "unchecked" for an imported model that
    # nothing checked, which is served, and must say so (none for manifests older than gates).
    verdict = {} if manifest.gate is None else {"verdict": manifest.gate.verdict}
    # Every version this worker serves: the default first, then one being replaced (a swap's grace).
    served = registry_of(request).served_versions(name)
    return json_response(
        {
            "name": manifest.name,
            "versions": [str(v) for v in served],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_dict() for spec in manifest.inputs],
            "outputs": [spec.to_dict() for spec in manifest.outputs],
            "parameters": {
                "task": manifest.task,
                "labels": manifest.labels,
                **manifest.serving,
                **runtime,
                **verdict,
            },
        }
    )


@router.get("/models/{name}", summary="Model metadata", response_model=schemas.ModelMetadataResponse)
async def model_metadata(request: Request, name: ModelName) -> Response:
    return await model_version_metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model readiness of a version",
    name="model_ready",
    response_model=schemas.ModelReadyResponse,
    responses=_NOT_READY,
)
async def model_version_ready(request: Request, name: ModelName, version: ModelVersion) -> Response:
    registry = registry_of(request)
    if name in registry.failures:
        return json_response({"name": name, "ready": False, "error": registry.failures[name]}, 503)
    pipeline = _pipeline(request, name, version)
    return json_response({"name": name, "version": str(pipeline.model.version), "ready": True})


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    response_model=schemas.ModelReadyResponse,
    responses=_NOT_READY,
)
async def model_ready(request: Request, name: ModelName) -> Response:
    return await model_version_ready(request, name, None)


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": schemas.inline_definitions(InferRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "JSON header of Inference-Header-Content-Length bytes, then tensor data",
                }
            },
        },
    }
}


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    openapi_extra=_INFER_DOC,
    name="infer",
    response_model=schemas.InferResponse,
)
async def infer_version(request: Request, name: ModelName, version: ModelVersion) -> Response:
    return await _answer_infer(request, name, version)


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    openapi_extra=_INFER_DOC,
    response_model=schemas.InferResponse,
)
async def infer(request: Request, name: ModelName) -> Response:
    return await _answer_infer(request, name, None)


async def _answer_infer(request: Request, name: str, version: str | None) -> Response:
    pipeline = _pipeline(request, name, version)
    try:
        return await _infer(request, pipeline)
    except Exception as exc:
        raise pipeline.failed(exc, request.url.path) from None


async def _infer(request: Request, pipeline: Pipeline) -> Response:
    header_length = request.headers.get(HEADER_LENGTH)
    content_type = request.headers.get("content-type")
    # Without the binary extension the body is all JSON. tritonclient.http.aio sends such a body
    # as application/octet-stream (aiohttp's default for bytes), so that type is read as JSON too.
    if header_length is None and (content_type or "").split(";")[0].strip() != "application/octet-stream":
        require_json(content_type)
    body = await request.body()
    # Refused before the body is parsed, so that a refusal costs little; after it is read, so
    # that the connection stays open (a client that must reconnect to retry costs more).
    refusal = pipeline.overloaded()
    if refusal is not None:
        raise refusal
    header, binary = split_body(body, header_length)
    infer_request = parse(header, InferRequest)
    manifest = pipeline.model.manifest
    tensors = decode_inputs(infer_request, binary, manifest, pipeline.batched)
    plan = requested_outputs(infer_request, manifest)
    outputs, chunks = encode_outputs(plan, await pipeline.answer_tensors(tensors), manifest)
    answer: dict[str, Any] = {"model_name": manifest.name, "model_version": str(manifest.version)}
    if infer_request.id is not None:
        answer["id"] = infer_request.id
    answer["outputs"] = outputs
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
