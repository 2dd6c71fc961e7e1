"""Frame headers on the wire: JSON header + raw array parts, through a real socket."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from stream import headers as H


def test_roundtrip_through_a_socket_keeps_everything(tmp_path):
    hdr = H.FrameHeader(
        seq=41, index=40, slot=3, shape=(360, 480, 3), drops={"source": 2}, extra={"src": {"w": 480}}
    )
    hdr.stamp("capture")
    mask = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    conf = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind(f"ipc://{tmp_path}/h")
        b.connect(f"ipc://{tmp_path}/h")
        a.send_multipart(H.encode(hdr, {"mask": mask, "conf": conf}), copy=False)
        got, arrays = H.decode(b.recv_multipart(copy=False))
        a.close()
        b.close()
    finally:
        ctx.term()
    assert (got.seq, got.index, got.slot, got.shape, got.drops) == (41, 40, 3, (360, 480, 3), {"source": 2})
    assert got.ts["capture"] == pytest.approx(hdr.ts["capture"])
    assert got.extra == {"src": {"w": 480}}
    np.testing.assert_array_equal(arrays["mask"], mask)
    np.testing.assert_array_equal(arrays["conf"], conf)


def test_header_is_compact_and_not_pickle():
    raw = H.FrameHeader(seq=1).to_bytes()
    assert raw.startswith(b"{") and len(raw) < 120


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"\x80\x04pickle"], "malformed"),
        ([b'{"v": 99}'], "version 99"),
        ([H.FrameHeader().to_bytes(), b"extra"], "0 parts, message has 1"),
        ([], "empty"),
    ],
)
def test_bad_messages_are_header_errors(frames, match):
    with pytest.raises(H.HeaderError, match=match):
        H.decode(frames)


def test_part_size_mismatch_is_caught():
    msg = H.encode(H.FrameHeader(), {"mask": np.zeros((4, 4), np.uint8)})
    msg[1] = b"\x00" * 15
    with pytest.raises(H.HeaderError, match="16"):
        H.decode(msg)
