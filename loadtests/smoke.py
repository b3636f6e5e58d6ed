"""CI smoke test: serve the committed models, run 30 s of every workload, fail on any failure.

    python loadtests/smoke.py            # `make loadtest-smoke`

Starts ``bentoml serve`` on a free 127.0.0.1 port with a private BENTOML_HOME, waits for
``/readyz``, runs Locust headless with a few users (``--max-fail-ratio 0`` and a generous
``--max-p99-ms``), and stops the service whatever happened. The exit code is Locust's: 0 only
when every request got a right answer within the bound. Results, with the server's log, go
to ``loadtests/results/<date-time>/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from modelserve_locust.local_service import local_service, stop_on_sigterm
from modelserve_locust.run_folder import headless_locust, new_run_folder

HERE = Path(__file__).resolve().parent


def locust_command(url: str, folder: Path, args: argparse.Namespace) -> list[str]:
    return headless_locust(
        url,
        folder,
        args.users,
        args.users,
        args.seconds,
        *("--max-fail-ratio", "0", "--max-p99-ms", str(args.max_p99_ms)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--users", type=int, default=8, help="at the default 10 requests/s each")
    # Generous: far above what the service does on a busy 2-core machine, yet well inside
    # its 2 s request timeout, so only a stalled or overloaded service trips it.
    parser.add_argument("--max-p99-ms", type=float, default=1000)
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    stop_on_sigterm()
    folder = new_run_folder(args.results_dir)
    print(f"smoke: results and server log in {folder}", flush=True)
    try:
        with local_service(folder) as service:
            return subprocess.run(locust_command(service.url, folder, args), check=False).returncode
    except RuntimeError as exc:  # harness.server.ServerStartError: its message ends with the log's tail
        print(f"smoke: the service did not start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
