"""`metaedge serve`: the runtime as an HTTP service with a web page (FastAPI + uvicorn), one runtime per worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metaedge._console import err_console, fail
from metaedge.errors import MetaedgeError


def serve(
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle directory; default: the shipped reference bundle.")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(help="Gallery database; default: $METAEDGE_STORE or ~/.local/share/metaedge/gallery.db"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; anything but loopback needs an API key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (or set $METAEDGE_API_KEY); never on the command line."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes, each with its own runtime; the gallery is shared.")] = 1,
    keep_thumbnails: Annotated[
        bool, typer.Option(help="Keep a small thumbnail of every enrolled image in the gallery (privacy: see docs).")
    ] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow browser pages from this origin (repeatable); default: CORS off.")
    ] = None,
    max_image_bytes: Annotated[int, typer.Option(help="Largest upload per image, bytes.")] = 8 * 1024 * 1024,
    max_images: Annotated[int, typer.Option(help="Most images per request.")] = 32,
    max_pixels: Annotated[int, typer.Option(help="Most pixels per image (width x height).")] = 16_000_000,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM) of --ssl-certfile.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: warning, info, debug.")] = "info",
) -> None:
    """Serve enroll / classify / gallery over HTTP (JSON under /v1, OpenAPI at /docs) and a web page at /."""
    from metaedge.cli import _default_store
    from metaedge.serve import ServeConfig, ServeLimits, create_app
    from metaedge.serve.server import run

    if workers < 1 or min(max_image_bytes, max_images, max_pixels) < 1:
        fail("--workers and the --max-* limits must be at least 1")
    store = store or _default_store()
    config = ServeConfig(
        bundle=None if bundle is None else str(bundle), store=str(store), host=host,
        api_key_file=None if api_key_file is None else str(api_key_file), keep_thumbnails=keep_thumbnails,
        cors_origins=tuple(cors_origin or ()),
        limits=ServeLimits(max_image_bytes=max_image_bytes, max_images=max_images, max_pixels=max_pixels),
    )  # fmt: skip
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        app = create_app(config)  # every check (key, bind, bundle, gallery) before a port is taken
    except (MetaedgeError, OSError) as e:
        fail(str(e))
    scheme = "https" if ssl_certfile else "http"
    err_console.print(f"metaedge serve: {scheme}://{host}:{port}/ (API under /v1, docs at /docs), "
                      f"store {store}, {workers} worker(s)", highlight=False)  # fmt: skip
    run(app, config, port=port, workers=workers, log_level=log_level,
        ssl_certfile=None if ssl_certfile is None else str(ssl_certfile),
        ssl_keyfile=None if ssl_keyfile is None else str(ssl_keyfile))  # fmt: skip
