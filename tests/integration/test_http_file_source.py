"""http:// sources against a real local HTTP server (Python's http.server on 127.0.0.1, in a thread).

A URL whose server says it is a file (Content-Length, a container with a finite duration) is read like a
file: all 221 frames of the bundled clip, in order, nothing dropped, the run ends at EOF; a connection lost
mid-file is an error, never a silent short video. A live stream (no Content-Length) whose server goes away
shows one line per reconnect attempt on the terminal and, its budget spent, ends the run non-zero with the
reason — after the frames it delivered were written.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

from engines.meta import META_KEY, ClassTable, ModelMeta
from stream.sources.base import ReadStatus
from stream.sources.file import to_bgr
from stream.sources.network import NetworkSource
from stream.uri import open_source
from tests.procs import decoded_frames, run, start
from tests.reading import read_all

ASSETS = Path(__file__).resolve().parents[2] / "stream" / "assets"
CLIP = ASSETS / "sample.mp4"
CLIP_FRAMES = 221


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with Content-Length, as any file server does."""

    def log_message(self, *args: object) -> None:
        pass


class Server:
    """A threaded HTTP server on a free 127.0.0.1 port; ``stop()`` also ends responses in progress."""

    def __init__(self, handler) -> None:
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.stopping = self.stopping  # handlers look here
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def stop(self) -> None:
        if not self.stopping.is_set():
            self.stopping.set()
            self.httpd.shutdown()
            self.httpd.server_close()  # new connections are refused from now on


@pytest.fixture
def file_server() -> Iterator[Server]:
    srv = Server(functools.partial(QuietFiles, directory=str(ASSETS)))
    yield srv
    srv.stop()


class CutFile(http.server.BaseHTTPRequestHandler):
    """Announces the whole clip (Content-Length) but the connection dies after 45% of it."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = CLIP.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: int(len(data) * 0.45)])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)


class LiveClip(http.server.BaseHTTPRequestHandler):
    """A live stream: no Content-Length, the clip's bytes paced over 20 s, until the server stops."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = CLIP.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()
        step = 16384
        for i in range(0, len(data), step):
            if self.server.stopping.is_set():
                return
            try:
                self.wfile.write(data[i : i + step])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(step / (len(data) / 20.0))


def tiny_model(path: Path) -> Path:
    """A 1x1-conv segmenter at 96x54 (11 classes): the pipeline's cost is decoding and encoding, not it."""
    classes = ClassTable(
        names=tuple(f"c{i}" for i in range(11)), palette=tuple((23 * i, 11 * i, 5 * i) for i in range(11))
    )
    meta = ModelMeta(arch="tiny", classes=classes, input_size=(96, 54), max_batch=4)
    w = np.random.default_rng(0).standard_normal((11, 3, 1, 1)).astype(np.float32)
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
            oh.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
            oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
        ],
        "tiny",
        [oh.make_tensor_value_info("images", T.FLOAT, ["batch", 3, "height", "width"])],
        [oh.make_tensor_value_info("ids", T.UINT8, ["batch", "height", "width"])],
        initializer=[nh.from_array(w, "W")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=META_KEY, value=meta.to_json())
    onnx.save(model, str(path))
    return path


# -- the source ------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_http_url_of_a_file_is_read_like_a_file(file_server: Server) -> None:
    src = open_source(file_server.url("sample.mp4"))
    assert isinstance(src, NetworkSource)
    info = src.open()
    try:
        assert (info.live, info.total_frames, info.width, info.height) == (False, CLIP_FRAMES, 960, 540)
        frames = read_all(src, limit=2000, timeout=10.0)
    finally:
        src.close()
    ok = [f for f in frames if f.status is ReadStatus.OK]
    assert len(ok) == CLIP_FRAMES and len(frames) == CLIP_FRAMES + 1  # every frame, then EOS: no loop
    assert [f.index for f in ok] == list(range(CLIP_FRAMES))
    assert frames[-1].status is ReadStatus.EOS and frames[-1].error is None
    assert src.stats.frames == CLIP_FRAMES and src.stats.dropped == 0
    with av.open(str(CLIP)) as local:  # the very frames of the file, not a resampled live feed
        first, last = None, None
        for i, f in enumerate(local.decode(video=0)):
            if i == 0:
                first = to_bgr(f)  # the file source's own conversion
            last = f
        assert np.array_equal(ok[0].image, first)
        assert np.array_equal(ok[-1].image, to_bgr(last))


