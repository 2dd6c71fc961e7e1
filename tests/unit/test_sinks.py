"""Sinks write real files that ffprobe/OpenCV read back; the display turns itself off without a display."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.sinks.base import Result, SinkError, StreamInfo
from stream.sinks.display import DisplaySink
from stream.sinks.images import ImageFolderSink
from stream.sinks.video import VideoFileSink
from stream.sources.base import ReadStatus
from stream.uri import open_sink, open_source

REPO = Path(__file__).resolve().parents[2]
CLASSES = ClassTable(names=("a", "b", "c"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255)))


def ffprobe(path: Path) -> dict:
    """Decoded frame count, rate, codec, pixel format and size of the first video stream."""
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,r_frame_rate,codec_name,pix_fmt,width,height", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)["streams"][0]


def info(w: int, h: int, fps: float = 12.0, live: bool = False) -> StreamInfo:
    return StreamInfo("test", w, h, fps, CLASSES, live)


def result(i: int, w: int, h: int) -> Result:
    frame = np.zeros((h, w, 3), np.uint8)
    cv2.circle(frame, (i * 3 % w, h // 2), max(2, h // 6), (255, 255, 255), -1)
    mask = np.full((h, w), i % 3, np.uint8)
    return Result(seq=i, frame_index=i, frame=frame, mask=mask)


# -- video file ------------------------------------------------------------------------------------------
def test_video_sink_writes_every_frame_at_the_source_rate(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    sink = open_sink(str(out))
    assert isinstance(sink, VideoFileSink)
    sink.open(info(160, 120, fps=12))
    for i in range(30):
        sink.write(result(i, 160, 120))
    sink.close()
    s = ffprobe(out)
    assert (s["codec_name"], s["pix_fmt"], s["r_frame_rate"]) == ("h264", "yuv420p", "12/1")
    assert int(s["nb_read_frames"]) == 30
    assert (s["width"], s["height"]) == (160, 120)


def test_video_sink_keeps_count_and_rate_of_a_real_clip(avi_clip, tmp_path: Path) -> None:
    src = open_source(str(avi_clip.path))
    si = src.open()
    out = tmp_path / "highway.mp4"
    sink = open_sink(f"file:{out}?preset=ultrafast")
    sink.open(info(si.width, si.height, fps=si.fps))
    n = 0
    while (f := src.read()).status is not ReadStatus.EOS and n < 200:
        sink.write(Result(n, f.index, f.image, np.zeros(f.image.shape[:2], np.uint8)))
        n += 1
    sink.close()
    src.close()
    s = ffprobe(out)
    assert int(s["nb_read_frames"]) == 200 and s["r_frame_rate"] == "10/1"


def test_video_sink_pads_odd_sizes_and_fits_a_changed_size(tmp_path: Path) -> None:
    out = tmp_path / "odd.mkv"
    sink = VideoFileSink(str(out))
    sink.open(info(81, 47, fps=30000 / 1001))
    for i in range(5):
        sink.write(result(i, 81, 47))
    for i in range(5, 8):  # the source changed size mid-stream
        sink.write(result(i, 64, 64))
    sink.close()
    assert sink.resized_frames == 3
    s = ffprobe(out)
    assert (s["width"], s["height"]) == (82, 48)
    assert int(s["nb_read_frames"]) == 8 and s["r_frame_rate"] == "30000/1001"


def test_video_sink_live_timing_follows_the_capture_clock(tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    sink = VideoFileSink(str(out))
    sink.open(info(64, 48, fps=30, live=True))
    for i in range(10):  # every other frame was dropped upstream: 15 fps of 30 fps capture times
        r = result(i, 64, 48)
        r.timestamps["capture"] = 1000.0 + i * 2 / 30
        sink.write(r)
    sink.close()
    import av

    with av.open(str(out)) as c:
        st = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(st)]
    assert len(times) == 10
    assert times[-1] - times[0] == pytest.approx(9 * 2 / 30, abs=0.01)


def test_fragmented_mp4_stays_playable_when_the_writer_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "killed.mp4"
    code = (
        "import os, numpy as np\n"
        "from engines.meta import ClassTable\n"
        "from stream.sinks.base import Result, StreamInfo\n"
        "from stream.uri import open_sink\n"
        f"s = open_sink({str(out)!r} + '?fragmented=1')\n"
        "ct = ClassTable(('a',), ((0, 0, 0),))\n"
        "s.open(StreamInfo('t', 64, 48, 10.0, ct, False))\n"
        "for i in range(60):\n"
        "    f = np.full((48, 64, 3), i * 4, np.uint8)\n"
        "    s.write(Result(i, i, f, np.zeros((48, 64), np.uint8)))\n"
        "os._exit(0)  # no close(): as if the process had been killed\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    # Fragments end at keyframes (one per second of video); the frames after the last complete fragment
    # (and those still in the encoder's lookahead) are lost, the rest plays.
    assert 20 <= int(ffprobe(out)["nb_read_frames"]) <= 60


def test_unwritable_video_path_is_a_clear_error_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    sink = open_sink(str(blocker / "out.mp4"))
    with pytest.raises(SinkError, match=r"afile/out\.mp4: cannot create folder"):
        sink.open(info(64, 48))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("out.xyz", "cannot tell what to write for '.xyz'"),
        ("out", "no extension"),
        ("ftp://host/x.mp4", "unknown sink scheme 'ftp:'"),
        ("out.mp4?crf=high", "option crf='high' is not an integer"),
        ("images:/tmp/x?what=everything", "must name some of overlay, mask, frame"),
        ("", "empty sink spec"),
    ],
)
def test_bad_sink_specs_are_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(SinkError, match=message) as e:
        open_sink(spec)
    assert "\n" not in str(e.value)


def test_sink_spec_mapping(tmp_path: Path) -> None:
    assert isinstance(open_sink("display"), DisplaySink)
    assert isinstance(open_sink("display://"), DisplaySink)
    assert isinstance(open_sink(f"images:{tmp_path}?what=overlay,mask"), ImageFolderSink)
    assert isinstance(open_sink(f"file:{tmp_path}/a.mkv"), VideoFileSink)
    assert type(open_sink("zmq-pub://127.0.0.1:5555")).__name__ == "ZmqPubSink"
    assert type(open_sink("http://127.0.0.1:8080")).__name__ == "HttpViewSink"


# -- image folder ----------------------------------------------------------------------------------------
def test_image_sink_writes_overlay_and_mask_pngs_by_frame_index(tmp_path: Path) -> None:
    sink = open_sink(f"images:{tmp_path / 'out'}?what=overlay,mask")
    assert sink.wants_overlay
    sink.open(info(64, 48))
    for i in (3, 4, 7):
        r = result(i, 64, 48)
        r.overlay = np.full((48, 64, 3), 9 * i, np.uint8)
        sink.write(r)
    sink.close()
    assert sorted(p.name for p in (tmp_path / "out" / "mask").iterdir()) == [
        "000003.png", "000004.png", "000007.png",
    ]  # fmt: skip
    mask = cv2.imread(str(tmp_path / "out" / "mask" / "000007.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (48, 64) and np.all(mask == 7 % 3)  # class ids, lossless
    overlay = cv2.imread(str(tmp_path / "out" / "overlay" / "000004.png"))
    assert np.all(overlay == 36)


def test_image_sink_mask_only_does_not_want_an_overlay(tmp_path: Path) -> None:
    sink = open_sink(f"images:{tmp_path}?what=mask")
    assert not sink.wants_overlay


# -- display ---------------------------------------------------------------------------------------------
def test_display_turns_itself_off_without_a_display(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    sink = open_sink("display")
    with caplog.at_level(logging.WARNING):
        sink.open(info(64, 48))
    assert not sink.enabled and not sink.wants_overlay
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["display off: no display ($DISPLAY and $WAYLAND_DISPLAY are unset)"]
    sink.write(result(0, 64, 48))  # a no-op, not an error
    sink.close()


def test_display_turns_itself_off_when_the_display_server_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A display that does not exist: Qt would abort the process; the child-process probe catches it.
    monkeypatch.setenv("DISPLAY", ":97")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    sink = DisplaySink()
    with caplog.at_level(logging.WARNING):
        sink.open(info(64, 48))
    assert not sink.enabled
    assert sink.notice and sink.notice.startswith("display off: cannot open a window")
