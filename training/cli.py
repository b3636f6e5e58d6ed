"""``python -m training train classifier|forecaster|generator|all [options]``.

Options: ``--epochs N``, ``--seed S``, ``--out DIR``, ``--dry-run`` and ``--force``.
``python -m training export-fp16 <model|all> [--from-version N] [--out DIR] [--force]`` converts a
published fp32 version to an fp16 variant without retraining (see ``training/fp16.py``).

Each trainer module exposes ``train(options) -> TrainedModel``; this file only parses
arguments, runs them in dependency order (the generator is judged by the classifier,
so ``all`` trains the classifier first), publishes each result with its quality verdict and
prints that verdict. Exit status: 0 when every model was published as servable (``passed``
or ``forced``), ``EXIT_REJECTED`` (3) when at least one missed its bar and was kept as a
rejected candidate, 1 on an error, 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
import time
from pathlib import Path

from store_format import Manifest
from training.export import export_and_publish
from training.fp16 import export_fp16
from training.options import TrainOptions

EXIT_REJECTED = 3  # a model missed its quality bar: written to the store, but never served

# Order matters for "all": the generator's evaluation reads the newest classifier in --out.
TRAINERS = {
    "classifier": "training.train_classifier",
    "forecaster": "training.train_forecaster",
    "generator": "training.train_generator",
}

log = logging.getLogger("training")


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` command and its options."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate, export and publish models")
    train.add_argument("model", choices=[*TRAINERS, "all"])
    train.add_argument("--epochs", type=int, default=None, help="override the trainer's default")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("model_store"), help="model store to publish to")
    train.add_argument(
        "--dry-run", action="store_true", help="a quick smoke run (CI); it misses the quality bars"
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="publish a model that misses its quality bar as servable anyway (verdict 'forced')",
    )
    fp16 = commands.add_parser(
        "export-fp16",
        help="publish an fp16 variant of a published fp32 version (parity-checked, re-evaluated, gated)",
    )
    fp16.add_argument("model", choices=[*TRAINERS, "all"])
    fp16.add_argument(
        "--from-version",
        type=int,
        default=None,
        help="the fp32 version to convert (one model only); default: its highest servable fp32 version",
    )
    fp16.add_argument(
        "--out", type=Path, default=Path("model_store"), help="model store to read and publish to"
    )
    fp16.add_argument(
        "--force",
        action="store_true",
        help="publish a variant that misses its quality bar as servable anyway (verdict 'forced')",
    )
    return parser


def options_from_args(args: argparse.Namespace, workdir: Path) -> TrainOptions:
    """The options one trainer receives, from the parsed ``train`` command line."""
    return TrainOptions(
        seed=args.seed, epochs=args.epochs, dry_run=args.dry_run, store=args.out, workdir=workdir
    )


def verdict_block(manifest: Manifest, version_dir: Path) -> str:
    """The gate's verdict for people: each check (metric, value, bar, ok/MISSED), then the outcome."""
    gate = manifest.gate
    precision = f" ({manifest.precision}, from v{manifest.derived_from})" if manifest.derived_from else ""
    lines = [f"quality gate: {manifest.name}/{manifest.version}{precision}"]
    lines += [f"  {check.describe(manifest.metrics)}" for check in gate.checks]
    outcome = {
        "passed": "PUBLISHED as servable",
        "rejected": f"REJECTED: not served, kept at {version_dir} for inspection",
        "forced": "FORCED: missed its bar, published as servable because of --force",
    }[gate.verdict]
    lines.append(f"  -> {outcome}")
    return "\n".join(lines)


def train_and_publish(args: argparse.Namespace, name: str) -> Manifest:
    """Train one model as the ``train`` command line asks, then export and publish it."""
    with tempfile.TemporaryDirectory() as workdir:
        options = options_from_args(args, Path(workdir))
        t0 = time.perf_counter()
        trained = importlib.import_module(TRAINERS[name]).train(options)
        trained.training.setdefault("train_seconds", round(time.perf_counter() - t0, 1))
        return export_and_publish(trained, args.out, force=args.force)


def main(argv: list[str] | None = None) -> int:
    """Train, export and publish each model asked for, one after the other.

    Returns 0 when every model is servable, ``EXIT_REJECTED`` when one or more were rejected.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export-fp16" and args.model == "all" and args.from_version is not None:
        parser.error("--from-version names one model's version: give a model, not 'all'")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = list(TRAINERS) if args.model == "all" else [args.model]
    started = time.perf_counter()
    rejected = []
    for name in names:
        if args.command == "export-fp16":
            manifest = export_fp16(args.out, name, from_version=args.from_version, force=args.force)
        else:
            manifest = train_and_publish(args, name)
        log.info("published %s/%s: %s", manifest.name, manifest.version, manifest.metrics)
        print(verdict_block(manifest, args.out / manifest.name / str(manifest.version)), flush=True)
        if not manifest.servable:
            rejected.append(f"{manifest.name}/{manifest.version}")
    log.info("done in %.1f s", time.perf_counter() - started)
    if rejected:
        print(f"rejected by the quality gate: {', '.join(rejected)} (exit status {EXIT_REJECTED})")
        return EXIT_REJECTED
    return 0
