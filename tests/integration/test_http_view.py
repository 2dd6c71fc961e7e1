"""The live view in a real headless Chromium: the page loads, the overlay image updates, the counters
move, the legend lists the classes; several viewers at once; a stalled viewer never stalls the
pipeline. A screenshot lands in test-artifacts/."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.sinks.http_view import HttpViewSink

from .mask_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Feeder, needs_chromium, real_samples, stream_info


@pytest.fixture
def live_view(camvid):
    classes, frames, masks = real_samples(camvid)
    sink = HttpViewSink("http://127.0.0.1:0?fps=20")
    sink.open(stream_info(classes, frames[0]))
    with Feeder(sink, frames, masks, rate=25) as feeder:
        yield sink, feeder


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@needs_chromium
def test_page_in_headless_chromium(live_view):
    sync_api = pytest.importorskip("playwright.sync_api")
    sink, feeder = live_view
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            pages = [browser.new_page(viewport={"width": 1000, "height": 560}) for _ in range(2)]
            for page in pages:
                page.goto(sink.url, timeout=15000)
            page = pages[0]
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=15000)
            width = feeder.frames[0].shape[1]  # the fixture frames' (240)
            assert page.evaluate("document.getElementById('overlay').naturalWidth") == width
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


GET_MJPEG = b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n"


def send_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the server's socket towards 127.0.0.1:client_port holds unacknowledged (/proc/net/tcp)."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == local and f[2] == remote:
            return int(f[4].split(":")[0], 16)
    return None


class MjpegReader(threading.Thread):
    """A healthy viewer: reads /stream.mjpg as fast as it comes, counting bytes and parts."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(GET_MJPEG)
        self.bytes = self.parts = 0

    def run(self) -> None:
        marker, tail = b"--segstreamframe", b""
        try:
            while chunk := self.sock.recv(1 << 20):
                self.bytes += len(chunk)
                data = tail + chunk
                self.parts += data.count(marker)
                tail = data[-(len(marker) - 1) :]
        except OSError:
            pass


@pytest.fixture
def big_live_view(camvid):
    """720p frames with noise: each JPEG (quality 95) is ≈ 0.5 MB, 20 a second, so a viewer that never
    reads fills the loopback buffers (a few MB) in well under a second and the send to it really blocks."""
    classes, frames, masks = real_samples(camvid)
    rng = np.random.default_rng(0)
    big = [
        np.clip(cv2.resize(f, (1280, 720)) + rng.normal(0, 60, (720, 1280, 3)), 0, 255).astype(np.uint8)
        for f in frames
    ]
    big_masks = [cv2.resize(m, (1280, 720), interpolation=cv2.INTER_NEAREST) for m in masks]
    sink = HttpViewSink("http://127.0.0.1:0?fps=20&quality=95")
    sink.open(stream_info(classes, big[0]))
    with Feeder(sink, big, big_masks, rate=25) as feeder:
        yield sink, feeder


def test_stalled_viewer_never_stalls_the_pipeline(big_live_view):
    sink, feeder = big_live_view
    # A viewer that opens the MJPEG stream and never reads, with a small receive window (set before
    # connecting so the handshake announces it): the server's send to it fills its buffer and blocks.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", sink.port))
    stalled.sendall(GET_MJPEG)
    stalled_port = stalled.getsockname()[1]
    vanished = socket.create_connection(("127.0.0.1", sink.port))
    vanished.sendall(GET_MJPEG)
    healthy = MjpegReader(sink.port)
    healthy.start()
    time.sleep(0.3)
    vanished.close()
    try:
        # Proof of a real stall: the server holds unsent bytes for that viewer and cannot hand it more
        # (its send queue is full and stays put; below, the healthy viewer gets far more meanwhile).
        end, queued = time.monotonic() + 10, []
        while time.monotonic() < end:
            queued = (queued + [send_queue(sink.port, stalled_port)])[-3:]
            if len(queued) == 3 and queued[0] and len(set(queued)) == 1:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"the viewer never stalled: send queue {queued}")
        stuck = queued[-1]

        before, t0 = feeder.written, time.monotonic()
        got_bytes, got_parts = healthy.bytes, healthy.parts
        time.sleep(3.0)
        elapsed = time.monotonic() - t0
        written = feeder.written - before
        # the pipeline kept its pace (25 a second, less the feeder's own work on busy cores); a
        # synchronous write to the stalled viewer would have blocked for the 10 s send timeout
        assert written >= 0.5 * 25 * elapsed, f"{written} frames in {elapsed:.1f} s"
        assert max(feeder.write_times) < 0.5
        # the healthy viewer kept receiving: many JPEGs, far more bytes than the stalled one holds
        assert healthy.parts - got_parts >= 10
        assert healthy.bytes - got_bytes > 2 * stuck
        # and the stalled viewer was stalled all along (same bytes waiting, connection still there)
        assert send_queue(sink.port, stalled_port) == stuck
        stats = json.loads(_get(sink.url + "stats.json"))
        assert stats["frames"] > before and stats["viewers"] >= 2
        jpeg = _get(sink.url + "frame.jpg")  # a one-shot request is still served
        assert jpeg[:2] == b"\xff\xd8"
    finally:
        stalled.close()
        healthy.sock.close()


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
