"""Sources on real files: exact frame counts, truncated and corrupt files, image folders, the synthetic
pattern's motion and pacing, the live reader's drop counting, and URI mapping errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.sources.base import ReadStatus, SourceError, SourceStats
from stream.sources.file import FileSource
from stream.sources.images import ImageSource
from stream.sources.live import LiveReader
from stream.sources.network import NetworkSource
from stream.sources.synthetic import SyntheticSource
from stream.sources.webcam import WebcamSource
from stream.uri import open_source
from tests.reading import read_all


def ok_frames(frames):
    return [f for f in frames if f.status is ReadStatus.OK]


# -- video files -----------------------------------------------------------------------------------
def test_file_reads_every_frame_of_the_bundled_clip_in_order(sample_clip) -> None:
    src = open_source(str(sample_clip.path))
    info = src.open()
    assert (info.width, info.height, info.fps, info.live, info.total_frames) == (960, 540, 25.0, False, 221)
    frames = read_all(src)
    src.close()
    ok = ok_frames(frames)
    assert len(ok) == 221 and len(frames) == 222  # 221 OK + EOS, no errors
    assert [f.index for f in ok] == list(range(221))
    assert all(f.image.shape == (540, 960, 3) and f.image.dtype == np.uint8 for f in ok)
    assert not np.array_equal(ok[0].image, ok[120].image)  # really decoded, not one frame repeated
    assert src.stats.frames == 221 and src.stats.decode_errors == 0 and src.stats.dropped == 0


def test_file_reads_all_663_frames_of_an_avi(avi_clip) -> None:
    src = open_source(f"file:{avi_clip.path}")
    info = src.open()
    assert (info.width, info.height, info.fps) == (480, 270, 10.0)
    ok = ok_frames(read_all(src))
    src.close()
    assert avi_clip.frames == 663
    assert len(ok) == 663 and src.stats.decode_errors == 0
    assert [f.index for f in ok] == list(range(663))


def test_truncated_file_ends_cleanly_with_eos(sample_clip, tmp_path: Path) -> None:
    data = sample_clip.path.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    src = open_source(str(cut))
    src.open()
    frames = read_all(src)
    src.close()
    ok = ok_frames(frames)
    assert 50 < len(ok) < 221
    assert frames[-1].status is ReadStatus.EOS
    assert [f.index for f in ok] == list(range(len(ok)))


def test_decode_error_mid_stream_is_counted_and_skipped(sample_clip, tmp_path: Path) -> None:
    data = bytearray(sample_clip.path.read_bytes())
    for frac in (0.3, 0.5):  # scribble over two places in the middle of the data
        off = int(len(data) * frac)
        data[off : off + 3000] = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    src = FileSource(str(bad))
    src.open()
    frames = read_all(src)
    src.close()
    errors = [f for f in frames if f.status is ReadStatus.ERROR]
    assert errors and all(f.error for f in errors)
    assert src.stats.decode_errors == len(errors)
    # Decoding goes on after the damage: far more than the 65 frames cv2.VideoCapture gets here.
    assert len(ok_frames(frames)) > 200


def test_corrupt_file_is_a_clear_error_at_open(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    src = open_source(str(junk))
    with pytest.raises(SourceError, match=r"junk\.mp4.*not a readable video"):
        src.open()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.mp4: file not found"):
        open_source(str(tmp_path / "nope.mp4")).open()


def _write_ts(path: Path, size: tuple[int, int], n: int, start: int) -> None:
    with av.open(str(path), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            img = np.full((size[1], size[0], 3), (start + i) * 20 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = start + i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def test_frame_size_change_mid_stream_passes_through(tmp_path: Path) -> None:
    a, b = tmp_path / "a.ts", tmp_path / "b.ts"
    _write_ts(a, (64, 48), 5, 0)
    _write_ts(b, (96, 64), 5, 5)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    src = open_source(str(joined))
    src.open()
    shapes = [f.image.shape[:2] for f in ok_frames(read_all(src))]
    src.close()
    assert shapes == [(48, 64)] * 5 + [(64, 96)] * 5


def test_file_loop_starts_again(avi_clip) -> None:
    src = open_source(f"{avi_clip.path}?loop=1")
    info = src.open()
    assert info.total_frames is None
    frames = [src.read() for _ in range(avi_clip.frames + 5)]
    src.close()
    # 663 frames, then the first ones again; indices keep counting
    assert [f.index for f in frames] == list(range(avi_clip.frames + 5))
    assert np.array_equal(frames[avi_clip.frames].image, frames[0].image)


# -- image folders -----------------------------------------------------------------------------------
def test_image_folder_reads_every_image_in_order(camvid: Path) -> None:
    folder = camvid / "val" / "images"
    expected = sorted(folder.glob("*.jpg"))
    assert len(expected) == 6
    src = open_source(f"images:{folder}")
    info = src.open()
    assert info.total_frames == len(expected) and not info.live
    ok = ok_frames(read_all(src))
    src.close()
    assert len(ok) == len(expected)
    assert ok[0].image.shape == (180, 240, 3)
    for f, p in zip(ok, expected, strict=True):  # in name order, each image its own file
        assert np.array_equal(f.image, cv2.imread(str(p)))


def test_image_glob_and_bare_folder(camvid: Path) -> None:
    folder = camvid / "train" / "images"
    pattern = str(folder / "0006R0_*.jpg")  # one drive of the three in the folder
    expected = sorted(folder.glob("0006R0_*.jpg"))
    assert len(expected) == 4 and len(list(folder.glob("*.jpg"))) == 12
    src = open_source(pattern)
    assert isinstance(src, ImageSource)
    src.open()
    assert len(ok_frames(read_all(src))) == len(expected)
    assert isinstance(open_source(str(folder)), ImageSource)


def test_unreadable_image_is_an_error_then_reading_goes_on(camvid: Path, tmp_path: Path) -> None:
    jpgs = sorted((camvid / "val" / "images").glob("*.jpg"))[:2]
    (tmp_path / "f1.jpg").write_bytes(jpgs[0].read_bytes())
    (tmp_path / "f2.jpg").write_bytes(b"not an image")
    (tmp_path / "f10.jpg").write_bytes(jpgs[1].read_bytes())
    src = ImageSource(str(tmp_path))
    src.open()
    statuses = [f.status for f in read_all(src)]
    assert statuses == [ReadStatus.OK, ReadStatus.ERROR, ReadStatus.OK, ReadStatus.EOS]  # natural order
    assert src.stats.decode_errors == 1


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images found"):
        open_source(f"images:{tmp_path}").open()


# -- synthetic ---------------------------------------------------------------------------------------
def test_synthetic_pattern_moves_and_ends() -> None:
    src = open_source("synthetic://?size=160x120&fps=30&frames=12&live=0")
    info = src.open()
    assert (info.width, info.height, info.total_frames, info.live) == (160, 120, 12, False)
    frames = read_all(src)
    ok = ok_frames(frames)
    assert len(ok) == 12 and frames[-1].status is ReadStatus.EOS
    diffs = [
        np.abs(a.image.astype(int) - b.image.astype(int)).mean() for a, b in zip(ok, ok[1:], strict=False)
    ]
    assert min(diffs) > 1.0  # every frame differs from the one before
    assert np.array_equal(src.render(3), ok[3].image)  # deterministic


def test_synthetic_is_paced_at_its_fps() -> None:
    src = SyntheticSource(size=(64, 48), fps=50, frames=16)
    src.open()
    t0 = time.monotonic()
    ok = ok_frames(read_all(src))
    elapsed = time.monotonic() - t0
    assert len(ok) == 16 and src.stats.dropped == 0
    assert elapsed >= 15 / 50 * 0.95  # 16 frames span 15 periods


def test_synthetic_live_counts_frames_a_slow_reader_missed() -> None:
    src = SyntheticSource(size=(64, 48), fps=100)
    src.open()
    first = src.read()
    time.sleep(0.25)  # ≈ 25 frame periods
    late = src.read()
    assert late.index - first.index - 1 == src.stats.dropped
    assert src.stats.dropped >= 15


def test_synthetic_timeout_when_next_frame_is_not_due() -> None:
    src = SyntheticSource(size=(64, 48), fps=2)
    src.open()
    assert src.read(timeout=1.0).status is ReadStatus.OK
    assert src.read(timeout=0.05).status is ReadStatus.TIMEOUT


# -- live reader -------------------------------------------------------------------------------------
def test_live_reader_newest_frame_wins_and_counts_drops() -> None:
    stats = SourceStats()
    reader = LiveReader("test", stats)
    img = np.zeros((4, 4, 3), np.uint8)
    for _ in range(5):
        reader.publish(img)
    f = reader.read(0.1)
    assert f.status is ReadStatus.OK and f.index == 4
    assert stats.dropped == 4 and stats.frames == 5
    assert reader.read(0.05).status is ReadStatus.TIMEOUT
    reader.finish("gone for good")
    eos = reader.read(0.05)
    assert eos.status is ReadStatus.EOS and eos.error == "gone for good"


def test_live_reader_thread_ends_in_eos_even_when_it_raises() -> None:
    reader = LiveReader("boom", SourceStats())

    def loop(r: LiveReader) -> str | None:
        r.publish(np.zeros((2, 2, 3), np.uint8))
        raise RuntimeError("device unplugged")

    reader.start(loop)
    assert reader.read(2.0).status is ReadStatus.OK
    eos = reader.read(2.0)
    reader.close()
    assert eos.status is ReadStatus.EOS and "device unplugged" in (eos.error or "")


# -- webcam --------------------------------------------------------------------------------------------
def test_missing_webcam_is_a_clear_error() -> None:
    n = next(i for i in range(40, 64) if not os.path.exists(f"/dev/video{i}"))
    src = open_source(f"webcam:{n}")
    assert isinstance(src, WebcamSource)
    with pytest.raises(SourceError, match=rf"camera {n} is not available"):
        src.open()
    with pytest.raises(SourceError, match="is not available"):
        open_source(f"/dev/video{n}").open()


# -- URI mapping -----------------------------------------------------------------------------------------
def test_uri_mapping_picks_the_right_source(avi_clip, sample_clip) -> None:
    assert isinstance(open_source("synthetic://"), SyntheticSource)
    assert isinstance(open_source("webcam:0"), WebcamSource)
    assert isinstance(open_source(str(avi_clip.path)), FileSource)
    assert isinstance(open_source(str(sample_clip.path)), FileSource)
    net = open_source("rtsp://cam.local:554/stream?reconnect=3&timeout=2&token=abc")
    assert isinstance(net, NetworkSource)
    assert net.reconnect == 3 and net.read_timeout == 2.0
    assert net.url == "rtsp://cam.local:554/stream?token=abc"  # our options stripped, FFmpeg's kept
    for scheme in ("http", "https", "tcp", "udp"):
        assert isinstance(open_source(f"{scheme}://127.0.0.1:5000"), NetworkSource)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "no source given"),
        ("gopher://x", "unknown source scheme 'gopher:'"),
        ("synthetic://?size=big", "option size='big' is not a size"),
        ("synthetic://?fps=abc", "option fps='abc' is not a number"),
        ("synthetic://?colour=red", "unknown option"),
        ("webcam:front", "webcam needs a camera index"),
    ],
)
def test_bad_uris_are_one_clear_line(uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message) as e:
        open_source(uri)
    assert "\n" not in str(e.value)
