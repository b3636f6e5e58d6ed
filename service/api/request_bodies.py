"""How routes read request bodies: JSON checked against a schema, or an uploaded picture.

Bodies are validated by the schemas' compiled pydantic validators straight from the raw
bytes (FastAPI's parameter injection would double a small request's CPU). Each reader also
carries the OpenAPI description of its body, so that a route's entry in the route table
(``service.api.routes``) names one thing for both reading and documenting.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from service.inference.images import digit_from_image
from service.inference.schemas import UploadedDigit
from service.platform.errors import InvalidInput, UnsupportedMediaType, invalid_body
from service.platform.settings import get_settings

Body = TypeVar("Body", covariant=True)
Schema = TypeVar("Schema", bound=BaseModel)


class BodyReader(Protocol[Body]):
    """Reads a request's body into what the route's pipeline decodes."""

    # FastAPI's ``openapi_extra`` that documents the body (the handler reads it, not FastAPI).
    openapi: dict[str, Any]

    async def read(self, body: bytes, content_type: str | None) -> Body: ...


def json_media_type(content_type: str) -> str | None:
    """The media type of a ``Content-Type`` header if it declares JSON, else None."""
    media = content_type.split(";")[0].strip()
    return media if media == "application/json" or media.endswith("+json") else None


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared as JSON (no content-type counts as JSON)."""
    content_type = (content_type or "application/json").split(";")[0].strip()
    if json_media_type(content_type) is None:
        raise UnsupportedMediaType(
            f"content-type {content_type!r} is not accepted; send application/json",
            {"content_type": content_type},
        )


def parse(body: bytes, schema: type[Schema]) -> Schema:
    """``body`` validated against ``schema``; 400 naming every field at fault.

    A schema whose fast validator words some refusals badly (a union reports how the value
    fails every branch) offers ``explain_refusal(body)``, run only for a refused body.
    """
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        explain = getattr(schema, "explain_refusal", None)
        raise invalid_body((explain and explain(body)) or exc) from None


class JsonBody(Generic[Schema]):
    """A JSON body, validated against ``schema``."""

    def __init__(self, schema: type[Schema]) -> None:
        self.schema = schema
        self.openapi = {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema.model_json_schema()}},
            }
        }

    async def read(self, body: bytes, content_type: str | None) -> Schema:
        require_json(content_type)
        return parse(body, self.schema)


class PictureUpload:
    """A multipart form with a PNG or JPEG in the field ``image``, read as an 8x8 digit."""

    openapi: dict[str, Any] = {  # noqa: RUF012 (read only)
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {
                                "type": "string",
                                "format": "binary",
                                "description": "PNG or JPEG, any size, dark digit on a light background",
                            }
                        },
                    }
                }
            },
        }
    }

    async def read(self, body: bytes, content_type: str | None) -> UploadedDigit:
        content_type = content_type or ""
        if not content_type.startswith("multipart/form-data"):
            raise UnsupportedMediaType(
                "send the image as multipart/form-data in a field named 'image'",
                {"content_type": content_type},
            )
        parser = MultiPartParser(
            Headers({"content-type": content_type}), _chunks(body), max_files=1, max_fields=4
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:  # malformed multipart
            raise InvalidInput(f"malformed multipart body: {exc.message}") from None
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise InvalidInput("the form needs a file field named 'image'", {"field": "image"})
            data = await upload.read()
        finally:
            await form.close()  # the upload's spooled temporary file
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(
            _decoder(), digit_from_image, data, get_settings().max_image_pixels
        )
        return UploadedDigit(pixels)


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    """The body as the stream Starlette's multipart parser reads (the body is read already)."""
    yield body


@functools.cache
def _decoder() -> ThreadPoolExecutor:
    """The threads that decode uploaded pictures, off the event loop.

    A large picture takes a long time to decode (a 4000x3900 JPEG: 190-270 ms), which on the
    event loop would hold up every other request of the worker. Two threads per worker:
    Pillow and NumPy release the GIL while they work, and more threads than cores would only
    queue inside the kernel instead of here.
    """
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="picture-decode")
