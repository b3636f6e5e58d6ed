"""Every answer is checked, not just its status: a 200 with the wrong content is a failure.

Each check raises :class:`WrongAnswer` with a short reason (Locust groups failures by their
message, so reasons name what was wrong, not the values). Beyond shape and plausible values,
each answer is compared with the earlier answer for the same input (:class:`References`):
the service promises that an answer never depends on which requests shared its batch, so an
answer that changes under load means requests were mixed up.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Hashable

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from .payloads import Pools, v2_outputs

# The service promises 1e-4 between an answer alone and in a batch; a mixed-up answer is
# off by far more. Ten times the promise, so float32 rounding never trips the check.
ANSWER_TOLERANCE = 1e-3
# PNG pixels are 8-bit: one grey level is 16/255 on the 0..16 scale.
PNG_TOLERANCE = 16 / 255 + ANSWER_TOLERANCE
# Outputs computed in float32 may overshoot their range by a rounding error (the generator
# answers -9.5e-7 for some pixels); more than this is out of range.
FLOAT32_SLACK = 1e-5
# A forecast stays within this many ppm of the range of its history's last year.
FORECAST_MARGIN_PPM = 10.0
PLAUSIBLE_PPM = (250.0, 600.0)


class WrongAnswer(Exception):
    """The answer is not what the request should get."""


class References:
    """The first answer seen for each input; later answers for it must agree."""

    def __init__(self) -> None:
        self._first: dict[Hashable, np.ndarray] = {}

    def agree(self, key: Hashable, answer: np.ndarray, tolerance: float = ANSWER_TOLERANCE) -> None:
        first = self._first.setdefault(key, answer)
        if first is answer:
            return
        if first.shape != answer.shape:
            raise WrongAnswer(f"{key[0]} answer changed shape since an earlier answer for the same input")
        difference = float(np.max(np.abs(first - answer)))
        if not difference <= tolerance:
            raise WrongAnswer(
                f"{key[0]} answer differs by over {tolerance:g} from an earlier answer for the same input"
            )

    def __len__(self) -> int:
        return len(self._first)


def status(code: int, body: bytes | None, expected: int = 200) -> None:
    if code != expected:
        if code == 0:
            raise WrongAnswer("no answer (connection failed or timed out)")
        raise WrongAnswer(f"HTTP {code}: {error_of(body)}")


def error_of(body: bytes | None) -> str:
    """The ``error`` of a JSON error body, else the start of the body."""
    try:
        return str(orjson.loads(body or b"")["error"])[:160]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return (body or b"")[:160].decode(errors="replace")


def json_object(body: bytes | None, keys: tuple[str, ...]) -> dict:
    try:
        answer = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        raise WrongAnswer("the answer is not JSON") from None
    if not isinstance(answer, dict) or not all(key in answer for key in keys):
        raise WrongAnswer(f"the answer lacks {', '.join(keys)}")
    return answer


def array(values: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``values`` as a float64 array of exactly ``shape``."""
    try:
        result = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise WrongAnswer(f"{what} is not an array of numbers") from None
    if result.shape != shape:
        raise WrongAnswer(f"{what} has shape {list(result.shape)}, expected {list(shape)}")
    return result


def within(values: np.ndarray, low: float, high: float) -> bool:
    """Every value in ``low..high`` (NaN is not: it fails both comparisons).

    Two reductions rather than element-wise comparisons: the checks run for every answer,
    on the load generator's CPU.
    """
    return bool(low <= values.min() and values.max() <= high)


def probabilities(values: object, n: int) -> np.ndarray:
    """(n, 10) class probabilities: each in 0..1, each row summing to 1."""
    result = array(values, (n, 10), "probabilities")
    if not within(result, -FLOAT32_SLACK, 1 + FLOAT32_SLACK):
        raise WrongAnswer("a probability is outside 0..1 (or not a number)")
    if not within(result.sum(axis=1), 1 - ANSWER_TOLERANCE, 1 + ANSWER_TOLERANCE):
        raise WrongAnswer("probabilities do not sum to 1")
    return result


def labels_match(labels: object, probs: np.ndarray) -> None:
    """Labels are the digits 0..9 with the highest probability."""
    if not isinstance(labels, list) or not all(type(label) is int and 0 <= label <= 9 for label in labels):
        raise WrongAnswer("labels are not digits 0..9")
    margin = probs[np.arange(len(labels)), labels] - probs.max(axis=1)  # 0 for the most probable
    if margin.min() < -ANSWER_TOLERANCE:
        raise WrongAnswer("a label is not the most probable class")


