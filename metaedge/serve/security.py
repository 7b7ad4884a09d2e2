"""Who may talk to the service: loopback unless a key is set, the key compared in constant time, page headers."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from metaedge.serve.errors import ServeError, send_error

KEY_ENV = "METAEDGE_API_KEY"
MIN_KEY_LENGTH = 16
# The page loads nothing from anywhere else (no CDN); the camera's frames are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# /docs (Swagger UI, its files served by this process too) starts itself with an inline script, and Swagger UI
# sets inline styles and data: icons; still nothing from another origin.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def load_key(key_file: str | os.PathLike | None) -> str | None:
    """The API key from `key_file`, else $METAEDGE_API_KEY, else None. Never from the command line: `ps` shows it."""
    if key_file is not None:
        path = Path(key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ServeError(f"cannot read the API key file {path}: {getattr(e, 'strerror', None) or e}", 500) from e
        where = str(path)
    else:
        key = os.environ.get(KEY_ENV, "").strip()
        if not key:
            return None
        where = f"${KEY_ENV}"
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise ServeError(f"the API key in {where} must be one line of at least {MIN_KEY_LENGTH} characters", 500)
    return key


def check_bind(host: str, key: str | None) -> None:
    """Refuse to serve beyond this machine without a key: anyone on the network could empty the gallery."""
    if key is None and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without an API key: pass --api-key-file FILE or set ${KEY_ENV} "
            "(or listen on 127.0.0.1)",
            500,
        )


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a client sent, as sent: `X-API-Key: KEY` or `Authorization: Bearer KEY` (ASGI headers: bytes, names
    lower-case)."""
    key = headers.get(b"x-api-key")
    if key is None:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        key = token.strip() if scheme.lower() == b"bearer" else None
    return key


def protected(path: str) -> bool:
    """Paths behind the key: the API and the metrics. The page, its files, /docs and /healthz are not (the page
    asks for the key and sends it with each API call)."""
    return path.startswith("/v1/") or path == "/v1" or path == "/metrics"


class RequireKey:
    """ASGI middleware: 401 for a protected path unless the configured key (if any) was sent.

    Checked before routing and before a byte of the body is read, so a client without the key cannot make the
    service spool an upload; and as middleware rather than a FastAPI dependency, which cost every request a
    pass through FastAPI's dependency solver (the largest part of what the app added to a classify)."""

    def __init__(self, app, key: str | None) -> None:
        self.app = app
        self.key = None if key is None else key.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or not protected(scope["path"]):
            return await self.app(scope, receive, send)
        sent = presented_key(dict(scope["headers"]))
        # compare_digest: the time taken does not tell an attacker how many leading characters were right.
        if sent is not None and hmac.compare_digest(sent, self.key):
            return await self.app(scope, receive, send)
        await send_error(send, 401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)",
                         ((b"www-authenticate", b'Bearer realm="metaedge"'),))  # fmt: skip


class SecurityHeaders:
    """ASGI middleware: no sniffing, no framing, and a CSP that keeps the page to files from this device."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]  # fmt: skip
                policy = DOCS_CONTENT_SECURITY_POLICY if scope["path"] == "/docs" else CONTENT_SECURITY_POLICY
                headers.append((b"content-security-policy", policy.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
