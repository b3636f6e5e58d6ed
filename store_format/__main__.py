"""``python -m store_format import PATH.onnx --name NAME``: publish a user's ONNX model to the store.

See docs/model-store.md, "Importing your own model". Exit status: 0 published, 1 refused
(nothing published; the message names the tensor or check and why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_REFUSED = 1


def _batch_axis(text: str) -> int | str | None:
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an axis number or 'none', got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m store_format", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser(
        "import",
        help="publish an ONNX file as the next version of a model (task 'tensor')",
        description="Check an ONNX file, read its inputs and outputs, and publish it to the model store as "
        "the next version of NAME, served by the generic tensor pipeline. A model that cannot be served "
        "is refused, naming the tensor, and nothing is published.",
    )
    cmd.add_argument("path", type=Path, help="the .onnx file")
    cmd.add_argument("--name", required=True, help="model name in the store: [a-z][a-z0-9_-]*")
    cmd.add_argument(
        "--store",
        type=Path,
        help="the model store (default: $MODELSERVE_MODEL_STORE, else model_store/, as the service reads)",
    )
    cmd.add_argument(
        "--batch-axis",
        type=_batch_axis,
        default="auto",
        metavar="0|none|auto",
        help="the axis requests are concatenated along, or none to run each request on its own "
        "(default: inferred, 0 when every input and output has the same dynamic first axis)",
    )
    cmd.add_argument("--max-batch", type=int, dest="max_batch_size", help="most items per run (default 64)")
    cmd.add_argument("--max-wait-ms", type=float, help="longest a batch waits for batch mates (default 2)")
    cmd.add_argument(
        "--inputs", type=_names, help="comma-separated input names, all of them (default: the graph's)"
    )
    cmd.add_argument(
        "--outputs",
        type=_names,
        help="comma-separated outputs to return (default: every output of the graph)",
    )
    cmd.add_argument("--description", help="what the model does (default: the graph's doc_string)")
    cmd.add_argument(
        "--check",
        type=Path,
        metavar="FILE.npz",
        help="arrays named after the inputs and the expected outputs: the import runs the model on them and "
        "publishes with the verdict 'passed' only if every output matches (else nothing is published); "
        "without it the verdict is 'unchecked'",
    )
    cmd.add_argument("--atol", type=float, default=None, help="absolute tolerance of --check (default 1e-5)")
    cmd.add_argument("--rtol", type=float, default=None, help="relative tolerance of --check (default 1e-5)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Imported here, after the arguments are read, so that --help answers without loading
    # onnx and ONNX Runtime.
    from store_format.importer import (
        DEFAULT_ATOL,
        DEFAULT_RTOL,
        ImportOptions,
        ImportRefused,
        describe,
        import_model,
    )

    options = ImportOptions(
        name=args.name,
        store=args.store,
        batch_axis=args.batch_axis,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        inputs=args.inputs,
        outputs=args.outputs,
        description=args.description,
        check=args.check,
        atol=DEFAULT_ATOL if args.atol is None else args.atol,
        rtol=DEFAULT_RTOL if args.rtol is None else args.rtol,
    )
    if options.atol < 0 or options.rtol < 0:
        print("error: --atol and --rtol must not be negative", file=sys.stderr)
        return 2
    if args.check is None and (args.atol is not None or args.rtol is not None):
        print("error: --atol and --rtol apply to --check, which was not given", file=sys.stderr)
        return 2
    try:
        result = import_model(args.path, options)
    except ImportRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        print("nothing was published", file=sys.stderr)
        return EXIT_REFUSED
    print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
