"""The command-line options this locustfile adds to Locust's own.

Locust's `--help` is printed before the locustfile is read, so it cannot list them;
docs/loadtesting.md does.
"""

from __future__ import annotations

from pathlib import Path

from .generic import DEFAULT_DIM_SIZES, DEFAULT_ROWS
from .shapes import DEFAULT_PEAK_USERS, DEFAULT_SECONDS, SHAPES

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
# Each simulated user sends this many requests per second (if the answers come back in
# time): a user is a client with its own pace, so the offered load is users x rate.
DEFAULT_RATE_PER_USER = 10.0


def register(parser) -> None:
    """Add the options to Locust's parser (the ``init_command_line_parser`` event)."""
    group = parser.add_argument_group("modelserve load test", "Options of loadtests/locustfile.py")
    group.add_argument(
        "--shape",
        choices=[*SHAPES, "none"],
        default="none",
        help="Load shape: 'step', 'ramp' and 'spike' run for a fixed time with at most --shape-users "
        "users, ignoring -u, -r and -t; 'none' (default) obeys -u, -r and -t as plain Locust does",
    )
    group.add_argument(
        "--shape-users",
        type=int,
        default=None,
        help="Peak users of the step, ramp and spike shapes (default "
        + ", ".join(f"{name} {users}" for name, users in DEFAULT_PEAK_USERS.items())
        + ")",
    )
    group.add_argument(
        "--shape-seconds",
        type=float,
        default=None,
        help="Length of the step, ramp and spike shapes in seconds (default "
        + ", ".join(f"{name} {seconds:g}" for name, seconds in DEFAULT_SECONDS.items())
        + ")",
    )
    group.add_argument(
        "--rate-per-user",
        type=float,
        default=DEFAULT_RATE_PER_USER,
        help=f"Requests per second each user sends (default {DEFAULT_RATE_PER_USER:g}); 0: no wait at all",
    )
    group.add_argument(
        "--max-p99-ms",
        type=float,
        default=None,
        help="Fail the run (exit code 1) if the p99 response time over all requests exceeds this "
        "(default: no bound)",
    )
    group.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.0,
        help="Fail the run (exit code 1) if more than this fraction of requests fail (default 0)",
    )
    group.add_argument(
        "--results-dir",
        default=str(DEFAULT_RESULTS_DIR),
        help="Headless runs given neither --csv nor --html write Locust's CSV files (full history) and "
        "HTML report into a new <results-dir>/<date-time>/ folder (default loadtests/results)",
    )
    group.add_argument(
        "--no-results",
        action="store_true",
        default=False,
        help="Write no result files unless --csv or --html ask for them",
    )
    group.add_argument(
        "--v2-model",
        default=None,
        help="Point the V2 workloads (tags v2-json and v2-binary) at this served model instead of "
        "the built-in ones: random valid inputs drawn from its metadata (GET /v2/models/NAME)",
    )
    group.add_argument(
        "--v2-rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"With --v2-model and a batch axis: 1 to this many rows per request (default {DEFAULT_ROWS})",
    )
    group.add_argument(
        "--v2-dim-sizes",
        type=_sizes,
        default=DEFAULT_DIM_SIZES,
        help="With --v2-model: sizes drawn for its other dynamic axes, comma-separated (default "
        + ",".join(map(str, DEFAULT_DIM_SIZES))
        + "); a graph that needs more (a 3x3 convolution: at least 3) says so here",
    )


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--v2-dim-sizes needs whole numbers >= 1, got {text!r}")
    return sizes
