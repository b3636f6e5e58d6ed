"""The generic pipeline: a model imported with ``python -m store_format import`` (task ``tensor``).

V2 input tensors go to the graph's inputs as they are, and its outputs come back by name; there
is no pre- or post-processing and no task route. The V2 routes have already checked each tensor
against the manifest (name, datatype, shape); this pipeline adds what batching needs.

How requests are batched follows the manifest's serving block
(:class:`store_format.TensorServing`), as Triton does without ragged batching:

- **A batch axis (0).** An item is one row along axis 0 of a request, so the batcher merges
  the rows of concurrent requests (and splits a request larger than the largest batch) as it
  does for the built-in models. One batch may hold requests whose other dimensions differ
  (images of several sizes); :meth:`TensorPipeline.run_batch` runs each group of requests
  whose non-batch shapes all match as one ONNX Runtime call, concatenated along axis 0, and
  nothing is ever padded.
- **No batch axis** (an input of rank 0, a first axis that is static, or ``--batch-axis
  none``): an item is a whole request, the largest batch is 1, and each request is one
  ONNX Runtime call, through the same queue, limits and metrics.

An answer never depends on its batch mates: rows are only merged with rows of the same shape
(each row's computation is independent of the others for a model with a batch axis), and when
ONNX Runtime fails on a merged group, each request of the group is run again on its own, so
only a request that fails by itself is refused.
"""

from __future__ import annotations

import logging
from itertools import repeat
from typing import Any

import numpy as np

from service.inference.pipelines import Pipeline
from service.inference.runtime import NUMPY_DTYPES, LoadedModel
from service.platform.errors import InvalidInput
from service.platform.settings import BatchPolicy, Settings

log = logging.getLogger(__name__)

# Longest piece of ONNX Runtime's own message quoted to a client whose request it refused.
_MESSAGE_LIMIT = 300


class TensorRequest:
    """One request's input tensors (by input name), and what decides who it may share a run with.

    ``key`` is the shape of every input without its batch axis: two requests may be
    concatenated along axis 0 only when their keys are equal.
    """

    __slots__ = ("feeds", "key", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], batched: bool) -> None:
        self.feeds = feeds
        self.key = tuple(array.shape[1:] for array in feeds.values()) if batched else ()
        self.rows = next(iter(feeds.values())).shape[0] if batched else 1


