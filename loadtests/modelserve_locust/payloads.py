"""What the simulated clients send: digit images, PNG pictures, CO2 histories, V2 tensors.

Everything is drawn once per Locust process from a fixed seed into small pools, and each
request picks from a pool by index. Bodies are assembled from pre-serialised JSON
fragments, so the load generator spends its CPU on sending requests rather than on
building them, and every answer can be compared with the earlier answer for the same
pool entry (see ``checks.py``).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import orjson
from PIL import Image, ImageDraw, ImageFont

DIGIT_POOL = 256
PICTURE_POOL = 64
HISTORY_POOL = 128
LATENT_POOL = 64
# The Mauna Loa record spans March 1958 to today: about 3,500 weeks.
WEEKS_SINCE_1958 = 3_500


# --- digits -------------------------------------------------------------------------------


def draw_digit(label: int, rng: np.random.Generator) -> np.ndarray:
    """An (8, 8) digit on the 0..16 scale, made the way scikit-learn's digits were made.

    A glyph is drawn large with a random size, slant and rotation, its bounding box is
    scaled into 32x32, and the ink pixels of each 4x4 block are counted (0..16).
    """
    canvas = Image.new("L", (96, 96), 0)
    font = ImageFont.load_default(size=int(rng.integers(60, 72)))
    centre = (48 + rng.normal(0, 2), 48 + rng.normal(0, 2))
    ImageDraw.Draw(canvas).text(centre, str(label), fill=255, font=font, anchor="mm", stroke_width=2)
    canvas = canvas.rotate(rng.normal(0, 8), resample=Image.Resampling.BILINEAR)
    shear = (1, rng.normal(0, 0.15), 0, 0, 1, 0)
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, shear, resample=Image.Resampling.BILINEAR)
    ink = np.asarray(canvas) > 76
    rows, cols = np.nonzero(ink)
    glyph = Image.fromarray(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    scale = 32 / max(glyph.size)
    glyph = glyph.convert("L").resize(
        (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.Resampling.BILINEAR
    )
    square = Image.new("L", (32, 32), 0)
    square.paste(glyph, ((32 - glyph.width) // 2, (32 - glyph.height) // 2))
    bits = np.asarray(square) > 127
    return bits.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float32)


def picture_of(digit: np.ndarray, side: int) -> bytes:
    """A PNG of ``digit`` as a user would upload it: dark ink on white, ``side`` pixels square."""
    grey = np.round(255 - digit * (255 / 16)).astype(np.uint8)
    image = Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field_name: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = "----modelserve-load-" + format(random.getrandbits(64), "016x")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- CO2 histories ------------------------------------------------------------------------


def co2_history(length: int, rng: np.random.Generator) -> np.ndarray:
    """A weekly CO2-like record (ppm) of ``length`` weeks, starting somewhere since 1958.

    An accelerating trend (0.75 ppm/year in 1958, about 2.4 today), a seasonal cycle of
    about 6 ppm peak to peak with its second harmonic, and autocorrelated measurement
    noise; rounded to 0.01 ppm as the published series is.
    """
    start = int(rng.integers(0, WEEKS_SINCE_1958 - length + 1))
    week = start + np.arange(length)
    trend = 315.0 + 0.0144 * week + 3.6e-6 * week**2
    phase = 2 * np.pi * week / 52.18
    season = 3.0 * np.sin(phase + rng.normal(1.0, 0.1)) + 0.8 * np.sin(2 * phase + 0.4)
    shocks = rng.normal(0, 0.25, length)
    noise = np.empty(length)
    noise[0] = shocks[0]
    for i in range(1, length):
        noise[i] = 0.6 * noise[i - 1] + shocks[i]
    return np.round(trend + season + noise, 2)


def history_lengths(count: int, min_length: int, max_length: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths the way clients vary them: mostly 2-10 years, some near the limit, some at it.

    40% from the minimum to 300 weeks, 35% 300-600, 15% 600 to the maximum, and 10% exactly
    the longest row the service accepts.
    """
    edges = [min_length, min(300, max_length), min(600, max_length), max_length]
    bands = rng.choice(4, size=count, p=[0.40, 0.35, 0.15, 0.10])
    lengths = np.full(count, max_length)
    for band in range(3):
        chosen = bands == band
        lengths[chosen] = rng.integers(edges[band], max(edges[band], edges[band + 1]) + 1, chosen.sum())
    return lengths


# --- V2 (Open Inference Protocol) ---------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


def v2_json_body(inputs: list[Tensor]) -> bytes:
    """An ``infer`` request with the tensors' data inline, as JSON."""
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.array.shape),
                    "datatype": t.datatype,
                    "data": t.array.ravel(),
                }
                for t in inputs
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def v2_binary_body(inputs: list[Tensor]) -> tuple[bytes, int]:
    """An ``infer`` request exactly as ``tritonclient.http`` sends it with ``binary_data=True``.

    The JSON header describes each input with ``parameters.binary_data_size`` and, since no
    outputs are named, asks for every output in binary (``binary_data_output``); the raw
    little-endian tensor bytes follow the header in input order. Returns the body and the
    header's length, for the ``Inference-Header-Content-Length`` header.
    """
    raw = [np.ascontiguousarray(t.array, dtype=t.array.dtype.newbyteorder("<")).tobytes() for t in inputs]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.array.shape),
                    "datatype": t.datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
                for t, data in zip(inputs, raw, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + b"".join(raw), len(header)


V2_DTYPES = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "?",
}