def forecasts(values: object, pools: Pools, indices: list[int]) -> np.ndarray:
    """(n, H) forecasts in ppm, each near the level and season of its own history."""
    result = array(values, (len(indices), pools.limits.horizon), "forecasts")
    low, high = PLAUSIBLE_PPM
    if not within(result, low, high):
        raise WrongAnswer(f"a forecast is outside {low:g}..{high:g} ppm (or not a number)")
    for row, index in zip(result, indices, strict=True):
        last_year = pools.histories[index][-52:]
        if (
            row.min() < last_year.min() - FORECAST_MARGIN_PPM
            or row.max() > last_year.max() + FORECAST_MARGIN_PPM
        ):
            raise WrongAnswer(f"a forecast strays more than {FORECAST_MARGIN_PPM:g} ppm from its history")
    return result


def digit_image(values: object, what: str) -> np.ndarray:
    """An (8, 8) image on the 0..16 scale."""
    result = array(values, (8, 8), what)
    if not within(result, -FLOAT32_SLACK, 16 + FLOAT32_SLACK):
        raise WrongAnswer(f"{what} has a pixel outside 0..16 (or not a number)")
    return result


def png_digit(text: object) -> np.ndarray:
    """A base64 PNG of an 8x8 greyscale digit (dark ink on white) as 0..16 values."""
    if not isinstance(text, str):
        raise WrongAnswer("a generated image is not a base64 string")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError):
        raise WrongAnswer("a generated image is not a decodable PNG") from None
    if image.format != "PNG" or image.size != (8, 8):
        raise WrongAnswer(
            f"a generated image is a {image.size[0]}x{image.size[1]} {image.format}, not 8x8 PNG"
        )
    return (255.0 - np.asarray(image.convert("L"), dtype=np.float64)) * (16 / 255)


# --- one function per kind of answer --------------------------------------------------------


def classify(body: bytes | None, indices: list[int], refs: References) -> None:
    answer = json_object(body, ("labels", "probabilities"))
    probs = probabilities(answer["probabilities"], len(indices))
    if not isinstance(answer["labels"], list) or len(answer["labels"]) != len(indices):
        raise WrongAnswer("one label per image expected")
    labels_match(answer["labels"], probs)
    for row, index in zip(probs, indices, strict=True):
        refs.agree(("classifier", index), row)


def classify_image(body: bytes | None, index: int, refs: References) -> None:
    answer = json_object(body, ("label", "probabilities"))
    probs = probabilities([answer["probabilities"]], 1)
    labels_match([answer["label"]], probs)
    refs.agree(("picture", index), probs[0])


def forecast(body: bytes | None, indices: list[int], pools: Pools, refs: References) -> None:
    answer = json_object(body, ("forecasts",))
    for row, index in zip(forecasts(answer["forecasts"], pools, indices), indices, strict=True):
        refs.agree(("forecaster", index), row)


def generate(body: bytes | None, labels: list[int], seed: int, form: str, refs: References) -> None:
    answer = json_object(body, ("images", "seed"))
    if answer["seed"] != seed:
        raise WrongAnswer("the answer's seed is not the request's")
    images = answer["images"]
    if not isinstance(images, list) or len(images) != len(labels):
        raise WrongAnswer("one image per label expected")
    for i, image in enumerate(images):
        pixels = png_digit(image) if form == "png" else digit_image(image, "a generated image")
        # PNG and array answers for the same labels and seed must show the same digit.
        refs.agree(("generator", tuple(labels), seed, i), pixels, PNG_TOLERANCE)


def v2(body: bytes | None, header_length: str | None, model: str, binary: bool) -> dict[str, np.ndarray]:
    """The outputs of a V2 ``infer`` answer, checked to be binary when asked for binary."""
    if binary and header_length is None:
        raise WrongAnswer("binary outputs were asked for; the answer has no Inference-Header-Content-Length")
    try:
        answer, outputs = v2_outputs(body or b"", header_length)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise WrongAnswer(f"malformed infer answer: {type(exc).__name__}") from None
    if answer.get("model_name") != model:
        raise WrongAnswer(f"the answer names model {answer.get('model_name')!r}, not {model!r}")
    return outputs


def output(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in outputs:
        raise WrongAnswer(f"the answer has no output {name!r}")
    return outputs[name]


def v2_classifier(outputs: dict[str, np.ndarray], indices: list[int], refs: References) -> None:
    probs = probabilities(output(outputs, "probabilities"), len(indices))
    for row, index in zip(probs, indices, strict=True):
        refs.agree(("classifier", index), row)  # the same inputs as /classify: the same answers


def v2_forecaster(outputs: dict[str, np.ndarray], indices: list[int], pools: Pools, refs: References) -> None:
    for row, index in zip(forecasts(output(outputs, "forecast"), pools, indices), indices, strict=True):
        refs.agree(("forecaster", index), row)  # the same histories as /forecast


def v2_generator(outputs: dict[str, np.ndarray], index: int, n: int, refs: References) -> None:
    images = array(output(outputs, "images"), (n, 1, 8, 8), "images")
    for i in range(n):
        digit_image(images[i, 0], "a generated image")
    refs.agree(("latent", index), images)
