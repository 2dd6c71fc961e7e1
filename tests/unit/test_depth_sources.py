"""Depth sources (folder, video, synthetic), their pairing with colour frames, the ring's depth region,
the frame header's depth field and the mask message's depth part: real files, real shared memory."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream import headers as H
from stream.config import ConfigError, PipelineConfig
from stream.messages import MessageError, decode_depth, decode_mask_message, encode_mask_message
from stream.shm import FrameRing, RingLayout, ShmError, depth_of
from stream.sources.base import SourceError
from stream.sources.depth import open_depth, probe_depth
from stream.sources.depth_pairing import DepthPairer
from stream.sources.synthetic import SyntheticSource


def depth_image(k: int, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A depth image that says which frame it is: 1000 + 10 k mm, a hole at (0, 0), a ramp."""
    w, h = size
    d = (1000 + 10 * k + np.arange(w, dtype=np.uint16)[None, :] + np.zeros((h, 1), np.uint16)).astype(
        np.uint16
    )
    d[0, 0] = 0
    return d


def write_depth_video(path: Path, frames: dict[int, np.ndarray], fmt: str = "gray16le") -> None:
    """A lossless FFV1 Matroska video whose frame k has PTS ``ms`` (the dict key) in milliseconds."""
    with av.open(str(path), "w") as c:
        first = next(iter(frames.values()))
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = first.shape[1], first.shape[0], fmt
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)  # PTS kept to the millisecond
        for ms, img in frames.items():
            f = av.VideoFrame.from_ndarray(img, format=fmt)
            f.pts, f.time_base = ms, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def read_all(src) -> list:
    out = []
    while (f := src.read()) is not None:
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------- sources


def test_folder_names_in_ms_are_timestamps_sorted_by_value(tmp_path: Path) -> None:
    for ms in (900, 100, 1000, 33):  # no zero padding: name order is not time order
        cv2.imwrite(str(tmp_path / f"{ms}.png"), depth_image(ms))
    src = open_depth(f"{tmp_path}?offset_ms=5")
    info = src.open()
    frames = read_all(src)
    assert (info.width, info.height, info.timed, info.live) == (32, 24, True, False)
    assert [round(f.t, 3) for f in frames] == [0.038, 0.105, 0.905, 1.005]
    assert [int(f.depth[1, 0]) for f in frames] == [1330, 2000, 10000, 11000]
    assert [f.index for f in frames] == [0, 1, 2, 3]


def test_folder_without_ms_names_is_timed_only_with_fps(tmp_path: Path) -> None:
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"d{k}.png"), depth_image(k))
    assert open_depth(str(tmp_path)).open().timed is False
    src = open_depth(f"images:{tmp_path}?fps=4")
    src.open()
    assert [f.t for f in read_all(src)] == [0.0, 0.25, 0.5]
    with pytest.raises(SourceError, match="no timestamps for --depth-pairing timestamp"):
        DepthPairer(open_depth(str(tmp_path)), "timestamp").open(colour_live=False)


