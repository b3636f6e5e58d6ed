"""One pipeline per kind of model: everything a model's routes need, behind one call.

An *item* is one image, one history row or one sample to generate. A task route reads its
request body (a ``service.inference.schemas`` object) and awaits :meth:`Pipeline.answer`; a V2
``infer`` route decodes its tensors and awaits :meth:`Pipeline.answer_tensors`. Either way
the pipeline turns the request into items (checking what only the loaded model knows), the
model's :class:`~service.inference.batcher.Batcher` merges the items of concurrent requests into one
:meth:`~Pipeline.run_batch` call, and the pipeline turns the request's own results back
into its answer.

:class:`Pipeline` declares that contract as abstract methods. A new kind of model is one
subclass here, its task's line in :data:`PIPELINES`, and its route's line in
``service.api.routes``. A model a user imports (task ``tensor``) needs none of that: the
generic :class:`~service.inference.tensor_pipeline.TensorPipeline` serves it over V2 alone.
"""

from __future__ import annotations

import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

from service.inference.batcher import Batcher, BatcherClosed, BatchStats, QueueFull, QueueTimeout
from service.inference.images import png_from_digit
from service.inference.metrics import ModelMetrics
from service.inference.runtime import LoadedModel
from service.inference.schemas import ClassifyRequest, ForecastRequest, GenerateRequest, UploadedDigit
from service.platform.errors import ApiError, InvalidInput, PayloadTooLarge, Unavailable
from service.platform.settings import BatchPolicy, Settings, cpu_budget

log = logging.getLogger(__name__)

Body = TypeVar("Body")  # what a task route's body reader gives (see service.api.routes)
Item = TypeVar("Item")
Result = TypeVar("Result")


def check_limit(field: str, count: int, unit: str, limit: int, setting: str) -> None:
    """413 naming ``field`` when a request holds more than ``limit`` ``unit`` (set by ``setting``)."""
    if count > limit:
        raise PayloadTooLarge(
            f"{field}: {count} {unit} is more than the limit of {limit} per request ({setting})",
            {"field": field, "limit": limit},
        )


