"""Truncated and empty video files say so: built at test time by cutting the bundled clip (whose 'moov' index
sits right after 'ftyp', before the frame data) at places found by parsing its box headers — never
"contains no video stream", which sent users looking for a codec problem. Network options are validated
with errors that name the key and the value."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import pytest

from stream.sources.base import ReadStatus, SourceError
from stream.sources.file import mp4_damage
from stream.uri import open_source
from tests.procs import run

CLIP = Path(__file__).resolve().parents[2] / "stream" / "assets" / "sample.mp4"


def boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level ISO BMFF boxes: type -> (offset, size)."""
    out, off = {}, 0
    while off + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[off : off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8 : off + 16])[0]
        out[kind.decode()] = (off, size)
        off += size
    return out


def outcome(path: Path) -> str:
    """What the user is told: the open error, or the error of the EOS after reading everything."""
    src = open_source(str(path))
    try:
        src.open()
    except SourceError as e:
        return str(e)
    try:
        while (f := src.read(timeout=5.0)).status is not ReadStatus.EOS:
            pass
    finally:
        src.close()
    return f.error or ""


@pytest.fixture(scope="module")
def clip() -> bytes:
    return CLIP.read_bytes()


def test_the_clip_is_whole_and_its_moov_comes_first(clip: bytes) -> None:
    b = boxes(clip)
    assert list(b)[:2] == ["ftyp", "moov"] and b["moov"][0] < b["mdat"][0]
    assert mp4_damage(str(CLIP)) is None  # the check does not cry wolf on a good file


@pytest.mark.parametrize("where", ["header", "first_bytes", "middle", "near_end"])
def test_file_cut_inside_its_moov_box_says_truncated(where: str, clip: bytes, tmp_path: Path) -> None:
    off, size = boxes(clip)["moov"]
    cut = {"header": off + 8, "first_bytes": off + 100, "middle": off + size // 2, "near_end": off + size - 7}
    path = tmp_path / f"moov-{where}.mp4"
    path.write_bytes(clip[: cut[where]])
    msg = outcome(path)
    assert msg.startswith(f"{path}: ")
    assert "no video stream" not in msg
    assert f"the file is truncated: its 'moov' box (the index of every frame) needs {size} bytes" in msg, msg
    assert f"the file ends at byte {cut[where]}" in msg
    assert "\n" not in msg


def test_empty_and_index_less_files(clip: bytes, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert outcome(empty) == f"{empty}: the file is empty (0 bytes)"
    ftyp_only = tmp_path / "ftyp-only.mp4"
    ftyp_only.write_bytes(clip[: boxes(clip)["moov"][0]])
    assert "has no 'moov' box (the index of every frame): truncated, or never finalized" in outcome(ftyp_only)


def test_recording_cut_before_its_index_was_written(clip: bytes, tmp_path: Path) -> None:
    """moov at the end (how a camera or PyAV writes), the file cut in its frame data: FFmpeg's own words
    were "moov atom not found"."""
    tail = tmp_path / "moov-at-end.mp4"
    with av.open(str(CLIP)) as src, av.open(str(tail), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = tail.read_bytes()
    b = boxes(data)
    assert b["mdat"][0] < b["moov"][0]
    cut = tmp_path / "recording.mp4"
    cut.write_bytes(data[: len(data) // 2])
    msg = outcome(cut)
    assert "the file is truncated: its 'mdat' box (the frame data) needs" in msg, msg


def test_cut_in_the_frame_data_reads_what_is_there_and_says_so(clip: bytes, tmp_path: Path) -> None:
    path = tmp_path / "mdat-cut.mp4"
    path.write_bytes(clip[: len(clip) * 6 // 10])
    src = open_source(str(path))
    src.open()
    notices = src.take_notices()
    ok = 0
    while (f := src.read(timeout=5.0)).status is not ReadStatus.EOS:
        ok += f.status is ReadStatus.OK
    src.close()
    assert 50 < ok < 221 and f.error is None  # a damaged clip still ends cleanly with what it has
    assert len(notices) == 1 and "the file is truncated: its 'mdat' box (the frame data)" in notices[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["middle", "near_end"])
def test_segstream_run_on_a_truncated_file_is_one_line(where: str, clip: bytes, tmp_path: Path) -> None:
    """'middle': FFmpeg cannot open it; 'near_end': it opens, but no frame can be decoded. Both: exit 2."""
    off, size = boxes(clip)["moov"]
    path = tmp_path / "cut.mp4"
    path.write_bytes(clip[: off + size // 2 if where == "middle" else off + size - 7])
    out = tmp_path / "out.mp4"
    r = run("run", path, "--sink", out, "--no-progress", timeout=110, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("segstream run: error: ")]
    assert (
        len(errors) == 1 and f"{path}: " in errors[0] and "the file is truncated: its 'moov' box" in errors[0]
    )
    assert "no video stream" not in r.stderr


# -- network options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("reconnect=-2", "option reconnect='-2' is not a number of retries >= 0, or -1 (never give up)"),
        ("reconnect=lots", "option reconnect='lots' is not an integer"),
        ("timeout=0", "option timeout='0' is not a positive number of seconds"),
        ("open_timeout=-1", "option open_timeout='-1' is not a positive number of seconds"),
        ("backoff_min=nan", "option backoff_min='nan' is not a positive number of seconds"),
        ("backoff_min=2&backoff_max=1", "option backoff_max='1' is not at least backoff_min (2)"),
        ("live=maybe", "option live='maybe' is not a boolean (1/0)"),
    ],
)
def test_bad_network_options_name_the_key_and_the_value(query: str, message: str) -> None:
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        open_source(f"http://127.0.0.1:9/x.mp4?{query}")
    assert "\n" not in str(e.value)


def test_network_options_defaults_and_passthrough() -> None:
    src = open_source("rtsp://user:secret@cam.local/s?reconnect=-1&backoff_min=9&token=abc")
    assert src.reconnect == -1 and src.backoff_min == 9.0 and src.backoff_max == 9.0
    assert src.url == "rtsp://user:secret@cam.local/s?token=abc"
    # what terminal lines show: the password and credential-like query values (stream.redact) hidden
    assert src.label == "rtsp://user:***@cam.local/s?token=***"
    assert src.live is True  # only http(s) may turn out to be a file
    http = open_source("http://127.0.0.1:9/x.mp4")
    assert http.reconnect == 10 and http.live is None
    assert open_source("https://h/x.mp4?live=0").live is False
