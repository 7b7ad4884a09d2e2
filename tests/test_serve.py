"""metaedge serve in process (FastAPI's TestClient: the whole ASGI stack, no socket): API, limits, keys, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install httpx)")
from fastapi.testclient import TestClient  # noqa: E402

from metaedge.runtime import Runtime  # noqa: E402
from metaedge.serve import ServeConfig, ServeLimits, create_app  # noqa: E402
from metaedge.serve.errors import ServeError  # noqa: E402
from metaedge.serve.security import check_bind, load_key  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "metaedge" / "reference" / "samples" / "Korean"
LIMITS = ServeLimits(max_image_bytes=200_000, max_images=8, max_pixels=4_000_000)
KEY = "k3y-for-tests-0123456789"


def character(n: int) -> list[Path]:
    return sorted((SAMPLES / f"character{n:02d}").glob("*.png"))


def files(paths: list[Path]) -> list[tuple]:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = tmp_path_factory.mktemp("serve") / "g.db"
    with TestClient(create_app(ServeConfig(store=str(store), keep_thumbnails=True, limits=LIMITS))) as c:
        for n in (1, 2):
            assert c.post("/v1/classes", data={"label": f"c{n}"}, files=files(character(n)[:5])).status_code == 201
        yield c


def state(client) -> tuple:
    """Everything a request could change: the classes, their counts and times, and the embeddings themselves."""
    return json.dumps(client.get("/v1/classes").json()), client.get("/v1/gallery/export").json()["classes"]


def test_enroll_classify_list_rename_remove_as_the_cli_json(client):
    r = client.post("/v1/classes", data={"label": "c3"}, files=files(character(3)[:4]))
    assert r.status_code == 201
    assert set(r.json()) == {"label", "images", "total_embeddings", "timings_ms"}  # `metaedge enroll --json`
    assert r.json()["images"] == 4 and r.json()["timings_ms"]["gallery_commit"] > 0
    r = client.post("/v1/classify?top_k=2", files=files(character(3)[12:14]))
    assert r.status_code == 200
    rows = r.json()
    assert [row["image"] for row in rows] == [p.name for p in character(3)[12:14]]
    assert all(set(row) == {"image", "label", "unknown", "score", "top_k"} and row["label"] == "c3" for row in rows)
    assert len(rows[0]["top_k"]) == 2 and rows[0]["top_k"][0]["score"] >= rows[0]["top_k"][1]["score"]
    raw = client.post("/v1/classify", content=character(3)[12].read_bytes(), headers={"Content-Type": "image/png"})
    assert raw.json()[0]["score"] == pytest.approx(rows[0]["score"], abs=1e-5)  # one image as the whole body
    assert client.post("/v1/classify?threshold=100", files=files(character(3)[12:13])).json()[0]["label"] is None
    listed = {c["label"]: c for c in client.get("/v1/classes").json()}
    assert listed["c3"]["count"] == 4 and len(listed["c3"]["thumbnails"]) == 4

    r = client.patch("/v1/classes/c3", json={"label": "third"})
    assert r.status_code == 200 and r.json()["label"] == "third" and r.json()["count"] == 4
    thumb = client.get(f"/v1/thumbnails/{listed['c3']['thumbnails'][0]}")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    assert client.delete("/v1/classes/third").json() == {"removed": "third"}
    assert "third" not in [c["label"] for c in client.get("/v1/classes").json()]
    assert client.get(f"/v1/thumbnails/{listed['c3']['thumbnails'][0]}").status_code == 404  # gone with the class


def test_replace_drops_old_images_and_their_thumbnails(client):
    client.post("/v1/classes", data={"label": "r"}, files=files(character(4)[:3]))
    r = client.post("/v1/classes", data={"label": "r", "replace": "true"}, files=files(character(4)[3:4]))
    assert r.json()["total_embeddings"] == 1
    assert [len(c["thumbnails"]) for c in client.get("/v1/classes").json() if c["label"] == "r"] == [1]
    client.delete("/v1/classes/r")


def test_export_then_import_round_trip(client):
    exported = client.get("/v1/gallery/export")
    assert exported.status_code == 200 and exported.json()["format"] == "metaedge-gallery-export"
    refused = client.post("/v1/gallery/import", content=exported.content)
    assert refused.status_code == 409 and "already has class(es) c1, c2" in refused.json()["error"]
    before = state(client)[1]
    r = client.post("/v1/gallery/import?replace=true", content=exported.content)
    assert r.json() == {"imported": 2} and state(client)[1] == before


def test_info_healthz_and_metrics(client):
    info = client.get("/v1/info").json()
    assert info["task"] == "classify" and info["model_id"].startswith("protonet-")
    assert info["preprocess"]["size"] > 0 and info["limits"]["max_images"] == LIMITS.max_images
    assert client.get("/healthz").json()["status"] == "ok"
    client.get("/v1/classes")
    client.post("/v1/classify?top_k=0", files=files(character(3)[12:13]))  # a plain Starlette route, refused
    text = client.get("/metrics").text
    assert 'metaedge_http_requests_total{method="GET",route="/v1/classes",status="200"}' in text
    assert 'metaedge_http_requests_total{method="POST",route="/v1/classify",status="422"}' in text
    assert 'metaedge_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/v1/classes"}' in text
    # the scrape itself is the one request in progress
    assert 'metaedge_http_requests_in_progress{method="GET"} 1.0' in text
    assert 'metaedge_http_requests_in_progress{method="POST"} 0.0' in text
    classes = len(client.get("/v1/classes").json())
    assert f"metaedge_gallery_classes {float(classes)}" in text


def test_the_page_is_served_from_the_package_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/{name}").status_code == 200
    assert "http" not in page.text.split("<footer")[0]  # nothing fetched from another host
    assert client.get("/../pyproject.toml").status_code == 404 and client.get("/static/app.js").status_code == 404


def test_docs_and_everything_it_loads_come_from_the_service(client):
    """FastAPI's own /docs makes the browser load Swagger UI from a CDN; the device's serves every file itself."""
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle(" in page.text
    assert not re.search(r"(https?:)?//", page.text.replace("<!DOCTYPE html>", "")), "a URL to another host"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "http" not in policy and "*" not in policy
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sorted(referenced) == ["/docs/favicon.png", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css",
                                  "/openapi.json"]  # fmt: skip
    for url in referenced:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 500, url
    classify = client.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]
    assert [p["name"] for p in classify["parameters"]] == ["top_k", "threshold", "no_threshold", "adapt"]
    assert "validatorUrl" in page.text  # Swagger UI's default asks validator.swagger.io about the spec
    for other in ("/docs/../pyproject.toml", "/docs/core.py", "/docs/..%2F__init__.py", "/redoc"):
        assert client.get(other).status_code == 404, other


def test_classify_and_locate_requests_run_nothing_on_worker_threads(client, monkeypatch):
    """A plain `def` dependency (the API-key check was one) costs a thread hand-off per request: the hot routes, and
    the runtime's call in them, run on the event loop's thread and nowhere else."""
    import threading

    import anyio.to_thread

    handed = []
    real = anyio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        handed.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    threads = set()
    real_classify = Runtime.classify

    def classify(*args, **kwargs):
        threads.add(threading.get_ident())
        return real_classify(*args, **kwargs)

    monkeypatch.setattr(Runtime, "classify", classify)
    image = character(3)[12].read_bytes()
    assert client.post("/v1/classify?top_k=2", content=image, headers={"Content-Type": "image/png"}).status_code == 200
    assert client.post("/v1/classify", files=files(character(3)[12:13])).status_code == 200
    assert client.post("/v1/locate", content=image, headers={"Content-Type": "image/png"}).status_code == 409
    assert handed == []
    assert threads == {client.portal.call(threading.get_ident)}  # the loop's thread (the test client's portal)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400 megapixels in a few KB
    return buf.getvalue()


def _tiny() -> bytes:
    return png(Image.fromarray(np.eye(4, dtype=np.uint8) * 255))


def _noise(side: int) -> bytes:
    return png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)))


def _transparent() -> bytes:
    return png(Image.new("RGBA", (32, 32), (0, 0, 0, 0)))


def _sixteen_bit_blank() -> bytes:
    return png(Image.fromarray(np.full((32, 32), 40000, np.uint16)))


GOOD = character(5)[0].read_bytes()
BAD_UPLOADS = {
    "truncated": ({"files": [("images", ("t.png", GOOD[: len(GOOD) // 2], "image/png"))]}, 422,
                  "t.png: not a readable image"),
    "empty": ({"files": [("images", ("e.png", b"", "image/png"))]}, 422, "e.png: empty file"),
    "text": ({"files": [("images", ("x.png", b"this is not a picture", "image/png"))]}, 422, "not a readable image"),
    "bomb": ({"files": [("images", ("bomb.png", _bomb(), "image/png"))]}, 413, "-pixel limit"),
    "oversized": ({"files": [("images", ("big.png", _noise(400), "image/png"))]}, 413, "(max_image_bytes)"),
    "10000-images": ({"files": [("images", (f"{i}.png", _tiny(), "image/png")) for i in range(10_000)]}, 413, "max_"),
    "blank": ({"files": [("images", ("white.png", png(Image.new("L", (64, 64), 255)), "image/png"))]}, 422,
              "white.png: blank image"),
    "transparent": ({"files": [("images", ("a.png", _transparent(), "image/png"))]}, 422, "fully transparent"),
    "16-bit-blank": ({"files": [("images", ("d.png", _sixteen_bit_blank(), "image/png"))]}, 422, "blank image"),
    "no-images": ({"data": {"label": "x"}, "files": [("other", ("a.png", GOOD, "image/png"))]}, 422, "'images'"),
    "malformed-multipart": ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"images\"\r\n\r\nabc",
                             "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}, 4, ""),
    "not-an-upload": ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "multipart/form-data"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_get_a_one_line_4xx_and_change_nothing(client, case):
    kwargs, status, message = BAD_UPLOADS[case]
    before = state(client)
    for path in ("/v1/classes", "/v1/classify"):
        kwargs = {**kwargs, "data": {"label": "new", **kwargs.get("data", {})}} if path == "/v1/classes" else kwargs
        r = client.post(path, **{k: v for k, v in kwargs.items() if path == "/v1/classes" or k != "data"})
        assert (r.status_code // 100 == 4) if status == 4 else (r.status_code == status), (path, r.status_code, r.text)
        body = r.json()
        assert message in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
        if r.status_code == 413:
            assert body["limit"].startswith("max_") and body["max"] > 0  # the error names the limit
    assert state(client) == before
    assert client.get("/healthz").status_code == 200


BAD_REQUESTS = {
    "unknown-class-remove": (("delete", "/v1/classes/ghost"), {}, 404, "no class named 'ghost'"),
    "unknown-class-rename": (("patch", "/v1/classes/ghost"), {"json": {"label": "g2"}}, 404, "no class named"),
    "rename-taken": (("patch", "/v1/classes/c1"), {"json": {"label": "c2"}}, 409, "already has a class 'c2'"),
    "bad-json": (("patch", "/v1/classes/c1"), {"content": b"{bad", "headers": {"Content-Type": "application/json"}},
                 400, "not JSON"),
    "import-bad-json": (("post", "/v1/gallery/import"), {"content": b"[1, 2"}, 400, "not JSON"),
    "import-not-an-export": (("post", "/v1/gallery/import"), {"content": b'{"format": "x"}'}, 422,
                             "the uploaded export is not a valid gallery export"),
    "label-slash": (("post", "/v1/classes"), {"data": {"label": "a/b"}, "files": files(character(6)[:1])}, 422,
                    "path separator '/'"),
    "label-backslash": (("post", "/v1/classes"), {"data": {"label": "..\\x"}, "files": files(character(6)[:1])},
                        422, "path separator"),
    "label-control": (("post", "/v1/classes"), {"data": {"label": "bell\x07"}, "files": files(character(6)[:1])},
                      422, "control character U+0007"),
    "label-empty": (("post", "/v1/classes"), {"data": {"label": "  "}, "files": files(character(6)[:1])}, 422, "empty"),
    "label-missing": (("post", "/v1/classes"), {"files": files(character(6)[:1])}, 422, "label must be a string"),
    "rename-to-slash": (("patch", "/v1/classes/c1"), {"json": {"label": "x/y"}}, 422, "path separator"),
    "top-k-zero": (("post", "/v1/classify?top_k=0"), {"files": files(character(6)[:1])}, 422, "top_k"),
    "top-k-word": (("post", "/v1/classify?top_k=two"), {"files": files(character(6)[:1])}, 422, "top_k: 'two'"),
    "top-k-huge": (("post", "/v1/classify?top_k=1001"), {"files": files(character(6)[:1])}, 422, "1 to 1000"),
    "threshold-word": (("post", "/v1/classify?threshold=high"), {"files": files(character(6)[:1])}, 422,
                       "threshold: 'high'"),
    "threshold-nan": (("post", "/v1/classify?threshold=nan"), {"files": files(character(6)[:1])}, 422,
                      "threshold: not a number"),
    "adapt-maybe": (("post", "/v1/classify?adapt=maybe"), {"files": files(character(6)[:1])}, 422,
                    "adapt: 'maybe' is not a boolean"),
    "no-threshold-maybe": (("post", "/v1/classify?no_threshold=2"), {"files": files(character(6)[:1])}, 422,
                           "no_threshold"),
    "thumbnail-unknown": (("get", "/v1/thumbnails/999999"), {}, 404, "no thumbnail"),
    "thumbnail-not-a-number": (("get", "/v1/thumbnails/..%2Fetc"), {}, 4, ""),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_one_line_4xx_and_change_nothing(client, case):
    (method, path), kwargs, status, message = BAD_REQUESTS[case]
    before = state(client)
    r = getattr(client, method if kwargs.get("data") is None or method == "post" else method)(path, **kwargs)
    assert (r.status_code // 100 == 4) if status == 4 else (r.status_code == status), r.text
    assert message in r.json()["error"] and "\n" not in r.json()["error"]
    assert str(Path("g.db")) not in r.json()["error"]  # where the device keeps its gallery is not the client's
    assert state(client) == before


def test_error_mapping_of_gallery_messages_is_pinned():
    """errors.py maps GalleryError by message: these are the messages gallery.py makes today."""
    from metaedge.gallery import GalleryError
    from metaedge.serve.errors import status_of

    cases = {"x: the disk is full, could not enroll 'a'": 507, "x is read-only (y); could not enroll 'a'": 503,
             "x is locked: another program holds its write lock": 503, "no class named 'a' in x; enrolled: b": 404,
             "label '' is empty": 422}  # fmt: skip
    assert {m: status_of(GalleryError(m)) for m in cases} == cases


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    config = ServeConfig(store=None, api_key_file=str(key_file), host="0.0.0.0", cors_origins=("https://ok.example",))
    with TestClient(create_app(config)) as c:
        yield c


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"},
                                     {"Authorization": f"Basic {KEY}"}, {"X-API-Key": b"\xff\xfe"}])  # fmt: skip
def test_a_missing_or_wrong_key_is_refused(keyed, headers):
    for method, path in (("get", "/v1/classes"), ("get", "/v1/info"), ("get", "/metrics"), ("delete", "/v1/classes/a"),
                         ("post", "/v1/classify")):  # fmt: skip
        r = getattr(keyed, method)(path, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"], (path, r.text)
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/").status_code == 200  # probes and the page


def test_the_key_is_checked_before_the_body_is_read(tmp_path):
    """A client without the key cannot make the service read (spool, parse) an upload: 401 before any body."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    app = create_app(ServeConfig(store=None, api_key_file=str(key_file)))
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": GOOD, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"image/png"), (b"x-api-key", b"wrong" * 4)], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip
    import asyncio

    asyncio.run(app(scope, receive, send))
    app.state.worker.close()
    assert sent[0]["status"] == 401 and reads == []


