"""What container/image_test.py and container/kube_play_test.py share: podman, a free port,
the checks' failure and their one-line report, the runtime gauge read from ``/metrics``, and
the digit both post.

The two scripts run as ``python container/<script>.py``, so this module is imported as a
sibling (their folder is the first entry of ``sys.path``), not as part of a package.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable

# A handwritten 0 from scikit-learn's digits (the README's example).
DIGIT_ZERO = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]
RUNTIME_INFO = "modelserve_runtime_info{"


class CheckFailed(AssertionError):
    """A check found the image or the service not as it should be."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_check(
    name: str, function: Callable[[], str], errors: tuple[type[BaseException], ...]
) -> tuple[str | None, str]:
    """Run one check and print its line: (None, its detail) when it passed, (the error, "") when
    it raised one of ``errors``; any other exception is a fault of the script and propagates."""
    try:
        detail = function()
    except errors as error:
        print(f"FAIL {name}: {error}", flush=True)
        return str(error) or type(error).__name__, ""
    print(f"ok   {name}: {detail}", flush=True)
    return None, detail


def runtime_info_lines(metrics: str) -> list[str]:
    """The ``modelserve_runtime_info`` samples of a ``/metrics`` page."""
    return [line for line in metrics.splitlines() if line.startswith(RUNTIME_INFO)]


def labels_of(sample: str) -> dict[str, str]:
    """The labels of one Prometheus sample line."""
    return dict(re.findall(r'(\w+)="([^"]*)"', sample))


def stop_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
