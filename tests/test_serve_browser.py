"""The web page of metaedge serve in a real browser (Debian's chromium, headless, driven by Playwright): enroll two
classes from files, classify an image and read the answer off the page, remove a class.

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


def test_enroll_classify_and_remove_through_the_page(browser, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "scripts" / "bench_serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    samples = ROOT / "metaedge" / "reference" / "samples" / "Korean"
    drawings = {n: sorted((samples / f"character{n:02d}").glob("*.png")) for n in (1, 2)}
    proc, port = bench.start_server(tmp_path / "g.db", workers=1, extra=("--keep-thumbnails",))
    try:
        page = browser.new_page()
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(f"http://127.0.0.1:{port}/")
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
        assert failed == [], failed  # nothing the page asked for failed, nothing came from elsewhere
    finally:
        assert bench.stop_server(proc) == 0