def test_the_right_key_is_accepted_either_way(keyed):
    assert keyed.get("/v1/classes", headers={"X-API-Key": KEY}).json() == []
    assert keyed.get("/v1/classes", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_cors_is_off_unless_an_origin_is_given(client, keyed):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/classes", headers=preflight).headers
    assert "access-control-allow-origin" not in keyed.options("/v1/classes", headers=preflight).headers
    allowed = keyed.options("/v1/classes", headers={**preflight, "Origin": "https://ok.example"})
    # a browser's preflight carries no key: answered by CORS, not refused by the key check
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://ok.example"
    refused = keyed.get("/v1/classes", headers={"Origin": "https://ok.example"})  # the page can read why
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://ok.example"


def test_binding_beyond_loopback_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("METAEDGE_API_KEY", raising=False)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.20", "::", "device.local"):
        with pytest.raises(ServeError, match=f"refusing to listen on {host} without an API key"):
            check_bind(host, None)
        with pytest.raises(ServeError, match="without an API key"):
            create_app(ServeConfig(host=host))
    check_bind("0.0.0.0", KEY)
    monkeypatch.setenv("METAEDGE_API_KEY", KEY)
    assert load_key(None) == KEY
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ServeError, match="at least 16 characters"):
        load_key(tmp_path / "short")
    with pytest.raises(ServeError, match="cannot read the API key file"):
        load_key(tmp_path / "missing")


