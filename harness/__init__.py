"""Helpers shared by the tests and the benchmark: starting and stopping real servers.

Nothing here depends on pytest, so the benchmark (``python -m bench``) and the test fixtures
(``tests/conftest.py``) start ``bentoml serve`` the same way.
"""

from harness.server import (
    ROOT,
    ServerProcess,
    ServerStartError,
    bentoml_command,
    bentoml_serve,
    free_port,
    service_env,
    start_bentoml,
    start_server,
)

__all__ = [
    "ROOT",
    "ServerProcess",
    "ServerStartError",
    "bentoml_command",
    "bentoml_serve",
    "free_port",
    "service_env",
    "start_bentoml",
    "start_server",
]
