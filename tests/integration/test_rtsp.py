"""RTSP cameras against a real RTSP server: GStreamer's gst-rtsp-server (tests/integration/rtsp_server.py, run
by the system Python as a process of its own) on 127.0.0.1, serving a live H.264 test pattern or the bundled
clip. The camera is killed, frozen (SIGSTOP) and restarted at another size while segstream reads it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.sources.base import ReadStatus, SourceError
from stream.sources.network import NetworkSource
from stream.transport import free_tcp_port
from stream.uri import open_source
from tests.integration.mask_helpers import Headers
from tests.procs import REPO, frames_in, start
from tests.reading import read_ok

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
PASSWORD = "s3cret-Pw9"  # must never appear in anything segstream prints, writes or publishes


def _gst_rtsp_missing() -> str | None:
    probe = (
        'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst; '
        "Gst.init(None); "
        'assert all(map(Gst.ElementFactory.find, ("x264enc", "rtph264pay", "qtdemux", "videotestsrc")))'
    )
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    if r.returncode:
        return "gst-rtsp-server is not installed (bash tools/install-dev.sh installs it)"
    return None


_MISSING = _gst_rtsp_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


class Camera:
    """One gst-rtsp-server process: ``start()`` waits until it listens; ``kill()`` is a crash (SIGKILL);
    ``freeze()``/``thaw()`` keep its connections open but silent (SIGSTOP/SIGCONT)."""

    def __init__(self, port: int, *args: str, user: str | None = None) -> None:
        self.port, self.args, self.user = port, list(args), user
        self.proc: subprocess.Popen | None = None

    def url(self, password: str | None = PASSWORD, query: str = "") -> str:
        cred = f"{self.user}:{password}@" if self.user else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}/live" + (f"?{query}" if query else "")

    def start(self, *args: str) -> None:
        cmd = [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port), *(args or self.args)]
        if self.user:
            cmd += ["--user", self.user, "--password", PASSWORD]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()  # "READY" once it listens, or why it could not
        assert line.strip() == "READY", f"RTSP server did not start: {line}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def camera(request: pytest.FixtureRequest) -> Iterator[Camera]:
    """``@pytest.mark.parametrize("camera", [(args, user)], indirect=True)``; default: 320x240 at 30 fps."""
    args, user = getattr(request, "param", (("--pattern", "320x240@30"), None))
    cam = Camera(free_tcp_port(), *args, user=user)
    cam.start()
    yield cam
    if cam.proc is not None:
        cam.thaw()
    cam.kill()


# ---------------------------------------------------------------------------------------- the source


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("camera", "query", "size"),
    [
        ((("--pattern", "320x240@30"), None), "", (240, 320)),
        ((("--clip", str(REPO / "stream" / "assets" / "sample.mp4")), None), "transport=udp", (540, 960)),
    ],
    indirect=["camera"],
    ids=["pattern-tcp", "clip-udp"],
)
def test_frames_flow_with_the_cameras_clock(camera: Camera, query: str, size: tuple[int, int]) -> None:
    src = open_source(camera.url(query=query))
    assert isinstance(src, NetworkSource) and src.transport == (query.split("=")[1] if query else "tcp")
    info = src.open()
    try:
        assert (info.height, info.width) == size and info.live
        frames = read_ok(src, 40, within_s=15, read_timeout=0.5)
        assert len(frames) == 40
        assert all(f.image.shape == (*size, 3) for f in frames)
        # RTCP sender reports come every few seconds (the first one at a randomized moment, sometimes after
        # the first 40 frames): from the first report on every frame has the camera's capture time, a moment
        # before we received it (same host, same clock)
        end = time.monotonic() + 12
        while not any(f.camera_time is not None for f in frames) and time.monotonic() < end:
            frames += read_ok(src, 10, within_s=2, read_timeout=0.5)
        first = next((i for i, f in enumerate(frames) if f.camera_time is not None), None)
        assert first is not None, "no frame carried the camera's clock within 12 s"
        timed = frames[first:]
        assert all(f.camera_time is not None for f in timed)
        for f in timed:
            assert -0.01 < f.timestamp - f.camera_time < 1.0, (f.timestamp, f.camera_time)
    finally:
        src.close()


@pytest.mark.timeout(60)
def test_a_slow_reader_gets_the_newest_frame_not_a_backlog(camera: Camera) -> None:
    """The consumer takes a frame every 250 ms from a 30 fps camera: each frame it gets is fresh (a backlog
    would age by ~220 ms per read), and the frames it never took are counted."""
    src = open_source(camera.url())
    src.open()
    try:
        end = time.monotonic() + 10
        while (f := src.read(0.5)).camera_time is None and time.monotonic() < end:
            pass  # until the first sender report
        assert f.camera_time is not None
        ages, indices = [], []
        for _ in range(12):
            time.sleep(0.25)
            f = src.read(timeout=1.0)
            assert f.status is ReadStatus.OK
            ages.append(time.time() - f.camera_time)
            indices.append(f.index)
        assert max(ages) < 0.4, ages  # 12 reads behind a backlog would be ~2.6 s old by the end
        assert ages[-1] < ages[0] + 0.2, ages  # not growing
        gaps = [b - a for a, b in zip(indices, indices[1:], strict=False)]
        assert min(gaps) >= 4, gaps  # ~7 frames arrive per 250 ms: the skipped ones are dropped ...
        assert src.stats.dropped >= sum(g - 1 for g in gaps)  # ... and counted
    finally:
        src.close()


@pytest.mark.timeout(60)
def test_a_silent_camera_is_noticed_and_the_stream_comes_back(camera: Camera) -> None:
    src = open_source(camera.url(query="timeout=1&open_timeout=1&backoff_min=0.2&backoff_max=0.5"))
    src.open()
    try:
        before = read_ok(src, 10, within_s=10, read_timeout=0.5)
        assert len(before) == 10
        camera.freeze()  # alive, connection open, nothing sent: only the silence timeout can tell
        t0 = time.monotonic()
        notices: list[str] = []
        while not any("reconnect attempt 1 failed" in n for n in notices) and time.monotonic() - t0 < 10:
            src.read(timeout=0.2)
            notices += src.take_notices()
        assert src.stats.down_since is not None and src.stats.outages == 1
        camera.thaw()
        end = time.monotonic() + 15
        while src.stats.reconnects < 1 and time.monotonic() < end:
            src.read(timeout=0.2)
        notices += src.take_notices()
        after = read_ok(src, 10, within_s=10, read_timeout=0.5)
        assert len(after) == 10 and after[0].index > before[-1].index
        lost = [n for n in notices if "stream lost" in n]
        assert len(lost) == 1 and "stream lost (no data for 1." in lost[0], notices
        failed = [n for n in notices if "reconnect attempt" in n]
        assert failed and all("failed (" in n and "next in " in n for n in failed), failed
        back = [n for n in notices if "reconnected after" in n]
        assert len(back) == 1 and "1 reconnect," in back[0], notices
        link = src.stats.link()
        assert link["reconnects"] == 1 and link["outages"] == 1 and not link["down"]
        assert link["outage_s"] >= 1.0  # frozen for the silence timeout (1 s) and the failed attempt(s)
    finally:
        camera.thaw()
        src.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("camera", [(("--pattern", "320x240@30"), "viewer")], indirect=True)
def test_credentials_open_the_stream_and_a_wrong_password_is_never_echoed(camera: Camera) -> None:
    src = open_source(camera.url())
    info = src.open()
    try:
        assert PASSWORD not in info.uri and "viewer:***@" in info.uri
        assert len(read_ok(src, 5, within_s=10, read_timeout=0.5)) == 5
    finally:
        src.close()
    with pytest.raises(SourceError) as e:
        open_source(camera.url(password="Wr0ng-guess", query="open_timeout=3")).open()
    assert "401" in str(e.value) and "Wr0ng-guess" not in str(e.value) and "viewer:***@" in str(e.value)


# -------------------------------------------------------------------------------------- the pipeline


@pytest.mark.timeout(120)
@pytest.mark.parametrize("camera", [(("--pattern", "320x240@15"), "viewer")], indirect=True)
def test_camera_restarted_at_another_size_run_reconnects_reports_and_never_shows_the_password(
    camera: Camera, tmp_path: Path, onnx_model: Path
) -> None:
    """A camera with a password is killed mid-run and comes back 2 s later at another size: the run says
    so on the terminal, resumes, counts the outage in --stats-json, the mask headers and the live view,
    and the password appears nowhere."""
    pub, view = free_tcp_port(), free_tcp_port()
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    url = camera.url(query="timeout=2&open_timeout=2&backoff_min=0.3&backoff_max=1&reconnect=30")
    p = start(
        "run", url, "--model", str(onnx_model), "--sink", str(out),
        "--sink", f"zmq-pub://127.0.0.1:{pub}", "--sink", f"http://127.0.0.1:{view}",
        "--stats-json", str(stats), cwd=tmp_path,
    )  # fmt: skip
    headers = Headers(pub)
    pages: list[str] = []
    try:
        headers.wait(lambda hs: len(hs) >= 10, 60, p)
        camera.kill()
        down_at = time.monotonic()
        time.sleep(2.0)
        camera.start("--pattern", "480x360@15")  # reconfigured: another size
        hs = headers.wait(lambda hs: sum(h["width"] == 480 for h in hs) >= 10, 40, p)
        up_after = time.monotonic() - down_at
        for path in ("stats.json", ""):
            with urllib.request.urlopen(f"http://127.0.0.1:{view}/{path}", timeout=5) as r:
                pages.append(r.read().decode())
        p.send_signal(signal.SIGINT)  # Ctrl-C: drain, finalize, exit 0
        stdout, stderr = p.communicate(timeout=60)
    finally:
        headers.close()
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0 and "Traceback" not in stderr, stderr

    # the terminal: one line for the loss (with its reason), one per failed attempt (reason, next delay),
    # one for the reconnection (with the outage), one for the new size
    lines = [ln for ln in stderr.splitlines() if "127.0.0.1" in ln]
    lost = [ln for ln in lines if "stream lost (" in ln]
    failed = [ln for ln in lines if "reconnect attempt" in ln]
    back = [ln for ln in lines if "reconnected after" in ln]
    assert len(lost) == 1 and "reconnecting now" in lost[0], stderr
    assert failed and all("failed (" in ln and "next in " in ln for ln in failed), stderr
    assert len(back) == 1, stderr
    assert any("frame size changed from 320x240 to 480x360" in ln for ln in lines), stderr

    # --stats-json: the stream's reconnects and outage seconds, and glass-to-output latency
    rep = json.loads(stats.read_text())
    link = rep["streams"]["0"]
    assert link["reconnects"] == 1 and link["outages"] == 1 and link["down"] is False
    assert 2.0 <= link["outage_s"] <= up_after + 0.5, (link, up_after)
    assert link["uri"].startswith("rtsp://viewer:***@127.0.0.1:")
    glass = rep["glass_to_output_ms"]
    assert glass["count"] > 0 and 0 < glass["p50"] < 2000, glass
    assert "latency glass->output p50" in stdout and "1 reconnect(s), 1 outage(s)" in stdout, stdout

    # mask headers: counters before and after the outage, both sizes, the camera's clock
    assert {h["width"] for h in hs} == {320, 480}
    assert hs[0]["source"]["reconnects"] == 0 and hs[-1]["source"]["reconnects"] == 1
    assert hs[-1]["source"]["outage_s"] >= 2.0 and hs[-1]["source"]["uri"] == link["uri"]
    assert any("camera" in h["timestamps"] for h in hs)

    # the live view's data has the same counters
    view_stats = json.loads(pages[0])
    assert view_stats["source"]["reconnects"] == 1 and view_stats["source"]["uri"] == link["uri"]

    # the output is finalized and holds every frame written, of either size
    assert frames_in(out) == rep["frames"] > 20

    # the password is nowhere: terminal, stats file, mask headers, live view
    for where, text in {
        "stdout": stdout, "stderr": stderr, "stats": stats.read_text(),
        "headers": "\n".join(headers.raw), "view": "\n".join(pages),
    }.items():  # fmt: skip
        assert PASSWORD not in text, where
    assert "viewer:***@" in stderr


@pytest.mark.timeout(90)
def test_camera_that_never_comes_back_ends_the_run_after_the_budget(
    camera: Camera, tmp_path: Path, onnx_model: Path
) -> None:
    pub = free_tcp_port()
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    url = camera.url(query="timeout=1&open_timeout=1&backoff_min=0.2&backoff_max=0.4&reconnect=2")
    p = start(
        "run", url, "--model", str(onnx_model), "--sink", str(out), "--sink", f"zmq-pub://127.0.0.1:{pub}",
        "--stats-json", str(stats), cwd=tmp_path,
    )  # fmt: skip
    headers = Headers(pub)
    try:
        headers.wait(lambda hs: len(hs) >= 10, 60, p)
        camera.kill()
        t0 = time.monotonic()
        stdout, stderr = p.communicate(timeout=40)
        ended_after = time.monotonic() - t0
    finally:
        headers.close()
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 2, stderr  # a source that failed: one line, exit 2
    # 3 attempts (the first, then reconnect=2 more) 0.2 + 0.4 s apart, each refused at once
    assert ended_after < 20, ended_after
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("segstream run: error: rtsp://127.0.0.1:") and "gave up after 3 failed" in last
    assert "option reconnect=2" in last and "Traceback" not in stderr
    lines = stderr.splitlines()
    attempts = [ln for ln in lines if ln.startswith("segstream: ") and "reconnect attempt" in ln]
    assert len(attempts) == 3, stderr
    rep = json.loads(stats.read_text())
    assert rep["streams"]["0"]["outages"] == 1 and rep["streams"]["0"]["down"] is True
    assert frames_in(out) == rep["frames"] >= 10  # what was written before the camera died is kept