def test_the_cli_refuses_an_open_bind_without_a_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from metaedge.cli import app

    monkeypatch.delenv("METAEDGE_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--store", str(tmp_path / "g.db")])
    assert r.exit_code == 1 and "without an API key" in r.stderr and "Traceback" not in r.output
    assert "--api-key " not in CliRunner().invoke(app, ["serve", "--help"]).stdout  # no way to put it on argv


def test_without_keep_thumbnails_none_are_kept(tmp_path):
    with TestClient(create_app(ServeConfig(store=str(tmp_path / "g.db")))) as c:
        assert c.post("/v1/classes", data={"label": "a"}, files=files(character(7)[:2])).status_code == 201
        assert c.get("/v1/classes").json()[0]["thumbnails"] == []
        assert c.get("/v1/info").json()["keep_thumbnails"] is False


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_connections_have_nagle_off_in_every_worker_mode(monkeypatch, parser):
    """uvicorn's --workers sockets kept Nagle on: 48 ms per kept-alive request (the delayed ACK), not 4 ms."""
    import socket

    from metaedge.serve import server

    if parser == "httptools":
        pytest.importorskip("httptools", reason="uvicorn's C parser is not installed; the service uses h11")
        protocol = server.HTTP_PROTOCOL  # what `metaedge serve` runs where httptools is installed
        assert protocol is server.NoDelayHttpToolsProtocol
    else:
        protocol = server.NoDelayH11Protocol
    uvicorn_protocol = protocol.__mro__[2]  # after _NoDelay: uvicorn's own class
    monkeypatch.setattr(uvicorn_protocol, "connection_made", lambda self, transport: None)  # uvicorn's own set-up

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name, default=None):
            return {"socket": self.sock}.get(name, default)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        protocol.__new__(protocol).connection_made(Transport(sock))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
