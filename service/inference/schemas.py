"""HTTP request and response bodies of the task endpoints, with OpenAPI examples.

Element-wise checks (types, the 0..16 pixel range, label range, finiteness) run here, in
pydantic's compiled validator, so an error names its exact place (``images[2][0][7]``).
Checks that depend on the loaded model (minimum history length, item limits) run in
``service.inference.pipelines``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Len
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

Pixel = Annotated[float, Field(strict=True, ge=0, le=16, allow_inf_nan=False)]
Image8x8 = Annotated[list[Annotated[list[Pixel], Len(8, 8)]], Len(8, 8)]
Image1x8x8 = Annotated[list[Image8x8], Len(1, 1)]


def image_layout(image: object) -> str:
    """Which layout an image is meant to be, by its depth: [8,8] rows of numbers, or [1,8,8]."""
    if isinstance(image, list) and image and isinstance(image[0], list) and image[0]:
        return "[1,8,8]" if isinstance(image[0][0], list) else "[8,8]"
    return "[8,8]"


# The same images as ``Image8x8 | Image1x8x8``, but checked against the one layout the image's
# depth says it is meant to be, so that an error names the one real fault rather than also
# how the image fails the other layout ("List should have at most 1 item ..., not 8"). Used
# only to explain a refusal: the plain union validates valid bodies in fewer microseconds.
ImageOfItsLayout = Annotated[
    Annotated[Image8x8, Tag("[8,8]")] | Annotated[Image1x8x8, Tag("[1,8,8]")], Discriminator(image_layout)
]
Value = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Digit = Annotated[int, Field(strict=True, ge=0, le=9)]

_ZERO = [0.0] * 8
_EXAMPLE_DIGIT = [  # a "0" from scikit-learn's digits, 0..16
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassifyRequest(_Strict):
    """8x8 digit images, pixel values 0 (background) to 16 (ink), like scikit-learn's digits."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"images": [_EXAMPLE_DIGIT]}]})

    images: Annotated[list[Image8x8 | Image1x8x8], Len(1)] = Field(
        description="n images, each [8][8] or [1][8][8], values 0..16"
    )

    @classmethod
    def explain_refusal(cls, body: bytes) -> ValidationError | None:
        """The errors of a refused body, each image checked against its own layout only."""
        try:
            _ImagesOfTheirLayout.model_validate_json(body)
        except ValidationError as exc:
            return exc
        return None


class _ImagesOfTheirLayout(_Strict):
    images: Annotated[list[ImageOfItsLayout], Len(1)]


class ClassifyResponse(_Strict):
    labels: list[int] = Field(description="the most probable digit of each image")
    probabilities: list[list[float]] = Field(description="per image, 10 class probabilities")


@dataclass(frozen=True)
class UploadedDigit:
    """The body of /classify_image once read: the uploaded picture as an (8, 8) array on 0..16."""

    pixels: np.ndarray


class ClassifyImageResponse(_Strict):
    label: int
    probabilities: list[float] = Field(description="10 class probabilities")


class ForecastRequest(_Strict):
    """Histories of weekly CO2 readings (ppm), oldest first; rows may differ in length."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"series": [[315.0 + 0.03 * t + 3 * ((t % 52) / 52 - 0.5) for t in range(120)]]}]
        }
    )

    series: Annotated[list[Annotated[list[Value], Len(1)]], Len(1)] = Field(
        description="n rows, each at least the model's minimum length (GET /v2/models/forecaster)"
    )


class ForecastResponse(_Strict):
    forecasts: list[list[float]] = Field(description="per row, the next H values")


class GenerateRequest(_Strict):
    """Digits to draw. The same labels and seed always give the same images."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"labels": [0, 1, 2], "seed": 7, "format": "png"},
                {"labels": [8], "format": "array"},
            ]
        }
    )

    labels: Annotated[list[Digit], Len(1)] = Field(description="one digit 0..9 per image")
    # At most 2**53 - 1: the largest integer every JSON client holds exactly (an IEEE double),
    # and one the OpenAPI document can state without rounding it.
    seed: Annotated[int, Field(strict=True, ge=0, le=2**53 - 1)] | None = Field(
        None, description="seed of the latent noise; omitted: a random one"
    )
    format: Literal["png", "array"] = Field(
        "png", description="png: base64 8x8 greyscale PNGs, dark ink on white; array: 0..16 values"
    )


class GenerateResponse(_Strict):
    images: list[str] | list[list[list[float]]] = Field(
        description="base64 PNG strings, or [8][8] arrays on the 0..16 scale"
    )
    seed: int = Field(description="the seed used (echoes the request's, or the random one)")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: str = Field(description="what was wrong")
    detail: object | None = Field(None, description="where: e.g. [{field, message}, ...]")
    request_id: str = Field(
        description="the request's id, also in the X-Request-ID header and in the server's log line"
    )


ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "malformed or invalid input"},
    413: {"model": ErrorResponse, "description": "body too large"},
    415: {"model": ErrorResponse, "description": "unsupported media type"},
    503: {"model": ErrorResponse, "description": "overloaded or model not ready; see Retry-After"},
}


# --- the Open Inference Protocol (V2) answers, for the OpenAPI document ------------------------


class ServerMetadataResponse(_Strict):
    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions served, e.g. binary_tensor_data")


class LiveResponse(_Strict):
    live: bool


class ReadyResponse(_Strict):
    ready: bool


class TensorMetadata(_Strict):
    name: str
    datatype: str = Field(description="a V2 datatype, e.g. FP32, INT64, UINT8")
    shape: list[int] = Field(description="-1 for a dimension of any size")


class ModelMetadataResponse(_Strict):
    name: str
    versions: list[str] = Field(description="the versions of the model being served")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="task, labels, serving hints, execution provider")


class ModelReadyResponse(_Strict):
    name: str
    version: str | None = None
    ready: bool
    error: str | None = Field(None, description="why the model is not ready")


class InferOutputTensor(_Strict):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="row-major values; absent when sent as binary data")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size with binary data")


class InferResponse(_Strict):
    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, echoed")
    outputs: list[InferOutputTensor]


V2_ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "malformed or invalid input"},
    404: {"model": ErrorResponse, "description": "unknown model, or a version that is not served"},
    413: {"model": ErrorResponse, "description": "body too large"},
    415: {"model": ErrorResponse, "description": "unsupported media type"},
    503: {"model": ErrorResponse, "description": "overloaded or model not ready; see Retry-After"},
}


def inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``#/$defs/...`` reference replaced by its definition.

    A JSON schema put into the OpenAPI document by hand (a request body the endpoint reads
    itself) cannot keep pydantic's ``$defs``: the document resolves references from its own
    root, where ``#/$defs`` does not exist.
    """
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
