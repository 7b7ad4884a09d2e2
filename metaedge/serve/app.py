"""The FastAPI application: configuration, one Runtime per process on the event loop, middleware, routes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

import metaedge
from metaedge.gallery import GalleryError
from metaedge.serve import errors
from metaedge.serve.metrics import Metrics, MetricsMiddleware
from metaedge.serve.security import RequireKey, SecurityHeaders, check_bind, load_key
from metaedge.serve.uploads import BodyLimit, ServeLimits

CONFIG_ENV = "METAEDGE_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process


@dataclass(frozen=True)
class ServeConfig:
    """Everything `metaedge serve` is told; plain values, so it travels to worker processes as JSON."""

    bundle: str | None = None  # None: the reference bundle
    store: str | None = None  # None: an in-memory gallery (tests); the CLI always gives a file
    host: str = "127.0.0.1"
    api_key_file: str | None = None  # None: $METAEDGE_API_KEY, or no key (loopback only)
    keep_thumbnails: bool = False
    cors_origins: tuple[str, ...] = ()
    limits: ServeLimits = field(default_factory=ServeLimits)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        d = json.loads(text)
        return cls(**{**d, "cors_origins": tuple(d["cors_origins"]), "limits": ServeLimits(**d["limits"])})


class ServedRuntime:
    """The process's one Runtime, called on the event loop's own thread, one call at a time.

    Each call blocks the loop while it runs. That costs the process nothing it had: one runtime serves one call at
    a time anyway (one ordered transaction per enrollment), and a call that waits for it waits either way. What it
    saves is the hand-off to a runtime thread and back: two thread wake-ups per request, measured at 0.3-0.4 ms of
    a 2 ms classify through HTTP on this VM (scripts/bench_serve.py). The runtime may be made on another thread than
    the loop's (a test client's portal thread; uvicorn makes the app on the loop's), hence any_thread.
    """

    def __init__(self, bundle: str | None, store: str | None, *, readonly: bool = False) -> None:
        from metaedge import ort

        # Requests come one at a time per worker, and workers share the cores: ONNX Runtime's threads must not
        # spin between requests (measured: CPU per classify 4.4 -> 3.3 ms in process, less under --workers 2).
        ort.ALLOW_SPINNING = False
        self.readonly = readonly
        self.runtime = metaedge.Runtime(bundle, store, readonly=readonly, any_thread=True)

    async def call(self, fn, *args, **kwargs):
        """fn(runtime, *args, **kwargs), now. A coroutine so that routes need not change if calls move off the loop."""
        return fn(self.runtime, *args, **kwargs)

    def close(self) -> None:
        self.runtime.close()


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The service for `config`: refuses an unsafe bind, opens the bundle and gallery now (a bad one fails here,
    before a port is taken), serves until shut down, then closes the gallery."""
    from metaedge.serve import routes

    config = config or ServeConfig()
    key = load_key(config.api_key_file)
    check_bind(config.host, key)
    try:
        worker = ServedRuntime(config.bundle, config.store)
    except GalleryError as e:
        if config.store is None or "is read-only" not in str(e):
            raise
        # Storage gone read-only (a failing card remounted, a read-only image): keep classifying what is
        # enrolled; every write answers 503 with the reason.
        logging.getLogger("uvicorn.error").warning("%s: serving it read-only", e)
        worker = ServedRuntime(config.bundle, config.store, readonly=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()  # after uvicorn has let in-flight requests finish

    about = "Few-shot image recognition on the device: enroll classes from a few images, classify."
    # docs_url/redoc_url None: FastAPI's own pages load their viewers from a CDN; routes.docs serves Swagger UI
    # from this process instead (ReDoc is not offered: one API viewer is enough).
    app = FastAPI(title="metaedge", version=metaedge.__version__, lifespan=lifespan, description=about,
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.state.config, app.state.api_key, app.state.worker = config, key, worker
    app.state.metrics = Metrics()
    errors.install(app)
    app.router.routes[:0] = routes.fast  # matched first; FastAPI's own routes after them
    app.include_router(routes.api)
    app.include_router(routes.plain)
    app.openapi = lambda: _openapi(app, routes.FAST_DOCS)
    # Middleware added later runs earlier. The key is checked before routing and before the body is read, and
    # inside CORS: a browser's preflight carries no key, and a 401 needs CORS headers for the page to read it.
    app.add_middleware(RequireKey, key=key)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(BodyLimit, limits=config.limits)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: times everything, 413s too
    return app


def _openapi(app: FastAPI, extra_paths: dict) -> dict:
    """FastAPI's schema of its own routes, plus the documentation of the plain Starlette ones it cannot see."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # made once, then kept in app.openapi_schema
        schema["paths"] = {**extra_paths, **schema["paths"]}
    return app.openapi_schema


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker process of `metaedge serve --workers N`."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
