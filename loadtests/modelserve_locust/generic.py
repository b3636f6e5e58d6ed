"""V2 workloads for any served model (``--v2-model NAME``): random valid inputs from its metadata.

``GET /v2/models/NAME`` lists each input's datatype and shape (``-1``: any size) and, for a
model imported with ``python -m store_format import``, its batch axis and the names of its
dynamic axes. A pool of requests is drawn once from a fixed seed:

- a model with a batch axis (``parameters.batch_axis`` 0, or a built-in model) gets 1 to
  ``--v2-rows`` rows per request, the same on every input;
- every other dynamic axis gets a size from ``--v2-dim-sizes``, one per axis name (inputs
  whose axes share a name, say ``height``, get the same size), else one per axis position;
- values: floats from a standard normal, integers 0 to 9 (valid indices for most lookups),
  booleans at random, strings of 1 to 8 lowercase letters.

Each answer is checked: every declared output, its declared datatype, a shape that fits the
declared one (with the request's rows on a batch axis), and the same values as the earlier
answer for the same pool entry (floats within the checks' tolerance, anything else exactly),
since an answer never depends on its batch mates.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import orjson

from .checks import ANSWER_TOLERANCE, WrongAnswer
from .payloads import V2_DTYPES

GENERIC_POOL = 64
DEFAULT_ROWS = 4
DEFAULT_DIM_SIZES = (1, 2, 4, 8)
_LETTERS = np.array(list(string.ascii_lowercase))


@dataclass(frozen=True)
class Entry:
    """One pool entry: its inputs, and its body as JSON and as the binary tensor extension."""

    inputs: dict[str, np.ndarray]
    rows: int | None  # rows on the batch axis; None without one
    json_body: bytes
    binary_body: bytes
    header_length: int


class GenericRequests:
    """The pool of requests for one model, and the checks of its answers."""

    def __init__(self, metadata: dict, rows: int = DEFAULT_ROWS, dim_sizes=DEFAULT_DIM_SIZES, seed: int = 0):
        self.name = metadata["name"]
        self.inputs = metadata["inputs"]
        self.outputs = metadata["outputs"]
        parameters = metadata.get("parameters", {})
        # Built-in models have no batch_axis parameter: their axis 0 is the batch.
        self.batched = parameters.get("batch_axis", 0) == 0
        self.dim_names: dict[str, list] = parameters.get("dim_names", {}) or {}
        unsupported = [t["name"] for t in self.inputs if t["datatype"] not in (*V2_DTYPES, "BYTES")]
        if unsupported:
            raise ValueError(f"{self.name}: inputs {unsupported} have datatypes this load test cannot draw")
        rng = np.random.default_rng(seed)
        self.entries = [self._draw(rng, rows, dim_sizes) for _ in range(GENERIC_POOL)]
        self._first: dict[int, dict[str, np.ndarray]] = {}

    def _draw(self, rng: np.random.Generator, max_rows: int, dim_sizes) -> Entry:
        n = int(rng.integers(1, max_rows + 1)) if self.batched else None
        sizes: dict[object, int] = {}
        inputs = {}
        for tensor in self.inputs:
            names = self.dim_names.get(tensor["name"], [None] * len(tensor["shape"]))
            shape = []
            for axis, size in enumerate(tensor["shape"]):
                if size != -1:
                    shape.append(size)
                elif self.batched and axis == 0:
                    shape.append(n)
                else:
                    key = names[axis] or axis
                    shape.append(sizes.setdefault(key, int(rng.choice(dim_sizes))))
            inputs[tensor["name"]] = _values(tensor["datatype"], tuple(shape), rng)
        return Entry(inputs, n, *_bodies(self.inputs, inputs))

    def check(self, index: int, outputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> None:
        """Raise WrongAnswer unless ``outputs`` are the declared ones, and agree with earlier answers."""
        entry = self.entries[index]
        for declared in self.outputs:
            name = declared["name"]
            if name not in outputs:
                raise WrongAnswer(f"the answer has no output {name!r}")
            if datatypes.get(name) != declared["datatype"]:
                raise WrongAnswer(f"output {name!r} is {datatypes.get(name)}, not {declared['datatype']}")
            shape, want = outputs[name].shape, declared["shape"]
            fits = len(shape) == len(want) and all(w in (-1, g) for w, g in zip(want, shape, strict=True))
            if not fits or (self.batched and entry.rows is not None and shape[0] != entry.rows):
                raise WrongAnswer(f"output {name!r} has a shape that does not fit {want}")
        first = self._first.setdefault(index, outputs)
        if first is outputs:
            return
        for name, array in outputs.items():
            if not _agree(first[name], array):
                raise WrongAnswer(
                    f"{self.name} output {name!r} differs from an earlier answer for the same input"
                )


def _values(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        lengths = rng.integers(1, 9, size=shape)
        return np.vectorize(lambda k: "".join(rng.choice(_LETTERS, k)), otypes=[object])(lengths)
    dtype = np.dtype(V2_DTYPES[datatype])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.integers(0, 10, size=shape).astype(dtype)


def _bodies(specs: list[dict], inputs: dict[str, np.ndarray]) -> tuple[bytes, bytes, int]:
    """The JSON body, the binary body (as tritonclient.http sends it) and its header's length."""
    json_inputs, binary_inputs, chunks = [], [], []
    for spec in specs:
        name, datatype = spec["name"], spec["datatype"]
        array = inputs[name]
        if datatype == "BYTES":
            data: list = [str(s) for s in array.ravel()]
            raw = b"".join(len(b).to_bytes(4, "little") + b for b in (s.encode() for s in data))
        else:
            data = array.ravel().tolist()
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        common = {"name": name, "shape": list(array.shape), "datatype": datatype}
        json_inputs.append({**common, "data": data})
        binary_inputs.append({**common, "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = orjson.dumps({"inputs": binary_inputs, "parameters": {"binary_data_output": True}})
    return orjson.dumps({"inputs": json_inputs}), header + b"".join(chunks), len(header)


def _agree(first: np.ndarray, answer: np.ndarray) -> bool:
    if first.shape != answer.shape:
        return False
    if first.dtype.kind == "f":
        # Relative beyond 1: an output of any magnitude may differ by float rounding across batches.
        difference = np.abs(first.astype(np.float64) - answer)
        return bool(np.all(difference <= ANSWER_TOLERANCE * np.maximum(1.0, np.abs(first))))
    return bool(np.array_equal(first, answer))


def datatypes_of(body: bytes | None, header_length: str | None) -> dict[str, str]:
    """Each output's datatype as the answer's JSON part names it."""
    header = (body or b"")[: int(header_length)] if header_length else (body or b"")
    return {output["name"]: output["datatype"] for output in orjson.loads(header)["outputs"]}