@pytest.mark.timeout(60)
def test_http_file_whose_connection_dies_ends_with_the_reason() -> None:
    srv = Server(CutFile)
    try:
        src = open_source(srv.url("cut.mp4"))
        assert not src.open().live
        frames = read_all(src, limit=2000, timeout=10.0)
        src.close()
    finally:
        srv.stop()
    ok = [f for f in frames if f.status is ReadStatus.OK]
    assert 30 < len(ok) < 180
    eos = frames[-1]
    assert eos.status is ReadStatus.EOS
    assert eos.error is not None and f"connection lost after {len(ok)} frames" in eos.error
    assert eos.error.startswith(srv.url("cut.mp4"))


@pytest.mark.timeout(60)
def test_live_http_stream_reports_every_reconnect_attempt_and_gives_up() -> None:
    srv = Server(LiveClip)
    src = open_source(srv.url("live.mp4") + "?reconnect=2&backoff_min=0.1&backoff_max=0.2&timeout=2")
    try:
        assert src.open().live
        got = 0
        end = time.monotonic() + 20
        while got < 5 and time.monotonic() < end:
            got += src.read(timeout=1.0).status is ReadStatus.OK
        assert got == 5
        srv.stop()
        end = time.monotonic() + 30
        while (f := src.read(timeout=0.5)).status is not ReadStatus.EOS and time.monotonic() < end:
            pass
        notices = src.take_notices()
    finally:
        srv.stop()
        src.close()
    assert f.status is ReadStatus.EOS and "gave up after 3 failed reconnect attempts" in (f.error or "")
    attempts = [n for n in notices if "reconnect attempt" in n]
    assert len(attempts) == 3, notices
    assert "attempt 1 failed (cannot open stream (" in attempts[0] and "next in 0.1 s, 2 left" in attempts[0]
    assert "next in 0.2 s, 1 left" in attempts[1] and attempts[2].endswith(")")
    assert any("stream lost" in n for n in notices)
    assert all("reconnect=2" not in n for n in notices)  # the URL as opened, without our options


# -- the whole run ---------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_segstream_run_reads_an_http_file_losslessly_and_ends(file_server: Server, tmp_path: Path) -> None:
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    model = tiny_model(tmp_path / "m.onnx")
    r = run(
        "run", file_server.url("sample.mp4"), "--model", model,
        "--sink", out, "--stats-json", stats, "--no-progress",
        timeout=170, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith(f"{CLIP_FRAMES} frames in ")
    report = json.loads(stats.read_text())
    assert report["drops"] == {}, report["drops"]  # once ≈ 70% "capture_busy"
    assert decoded_frames(out) == CLIP_FRAMES


@pytest.mark.timeout(180)
def test_segstream_run_on_a_live_http_stream_shows_reconnects_and_fails_when_the_budget_is_spent(
    tmp_path: Path,
) -> None:
    srv = Server(LiveClip)
    out = tmp_path / "out.mp4"
    url = srv.url("live.mp4")
    source = f"{url}?reconnect=2&backoff_min=0.2&backoff_max=0.4&timeout=2"
    proc = start(
        "run",
        source,
        "--model",
        tiny_model(tmp_path / "m.onnx"),
        "--sink",
        out,
        "--no-progress",
        cwd=tmp_path,
    )
    try:
        end = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size > 30_000) and time.monotonic() < end:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert out.exists() and out.stat().st_size > 30_000, "no output before the deadline"
        srv.stop()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        srv.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    attempts = [ln for ln in lines if ln.startswith(f"segstream: {url}: reconnect attempt ")]
    assert len(attempts) == 3, stderr
    assert all("failed (cannot open stream (" in ln for ln in attempts), attempts
    assert lines[-1].startswith(
        f"segstream run: error: {url}: gave up after 3 failed reconnect attempts ("
    ), stderr
    assert decoded_frames(out) > 0  # what was read before the server went away is in a playable file


@pytest.mark.timeout(180)
def test_segstream_run_on_an_http_file_cut_short_writes_what_came_and_fails(tmp_path: Path) -> None:
    srv = Server(CutFile)
    out = tmp_path / "out.mp4"
    try:
        model = tiny_model(tmp_path / "m.onnx")
        r = run(
            "run", srv.url("cut.mp4"), "--model", model, "--sink", out, "--no-progress",
            timeout=170, cwd=tmp_path,
        )  # fmt: skip
    finally:
        srv.stop()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    prefix = f"segstream run: error: {srv.url('cut.mp4')}: connection lost after "
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    n = int(lines[0].split("connection lost after ")[1].split()[0])
    assert 30 < n < 180
    assert decoded_frames(out) == n  # every frame that arrived is in the (finalized) video
