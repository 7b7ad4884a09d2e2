"""Running the app under uvicorn: one process, or N workers sharing the socket, the gallery and the metrics."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from metaedge.serve.app import CONFIG_ENV, ServeConfig
from metaedge.serve.metrics import MULTIPROC_ENV


class Server(uvicorn.Server):
    """uvicorn's Server, minus one thing: after a graceful stop it re-raises the signal that asked for it, so the
    exit status would read 'killed by SIGTERM'; a service manager should see 0 for a clean stop."""

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class _NoDelay:
    """Nagle's algorithm off on every connection, whichever HTTP parser serves it.

    asyncio turns Nagle off only on sockets whose `proto` reads IPPROTO_TCP; the listening socket uvicorn hands to
    `--workers N` processes reads 0, so their connections kept it on, and a response written as headers then body
    waited for the client's delayed ACK: 48 ms per request on a kept-alive connection (measured), against 1.5 ms
    in one process.
    """

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class NoDelayH11Protocol(_NoDelay, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol (h11), Nagle off."""


try:  # httptools: uvicorn's C parser (`uvicorn[standard]`); h11, the fallback, parses every request in Python
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayHttpToolsProtocol(_NoDelay, HttpToolsProtocol):
        """uvicorn's httptools protocol, Nagle off."""

    HTTP_PROTOCOL: type = NoDelayHttpToolsProtocol
except ImportError:
    HTTP_PROTOCOL = NoDelayH11Protocol


def run(app, config: ServeConfig, *, port: int, workers: int = 1, log_level: str = "info",
        ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:  # fmt: skip
    """Serve `app` (made by create_app(config), so every check has passed) until SIGINT or SIGTERM; then let
    in-flight requests finish (up to 30 s) and return. With workers > 1 each worker builds its own app from
    `config` and `app` only served as the check."""
    options = {"host": config.host, "port": port, "log_level": log_level, "timeout_graceful_shutdown": 30,
               "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile, "http": HTTP_PROTOCOL}  # fmt: skip
    if workers == 1:
        Server(uvicorn.Config(app, **options)).run()
        return
    app.state.worker.close()
    os.environ[CONFIG_ENV] = config.to_json()
    with _shared_metrics_dir():
        cfg = uvicorn.Config("metaedge.serve.app:app_from_environment", factory=True, workers=workers, **options)
        from uvicorn.supervisors import Multiprocess

        # Each worker runs uvicorn's own Server; the supervisor here is what a service manager waits on, and it
        # returns (exit 0) once SIGTERM has stopped every worker gracefully.
        Multiprocess(cfg, sockets=[cfg.bind_socket()]).run()


@contextlib.contextmanager
def _shared_metrics_dir():
    """A fresh directory for prometheus_client's multiprocess mode, so /metrics sums every worker."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="metaedge-metrics-") as tmp:
        os.environ[MULTIPROC_ENV] = tmp
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]
