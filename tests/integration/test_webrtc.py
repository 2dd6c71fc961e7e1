"""The WebRTC live view in a real headless Chromium (Playwright, /usr/bin/chromium) against a real
live-view server fed real frames: the page negotiates over POST /webrtc/offer, receives and decodes the
video track (getStats), gets per-frame stats on the data channel, and reports glass-to-glass latency
beside MJPEG's for the same frames on the same run: capture -> in the page (WebRTC: decoded and handed
to the video compositor; MJPEG: decoded and drawn on a canvas) and capture -> shown (the first display
frame after that, on the page's requestAnimationFrame clock, for both). The figures go to
test-artifacts/webrtc-latency.json."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from stream.sinks.http_view import HttpViewSink

from .mask_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Feeder, needs_chromium, real_samples, stream_info

ARGS = [*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
pytest.importorskip("aiortc", reason="aiortc is in the webrtc and dev extras")
pytestmark = needs_chromium


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


FRAMES = 300  # per view, the same frames for both: 12 s at 25 fps, enough that a p50 is not a coin toss


def _p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def test_webrtc_page_receives_frames_and_beats_mjpeg_latency(live_view):
    sync_api = pytest.importorskip("playwright.sync_api")
    sink, feeder = live_view
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 500})
            page.goto(sink.url + "webrtc.html?mjpeg=1", timeout=15000)
            enough = f"(s.webrtc.length >= {FRAMES} && s.mjpeg.length >= {FRAMES})"
            page.wait_for_function(f"(s => s.error || {enough})(window.segstream)", timeout=60000)
            s = page.evaluate(
                "() => JSON.parse(JSON.stringify({...window.segstream, pc: null,"
                " answer: window.segstream.pc.remoteDescription.sdp}))"
            )
            artifacts = REPO / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "webrtc-view.png"))
        finally:
            browser.close()
    assert s["error"] is None, s["error"]
    assert s["state"] == "connected"
    assert s["framesDecoded"] >= FRAMES and s["messages"] >= FRAMES
    assert (s["frameWidth"], s["frameHeight"]) == (feeder.frames[0].shape[1], feeder.frames[0].shape[0])
    assert sink.webrtc is not None and sink.webrtc.frames_sent >= FRAMES
    # the answer asks for a zero playout delay and Chromium honours it: frames leave its jitter buffer
    # at once (without it: ~13 ms a frame on loopback, its jitter + decode + 10 ms render-delay target)
    assert "rtp-hdrext/playout-delay" in s["answer"], s["answer"]
    assert sink.webrtc.low_latency_peers == 1 and sink.webrtc.low_latency_off is None
    assert sink.webrtc.codec == "VP8" and sink.webrtc.encoder_off is None
    assert s["jitterBufferMs"] is not None and s["jitterBufferMs"] < 5, s["jitterBufferMs"]
    # every frame shown is matched to its capture time (RTP times come back from Chromium a tick
    # off for about one frame in four: exact matching left a quarter to a half of them unmatched)
    assert s["matched"] >= 0.97 * s["shownAfterOffset"], (s["matched"], s["shownAfterOffset"])

    # like for like: the same frames (by seq) through both views, on the same page and clock
    webrtc = {q: v for q, *v in zip(s["webrtcSeq"], s["webrtc"], s["presented"], strict=True)}
    mjpeg = {q: v for q, *v in zip(s["mjpegSeq"], s["mjpeg"], s["mjpegDrawn"], strict=True)}
    both = sorted(set(webrtc) & set(mjpeg))
    assert len(both) >= FRAMES - 30, len(both)
    w_shown, w_in = (_p50([webrtc[q][i] for q in both]) for i in (0, 1))
    m_shown, m_in = (_p50([mjpeg[q][i] for q in both]) for i in (0, 1))
    earlier = sum(webrtc[q][0] < mjpeg[q][0] for q in both) / len(both)
    later = sum(webrtc[q][0] > mjpeg[q][0] for q in both) / len(both)
    report = {
        "frames": len(both),
        "size": f"{s['frameWidth']}x{s['frameHeight']}",
        "webrtc_capture_to_in_page_ms_p50": round(w_in, 1),
        "mjpeg_capture_to_in_page_ms_p50": round(m_in, 1),
        "webrtc_capture_to_shown_ms_p50": round(w_shown, 1),
        "mjpeg_capture_to_shown_ms_p50": round(m_shown, 1),
        "shown_on_an_earlier_display_frame": {"webrtc": round(earlier, 3), "mjpeg": round(later, 3)},
        "webrtc_capture_to_received_ms_p50": round(_p50(s["received"]), 1) if s["received"] else None,
        "webrtc_capture_to_sent_ms_p50": round(_p50(s["sentLatency"]), 1),
        "webrtc_jitter_buffer_ms_per_frame": round(s["jitterBufferMs"], 2),
        "codec": sink.webrtc.codec,
    }
    (REPO / "test-artifacts" / "webrtc-latency.json").write_text(json.dumps(report, indent=1))
    print("latency", report)
    # same host, same clock: positive and bounded (the feeder stamps capture 20 ms before handing over)
    assert all(20 <= v < 2000 for v in (w_shown, w_in, m_shown, m_in)), report
    # the figure: capture -> the frame's arrival in the page, decoded (WebRTC: handed to the
    # video compositor; MJPEG: the JPEG decoded and drawn on the canvas), lower for WebRTC
    assert w_in < m_in, report
    # on screen both then wait for the next 60 Hz display frame, most often the same one for both, so
    # WebRTC's lead of a millisecond or two shows only on some frames: it must not be behind there
    # (before: 44 vs 33 ms, a whole display frame and more)
    assert w_shown < m_shown + 1.0, report


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
