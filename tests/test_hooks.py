"""Every hook into a library's internals is checked at start (service.transport.hooks).

In this environment (the pinned versions) every declared hook is in place. A server whose
hook cannot be put in place, because the library refuses the change here (a ``sitecustomize``
on the server's path stands in for a library version that no longer lets itself be changed
that way), exits non-zero within seconds with one line naming the hook and the library's
version, instead of serving without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from harness.server import ROOT, bentoml_command, free_port, service_env
from service.transport import connections
from service.transport.fast_path import FASTAPI_HOOKS
from service.transport.hooks import Hook, HookMissing, verify, version_of

# Each replaces one library object with one that silently ignores the service's change.
BREAKERS = {
    "uvicorn.Config replaced by GuardedConfig": (
        "uvicorn",
        """
import types, uvicorn

class Stubborn(types.ModuleType):
    def __setattr__(self, name, value):
        if name != "Config":
            super().__setattr__(name, value)

uvicorn.__class__ = Stubborn
""",
    ),
    "circus SysHandler.handle_term stops listening at SIGTERM": (
        "kantoku",
        """
import circus.sighandler as sighandler

class Stubborn(type):
    def __setattr__(cls, name, value):
        if name != "handle_term":
            super().__setattr__(name, value)

sighandler.SysHandler = Stubborn("SysHandler", (sighandler.SysHandler,), {})
""",
    ),
}


def test_every_declared_hook_is_in_place_with_the_pinned_versions():
    connections.install()  # what the service module does in every process
    verify(connections.INSTALLED_HOOKS)
    verify(FASTAPI_HOOKS)


def test_a_hook_not_in_place_is_named_with_its_library_version():
    hook = Hook("a renamed attribute", "uvicorn", lambda: "HttpToolsProtocol lacks ['flow']")
    with pytest.raises(HookMissing) as caught:
        verify([hook])
    message = str(caught.value)
    assert "a renamed attribute" in message and f"uvicorn {version_of('uvicorn')}" in message
    assert "lacks ['flow']" in message


def test_a_check_that_cannot_run_counts_as_a_missing_hook():
    def broken() -> str | None:
        raise AttributeError("'module' object has no attribute 'Config'")

    with pytest.raises(HookMissing, match="AttributeError"):
        verify([Hook("broken check", "uvicorn", broken)])


@pytest.mark.slow
@pytest.mark.parametrize("hook", sorted(BREAKERS))
def test_a_server_whose_hook_is_not_in_place_stops_at_once_naming_it(tmp_path, hook):
    library, breaker = BREAKERS[hook]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(breaker)
    env = service_env(ROOT / "model_store", {"MODELSERVE_WORKERS": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    log = tmp_path / "server.log"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            bentoml_command(free_port()), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the server kept running without its hook {hook!r}:\n{log.read_text()[-3000:]}")
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    assert code != 0, text[-3000:]
    assert f"hook {hook!r} is not in place with {library} {version_of(library)}" in text, text[-3000:]
    assert took < 10, f"took {took:.1f} s to stop"
    print(f"\n{hook}: exit status {code} after {took:.1f} s")


def test_the_test_breakers_really_break_what_they_target(tmp_path):
    """The stand-ins above do change what the service would see (else the test above proves nothing)."""
    for hook, (_, breaker) in BREAKERS.items():
        site = tmp_path / hook.split()[0]
        site.mkdir()
        (site / "sitecustomize.py").write_text(breaker)
        code = (
            "import uvicorn, circus.sighandler as s\n"
            "uvicorn.Config = 1\n"
            "s.SysHandler.handle_term = 1\n"
            "print(uvicorn.Config == 1, s.SysHandler.handle_term == 1)"
        )
        env = {**os.environ, "PYTHONPATH": str(site)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() in {"False True", "True False"}, (hook, out.stdout, out.stderr)