class Refused:
    """The result of an item ONNX Runtime could not run: its request is answered 400."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


# A batched item: a request and one row of it. A result: the outputs of the run that held the
# row and the row's index in them, or Refused. An unbatched item is a whole TensorRequest, and
# its result the outputs of its own run (or Refused).
Row = tuple[TensorRequest, int]
RowResult = tuple[dict[str, np.ndarray], int] | Refused


class TensorPipeline(Pipeline[None, Any, Any]):
    """Serves a ``tensor`` model: V2 tensors in, V2 tensors out, batched when it has a batch axis."""

    # A user's model may take anything from microseconds to seconds per run: off the event
    # loop, so that a slow one never stops the worker from accepting and parsing requests
    # (MODELSERVE_BATCH_OVERRIDES' run_in_thread false runs it inline).
    run_in_thread_by_default = True

    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        super().__init__(model, settings)
        self.serving = model.manifest.tensor_serving()
        self.batched = self.serving.batched
        self.input_names = [spec.name for spec in self.serving.inputs]
        self.output_names = [spec.name for spec in self.serving.outputs]

    def batch_policy(self, model: LoadedModel, settings: Settings) -> BatchPolicy:
        """The settings' policy for this model, with the manifest's batch size and wait unless a
        per-model override (MODELSERVE_BATCH_OVERRIDES) sets them; 1 and 0 without a batch axis."""
        serving = model.manifest.tensor_serving()
        policy = settings.batch_policy(model.name, on_gpu=model.on_gpu)
        if not serving.batched:
            return policy.model_copy(update={"max_batch_size": 1, "max_wait_ms": 0.0})
        override = settings.batch_overrides.get(model.name)
        chosen = override.model_fields_set if override is not None else set()
        update = {
            key: value
            for key, value in (
                ("max_batch_size", serving.max_batch_size),
                ("max_wait_ms", serving.max_wait_ms),
            )
            if key not in chosen
        }
        return policy.model_copy(update=update)

    # --- requests ------------------------------------------------------------------------------

    def items_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        feeds = {name: tensors[name] for name in self.input_names}  # the graph's order
        for name, array in feeds.items():
            if array.size == 0:
                raise InvalidInput(
                    f"input {name!r} has the shape {list(array.shape)}, which holds no values",
                    {"tensor": name},
                )
        request = TensorRequest(feeds, self.batched)
        if not self.batched:
            return [request]
        self.check_item_count(request.rows, self.input_names[0])
        return list(zip(repeat(request), range(request.rows), strict=False))

    def tensors_from_results(self, results: list[Any]) -> dict[str, np.ndarray]:
        refused = next((result for result in results if isinstance(result, Refused)), None)
        if refused is not None:
            raise InvalidInput(refused.message, {"model": self.model.name})
        if not self.batched:
            [outputs] = results
            return outputs
        # A request's rows come back in order, in runs of consecutive rows of one ONNX Runtime
        # call (one run unless the request was split over batches or shared a group).
        pieces: list[list[Any]] = []  # [outputs, first row, last row + 1]
        for outputs, row in results:
            if pieces and pieces[-1][0] is outputs and pieces[-1][2] == row:
                pieces[-1][2] = row + 1
            else:
                pieces.append([outputs, row, row + 1])
        if len(pieces) == 1:
            outputs, start, stop = pieces[0]
            return {name: outputs[name][start:stop] for name in self.output_names}
        return {
            name: np.concatenate([outputs[name][start:stop] for outputs, start, stop in pieces])
            for name in self.output_names
        }

    # --- running -------------------------------------------------------------------------------

    def run_batch(self, items: list[Any]) -> list[Any]:
        if not self.batched:
            return [self._run(request.feeds) for request in items]
        # The batch as segments of consecutive rows of one request: (request, start, stop, the
        # segment's first position in items), grouped by the requests' non-batch shapes.
        groups: dict[tuple, list[tuple[TensorRequest, int, int, int]]] = {}
        position = 0
        while position < len(items):
            request, start = items[position]
            stop = start + 1
            while position + stop - start < len(items) and items[position + stop - start] == (request, stop):
                stop += 1
            groups.setdefault(request.key, []).append((request, start, stop, position))
            position += stop - start
        results: list[Any] = [None] * len(items)
        for segments in groups.values():
            outputs = self._run(self._feeds(segments))
            if isinstance(outputs, Refused) and len(segments) > 1:
                # Which request made ONNX Runtime fail? Each one alone: only those refused alone
                # are refused, and the others get the answer they would have got alone.
                for segment in segments:
                    self._place(results, [segment], self._run(self._feeds([segment])))
            else:
                self._place(results, segments, outputs)
        return results

    def _feeds(self, segments: list[tuple[TensorRequest, int, int, int]]) -> dict[str, np.ndarray]:
        if len(segments) == 1:
            request, start, stop, _ = segments[0]
            if start == 0 and stop == request.rows:
                return request.feeds
            return {name: array[start:stop] for name, array in request.feeds.items()}
        return {
            name: np.concatenate([request.feeds[name][start:stop] for request, start, stop, _ in segments])
            for name in self.input_names
        }

    def _place(
        self,
        results: list[Any],
        segments: list[tuple[TensorRequest, int, int, int]],
        outputs: dict[str, np.ndarray] | Refused,
    ) -> None:
        """Each segment's rows' results, at their positions in the batch."""
        rows = sum(stop - start for _, start, stop, _ in segments)
        if not isinstance(outputs, Refused):
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    # Not the client's fault: the manifest's batch axis is wrong for this graph.
                    raise RuntimeError(
                        f"{self.model.label}: output {name!r} has the shape {list(array.shape)} for a "
                        f"batch of {rows} rows, so its axis 0 is not the batch axis; import the model "
                        "with --batch-axis none"
                    )
        offset = 0
        for _, start, stop, position in segments:
            for k in range(stop - start):
                results[position + k] = outputs if isinstance(outputs, Refused) else (outputs, offset + k)
            offset += stop - start

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | Refused:
        """One ONNX Runtime call; Refused, with ONNX Runtime's reason, when it fails on these inputs.

        The inputs already have the names, datatypes and shapes the manifest declares, so what
        ONNX Runtime still refuses depends on the values or on how the sizes of dynamic axes fit
        together (two inputs whose lengths must match, an index out of range): the request's
        own fault, answered 400 with ONNX Runtime's words.
        """
        try:
            return self.model.run(feeds)
        except Exception as exc:  # ONNX Runtime's exception types derive from Exception only
            text = " ".join(str(exc).split())
            if len(text) > _MESSAGE_LIMIT:
                text = text[:_MESSAGE_LIMIT] + "..."
            log.info("%s: ONNX Runtime refused a request's inputs: %s", self.model.label, text)
            return Refused(f"ONNX Runtime cannot run {self.model.name} on these inputs: {text}")

    # --- warm-up -------------------------------------------------------------------------------

    def example_request(self, rows: int = 1) -> TensorRequest:
        """Inputs the manifest allows: every dynamic axis 1 (the batch axis ``rows``), zeros, "a"."""
        feeds = {}
        for spec in self.serving.inputs:
            shape = [1 if size == -1 else size for size in spec.shape]
            if self.batched:
                shape[0] = rows
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "a", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        return TensorRequest(feeds, self.batched)

    def example_items(self, n: int) -> list[Any]:
        if not self.batched:
            return [self.example_request() for _ in range(n)]
        request = self.example_request(n)
        return list(zip(repeat(request), range(n), strict=False))

    def warmup(self) -> list[int]:
        """Run every batch size a power of two apart up to the largest, on example inputs.

        The example sets every dynamic axis but the batch to 1, which a graph may refuse (a
        convolution wider than 1 over a dynamic height): the model is still served, since any
        request it refuses is answered 400 with the reason, and its first requests pay for
        what warm-up would have done. A graph with only static axes that fails here is broken.
        """
        guessed = any(
            size == -1
            for spec in self.serving.inputs
            for axis, size in enumerate(spec.shape)
            if axis or not self.batched
        )
        sizes = sorted({*(2**k for k in range(self.max_batch_size.bit_length())), self.max_batch_size})
        for n in sizes:
            results = self.run_batch(self.example_items(n))
            if len(results) != n:
                raise RuntimeError(f"warm-up at batch {n} gave {len(results)} results")
            refused = next((result for result in results if isinstance(result, Refused)), None)
            if refused is None:
                continue
            if not guessed:
                raise RuntimeError(refused.message)
            log.warning(
                "%s: warm-up on example inputs (every dynamic axis 1) failed, so the model is served "
                "without it: %s",
                self.model.label,
                refused.message,
            )
            return []
        return sizes

    # --- no task route ---------------------------------------------------------------------------

    def decode(self, body: None) -> list[Any]:
        raise NotImplementedError(f"{self.model.name} is served over the V2 routes only")

    def encode(self, body: None, results: list[Any]) -> dict[str, Any]:
        raise NotImplementedError(f"{self.model.name} is served over the V2 routes only")
