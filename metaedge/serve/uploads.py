"""Reading uploads within limits: the whole body, images per request, bytes and pixels per image."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from metaedge.errors import DataError
from metaedge.images import check_size
from metaedge.serve.errors import ServeError, send_error

FORM_FIELD_BYTES = 64 * 1024  # a label or a flag, never more
FORM_FIELDS = 16


@dataclass(frozen=True)
class ServeLimits:
    """What one request may carry. Defaults: a few camera frames, never enough to exhaust a small board."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_images: int = 32
    max_pixels: int = 16_000_000  # decoded RGBA: 64 MB, on a board with a few GB

    @property
    def max_body_bytes(self) -> int:
        """Every image at its limit, plus room for the multipart headers and the form fields."""
        return self.max_images * (self.max_image_bytes + 4096) + FORM_FIELDS * FORM_FIELD_BYTES


class BodyLimit:
    """ASGI middleware: 413 as soon as a body says, or turns out, to be over `limits.max_body_bytes`,
    before it is spooled anywhere (a chunked upload has no Content-Length to check up front)."""

    def __init__(self, app, limits: ServeLimits) -> None:
        self.app, self.limit = app, limits.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ServeError(self._message(), 413, "max_body_bytes", self.limit)
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body over the {self.limit:,}-byte limit (max_body_bytes)"

    async def _refuse(self, send) -> None:
        await send_error(send, 413, self._message(), ((b"connection", b"close"),), limit="max_body_bytes",
                         max=self.limit)  # fmt: skip


async def read_images(request: Request, limits: ServeLimits) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The uploaded images as (name, bytes), and the form's text fields.

    Accepts multipart/form-data (files in `images`, repeated) or one image as the raw body (any image/* or
    application/octet-stream type). Names are the client's file names, echoed back and never used as paths.
    """
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, request.stream(), max_files=limits.max_images,
                                 max_fields=FORM_FIELDS, max_part_size=FORM_FIELD_BYTES)  # fmt: skip
        try:
            form = await parser.parse()
        except MultiPartException as e:
            if "Too many files" in e.message:
                raise ServeError(f"more than {limits.max_images} images in one request (max_images)", 413,
                                 "max_images", limits.max_images) from None  # fmt: skip
            raise ServeError(f"malformed multipart body: {e.message}", 400) from None
        try:
            images, fields = [], {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "images":
                        raise ServeError(f"unexpected file field {key!r}; send images as 'images'", 422)
                    data = await value.read()
                    images.append((value.filename or f"image #{len(images)}", data))
                else:
                    fields[key] = value
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
        images, fields = [("body", await request.body())], {}
    else:
        raise ServeError(
            f"send images as multipart/form-data (field 'images') or one image as the body, not {ctype or 'no type'}",
            415,
        )
    if not images:
        raise ServeError("no images in the request (multipart field 'images')", 422)
    if len(images) > limits.max_images:  # the parser stops at the limit already; this holds whatever parsed them
        raise ServeError(f"more than {limits.max_images} images in one request (max_images)", 413, "max_images",
                         limits.max_images)  # fmt: skip
    for name, data in images:
        if len(data) > limits.max_image_bytes:
            raise ServeError(f"{name}: {len(data):,} bytes is over the {limits.max_image_bytes:,}-byte limit "
                             "per image (max_image_bytes)", 413, "max_image_bytes", limits.max_image_bytes)  # fmt: skip
        if not data:
            raise DataError(f"{name}: empty file (0 bytes)")
        try:
            check_size(data, limits.max_pixels, name)
        except DataError as e:
            if "pixel limit" in str(e):
                raise ServeError(f"{e} (max_pixels)", 413, "max_pixels", limits.max_pixels) from None
            raise
    return images, fields
