"""`metaedge serve`: the runtime behind HTTP (FastAPI + uvicorn), with a web page to enroll and check classes."""

from metaedge.serve.app import ServeConfig, ServeLimits, create_app

__all__ = ["ServeConfig", "ServeLimits", "create_app"]