def bytes_elements(data: memoryview | bytes) -> list[bytes]:
    """BYTES binary data: each element a 4-byte little-endian length, then that many bytes."""
    elements, position = [], 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "little")
        end = position + 4 + length
        if position + 4 > len(data) or end > len(data):
            raise ValueError("BYTES data ends inside an element")
        elements.append(bytes(data[position + 4 : end]))
        position = end
    return elements


def v2_outputs(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON part of an ``infer`` answer, and its output tensors (JSON or binary) by name.

    Raises ``ValueError`` when the answer does not hold together (sizes, shapes, datatypes).
    """
    if header_length is None:
        header, tail = body, b""
    else:
        length = int(header_length)
        if not 0 < length <= len(body):
            raise ValueError(f"Inference-Header-Content-Length {length} for a {len(body)}-byte body")
        header, tail = body[:length], memoryview(body)[length:]
    answer = orjson.loads(header)
    outputs, offset = {}, 0
    for output in answer["outputs"]:
        shape = output["shape"]
        size = output.get("parameters", {}).get("binary_data_size")
        if output["datatype"] == "BYTES":  # strings: JSON strings, or length-prefixed binary
            if size is None:
                array = np.array([str(s).encode() for s in output["data"]], dtype=object)
            else:
                if offset + size > len(tail):
                    raise ValueError(
                        f"output {output['name']!r} claims {size} bytes; {len(tail) - offset} left"
                    )
                array = np.array(bytes_elements(tail[offset : offset + size]), dtype=object)
                offset += size
            outputs[output["name"]] = array.reshape(shape)
            continue
        dtype = np.dtype(V2_DTYPES[output["datatype"]])
        if size is None:
            array = np.asarray(output["data"], dtype=dtype)
        else:
            if offset + size > len(tail):
                raise ValueError(f"output {output['name']!r} claims {size} bytes; {len(tail) - offset} left")
            array = np.frombuffer(tail, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        outputs[output["name"]] = array.reshape(shape)
    if offset != len(tail):
        raise ValueError(f"{len(tail) - offset} bytes of binary output belong to no output")
    return answer, outputs


# --- the pools ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecasterLimits:
    """What the forecaster accepts, from its metadata (``GET /v2/models/forecaster``)."""

    min_length: int = 104
    max_length: int = 1040
    horizon: int = 52

    @classmethod
    def from_metadata(cls, metadata: dict) -> ForecasterLimits:
        serving = metadata.get("parameters", {})
        horizon = metadata["outputs"][0]["shape"][-1]
        return cls(int(serving["min_length"]), int(serving["max_length"]), int(horizon))


@dataclass
class Pools:
    """Every input the simulated clients send, with its JSON fragment where one is needed."""

    digits: np.ndarray  # (DIGIT_POOL, 8, 8) on 0..16
    digit_json: list[bytes]
    pictures: list[tuple[bytes, str]]  # multipart body, Content-Type
    histories: list[np.ndarray]  # float64 rows rounded to 0.01 ppm
    history_json: list[bytes]
    limits: ForecasterLimits
    latents: list[np.ndarray] = field(default_factory=list)  # (n, L) float32, with labels below
    latent_labels: list[np.ndarray] = field(default_factory=list)  # (n,) int64

    def classify_body(self, indices: list[int]) -> bytes:
        return b'{"images":[' + b",".join(self.digit_json[i] for i in indices) + b"]}"

    def forecast_body(self, indices: list[int]) -> bytes:
        return b'{"series":[' + b",".join(self.history_json[i] for i in indices) + b"]}"

    def images_tensor(self, indices: list[int]) -> Tensor:
        return Tensor("images", "FP32", self.digits[indices][:, None].astype(np.float32))

    def history_tensors(self, indices: list[int]) -> list[Tensor]:
        """Rows right-padded with zeros to the longest, and their true lengths."""
        rows = [self.histories[i] for i in indices]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        padded = np.zeros((len(rows), int(lengths.max())), dtype=np.float32)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = row
        return [Tensor("history", "FP32", padded), Tensor("lengths", "INT64", lengths)]

    def generator_tensors(self, index: int) -> list[Tensor]:
        return [
            Tensor("latent", "FP32", self.latents[index]),
            Tensor("labels", "INT64", self.latent_labels[index]),
        ]


@cache
def pools(limits: ForecasterLimits, latent_dim: int) -> Pools:
    """The process's pools, drawn once from seed 0 (so every run sends the same inputs)."""
    rng = np.random.default_rng(0)
    digits = np.stack([draw_digit(i % 10, rng) for i in range(DIGIT_POOL)])
    sides = rng.choice([16, 28, 64, 200], size=PICTURE_POOL)
    pictures = [
        multipart("image", f"digit-{i}.png", "image/png", picture_of(digits[i], int(side)))
        for i, side in enumerate(sides)
    ]
    lengths = history_lengths(HISTORY_POOL, limits.min_length, limits.max_length, rng)
    histories = [co2_history(int(n), rng) for n in lengths]
    counts = rng.integers(1, 5, size=LATENT_POOL)
    return Pools(
        digits=digits,
        digit_json=[orjson.dumps(d.astype(np.int64), option=orjson.OPT_SERIALIZE_NUMPY) for d in digits],
        pictures=pictures,
        histories=histories,
        history_json=[orjson.dumps(h, option=orjson.OPT_SERIALIZE_NUMPY) for h in histories],
        limits=limits,
        latents=[rng.standard_normal((int(n), latent_dim), dtype=np.float32) for n in counts],
        latent_labels=[rng.integers(0, 10, size=int(n)).astype(np.int64) for n in counts],
    )
