"""metaedge's errors -> HTTP status codes and one-line JSON bodies: the only place the service makes that choice."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from metaedge.errors import DataError, MetaedgeError

# GalleryError has no subclasses; its messages are made in one place (gallery.Gallery._error and the methods)
# and are pinned by tests/test_serve.py, which fails if one of these stops matching.
_GALLERY_STATUS = (
    ("no class named", 404),
    ("no thumbnail", 404),
    ("already has a class", 409),
    ("already has class(es)", 409),
    ("disk is full", 507),  # Insufficient Storage: the device must be given room, retrying will not help
    ("is read-only", 503),
    ("is locked", 503),
    ("disk I/O error", 503),
    ("is corrupt", 500),
)


class ServeError(MetaedgeError):
    """A request the service itself refuses (limits, keys, bodies); carries its HTTP status and the limit it names."""

    def __init__(self, message: str, status: int, limit: str | None = None, value: int | None = None) -> None:
        super().__init__(message)
        self.status, self.limit, self.value = status, limit, value


def status_of(error: MetaedgeError) -> int:
    """The HTTP status for one of metaedge's errors."""
    from metaedge.bundle import BundleError
    from metaedge.gallery import GalleryError
    from metaedge.locate import TaskError

    if isinstance(error, ServeError):
        return error.status
    if isinstance(error, TaskError):  # classify on a localisation bundle, or locate on a classification one
        return 409
    if isinstance(error, GalleryError):
        text = str(error)
        return next((status for needle, status in _GALLERY_STATUS if needle in text), 422)
    if isinstance(error, DataError):
        return 409 if "gallery is empty" in str(error) else 422
    if isinstance(error, BundleError):
        return 500
    return 400


def error_body(message: str, **extra: object) -> dict:
    """{"error": "one line", ...}: newlines folded so a log or a terminal shows it on one line."""
    return {"error": " ".join(str(message).split()), **{k: v for k, v in extra.items() if v is not None}}


async def send_error(send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = (),
                     **extra: object) -> None:  # fmt: skip
    """Answer from ASGI middleware, before any route or handler runs: the same {"error": ...} body, `extra` fields
    after it, and `headers` beside the JSON type and length."""
    body = json.dumps(error_body(message, **extra)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _metaedge_error(request: Request, error: MetaedgeError) -> JSONResponse:
    status = status_of(error)
    extra = {"limit": error.limit, "max": error.value} if isinstance(error, ServeError) else {}
    headers = {"Retry-After": "1"} if status == 503 else None
    message = str(error)
    store = request.app.state.config.store
    if store:  # where the device keeps its gallery and its bundle is none of a client's business
        message = message.replace(store, "the gallery")
    message = message.replace(str(request.app.state.worker.runtime.bundle.path), "the bundle")
    return JSONResponse(error_body(message, **extra), status_code=status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(error.detail)), status_code=error.status_code, headers=error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body(f"the body is not JSON ({first.get('ctx', {}).get('error', 'invalid')})"),
                            status_code=400)  # fmt: skip
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
    return JSONResponse(error_body(message), status_code=422)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Never a traceback to a client; the server log has it (uvicorn logs the exception).
    return JSONResponse(error_body(f"internal error ({type(error).__name__})"), status_code=500)


def install(app) -> None:
    """Register the handlers that turn every error into {"error": ...} with its status."""
    app.add_exception_handler(MetaedgeError, _metaedge_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
