"""The live view in a real headless Chromium: the page loads, the overlay image updates, the counters
move, the legend lists the classes; several viewers at once; a stalled viewer never stalls the
pipeline. A screenshot lands in test-artifacts/."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from stream.sinks.http_view import HttpViewSink

from .mask_helpers import REPO, Feeder, real_samples, stream_info

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def live_view(camvid):
    classes, frames, masks = real_samples(camvid)
    sink = HttpViewSink("http://127.0.0.1:0?fps=20")
    sink.open(stream_info(classes, frames[0]))
    feeder = Feeder(sink, frames, masks, rate=25)
    feeder.start()
    yield sink, feeder
    feeder.stop()
    sink.close()


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed (CI: apt-get install chromium)"
)
def test_page_in_headless_chromium(live_view):
    sync_api = pytest.importorskip("playwright.sync_api")
    sink, _ = live_view
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            pages = [browser.new_page(viewport={"width": 1000, "height": 560}) for _ in range(2)]
            for page in pages:
                page.goto(sink.url, timeout=15000)
            page = pages[0]
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=15000)
            assert page.evaluate("document.getElementById('overlay').naturalWidth") == 480
            # the image really changes: hash its pixels twice through a canvas (same origin, not tainted)
            digest = """() => { const img = document.getElementById('overlay');
                const c = document.createElement('canvas');
                c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');
                g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
                let h = 0; for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) >>> 0; return h; }"""
            first = page.evaluate(digest)
            page.wait_for_function(f"({digest})() !== {first}", timeout=10000)
            frames0 = int(page.inner_text("#frames"))
            page.wait_for_function(
                f"parseInt(document.getElementById('frames').textContent) > {frames0 + 10}", timeout=10000
            )
            page.wait_for_function(
                "parseFloat(document.getElementById('fps').textContent) > 5", timeout=10000
            )
            assert page.inner_text("#latency").endswith("ms")
            assert "Sky" in page.inner_text("#legend") and "Bicyclist" in page.inner_text("#legend")
            assert "infer latency_ms" in page.inner_text("#stages")
            page.wait_for_function(
                "parseInt(document.getElementById('viewers').textContent) >= 2", timeout=10000
            )
            page.screenshot(path=str(artifacts / "live_view.png"))
        finally:
            browser.close()
    assert (artifacts / "live_view.png").stat().st_size > 10_000
    assert sink.encoded < sink._frames + 1  # one JPEG per frame at most, whatever the number of viewers


def test_stalled_viewer_never_stalls_the_pipeline(live_view):
    sink, feeder = live_view
    # a viewer that opens the MJPEG stream and never reads: its socket buffer fills, the server's send blocks
    stalled = socket.create_connection(("127.0.0.1", sink.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    vanished = socket.create_connection(("127.0.0.1", sink.port))
    vanished.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    vanished.close()
    try:
        before = feeder.written
        time.sleep(2.0)
        assert feeder.written - before > 30  # 25 fps feeder kept its pace
        assert max(feeder.write_times) < 0.5  # a stall would last the 10 s send timeout
        stats = json.loads(_get(sink.url + "stats.json"))
        assert stats["frames"] > before and stats["viewers"] >= 1
        jpeg = _get(sink.url + "frame.jpg")  # a healthy viewer is still served
        assert jpeg[:2] == b"\xff\xd8"
    finally:
        stalled.close()


def test_bad_spec_and_busy_port(camvid):
    from stream.sinks.base import SinkError

    with pytest.raises(SinkError, match="unknown option"):
        HttpViewSink("http://127.0.0.1:0?colour=red")
    classes, frames, _ = real_samples(camvid, 1)
    a = HttpViewSink("http://127.0.0.1:0")
    a.open(stream_info(classes, frames[0]))
    try:
        b = HttpViewSink(f"http://127.0.0.1:{a.port}")
        with pytest.raises(SinkError, match="cannot listen"):
            b.open(stream_info(classes, frames[0]))
    finally:
        a.close()
