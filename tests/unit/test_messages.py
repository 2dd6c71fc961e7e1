"""The public mask message: round trips on real CamVid masks, the JSON Schema, the RLE layout from
docs/PROTOCOL.md, and rejection of malformed / truncated / unknown-version messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from engines.errors import SegstreamError
from engines.meta import ClassTable
from stream.messages import (
    PROTOCOL_VERSION,
    MessageError,
    decode_classes_reply,
    decode_mask_message,
    encode_classes_reply,
    encode_end_message,
    encode_mask_message,
    end_header,
    parse_endpoint,
    rle_decode,
    rle_encode,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "stream" / "schemas" / "mask-header.schema.json").read_text()
)


@pytest.fixture(scope="module")
def sample(camvid: Path):
    classes = ClassTable.from_json_file(camvid / "classes.json")
    label = sorted((camvid / "val" / "labels").glob("*.png"))[0]
    image = camvid / "val" / "images" / (label.stem + ".jpg")
    mask = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    frame = cv2.imread(str(image))
    return classes, frame, mask


def _message(sample, **kw):
    classes, frame, mask = sample
    ok, jpg = cv2.imencode(".jpg", frame)
    args = dict(
        stream="cam0",
        seq=7,
        frame_index=12,
        mask=mask,
        classes=classes,
        timestamps={"capture": 100.0, "infer": 100.02},
        drops={"capture": 3},
        confidence=(mask * 20).astype(np.uint8),
        overlay_jpeg=jpg.tobytes(),
    )
    args.update(kw)
    return [bytes(f) for f in encode_mask_message(**args)]


@pytest.mark.parametrize("encoding", ["raw", "png", "rle"])
@pytest.mark.parametrize("conf_encoding", ["raw", "png"])
def test_round_trip_on_a_real_mask(sample, encoding, conf_encoding):
    classes, frame, mask = sample
    frames = _message(sample, encoding=encoding, confidence_encoding=conf_encoding)
    msg = decode_mask_message(frames)
    assert np.array_equal(msg.mask, mask)
    assert np.array_equal(msg.confidence, (mask * 20).astype(np.uint8))
    assert msg.overlay.shape == frame.shape
    assert msg.seq == 7 and msg.header["frame_index"] == 12 and msg.stream == "cam0"
    assert msg.header["classes_digest"] == classes.digest() and msg.header["num_classes"] == 11
    assert msg.header["drops"] == {"capture": 3}
    assert msg.header["timestamps"]["capture"] == 100.0 and msg.header["timestamps"]["publish"] > 1e9
    assert msg.header["mask_bytes"] == len(frames[2])
    assert [p["name"] for p in msg.header["parts"]] == ["confidence", "overlay"]
    jsonschema.validate(msg.header, SCHEMA)


def test_raw_payload_is_row_major_width_times_height(sample):
    _, _, mask = sample
    frames = _message(sample, encoding="raw", confidence=None, overlay_jpeg=None)
    h, w = mask.shape
    assert len(frames) == 3 and frames[0] == b"cam0"
    assert len(frames[2]) == w * h
    assert frames[2][5 * w + 9] == mask[5, 9]  # byte y*width + x


def test_rle_layout_matches_protocol_page():
    # docs/PROTOCOL.md example: 2x3 mask [[0,0,0],[0,5,5]] -> runs (4 x 0), (2 x 5)
    mask = np.array([[0, 0, 0], [0, 5, 5]], np.uint8)
    payload = rle_encode(mask)
    assert payload == struct.pack("<IB", 4, 0) + struct.pack("<IB", 2, 5)
    assert payload.hex() == "040000000002000000" + "05"
    assert np.array_equal(rle_decode(payload, 3, 2), mask)


def test_rle_compresses_a_real_mask(sample):
    _, _, mask = sample
    payload = rle_encode(mask)
    assert len(payload) < mask.size / 5
    assert np.array_equal(rle_decode(payload, mask.shape[1], mask.shape[0]), mask)


def test_header_without_optional_parts_and_unknown_timestamps_is_valid(sample):
    frames = _message(sample, timestamps=None, drops=None, confidence=None, overlay_jpeg=None)
    header = json.loads(frames[1])
    assert header["timestamps"]["capture"] is None and header["parts"] == []
    jsonschema.validate(header, SCHEMA)


def test_schema_rejects_a_header_missing_seq(sample):
    header = json.loads(_message(sample)[1])
    del header["seq"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(header, SCHEMA)


def _tamper(frames, **changes):
    header = json.loads(frames[1])
    header.update(changes)
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:2], "truncated"),  # mask missing
        (lambda f: f[:3], "truncated"),  # announced optional parts missing
        (lambda f: [f[0], f[1], f[2][:-10], *f[3:]], "truncated"),  # short raw mask
        (lambda f: [f[0], b"{not json", *f[2:]], "malformed"),
        (lambda f: [f[0], b"\xff\xfe", *f[2:]], "malformed"),
        (lambda f: [f[0], b"[1, 2]", *f[2:]], "malformed"),
        (lambda f: _tamper(f, version=PROTOCOL_VERSION + 1), "version"),
        (lambda f: _tamper(f, version=None), "version"),
        (lambda f: _tamper(f, seq="7"), "malformed"),
        (lambda f: _tamper(f, width=0), "malformed"),
        (lambda f: _tamper(f, width=10**9), "malformed"),
        (lambda f: _tamper(f, encoding="zstd"), "malformed"),
        (lambda f: _tamper(f, kind="other"), "malformed"),
        (lambda f: [b"cam9", *f[1:]], "malformed"),  # topic disagrees with header
    ],
)
def test_bad_messages_raise_a_classified_error(sample, mutate, reason):
    frames = _message(sample, encoding="raw")
    with pytest.raises(MessageError) as err:
        decode_mask_message(mutate(frames))
    assert err.value.reason == reason
    assert isinstance(err.value, SegstreamError)


@pytest.mark.parametrize("encoding", ["rle", "png"])
def test_corrupt_compressed_masks_are_rejected(sample, encoding):
    frames = _message(sample, encoding=encoding, confidence=None, overlay_jpeg=None)
    with pytest.raises(MessageError):
        decode_mask_message([frames[0], frames[1], frames[2][: len(frames[2]) // 2]])


def test_class_table_reply_round_trip_and_digest_check(sample):
    classes = sample[0]
    raw = encode_classes_reply("cam0", classes)
    assert decode_classes_reply(raw) == classes
    doc = json.loads(raw)
    doc["classes"]["names"][0] = "Heaven"
    with pytest.raises(MessageError):
        decode_classes_reply(json.dumps(doc).encode())


def test_end_message_is_recognised_and_not_a_mask():
    frames = encode_end_message("cam0", 41, 42)
    assert end_header(frames)["last_seq"] == 41
    with pytest.raises(MessageError):
        decode_mask_message(frames)


def test_endpoint_layout_defaults_and_overrides():
    ep = parse_endpoint("zmq-pub://127.0.0.1:5555")
    assert (ep.port, ep.classes_port, ep.lossless_port) == (5555, 5556, 5557)
    ep = parse_endpoint("tcp://localhost:6000?classes=7000&lossless=off&encoding=rle")
    assert (ep.host, ep.classes_port, ep.lossless_port, ep.options) == (
        "127.0.0.1",
        7000,
        None,
        {"encoding": "rle"},
    )
    assert parse_endpoint("zmq-pub://*:5555").all_interfaces
    assert parse_endpoint("zmq-pub://0.0.0.0:5555").tcp(5555, bind=True) == "tcp://*:5555"
    for bad in ("zmq-pub://127.0.0.1", "udp://1.2.3.4:5", "zmq-pub://h:99999", "tcp://h:5?classes=x"):
        with pytest.raises(SegstreamError):
            parse_endpoint(bad)


def test_no_pickle_on_the_wire():
    root = Path(__file__).resolve().parents[2] / "stream"
    for name in ("messages.py", "subscriber.py", "sinks/zmq_pub.py", "sinks/http_view.py"):
        text = (root / name).read_text()
        assert "pickle" not in text and "send_pyobj" not in text and "recv_pyobj" not in text, name


def test_adaptive_infer_size_travels_in_the_header_and_is_checked(sample):
    frames = _message(sample, infer_size=(240, 176))
    msg = decode_mask_message(frames)
    assert msg.header["infer_size"] == [240, 176]
    jsonschema.validate(msg.header, SCHEMA)
    assert "infer_size" not in decode_mask_message(_message(sample)).header  # only --adaptive runs
    for bad in ([240], [0, 176], [240, "176"], "240x176", [240, 99999]):
        head = json.loads(bytes(frames[1]))
        head["infer_size"] = bad
        with pytest.raises(MessageError, match="infer_size"):
            decode_mask_message([frames[0], json.dumps(head).encode(), *frames[2:]])
