"""fp16 variants of published fp32 models: convert, check parity, re-evaluate, publish.

``python -m training export-fp16 <model|all> [--from-version N] --out <store>`` reads a published
fp32 version, converts its graph to fp16 with ONNX Runtime's converter (weights and arithmetic in
fp16, inputs and outputs kept FP32 so the service and its clients see no difference), and
publishes it as the next version with ``precision: "fp16"`` and ``derived_from`` naming the
fp32 version. Nothing is retrained.

Nothing is published unless the fp16 graph matches the fp32 one in ONNX Runtime at every size
in ``PARITY_BATCHES``, within the model's tolerance in ``FP16_TOLERANCES``. Its quality gate is
then judged on its own metrics: the trainer's own evaluation runs again on the same held-out
data with the fp16 graph in place of the PyTorch module, against the same ``QUALITY_BAR``.
"""

from __future__ import annotations

import importlib
import logging
import platform
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from store_format import Gate, Manifest, ManifestError, latest_version, list_versions, load_verified, publish
from training.export import PARITY_BATCHES, ParityError, graph_opset, tensor_specs

log = logging.getLogger(__name__)

# Largest max abs difference between the fp16 and fp32 graphs allowed at publication, in each
# model's output unit, about 3-4x the differences measured on the committed models (fp16 keeps
# about 3 significant digits). Each bound is far below what a user of that output can notice.
FP16_TOLERANCES = {
    # probabilities (0..1): measured 1.4e-3 at batch 64; 5e-3 cannot move a confident argmax
    "classifier": 5e-3,
    # ppm (the series is ~370 ppm): measured 6.8e-3; 0.02 ppm is 5% of the model's 0.378 ppm MAE
    "forecaster": 0.02,
    # pixels on the 0..16 scale: measured 0.014; 0.05 is 1/320 of the range, invisible in a digit
    "generator": 0.05,
}
# Ops the converter leaves in fp32. ONNX Runtime's default list is enough for these three
# models: their softmaxes, normalisations and the forecaster's scaling stay within the
# tolerances above in fp16 (measured), so no model needs ops of its own kept in fp32.
OP_BLOCK_LIST: list[str] | None = None

