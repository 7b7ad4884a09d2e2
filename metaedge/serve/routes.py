"""The HTTP routes: each parses its request, makes one runtime call, returns the CLI's JSON."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from metaedge.errors import DataError
from metaedge.gallery import GalleryError
from metaedge.images import describe, thumbnail
from metaedge.locate import bundle_task, require_task
from metaedge.runtime import Runtime
from metaedge.serve.errors import ServeError
from metaedge.serve.uploads import read_images

# Every /v1 route and /metrics sit behind the API key: security.RequireKey, checked before routing.
api = APIRouter(prefix="/v1")
plain = APIRouter()

_UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "label": {"type": "string"}, "replace": {"type": "boolean"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}  # fmt: skip
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _worker(request: Request):
    return request.app.state.worker


def _service_label(label: object, what: str = "label") -> str:
    """A label as the CLI takes it (the gallery checks the rest), minus path separators: a class is never a file."""
    if not isinstance(label, str):
        raise ServeError(f"{what} must be a string", 422)
    for sep in ("/", "\\"):
        if sep in label:
            raise ServeError(f"{what} {label!r} contains the path separator {sep!r}; labels name classes, not files",
                             422)  # fmt: skip
    return label


@contextmanager
def _named(names: list[str]):
    """Errors about "image #i (bytes)" name the upload instead (the client's file name, echoed, never opened)."""
    try:
        yield
    except DataError as e:
        text = str(e)
        for i, name in enumerate(names):
            prefix = describe(b"", i)
            if text.startswith(prefix):
                raise DataError(f"{name}{text[len(prefix):]}") from None
        raise


# -- the page and the probes -----------------------------------------------------------------------------------

_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}


def _static(name: str) -> bytes:
    # Read from the package, by a fixed name: no part of a request's path ever reaches the file system.
    return resources.files("metaedge.serve").joinpath("static", name).read_bytes()


@plain.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})


@plain.get("/app.js", include_in_schema=False)
def page_script() -> Response:
    return Response(_static("app.js"), media_type=_STATIC["app.js"], headers={"Cache-Control": "no-cache"})


@plain.get("/style.css", include_in_schema=False)
def page_style() -> Response:
    return Response(_static("style.css"), media_type=_STATIC["style.css"], headers={"Cache-Control": "no-cache"})


# -- the API's own page (/docs), every file of it from this process --------------------------------------------

# Swagger UI's files as the fastapi-offline package ships them (swagger-ui-dist 5, Apache-2.0): FastAPI's own /docs
# makes the browser fetch them from a CDN, which a device on a closed network cannot reach and should not trust.
_DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


@plain.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title="metaedge API", oauth2_redirect_url=None,
        swagger_js_url=f"{root}/docs/swagger-ui-bundle.js", swagger_css_url=f"{root}/docs/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/favicon.png",
        # validatorUrl: Swagger UI would otherwise ask validator.swagger.io about the spec from the browser
        swagger_ui_parameters={"validatorUrl": None},
    )  # fmt: skip


@plain.get("/docs/{name}", include_in_schema=False)
def docs_asset(name: str) -> Response:
    if name not in _DOCS_ASSETS:  # a fixed set of names: the request's path is never joined to a directory
        raise ServeError(f"no such file: {name!r}", 404)
    data = resources.files("fastapi_offline").joinpath("static", name).read_bytes()
    return Response(data, media_type=_DOCS_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})


@plain.get("/healthz", summary="Liveness: the runtime answers and the gallery can be read")
async def healthz(request: Request) -> dict:
    classes = await _worker(request).call(lambda rt: len(rt.labels()))
    return {"status": "ok", "classes": classes, "writable": not _worker(request).readonly}


@plain.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    records = await _worker(request).call(lambda rt: rt.gallery.records())
    body, ctype = request.app.state.metrics.render(len(records), sum(r.count for r in records))
    return Response(body, media_type=ctype)


# -- bundle ----------------------------------------------------------------------------------------------------


@api.get("/info", summary="The bundle: model id, task, target, preprocessing; and this service's limits")
async def info(request: Request) -> dict:
    def read(rt: Runtime) -> dict:
        m = rt.bundle.manifest
        return {"model_id": rt.bundle.model_id, "task": bundle_task(m), "target": m.get("target"),
                "preprocess": rt.spec.to_dict(), "embedding_dim": rt.bundle.embedding_dim, "metric": rt.metric,
                "open_set_threshold": rt.default_threshold(), "adapt": "adaptation" in m,
                "metaedge": m.get("versions", {}).get("metaedge")}  # fmt: skip

    config = request.app.state.config
    found = await _worker(request).call(read)
    return {**found, "keep_thumbnails": config.keep_thumbnails, "limits": {
        "max_image_bytes": config.limits.max_image_bytes, "max_images": config.limits.max_images,
        "max_pixels": config.limits.max_pixels}}  # fmt: skip


