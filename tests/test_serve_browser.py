"""The web page of metaedge serve in a real browser (Debian's chromium, headless, driven by Playwright): enroll two
classes from files, classify an image and read the answer off the page, remove a class; open /docs; on a
localisation bundle, locate in a scene and read the boxes off the page. Nothing the pages load leaves loopback.

METAEDGE_SERVE_SCREENSHOT=docs/serve.png pytest tests/test_serve_browser.py  # regenerates the docs screenshot
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
# The flags that let chromium run headless as root in a container, with nothing fetched from the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium installed (Debian: apt-get install -y chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install playwright)")
    profile = tempfile.mkdtemp(prefix="metaedge-chromium-")
    with sync_api.sync_playwright() as p:
        # Playwright's own browser download is never used: the system's chromium, a fresh profile.
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1100, "height": 760})  # fmt: skip
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "scripts" / "bench_serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _watch(page, port: int) -> tuple[list, list]:
    """Lists that fill with every request that failed or left the device, and every console error (a CSP
    violation is one)."""
    base = f"http://127.0.0.1:{port}/"
    failed, errors = [], []
    page.on("request", lambda r: None if r.url.startswith((base, "blob:", "data:")) else failed.append(r.url))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return failed, errors


def test_enroll_classify_and_remove_through_the_page(browser, tmp_path):
    bench = _bench()
    samples = ROOT / "metaedge" / "reference" / "samples" / "Korean"
    drawings = {n: sorted((samples / f"character{n:02d}").glob("*.png")) for n in (1, 2)}
    proc, port = bench.start_server(tmp_path / "g.db", workers=1, extra=("--keep-thumbnails",))
    try:
        page = browser.new_page()
        failed, errors = _watch(page, port)
        page.goto(f"http://127.0.0.1:{port}/")
        assert page.locator("#locate").is_hidden()  # a classification bundle: no locate panel
        page.wait_for_selector("#model:has-text('protonet')")
        for n, label in ((1, "giyeok"), (2, "nieun")):
            page.fill("#enroll-label", label)
            page.set_input_files("#enroll-files", [str(p) for p in drawings[n][:5]])
            page.click("#enroll-submit")
            page.wait_for_selector(f"#classes li[data-label='{label}'] .thumbs img >> nth=4")  # five thumbnails
            assert page.text_content(f"#classes li[data-label='{label}'] .count") == "5 images"
        page.set_input_files("#classify-files", str(drawings[2][12]))  # a drawing of nieun by someone else
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#result-label") == "nieun"
        assert page.locator("#result-top li").count() == 2
        shot = os.environ.get("METAEDGE_SERVE_SCREENSHOT")
        page.screenshot(path=shot or str(tmp_path / "serve.png"), full_page=True)

        remove = "#classes li[data-label='giyeok'] button.remove"
        page.click(remove)  # arms it
        page.click(remove)  # confirms
        page.wait_for_selector("#classes li[data-label='giyeok']", state="detached")
        assert "removed giyeok" in page.text_content("#status")
        assert [li.get_attribute("data-label") for li in page.locator("#classes li").all()] == ["nieun"]

        docs = browser.new_page()  # the API's page: Swagger UI, every file of it from the device
        docs_failed, docs_errors = _watch(docs, port)
        docs.goto(f"http://127.0.0.1:{port}/docs")
        docs.wait_for_selector(".swagger-ui .info .title:has-text('metaedge')")
        docs.wait_for_selector(".opblock-summary-path[data-path='/v1/classify']")
        found = (failed, errors, docs_failed, docs_errors)
        assert found == ([], [], [], []), found  # nothing failed or left loopback, no console error
    finally:
        assert bench.stop_server(proc) == 0


def test_locate_through_the_page(browser, tmp_path, tiny_seg_run, tiny_locate_bundle):
    """A localisation bundle: the page shows the locate panel; a scene's masks and boxes are drawn over it, and the
    boxes it lists are Runtime.locate's for the same scene."""
    import numpy as np
    from PIL import Image

    import metaedge
    from metaedge import checkpoint as ckpt
    from metaedge.data.clutter import scene_set
    from metaedge.evaluate_segment import held_out_glyphs

    glyphs = held_out_glyphs(ckpt.read_meta(ckpt.resolve(tiny_seg_run)), "x", None, None)
    scenes = scene_set(glyphs, clutter=4, count=2, seed=5)
    paths = {}
    for name, chw in (("a", scenes.references[0, 0]), ("b", scenes.references[1, 0]), ("scene", scenes.scenes[0])):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(paths[name])
    bench = _bench()
    store = tmp_path / "g.db"
    proc, port = bench.start_server(store, workers=1, extra=("--bundle", str(tiny_locate_bundle)))
    try:
        page = browser.new_page()
        failed, errors = _watch(page, port)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#model:has-text('locate')")
        assert page.locator("#locate").is_visible() and page.locator("#classify").is_hidden()
        for label in ("a", "b"):
            page.fill("#enroll-label", label)
            page.set_input_files("#enroll-files", str(paths[label]))
            page.click("#enroll-submit")
            page.wait_for_selector(f"#classes li[data-label='{label}']")
        page.set_input_files("#locate-files", str(paths["scene"]))
        page.wait_for_selector("#locate-result:not([hidden])")
        with metaedge.Runtime(tiny_locate_bundle, store, readonly=True) as rt:
            expected = rt.locate(paths["scene"])
        listed = [li.get_attribute("data-label") for li in page.locator("#locate-found li").all()]
        assert sorted(listed) == sorted(f.label for f in expected), listed  # (near-ties may order either way)
        for f in expected:
            text = page.text_content(f"#locate-found li[data-label='{f.label}'] .box")
            assert text == (f"box {', '.join(map(str, f.box))}" if f.box else "no mask")
        # drawn at 3x: the canvas holds the scene, and over it the present classes' masks
        size = page.evaluate("[document.getElementById('locate-canvas').width, "
                             "document.getElementById('locate-canvas').height]")  # fmt: skip
        assert size == [96 * 3, 96 * 3]
        drawn = next((f for f in expected if f.present and f.box), None)
        if drawn is not None:  # a mask pixel of a present class is tinted: not the scene's own colour there
            y, x = (int(v) for v in np.argwhere(drawn.mask)[0])
            pixel = page.evaluate(f"Array.from(document.getElementById('locate-canvas').getContext('2d')"
                                  f".getImageData({3 * x + 1}, {3 * y + 1}, 1, 1).data.slice(0, 3))")  # fmt: skip
            assert pixel != scenes.scenes[0][:, y, x].tolist(), (x, y, pixel)
        assert (failed, errors) == ([], []), (failed, errors)
    finally:
        assert bench.stop_server(proc) == 0