def test_folder_with_an_8bit_png_is_one_line_naming_the_file(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(SourceError, match=r"0\.png: depth must be a single-channel 16-bit PNG"):
        open_depth(str(tmp_path)).open()


def test_16bit_depth_video_is_read_exactly_with_its_pts(tmp_path: Path) -> None:
    frames = {ms: depth_image(k) for k, ms in enumerate((0, 100, 207, 300))}
    write_depth_video(tmp_path / "d.mkv", frames)
    src = open_depth(str(tmp_path / "d.mkv"))
    info = src.open()
    got = read_all(src)
    src.close()
    assert (info.width, info.height) == (32, 24)
    assert [round(f.t, 3) for f in got] == [0.0, 0.1, 0.207, 0.3]
    assert all(np.array_equal(f.depth, want) for f, want in zip(got, frames.values(), strict=True))
    assert got[0].depth.dtype == np.uint16


def test_8bit_depth_video_needs_a_scale_and_maps_levels_to_mm(tmp_path: Path) -> None:
    levels = np.tile(np.array([0, 1, 128, 255], np.uint8), (16, 8))  # 32x16
    write_depth_video(tmp_path / "d8.mkv", {0: levels, 100: levels}, fmt="gray")
    with pytest.raises(SourceError, match=r"8-bit depth video \(gray\) needs \?max_mm=M"):
        open_depth(str(tmp_path / "d8.mkv")).open()
    src = open_depth(f"{tmp_path / 'd8.mkv'}?max_mm=5100")  # 255 -> 5100 mm: 20 mm per level
    src.open()
    assert src.read().depth[0, :4].tolist() == [0, 20, 2560, 5100]
    src = open_depth(f"file:{tmp_path / 'd8.mkv'}?scale_mm=4")
    src.open()
    assert src.read().depth[0, :4].tolist() == [0, 4, 512, 1020]


@pytest.mark.parametrize(
    "uri, expect",
    [
        ("d.mkv?scale_mm=-1", "option scale_mm='-1' is not millimetres per grey level"),
        ("d.mkv?scale_mm=1&max_mm=10", "option max_mm='10' is not given with scale_mm"),
        ("d.mkv?max_mm=70000", "option max_mm='70000' is not millimetres at full scale"),
        ("d.mkv?scale=2", "unknown option(s) scale"),
        ("synthetic://?size=64x48&offset_ms=3", "unknown option(s) offset_ms"),
        ("synthetic://?size=big", "option size='big' is not a size"),
        ("nowhere/", "not a folder, a video file or synthetic:"),
    ],
)
def test_bad_depth_uris_name_key_and_value(tmp_path: Path, uri: str, expect: str) -> None:
    with pytest.raises(SourceError) as e:
        open_depth(str(tmp_path / uri) if not uri.startswith("synthetic") else uri)
    assert expect in str(e.value) and "--depth" in str(e.value)


def test_synthetic_depth_puts_the_box_where_the_colour_square_is() -> None:
    colour = SyntheticSource(size=(320, 240), fps=10, live=False)
    colour.open()
    depth = open_depth("synthetic://?size=320x240&fps=10&frames=16&near_mm=700&far_mm=3000")
    info = depth.open(live=False)
    frames = read_all(depth)
    assert (info.width, info.height, info.live) == (320, 240, False) and len(frames) == 16
    for f in frames[10:]:  # the square has left the frame number's text in the top-left corner
        img = colour.render(f.index)
        box = f.depth == 700
        white = (img == 255).all(axis=2)
        assert box.sum() == 40 * 40 and np.array_equal(white, box)  # the white square, and only it, is near
        assert (f.depth == 0).sum() > 0  # the box's shadow has no measurement
        assert f.depth[~box & (f.depth > 0)].min() >= 1800  # the wall: 60-100 % of far_mm
        assert f.t == pytest.approx(f.index / 10)
    assert not np.array_equal(frames[10].depth, frames[11].depth)  # it moves


def test_synthetic_depth_follows_the_colour_source_liveness() -> None:
    src = open_depth("synthetic://?size=32x32&fps=1000")
    assert src.open(live=True).live is True
    first = src.read()
    assert first is not None and abs(first.t - time.time()) < 1.0  # stamped with its arrival time
    assert open_depth("synthetic://?size=32x32&live=0").open(live=True).live is False


# ---------------------------------------------------------------------------------------------- pairing


def test_index_pairing_skips_what_has_no_partner(tmp_path: Path) -> None:
    for k in (0, 1, 3, 4):  # depth 2 missing; colour frames 0..5
        cv2.imwrite(str(tmp_path / f"f{k}.png"), depth_image(k))
    p = DepthPairer(open_depth(str(tmp_path)), "index")
    p.open(colour_live=False)
    got = [p.pair(i, 0.0) for i in range(6)]
    # the k-th file in name order pairs with colour frame k: f3 is the 3rd file (index 2), f4 the 4th
    assert [None if d is None else int(d[1, 0]) for d in got] == [1000, 1010, 1030, 1040, None, None]
    assert (p.paired, p.unpaired) == (4, 2)


def test_timestamp_pairing_takes_the_nearest_within_the_tolerance(tmp_path: Path) -> None:
    # depth every 100 ms, 7 ms late; frames 3 and 4 missing, frame 6 45 ms late (beyond 20 ms)
    stamps = {k: 100 * k + (45 if k == 6 else 7) for k in range(10) if k not in (3, 4)}
    write_depth_video(tmp_path / "d.mkv", {ms: depth_image(k) for k, ms in stamps.items()})
    p = DepthPairer(open_depth(str(tmp_path / "d.mkv")), "timestamp", tolerance_ms=20)
    p.open(colour_live=False)
    got = [p.pair(i, i / 10) for i in range(10)]
    assert [None if d is None else (int(d[1, 0]) - 1000) // 10 for d in got] == [
        0, 1, 2, None, None, 5, None, 7, 8, 9
    ]  # fmt: skip
    assert (p.paired, p.unpaired) == (7, 3)
    # a wider tolerance pairs frame 6 with its late depth frame
    p = DepthPairer(open_depth(str(tmp_path / "d.mkv")), "timestamp", tolerance_ms=50)
    p.open(colour_live=False)
    assert [p.pair(i, i / 10) is not None for i in range(10)].count(False) == 2


def test_timestamp_pairing_refuses_live_colour_with_recorded_depth(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "0.png"), depth_image(0))
    with pytest.raises(SourceError, match="colour source is live and the depth source is recorded"):
        DepthPairer(open_depth(str(tmp_path)), "timestamp").open(colour_live=True)
    with pytest.raises(SourceError, match="expected one of index, timestamp"):
        DepthPairer(open_depth(str(tmp_path)), "nearest")