TRAINERS = {
    "classifier": "training.train_classifier",
    "forecaster": "training.train_forecaster",
    "generator": "training.train_generator",
}


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session in the place of a trainer's PyTorch module.

    The trainers' evaluation functions call ``model.eval()`` and ``model(*tensors)``; this
    answers both, so they evaluate the graph that is published rather than the module.
    """

    def __init__(self, session: ort.InferenceSession, **attributes: Any) -> None:
        super().__init__()
        self.session = session
        self.input_names = [value.name for value in session.get_inputs()]
        for key, value in attributes.items():  # what an evaluation reads, e.g. ``config``
            setattr(self, key, value)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(self.input_names, tensors, strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


class LogProbabilities(OnnxModule):
    """The classifier's graph (which ends in a softmax) as the logits its trainer evaluates.

    Log-probabilities have the same argmax as the logits, and cross-entropy over them is the
    same loss (log-softmax of log-probabilities that sum to 1 changes nothing).
    """

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return super().forward(*tensors).clamp_min(1e-30).log()


def cpu_session(model: bytes | str, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on ``threads`` threads (evaluations are small; the machine is shared)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def convert(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 graph of ``proto``: fp16 weights and arithmetic, FP32 inputs and outputs."""
    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=OP_BLOCK_LIST)
    sort_nodes(half.graph)
    onnx.checker.check_model(half, full_check=True)
    return half


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in dependency order, in place, keeping the given order where it is one.

    The converter appends the casts of FP32 inputs at the end of the node list; ONNX Runtime
    would sort them itself, but the ONNX standard (and ``onnx.checker``) requires sorted nodes.
    """
    available = {""} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ParityError(f"the fp16 graph has a cycle or a missing input among {len(pending)} nodes")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if node not in ready]
    nodes = [onnx.NodeProto.FromString(node.SerializeToString()) for node in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


# --- parity ---------------------------------------------------------------------------------


def example_inputs(fp32: Manifest) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """batch -> the inputs the trainer checked its own export with, for the fp16 parity check."""
    trainer = importlib.import_module(TRAINERS[fp32.name])
    if fp32.name == "classifier":
        return lambda batch: (trainer.example_images(batch),)
    if fp32.name == "generator":
        return lambda batch: trainer.example_inputs(batch, fp32.serving["latent_dim"])
    _, y, _ = trainer.load_series()
    config = trainer.ForecasterConfig(min_length=fp32.serving["min_length"])
    return trainer.make_example_inputs(y, config, fp32.training["seed"])


def check_fp16_parity(
    fp32: Manifest, full: ort.InferenceSession, half: ort.InferenceSession, tolerance: float
) -> float:
    """Max abs difference of the fp16 graph from the fp32 one over ``PARITY_BATCHES``.

    Raises :class:`ParityError` past ``tolerance``, or when an output's shape or dtype differs.
    """
    inputs_for = example_inputs(fp32)
    names = [spec.name for spec in fp32.inputs]
    worst = 0.0
    for batch in PARITY_BATCHES:
        feeds = {name: t.numpy() for name, t in zip(names, inputs_for(batch), strict=True)}
        for spec, want, got in zip(fp32.outputs, full.run(None, feeds), half.run(None, feeds), strict=True):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise ParityError(
                    f"{fp32.name}.{spec.name} at batch {batch}: fp16 gives {got.dtype}{got.shape}, "
                    f"fp32 {want.dtype}{want.shape}"
                )
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            worst = max(worst, diff)
            if not diff <= tolerance:  # NaN fails too
                raise ParityError(
                    f"{fp32.name}.{spec.name} at batch {batch}: fp16 differs from fp32 by {diff:.2e} "
                    f"> {tolerance}"
                )
    return worst


# --- quality, re-evaluated with the fp16 graph ------------------------------------------------


def classifier_metrics(session: ort.InferenceSession, fp32: Manifest, store: Path) -> dict[str, Any]:
    """The classifier trainer's held-out metrics on the same split, from ``session``."""
    trainer = importlib.import_module(TRAINERS["classifier"])
    data = trainer.load_split(fp32.dataset["test_fraction"], fp32.dataset["split_seed"])
    metrics, _, _ = trainer.held_out_metrics(LogProbabilities(session), data, len(fp32.labels))
    metrics["n_parameters"] = fp32.metrics.get("n_parameters")  # the graph has none torch can count
    return metrics


def forecaster_metrics(session: ort.InferenceSession, fp32: Manifest, store: Path) -> dict[str, Any]:
    """The forecaster trainer's held-out metrics (MAE, every baseline ratio), from ``session``.

    The training-time figures among them (best epoch, last training loss, probe losses) and the
    history window are the fp32 version's: the fp16 variant was not trained, nor its window chosen.
    """
    trainer = importlib.import_module(TRAINERS["forecaster"])
    _, y, _ = trainer.load_series()
    serving = fp32.serving
    config = SimpleNamespace(
        horizon=serving["horizon"], min_length=serving["min_length"], max_length=serving["max_length"]
    )
    curves = {trainer.TRAIN_LOSS: [fp32.metrics.get("train_loss_last_epoch", float("nan"))]}
    summary = {
        "best_epoch": fp32.metrics.get("best_epoch"),
        "probe_start": fp32.metrics.get("probe_loss_start", float("nan")),
        "probe_end": fp32.metrics.get("probe_loss_end", float("nan")),
    }
    module = OnnxModule(session, config=config)
    window = serving.get("window", serving["max_length"])  # versions before the window: max_length
    return trainer.held_out_metrics(module, y, trainer.ForecasterTrainConfig(), curves, summary, window, {})