# -- classes ---------------------------------------------------------------------------------------------------


def _listing(rt: Runtime) -> list[dict]:
    thumbs = rt.gallery.thumbnail_ids()
    return [{**r.__dict__, "thumbnails": thumbs.get(r.label, [])} for r in rt.gallery.records()]


@api.get("/classes", summary="Every enrolled class (as `metaedge gallery list --json`), with thumbnail ids")
async def list_classes(request: Request) -> list[dict]:
    return await _worker(request).call(_listing)


@api.post("/classes", status_code=201, openapi_extra=_UPLOAD_DOC,
          summary="Enroll a class from uploaded images; answered only once the gallery has committed it")  # fmt: skip
async def enroll(request: Request) -> dict:
    images, fields = await read_images(request, request.app.state.config.limits)
    label = _service_label(fields.get("label", request.query_params.get("label")))
    replace = str(fields.get("replace", request.query_params.get("replace", ""))).lower() in _TRUE
    keep = request.app.state.config.keep_thumbnails
    data = [d for _, d in images]

    def run(rt: Runtime) -> dict:
        with _named([n for n, _ in images]):
            if not keep:
                return rt.enroll(label, data, replace=replace).__dict__
            small = [thumbnail(d, i) for i, d in enumerate(data)]
            with rt.gallery.attach_thumbnails(small):
                return rt.enroll(label, data, replace=replace).__dict__

    return await _worker(request).call(run)


@api.patch("/classes/{label:path}", summary="Rename a class: body {\"label\": NEW}")
async def rename(request: Request, label: str, body: Annotated[dict, Body()]) -> dict:
    new = _service_label(body.get("label"), "new label")

    def run(rt: Runtime) -> dict:
        rt.gallery.rename(label, new)
        return next(r for r in _listing(rt) if r["label"] == new.strip())

    return await _worker(request).call(run)


@api.delete("/classes/{label:path}", summary="Remove a class and everything enrolled in it")
async def remove(request: Request, label: str) -> dict:
    await _worker(request).call(lambda rt: rt.remove(label))
    return {"removed": label}


@api.get("/thumbnails/{thumbnail_id}", summary="One kept thumbnail (JPEG); only with --keep-thumbnails",
         response_class=Response)  # fmt: skip
async def get_thumbnail(request: Request, thumbnail_id: int) -> Response:
    data = await _worker(request).call(lambda rt: rt.gallery.thumbnail(thumbnail_id))
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


# -- classification --------------------------------------------------------------------------------------------


_CLASSIFY_QUERY = [
    {"name": "top_k", "in": "query", "description": "Classes listed per image.",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1}},
    {"name": "threshold", "in": "query", "description": "Open-set threshold; default: the bundle's.",
     "schema": {"type": "number"}},
    {"name": "no_threshold", "in": "query", "description": "Never answer unknown.",
     "schema": {"type": "boolean", "default": False}},
    {"name": "adapt", "in": "query", "description": "Rank with a head adapted on every enrolled image.",
     "schema": {"type": "boolean", "default": False}},
]  # fmt: skip


def _classify_options(request: Request) -> dict:
    """Runtime.classify's keyword arguments from the query string (documented by _CLASSIFY_QUERY); 422 naming the
    parameter for a value that is not one. Read here rather than declared as FastAPI parameters: classify is the
    call whose latency the service is judged by, and FastAPI's parameter validation was a tenth of a millisecond
    of it."""
    query = request.query_params

    def number(name: str, kind: type, default):
        text = query.get(name)
        if text is None:
            return default
        try:
            value = kind(text)
        except ValueError:
            raise ServeError(f"{name}: {text!r} is not a valid {kind.__name__}", 422) from None
        if kind is float and value != value:
            raise ServeError(f"{name}: not a number", 422)
        return value

    def flag(name: str) -> bool:
        text = query.get(name, "false").lower()
        if text not in _TRUE + _FALSE:
            raise ServeError(f"{name}: {text!r} is not a boolean (true or false)", 422)
        return text in _TRUE

    options = {"top_k": number("top_k", int, 1), "adapt": flag("adapt")}
    if not 1 <= options["top_k"] <= 1000:
        raise ServeError(f"top_k: must be from 1 to 1000, not {options['top_k']}", 422)
    threshold, no_threshold = number("threshold", float, None), flag("no_threshold")
    if no_threshold or threshold is not None:
        options["threshold"] = None if no_threshold else threshold  # else the bundle's: Runtime's own default
    return options