def test_live_sources_pair_by_arrival_time() -> None:
    p = DepthPairer(open_depth("synthetic://?size=32x32&fps=200"), "timestamp", tolerance_ms=30)
    p.open(colour_live=True)
    paired = 0
    for _ in range(5):
        time.sleep(0.02)
        paired += p.pair(0, time.time()) is not None
    assert paired >= 4  # a 200 fps depth camera always has a frame within 30 ms of now
    t0 = time.monotonic()
    assert p.pair(0, time.time() - 5.0) is None  # nothing arrived near a time 5 s ago
    assert time.monotonic() - t0 < 0.5  # and nothing is waited for past the tolerance


def test_run_config_validates_depth_options(tmp_path: Path) -> None:
    base = {"source": "synthetic://", "depth": "synthetic://?size=64x48"}
    with pytest.raises(ConfigError, match="config key 'depth_pairing' = 'nearest'"):
        PipelineConfig.from_dict({**base, "depth_pairing": "nearest"})
    with pytest.raises(ConfigError, match="config key 'depth_tolerance_ms' = 0"):
        PipelineConfig.from_dict({**base, "depth_tolerance_ms": 0})
    with pytest.raises(ConfigError, match="config key 'depth' = .*unknown option"):
        PipelineConfig.from_dict({**base, "depth": "synthetic://?sise=64x48"})
    cfg = PipelineConfig.from_dict({**base, "depth_pairing": "timestamp", "depth_tolerance_ms": 12.5})
    assert (cfg.depth_pairing, cfg.depth_tolerance_ms) == ("timestamp", 12.5)
    assert probe_depth(cfg.depth, colour_live=True).live is True


# ---------------------------------------------------------------------------------------------- transport


def test_ring_depth_region_is_its_own_and_the_header_names_it() -> None:
    layout = RingLayout(slots=2, frame_bytes=24 * 32 * 3, input_bytes=100, depth_bytes=24 * 32 * 2)
    with FrameRing.create(layout, tag="test") as ring:
        frame = np.full((24, 32, 3), 7, np.uint8)
        depth = depth_image(3)
        for slot in (0, 1):
            ring.write(slot, "frame", frame)
            ring.write(slot, "input", np.full(25, 9.0, np.float32))
            ring.write(slot, "depth", depth + slot)
        hdr = H.FrameHeader(seq=4, slot=1, ring=(ring.name, *layout.to_dict().values()))
        hdr.depth = (depth.shape, "<u2")
        back = H.FrameHeader.from_bytes(H.encode(hdr)[0])
        assert back.depth == ((24, 32), "<u2") and len(back.ring) == 5
        assert np.array_equal(depth_of(ring, back, {}), depth + 1)
        assert (ring.view(1, "frame", frame.shape, "uint8") == 7).all()  # nothing overwrote the frame
        assert (ring.view(1, "input", (25,), "float32") == 9.0).all()
        assert not ring.fits("depth", 24 * 33 * 2)  # a larger depth image travels inline
        with pytest.raises(ShmError, match="no ring or slot"):
            depth_of(None, back, {})
    assert depth_of(None, H.FrameHeader(), {"depth": depth})[1, 1] == depth[1, 1]  # inline wins
    assert RingLayout(2, 10, 10).to_dict() == {"slots": 2, "frame_bytes": 10, "input_bytes": 10}


def test_header_refuses_a_malformed_depth_field() -> None:
    raw = H.FrameHeader(seq=1).to_bytes().replace(b'"sh":[]', b'"sh":[],"dp":[[4],"<f4"]')
    with pytest.raises(H.HeaderError, match="depth"):
        H.FrameHeader.from_bytes(raw)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_depth_part_round_trips_exactly(encoding: str) -> None:
    from engines.meta import ClassTable

    classes = ClassTable(names=("a", "b"), palette=((0, 0, 0), (255, 0, 0)))
    mask = np.zeros((24, 32), np.uint8)
    depth = depth_image(5)
    depth[3, 4] = 65535
    frames = encode_mask_message(
        stream="0", seq=0, frame_index=0, mask=mask, classes=classes, depth=depth, depth_encoding=encoding
    )
    msg = decode_mask_message(frames)
    assert msg.header["parts"][0]["name"] == "depth" and msg.header["parts"][0]["encoding"] == encoding
    assert msg.depth.dtype == np.uint16 and np.array_equal(msg.depth, depth)
    if encoding == "raw":
        assert bytes(frames[3]) == depth.astype("<u2").tobytes()  # little-endian, row-major
        with pytest.raises(MessageError, match="depth part has 10 bytes"):
            decode_depth(b"\0" * 10, "raw", 32, 24)
    else:
        eight = cv2.imencode(".png", np.zeros((24, 32), np.uint8))[1].tobytes()
        with pytest.raises(MessageError, match="not a 32x24 16-bit grayscale PNG"):
            decode_depth(eight, "png", 32, 24)
