"""The WebRTC live view in a real headless Chromium (Playwright, /usr/bin/chromium) against a real
live-view server fed real frames: the page negotiates over POST /webrtc/offer, receives and decodes the
video track (getStats), gets per-frame stats on the data channel, and reports glass-to-glass latency
(capture time -> frame shown) beside MJPEG's on the same run (capture -> JPEG decoded, drawn and shown
in the page). The figures go to test-artifacts/webrtc-latency.json."""

from __future__ import annotations

import json
import urllib.error
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
    "--autoplay-policy=no-user-gesture-required",
]
pytest.importorskip("aiortc", reason="aiortc is in the webrtc and dev extras")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed (CI: apt-get install chromium)"
)


@pytest.fixture
def live_view(camvid):
    classes, frames, masks = real_samples(camvid)
    sink = HttpViewSink("http://127.0.0.1:0?fps=25&webrtc_peers=2")
    sink.open(stream_info(classes, frames[0]))
    feeder = Feeder(sink, frames, masks, rate=25)
    feeder.start()
    yield sink, feeder
    feeder.stop()
    sink.close()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_webrtc_page_receives_frames_and_reports_latency_beside_mjpeg(live_view):
    sync_api = pytest.importorskip("playwright.sync_api")
    sink, feeder = live_view
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 500})
            page.goto(sink.url + "webrtc.html?mjpeg=1", timeout=15000)
            enough = "(s.webrtc.length >= 30 && s.mjpeg.length >= 30)"
            page.wait_for_function(f"(s => s.error || {enough})(window.segstream)", timeout=45000)
            s = page.evaluate("() => JSON.parse(JSON.stringify({...window.segstream, pc: null}))")
            artifacts = REPO / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "webrtc-view.png"))
        finally:
            browser.close()
    assert s["error"] is None, s["error"]
    assert s["state"] == "connected"
    assert s["framesDecoded"] >= 30 and s["messages"] >= 30
    assert (s["frameWidth"], s["frameHeight"]) == (feeder.frames[0].shape[1], feeder.frames[0].shape[0])
    assert sink.webrtc is not None and sink.webrtc.frames_sent >= 30
    med = lambda a: sorted(a)[len(a) // 2]  # noqa: E731
    webrtc, mjpeg = med(s["webrtc"]), med(s["mjpeg"])
    # same host, same clock: capture -> shown is positive and bounded (the feeder stamps capture
    # 20 ms before it hands the frame over)
    assert 20 <= webrtc < 2000 and 20 <= mjpeg < 2000, (webrtc, mjpeg)
    report = {
        "webrtc_capture_to_shown_ms_p50": round(webrtc, 1),
        "webrtc_capture_to_received_ms_p50": round(med(s["received"]), 1) if s["received"] else None,
        "webrtc_capture_to_sent_ms_p50": round(med(s["sentLatency"]), 1),
        "mjpeg_capture_to_shown_ms_p50": round(mjpeg, 1),
        "frames": {"webrtc": len(s["webrtc"]), "mjpeg": len(s["mjpeg"])},
    }
    (REPO / "test-artifacts" / "webrtc-latency.json").write_text(json.dumps(report, indent=1))
    print("latency", report)


def test_offer_errors_are_clear_http_answers(live_view):
    sink, _ = live_view
    status, doc = _post(sink.url + "webrtc/offer", b"{not json")
    assert status == 400 and "not JSON" in doc["error"]
    status, doc = _post(sink.url + "webrtc/offer", json.dumps({"type": "answer", "sdp": "x"}).encode())
    assert status == 400 and "offer" in doc["error"]
    for sdp in ("garbage", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"):
        status, doc = _post(sink.url + "webrtc/offer", json.dumps({"type": "offer", "sdp": sdp}).encode())
        assert status == 400 and doc["error"], doc
    assert len(sink.webrtc.peers) == 0  # a failed negotiation leaves no peer behind
    # the MJPEG parts say which frame they are and when it was captured
    with urllib.request.urlopen(sink.url + "stream.mjpg", timeout=10) as r:
        head = r.read(400).decode("latin-1")
    assert "X-Segstream-Seq: " in head and "X-Segstream-Capture: " in head


def test_webrtc_off_answers_501(camvid):
    classes, frames, _ = real_samples(camvid)
    sink = HttpViewSink("http://127.0.0.1:0?webrtc=0")
    sink.open(stream_info(classes, frames[0]))
    try:
        status, doc = _post(sink.url + "webrtc/offer", json.dumps({"type": "offer", "sdp": "v=0"}).encode())
        assert status == 501 and "webrtc=0" in doc["error"]
    finally:
        sink.close()