async def classify(request: Request) -> JSONResponse:
    """POST /v1/classify: one or many images (multipart `images`, or one image as the body) -> the CLI's
    `classify --json` list, one entry per image."""
    require_task(_worker(request).runtime.bundle, "classify")  # before reading a body it could not use
    kwargs = _classify_options(request)
    images, _ = await read_images(request, request.app.state.config.limits)

    def run(rt: Runtime) -> list:
        with _named([n for n, _ in images]):
            return rt.classify([d for _, d in images], **kwargs)

    predictions = await _worker(request).call(run)
    return JSONResponse([{"image": name, **p.to_dict()} for (name, _), p in zip(images, predictions)])


# Classify is the call whose latency the service is judged by, so it is a plain Starlette route, matched ahead of
# FastAPI's (app.py): FastAPI's request handling (the dependency solver, validation, route matching over every
# route) was 0.1-0.2 ms of what HTTP added to a 2 ms classify. FAST_DOCS documents it in /openapi.json instead.
def _plain_route(path: str, endpoint, methods: list[str]) -> Route:
    """A Starlette route that names itself in the request's scope, as FastAPI's routes do: /metrics counts
    requests by route template."""
    route = Route(path, endpoint, methods=methods)
    handle = route.app

    async def app(scope, receive, send) -> None:
        scope["route"] = route
        await handle(scope, receive, send)

    route.app = app
    return route


fast = [_plain_route("/v1/classify", classify, ["POST"])]
FAST_DOCS = {"/v1/classify": {"post": {
    "summary": "Classify one or many images: as `metaedge classify --json` (label null means unknown)",
    "operationId": "classify_v1_classify_post", "parameters": _CLASSIFY_QUERY, **_UPLOAD_DOC,
    "responses": {"200": {"description": "One entry per image: image, label, unknown, score, top_k",
                          "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}},
                  "4XX": {"description": "{\"error\": ONE LINE} (and the limit, for 413)"}}}}}  # fmt: skip


# -- localisation ----------------------------------------------------------------------------------------------


@api.post("/locate", openapi_extra=_UPLOAD_DOC, response_model=list[dict],
          summary="Find enrolled classes in one or many scenes, as `metaedge locate --json` (masks as COCO "
                  "run-length, column-major); a localisation bundle only")  # fmt: skip
async def locate(
    request: Request,
    label: Annotated[list[str] | None, Query(description="Look for this class only; repeatable.")] = None,
    threshold: Annotated[float | None, Query(description="Presence threshold; default: the bundle's.")] = None,
    no_threshold: Annotated[bool, Query(description="Report every class as present.")] = False,
) -> JSONResponse:
    require_task(_worker(request).runtime.bundle, "locate")  # before reading a body it could not use
    scenes, _ = await read_images(request, request.app.state.config.limits)
    kwargs = {} if label is None else {"labels": label}
    if no_threshold or threshold is not None:
        kwargs["threshold"] = None if no_threshold else threshold  # else the bundle's: Runtime's own default

    def run(rt: Runtime) -> list:
        with _named([n for n, _ in scenes]):
            return [rt.locate(data, **kwargs) for _, data in scenes]

    found = await _worker(request).call(run)
    # Localization.to_dict: the CLI's JSON, the mask run-length encoded by the same function
    return JSONResponse([{"scene": name, "found": [f.to_dict() for f in fs]} for (name, _), fs in zip(scenes, found)])


# -- the gallery as a file -------------------------------------------------------------------------------------


@api.get("/gallery/export", summary="Every class with its embeddings, as `metaedge gallery export` writes it")
async def export(request: Request) -> Response:
    def run(rt: Runtime) -> bytes:
        with tempfile.TemporaryDirectory(prefix="metaedge-export-") as tmp:
            target = os.path.join(tmp, "gallery.json")  # a name of ours, never the client's
            rt.gallery.export_json(target)
            with open(target, "rb") as f:
                return f.read()

    data = await _worker(request).call(run)
    return Response(data, media_type="application/json",
                    headers={"Content-Disposition": 'attachment; filename="gallery.json"'})  # fmt: skip


@api.post("/gallery/import", summary="Add the classes of an export (same bundle), all or nothing",
          openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
              "type": "object"}}}}})  # fmt: skip
async def import_gallery(request: Request, replace: Annotated[bool, Query(description="Replace classes "
                         "that already exist.")] = False) -> dict:  # fmt: skip
    raw = await request.body()
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ServeError(f"the body is not JSON: {e}", 400) from None

    def run(rt: Runtime) -> int:
        with tempfile.TemporaryDirectory(prefix="metaedge-import-") as tmp:
            source = os.path.join(tmp, "upload.json")
            with open(source, "wb") as f:
                f.write(raw)
            try:
                return rt.gallery.import_json(source, replace=replace)
            except GalleryError as e:  # name the upload, not our temporary file
                raise GalleryError(str(e).replace(source, "the uploaded export")) from None

    count = await _worker(request).call(run)
    return {"imported": count}