class Pipeline(ABC, Generic[Body, Item, Result]):
    """A loaded model, its batcher and its metrics, and the contract its routes rely on."""

    # Whether ONNX Runtime runs off the event loop unless the settings say otherwise: worth
    # a thread hand-off only when a batch takes long enough to hold up other requests.
    run_in_thread_by_default = False
    # Whether axis 0 of every V2 input is the batch (its inputs must then agree on its size).
    batched = True

    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.metrics = ModelMetrics(model.name, model.version)
        policy = self.batch_policy(model, settings)
        in_thread = self.run_in_thread_by_default if policy.run_in_thread is None else policy.run_in_thread
        concurrency = (policy.max_concurrent_batches or cpu_budget().workers) if in_thread else 1
        self._executor = (
            ThreadPoolExecutor(concurrency, thread_name_prefix=f"ort-{model.name}") if in_thread else None
        )
        self.batcher: Batcher = Batcher(
            self.run_batch,
            max_batch_size=policy.max_batch_size,
            max_wait_s=policy.max_wait_ms / 1000 if settings.batching else 0.0,
            max_queue_size=policy.max_queue_size,
            queue_timeout_s=policy.queue_timeout_s,
            merge_requests=settings.batching,
            max_concurrent_batches=concurrency,
            executor=self._executor,
            on_batch=self._on_batch,
        )
        self.max_batch_size = policy.max_batch_size

    def batch_policy(self, model: LoadedModel, settings: Settings) -> BatchPolicy:
        """How this model's requests are batched: the settings' policy for it (by default)."""
        return settings.batch_policy(model.name, on_gpu=model.on_gpu)

    # --- the contract: each kind of model provides these -------------------------------------

    @abstractmethod
    def decode(self, body: Body) -> list[Item]:
        """Items from a task route's request body; raises an ApiError naming what is wrong."""

    @abstractmethod
    def items_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[Item]:
        """Items from V2 input tensors whose names, datatypes and shapes match the manifest."""

    @abstractmethod
    def run_batch(self, items: list[Item]) -> list[Result]:
        """One ONNX Runtime call over ``items`` (of any number of requests); one result each."""

    @abstractmethod
    def encode(self, body: Body, results: list[Result]) -> dict[str, Any]:
        """The response body for ``body`` from its results (NumPy arrays are serialised as is)."""

    @abstractmethod
    def tensors_from_results(self, results: list[Result]) -> dict[str, np.ndarray]:
        """V2 output tensors (by manifest name) from a request's results."""

    @abstractmethod
    def example_items(self, n: int) -> list[Item]:
        """``n`` valid items, for warm-up."""

    # --- shared --------------------------------------------------------------------------------

    def prepare(self, body: Body) -> Body:
        """``body`` with what the client may leave to the server filled in (default: as it is)."""
        return body

    async def answer(self, body: Body) -> dict[str, Any]:
        """A task route's response body for ``body``, its items batched with other requests'."""
        body = self.prepare(body)
        return self.encode(body, await self.infer(self.decode(body)))

    async def answer_tensors(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A V2 request's output tensors for its input tensors, batched like :meth:`answer`."""
        return self.tensors_from_results(await self.infer(self.items_from_tensors(tensors)))

    async def infer(self, items: list[Item]) -> list[Result]:
        """Results for ``items``, batched with other requests' items for this model."""
        try:
            results = await self.batcher.submit(items)
        except QueueFull as exc:
            raise self._overloaded(exc) from None
        except (QueueTimeout, BatcherClosed) as exc:
            # Counted with the route's other errors, by failed(): once.
            raise Unavailable(f"{self.model.name}: {exc}", {"model": self.model.name}) from None
        self.metrics.request_done()
        return results

    def overloaded(self) -> Unavailable | None:
        """The 503 for a request arriving now, before it is read, if the model's queue cannot
        take it in time (``Batcher.refusal``); None if it may come in."""
        full = self.batcher.refusal()
        return None if full is None else self._overloaded(full)

    def _overloaded(self, full: QueueFull) -> Unavailable:
        self.metrics.rejected()
        return Unavailable(
            f"{self.model.name} is overloaded: {full}; retry later",
            {"model": self.model.name, "retry_after_s": full.retry_after_s},
            retry_after_s=full.retry_after_s,
        )

    def failed(self, exc: Exception, path: str) -> ApiError:
        """Count a request to ``path`` that raised ``exc`` in this model's metrics; the answer.

        An :class:`ApiError` is answered as it is; anything else is a bug, not the client's
        fault: it is logged and answered 500.
        """
        if isinstance(exc, ApiError):
            self.metrics.error(exc.status)
            return exc
        log.exception("%s failed on %s", self.model.name, path, exc_info=exc)
        self.metrics.error(500)
        return ApiError("internal server error", {"model": self.model.name}, status=500)

    def check_item_count(self, n: int, field: str) -> None:
        limit = self.settings.max_items_per_request
        check_limit(field, n, "items", limit, "MODELSERVE_MAX_ITEMS_PER_REQUEST")

    def warmup(self) -> list[int]:
        """Run every batch size a power of two apart up to the maximum; returns the sizes."""
        sizes = sorted({*(2**k for k in range(self.max_batch_size.bit_length())), self.max_batch_size})
        for n in sizes:
            results = self.run_batch(self.example_items(n))
            if len(results) != n:
                raise RuntimeError(f"warm-up at batch {n} gave {len(results)} results")
        return sizes

    async def close(self) -> None:
        """At shutdown: running batches finish, queued requests are answered 503."""
        await self.batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_done(stats, self.batcher.queued_items)


class ClassifierPipeline(Pipeline[ClassifyRequest | UploadedDigit, np.ndarray, np.ndarray]):
    """Items: (1, 8, 8) float32 images on the 0..16 scale. Results: (10,) probabilities.

    Bodies: a list of images (/classify), or one uploaded picture (/classify_image).
    """

    def decode(self, body: ClassifyRequest | UploadedDigit) -> list[np.ndarray]:
        if isinstance(body, UploadedDigit):
            return [np.asarray(body.pixels, dtype=np.float32).reshape(1, 8, 8)]
        self.check_item_count(len(body.images), "images")
        return [np.asarray(image, dtype=np.float32).reshape(1, 8, 8) for image in body.images]

    def run_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        batch = np.stack(items)  # (B, 1, 8, 8)
        probabilities = self.model.run({"images": batch})["probabilities"]  # (B, 10)
        return list(probabilities)

    def encode(self, body: ClassifyRequest | UploadedDigit, results: list[np.ndarray]) -> dict[str, Any]:
        if isinstance(body, UploadedDigit):
            [probabilities] = results
            return {"label": int(probabilities.argmax()), "probabilities": probabilities}
        stacked = np.stack(results)  # (n, 10)
        return {"labels": stacked.argmax(axis=1), "probabilities": stacked}

    def example_items(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        return list(rng.uniform(0, 16, size=(n, 1, 8, 8)).astype(np.float32))

    def items_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = tensors["images"]  # (n, 1, 8, 8)
        self.check_item_count(len(images), "images")
        bad = ~((images >= 0) & (images <= 16))  # NaN fails both comparisons
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInput(f"images{list(where)} is outside 0..16", {"tensor": "images", "index": where})
        return list(images)

    def tensors_from_results(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"probabilities": np.stack(results)}


class ForecasterPipeline(Pipeline[ForecastRequest, np.ndarray, np.ndarray]):
    """Items: 1-D float32 histories, cut to the model's window. Results: (H,) forecasts.

    A history of at least ``min_length`` weeks is accepted at any length the request limits
    allow; the model reads only its most recent ``window`` weeks (the manifest's ``serving``
    hint, chosen on validation weeks: a longer history does not forecast better), so a longer
    row is answered exactly as its last ``window`` weeks would be. Rows are right-padded to the
    longest row of their batch; the model ignores padding (each row's answer equals its answer
    alone), so batch mates never change a forecast.
    """

    run_in_thread_by_default = True  # a recurrent pass over hundreds of steps: milliseconds

    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        super().__init__(model, settings)
        serving = model.manifest.serving
        self.min_length = int(serving.get("min_length", 1))
        # Manifests older than the window hint: the longest history they recommend.
        self.window = int(serving.get("window", serving.get("max_length", 4096)))
        # 0: no limit per row beyond the request's total (MODELSERVE_MAX_SERIES_POINTS_PER_REQUEST)
        self.max_length = settings.max_series_length
        self.horizon = model.manifest.outputs[0].shape[-1]

    def decode(self, body: ForecastRequest) -> list[np.ndarray]:
        self.check_item_count(len(body.series), "series")
        rows = [np.asarray(values, dtype=np.float32) for values in body.series]
        return self.checked_rows(rows, "series", lambda i: {"field": f"series[{i}]"})

    def items_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
        history, lengths = tensors["history"], tensors["lengths"]  # (n, T), (n,)
        self.check_item_count(len(history), "history")
        if len(lengths) != len(history):
            raise InvalidInput(
                f"lengths has {len(lengths)} rows but history has {len(history)}", {"tensor": "lengths"}
            )
        width = history.shape[1]
        for i, length in enumerate(lengths.tolist()):
            if not 0 <= length <= width:
                raise InvalidInput(
                    f"lengths[{i}] = {length}; history rows have {width} values",
                    {"tensor": "lengths", "index": i},
                )
        rows = [history[i, :length] for i, length in enumerate(lengths.tolist())]
        return self.checked_rows(rows, "history", lambda i: {"tensor": "history", "index": i})

    def checked_rows(
        self, rows: list[np.ndarray], field: str, place: Callable[[int], dict[str, Any]]
    ) -> list[np.ndarray]:
        """The forecaster's checks on history rows, whether they came as JSON or as tensors;
        each row cut to its last ``window`` values.

        ``place(i)`` says where row ``i`` is in the request, for the error's detail.
        """
        limit = self.settings.max_series_points_per_request
        points = sum(map(len, rows))
        check_limit(field, points, "values over all rows", limit, "MODELSERVE_MAX_SERIES_POINTS_PER_REQUEST")
        for i, row in enumerate(rows):
            if len(row) < self.min_length or (self.max_length and len(row) > self.max_length):
                longest = self.max_length or "any number of"
                raise InvalidInput(
                    f"{field}[{i}] has {len(row)} values; the forecaster takes {self.min_length} to "
                    f"{longest} values (it reads the last {self.window})",
                    {
                        **place(i),
                        "min_length": self.min_length,
                        "max_length": self.max_length or None,
                        "window": self.window,
                    },
                )
            if not np.isfinite(row).all():  # JSON numbers beyond float32, or NaN/inf tensors
                raise InvalidInput(
                    f"{field}[{i}] has a value that is NaN, infinite or too large for float32", place(i)
                )
        return [row[-self.window :] for row in rows]

    def run_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        lengths = np.fromiter((len(row) for row in items), dtype=np.int64, count=len(items))
        history = np.zeros((len(items), int(lengths.max())), dtype=np.float32)  # (B, T)
        for i, row in enumerate(items):
            history[i, : len(row)] = row
        self.metrics.padded_fraction(1.0 - lengths.sum() / history.size)
        forecast = self.model.run({"history": history, "lengths": lengths})["forecast"]  # (B, H)
        return list(forecast)

    def encode(self, body: ForecastRequest, results: list[np.ndarray]) -> dict[str, Any]:
        return {"forecasts": np.stack(results)}

    def example_items(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        lengths = rng.integers(self.min_length, min(self.window, 520) + 1, size=n)
        return [(350 + rng.standard_normal(int(t))).astype(np.float32) for t in lengths]

    def tensors_from_results(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"forecast": np.stack(results)}


class GeneratorPipeline(Pipeline[GenerateRequest, tuple[np.ndarray, int], np.ndarray]):
    """Items: (latent (L,) float32, label int). Results: (1, 8, 8) images on 0..16.

    Noise comes from each request's own seed, so an image never depends on its batch mates,
    and the same labels and seed always give the same images.
    """

    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        super().__init__(model, settings)
        self.latent_dim = model.manifest.input("latent").shape[-1]
        # The graph's last layer scales a tanh onto the declared range, and float rounding
        # lands some pixels just outside it (-9.5e-7); clipped here, every image is one that
        # /classify accepts.
        low, high = model.manifest.serving.get("value_range", (0, 16))
        self.value_range = (np.float32(low), np.float32(high))

    def prepare(self, body: GenerateRequest) -> GenerateRequest:
        if body.seed is None:  # the client left the seed to us; the answer reports the one drawn
            # Within the schema's range (JSON-safe integers), so the reported seed can be sent back.
            body = body.model_copy(update={"seed": secrets.randbelow(2**53)})
        return body

    def decode(self, body: GenerateRequest) -> list[tuple[np.ndarray, int]]:
        if body.seed is None:
            raise TypeError("GeneratorPipeline.decode needs a seed: answer() draws one with prepare()")
        self.check_item_count(len(body.labels), "labels")
        return self._items(body.labels, body.seed)

    def _items(self, labels: list[int], seed: int) -> list[tuple[np.ndarray, int]]:
        rng = np.random.default_rng(seed)
        latent = rng.standard_normal((len(labels), self.latent_dim), dtype=np.float32)  # (n, L)
        return list(zip(latent, labels, strict=True))

    def run_batch(self, items: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        latent = np.stack([z for z, _ in items])  # (B, L)
        labels = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
        images = self.model.run({"latent": latent, "labels": labels})["images"]  # (B, 1, 8, 8)
        return list(np.clip(images, *self.value_range, out=images))

    def encode(self, body: GenerateRequest, results: list[np.ndarray]) -> dict[str, Any]:
        if body.format == "png":
            images: list = [png_from_digit(image[0]) for image in results]
        else:
            images = [image[0] for image in results]  # (8, 8) arrays on 0..16
        return {"images": images, "seed": body.seed}

    def example_items(self, n: int) -> list[tuple[np.ndarray, int]]:
        return self._items([i % 10 for i in range(n)], seed=0)

    def items_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[tuple[np.ndarray, int]]:
        latent, labels = tensors["latent"], tensors["labels"]  # (n, L), (n,)
        self.check_item_count(len(latent), "latent")
        if len(labels) != len(latent):
            raise InvalidInput(
                f"labels has {len(labels)} rows but latent has {len(latent)}", {"tensor": "labels"}
            )
        if not np.isfinite(latent).all():
            raise InvalidInput("latent has a NaN or infinite value", {"tensor": "latent"})
        bad = np.flatnonzero((labels < 0) | (labels > 9))
        if bad.size:
            raise InvalidInput(
                f"labels[{bad[0]}] = {labels[bad[0]]} is not a digit 0..9",
                {"tensor": "labels", "index": int(bad[0])},
            )
        return list(zip(latent, labels.tolist(), strict=True))

    def tensors_from_results(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"images": np.stack(results)}


PIPELINES: dict[str, type[Pipeline]] = {
    "image-classification": ClassifierPipeline,
    "time-series-forecasting": ForecasterPipeline,
    "conditional-image-generation": GeneratorPipeline,
}
