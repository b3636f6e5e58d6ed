"""``python -m training train classifier|forecaster|generator|all [options]``.

Options: ``--epochs N``, ``--seed S``, ``--out DIR`` and ``--dry-run``.

Each trainer module exposes ``train(options) -> TrainedModel``; this file only parses
arguments, runs them in dependency order (the generator is judged by the classifier,
so ``all`` trains the classifier first) and publishes each result.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
import time
from pathlib import Path

from training.export import export_and_publish
from training.options import TrainOptions

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
    train.add_argument("--dry-run", action="store_true", help="a quick smoke run (CI)")
    return parser


def options_from_args(args: argparse.Namespace, workdir: Path) -> TrainOptions:
    """The options one trainer receives, from the parsed ``train`` command line."""
    return TrainOptions(
        seed=args.seed, epochs=args.epochs, dry_run=args.dry_run, store=args.out, workdir=workdir
    )


def main(argv: list[str] | None = None) -> int:
    """Train, export and publish each model asked for, one after the other; 0 on success."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = list(TRAINERS) if args.model == "all" else [args.model]
    started = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory() as workdir:
            options = options_from_args(args, Path(workdir))
            t0 = time.perf_counter()
            trained = importlib.import_module(TRAINERS[name]).train(options)
            trained.training.setdefault("train_seconds", round(time.perf_counter() - t0, 1))
            manifest = export_and_publish(trained, args.out)
        log.info("published %s/%s: %s", manifest.name, manifest.version, manifest.metrics)
    log.info("done in %.1f s", time.perf_counter() - started)
    return 0
