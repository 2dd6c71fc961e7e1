"""What a client enforces before it allocates or decodes (docs/PROTOCOL.md section 11): every hostile
message found when the mask stream was attacked is a classified MessageError, never a crash, a huge
allocation or an accepted lie; and the summary arithmetic of `segstream subscribe`."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.commands.subscribe import mask_rate, percentile
from stream.messages import (
    LIMITS,
    MessageError,
    check_class_ids,
    decode_classes_reply,
    decode_mask_message,
    encode_classes_reply,
    encode_end_message,
    encode_mask_message,
    end_header,
    jpeg_size,
    parse_endpoint,
)
from stream.sinks.zmq_pub import ZmqPubSink, _credit

CLASSES = ClassTable(
    names=tuple(f"c{i}" for i in range(5)), palette=tuple((i, 2 * i, 3 * i) for i in range(5)), ignore_index=9
)


def _mask(h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 2 :, :] = 3
    m[:, : w // 4] = 9  # the ignore index: valid although >= num_classes
    return m


def _frames(encoding: str = "raw", **kw) -> list[bytes]:
    return [
        bytes(f)
        for f in encode_mask_message(
            stream="0", seq=kw.pop("seq", 5), frame_index=5, mask=kw.pop("mask", _mask()), classes=CLASSES,
            encoding=encoding, **kw,
        )
    ]  # fmt: skip


def _with_header(frames: list[bytes], **changes) -> list[bytes]:
    head = json.loads(frames[1])
    head.update(changes)
    return [frames[0], json.dumps(head).encode(), *frames[2:]]


def _reason(frames) -> str:
    with pytest.raises(MessageError) as err:
        decode_mask_message(frames)
    return err.value.reason


def test_a_valid_message_still_decodes_with_every_encoding():
    overlay = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))[1].tobytes()
    for enc in ("raw", "rle", "png"):
        msg = decode_mask_message(
            _frames(
                enc,
                confidence=np.full((24, 32), 7, np.uint8),
                confidence_encoding="png",
                overlay_jpeg=overlay,
            )
        )
        assert np.array_equal(msg.mask, _mask()) and msg.confidence.max() == 7
        check_class_ids(msg, CLASSES)  # 9 is the ignore index: allowed


def test_deeply_nested_header_is_malformed_not_a_recursion_error():
    frames = _frames()
    for depth in (100_000, 20):  # past Python's recursion limit, and past the protocol's depth limit
        nested = b'{"a":' * depth + b"1" + b"}" * depth
        head = nested if len(nested) <= LIMITS.max_header_bytes else b"[" * 30_000 + b"]" * 30_000
        assert _reason([frames[0], head, frames[2]]) == "malformed"
    # and as a 2-part message, where it would be taken for an end message
    assert end_header([b"0", b"[" * 100_000 + b"]" * 100_000]) is None


def test_oversized_header_is_rejected_before_parsing():
    frames = _frames()
    assert _reason(_with_header(frames, padding="x" * (LIMITS.max_header_bytes + 1))) == "malformed"


def test_rle_bomb_is_refused_before_expanding():
    # one 5-byte run that claims 32768x32768: 1.1 GB if decoded; 8192x8192 is also past max_pixels
    for side in (32768, 8192):
        run = struct.pack("<IB", side * side, 0)
        frames = _with_header(_frames("rle"), width=side, height=side, mask_bytes=5)
        assert _reason([frames[0], frames[1], run]) == "malformed"


def test_rle_runs_of_length_zero_are_malformed():
    frames = _frames("rle")
    padded = frames[2] + struct.pack("<IB", 0, 4)  # sums still match: only the zero run is wrong
    assert _reason(_with_header([frames[0], frames[1], padded], mask_bytes=len(padded))) == "malformed"


@pytest.mark.parametrize("seq", [-1, -(2**40)])
def test_negative_seq_is_malformed(seq):
    assert _reason(_with_header(_frames(), seq=seq)) == "malformed"


@pytest.mark.parametrize(
    "change",
    [
        {"frame_index": -3},
        {"num_classes": 0},
        {"num_classes": 300},
        {"classes_digest": "not-a-digest"},
        {"timestamps": {"capture": "yesterday", "infer": None, "publish": 1.0}},
        {"drops": {"capture": -1}},
        {"stream": ""},
        {"mask_bytes": 1},
    ],
)
def test_header_values_outside_the_protocol_are_rejected(change):
    frames = _with_header(_frames(), **change)
    if "stream" in change:
        frames[0] = b""
    assert _reason(frames) in ("malformed", "truncated")


def test_more_parts_than_announced_is_malformed():
    frames = _frames()
    assert _reason([*frames, b"extra"]) == "malformed"


def test_part_lengths_must_match_the_header():
    frames = _frames(confidence=np.zeros((24, 32), np.uint8))
    head = json.loads(frames[1])
    head["parts"][0]["bytes"] += 1
    assert _reason([frames[0], json.dumps(head).encode(), *frames[2:]]) == "truncated"


def test_overlay_that_is_not_a_jpeg_of_the_right_size_is_malformed():
    small = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert jpeg_size(small) == (8, 8)
    for junk in (b"GIF89a not a jpeg at all", small):
        assert _reason(_frames(overlay_jpeg=junk)) == "malformed"


def test_png_announcing_another_size_or_interlaced_is_refused_before_decoding():
    frames = _frames("png")
    png = bytearray(frames[2])
    big = bytes(png[:16]) + struct.pack(">II", 30000, 30000) + bytes(png[24:])  # IHDR lies about the size
    assert _reason(_with_header([frames[0], frames[1], big], mask_bytes=len(big))) == "malformed"
    png[28] = 1  # Adam7 interlace flag
    assert _reason([frames[0], frames[1], bytes(png)]) == "malformed"


def test_class_ids_beyond_the_table_are_rejected_unless_ignore():
    mask = _mask()
    mask[0, -1] = 7  # neither < 5 nor the ignore index 9
    msg = decode_mask_message(_frames(mask=mask))
    with pytest.raises(MessageError, match="class id 7"):
        check_class_ids(msg, CLASSES)
    lying = decode_mask_message(_with_header(_frames(), num_classes=4))
    with pytest.raises(MessageError, match="num_classes"):
        check_class_ids(lying, CLASSES)


def test_class_table_reply_limits():
    assert decode_classes_reply(encode_classes_reply("0", CLASSES)) == CLASSES
    with pytest.raises(MessageError):
        decode_classes_reply(b"[" * 100_000 + b"]" * 100_000)
    huge = ClassTable(names=tuple(str(i) for i in range(300)), palette=((0, 0, 0),) * 300)
    with pytest.raises(MessageError, match="300 classes"):
        decode_classes_reply(encode_classes_reply("0", huge))


def test_end_message_for_a_dropped_recorder_carries_its_reason():
    head = end_header(encode_end_message("0", 9, 10, reason="dropped: no credit"))
    assert head["reason"] == "dropped: no credit" and head["last_seq"] == 9
    assert "reason" not in end_header(encode_end_message("0", 9, 10))


def test_lossless_endpoint_is_opened_only_when_asked_for():
    assert not ZmqPubSink("zmq-pub://127.0.0.1:5555").lossless
    assert not ZmqPubSink("zmq-pub://127.0.0.1:5555?lossless=off").lossless
    on = ZmqPubSink("zmq-pub://127.0.0.1:5555?lossless=on")
    assert on.lossless and on.ep.lossless_port == 5557
    assert ZmqPubSink("zmq-pub://127.0.0.1:5555?lossless=6000").ep.lossless_port == 6000
    assert ZmqPubSink("zmq-pub://127.0.0.1:5555?wait_recorders=1").lossless
    # a client still finds the recorder port at PORT+2 by convention
    assert parse_endpoint("tcp://127.0.0.1:5555").lossless_port == 5557


@pytest.mark.parametrize(
    ("frames", "credit"),
    [
        ([b"id", b"credit", b"16"], 16),
        ([b"id", b"credit", b"0"], None),
        ([b"id", b"credit", b"-1"], None),
        ([b"id", b"credit", b"+5"], None),
        ([b"id", b"credit", b"1e9"], None),
        ([b"id", b"credit", b"9" * 40], None),
        ([b"id", b"credit"], None),
        ([b"id", b"credit", b"1", b"extra"], None),
        ([b"id", b"gimme", b"1"], None),
    ],
)
def test_credit_messages_are_parsed_strictly(frames, credit):
    assert _credit(frames) == credit


def test_percentiles_are_ordered_and_interpolated():
    assert percentile([10.0, 20.0], 50) == 15.0
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)  # the old rank rule gave 10 < p50
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert np.isnan(percentile([], 50))


def test_rate_uses_the_span_the_masks_cover():
    # two masks published 1 s apart but read back to back (a backlog): 1 mask/s, not 1000
    assert mask_rate([100.000, 100.001], [50.0, 51.0]) == pytest.approx(1.0)
    assert mask_rate([100.0, 101.0, 102.0], [50.0, 50.0, 50.0]) == pytest.approx(1.0)
    assert mask_rate([100.0], [50.0]) == 0.0
