"""Request plumbing shared by the task routes and the V2 routes."""

from __future__ import annotations

import logging

from starlette.requests import Request

from service.errors import ApiError
from service.registry import ModelRegistry

log = logging.getLogger(__name__)


def registry_of(request: Request) -> ModelRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ApiError("the service is starting", status=503, headers={"Retry-After": "1"})
    return registry
