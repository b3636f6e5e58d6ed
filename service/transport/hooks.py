"""Every place the service changes a library's internals, declared and checked at start.

The service reaches below the public API of four libraries, each for a measured reason:
uvicorn (the connection protocol: timeouts, lingering close, drain, the direct lane), BentoML
(which builds its server through ``uvicorn.Config``, so replacing that class is how the
protocol gets in), circus (the arbiter's SIGTERM handler, to stop listening at once) and
FastAPI (the fast path's route index and middleware stack). Those libraries are pinned
exactly (pyproject.toml), and each such place declares here what it relies on as a
:class:`Hook`. :func:`verify` runs the checks: a hook that is not in place (a renamed
attribute, a class no longer used, a patch that did not take) stops the process with one
line naming the hook and the library's version, instead of a server that serves without its
timeouts or drain, or fails with an AttributeError on every request.

The arbiter checks the hooks it can see when the service module is imported; each worker
checks the rest once its server is built (``service.bento_service``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class HookMissing(RuntimeError):
    """A library no longer offers what one of the service's hooks relies on."""


@dataclass(frozen=True)
class Hook:
    """One dependency on a library's internals: what, in which library, and how to check it.

    ``check`` returns None when the hook is in place, else what is wrong, in words.
    """

    name: str
    library: str  # the distribution whose version the message names
    check: Callable[[], str | None]

    def problem(self) -> str | None:
        try:
            return self.check()
        except Exception as exc:  # a check that cannot even run says the same thing
            return f"{type(exc).__name__}: {exc}"


def version_of(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def verify(hooks: Iterable[Hook]) -> None:
    """Raise :class:`HookMissing` naming the first hook not in place (None if all are)."""
    for hook in hooks:
        problem = hook.problem()
        if problem is not None:
            raise HookMissing(
                f"hook {hook.name!r} is not in place with {hook.library} {version_of(hook.library)}: "
                f"{problem}. The service pins the versions it was built for (pyproject.toml); "
                "see docs/dependencies.md for upgrading them"
            )


def missing_attributes(obj: object, names: Iterable[str]) -> str | None:
    """None if ``obj`` has every attribute in ``names``, else which it lacks."""
    missing = [name for name in names if not hasattr(obj, name)]
    return (
        f"{type(obj).__name__ if not isinstance(obj, type) else obj.__name__} lacks {missing}"
        if missing
        else None
    )