def generator_metrics(session: ort.InferenceSession, fp32: Manifest, store: Path) -> dict[str, Any]:
    """The generator trainer's sample metrics on the same fixed latents, judged by the fp32 classifier.

    The final GAN losses among them are the fp32 version's: the fp16 variant was not trained.
    """
    trainer = importlib.import_module(TRAINERS["generator"])
    # the classifier version that judged the fp32 version, so that the two are compared by one
    # judge (a later classifier recognises the same samples differently); else the served one
    judged_by = fp32.training.get("judge_classifier_version")
    if judged_by is not None and judged_by in list_versions(store, "classifier"):
        judge = trainer.ClassifierJudge(*load_verified(store, "classifier", judged_by))
    else:
        judge = trainer.ClassifierJudge(*trainer.find_classifier(store))
    n_classes = fp32.serving["num_classes"]
    config = SimpleNamespace(n_classes=n_classes, latent_dim=fp32.serving["latent_dim"])
    latent, labels = trainer.evaluation_inputs(trainer.GeneratorTrainConfig(), config)
    module = OnnxModule(session, generator=SimpleNamespace(config=config))
    result = trainer.evaluate(module, judge, latent, labels)
    history = {
        "D loss": [fp32.metrics.get("final_d_loss", float("nan"))],
        "G loss": [fp32.metrics.get("final_g_loss", float("nan"))],
    }
    return trainer.sample_metrics(result, labels, trainer.load_real(), history, judge, n_classes)


EVALUATIONS = {
    "classifier": classifier_metrics,
    "forecaster": forecaster_metrics,
    "generator": generator_metrics,
}


# --- the whole step -------------------------------------------------------------------------


def source_version(store: Path, name: str, version: int | None) -> tuple[Manifest, Path]:
    """The fp32 version to convert (the highest servable one unless given), verified."""
    if version is None:
        version = latest_version(store, name, precision="fp32")
    manifest, path = load_verified(store, name, version)
    if manifest.precision != "fp32":
        raise ManifestError(
            f"{name}/{version} is {manifest.precision}: an fp16 variant is converted from an fp32 version"
        )
    return manifest, path


def export_fp16(
    store: Path,
    name: str,
    from_version: int | None = None,
    force: bool = False,
    tolerance: float | None = None,
) -> Manifest:
    """Convert ``name``'s fp32 version to fp16, check parity, re-evaluate, publish; returns the manifest.

    ``tolerance`` overrides the model's entry in ``FP16_TOLERANCES``. Like a trained version, the
    variant is published whatever its quality verdict (``rejected`` ones are never served).
    """
    fp32, fp32_path = source_version(store, name, from_version)
    tolerance = FP16_TOLERANCES[name] if tolerance is None else tolerance
    half_proto = convert(onnx.load(str(fp32_path)))
    half_bytes = half_proto.SerializeToString()
    half = cpu_session(half_bytes)
    max_diff = check_fp16_parity(fp32, cpu_session(str(fp32_path)), half, tolerance)
    log.info("%s: fp16 matches fp32 v%d (max abs diff %.2e <= %g)", name, fp32.version, max_diff, tolerance)
    metrics = {
        **EVALUATIONS[name](half, fp32, Path(store)),
        "fp16_parity_max_abs_diff": max_diff,
        "fp16_parity_tolerance": tolerance,
    }
    quality_bar = importlib.import_module(TRAINERS[name]).QUALITY_BAR
    training = {
        **fp32.training,
        "fp16_conversion": {
            "from_version": fp32.version,
            "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
            "keep_io_types": True,
            "op_block_list": "onnxruntime default" if OP_BLOCK_LIST is None else OP_BLOCK_LIST,
            "parity_batches": list(PARITY_BATCHES),
        },
    }
    fields = {
        "name": name,
        "task": fp32.task,
        "inputs": tensor_specs(half_proto.graph.input),
        "outputs": tensor_specs(half_proto.graph.output),
        "opset": graph_opset(half_proto),
        "metrics": metrics,
        "training": training,
        "dataset": fp32.dataset,
        "labels": fp32.labels,
        "serving": fp32.serving,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "producer": {
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "gate": Gate.evaluate(quality_bar, metrics, force),
        "precision": "fp16",
        "derived_from": fp32.version,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(half_bytes)
        return publish(store, fields, path)
