"""Entropy and margin as optional parts of the mask message (docs/PROTOCOL.md §5), over real sockets: the
publisher's ``maps=`` option, the Python subscriber, the Node.js client, and a whole `segstream run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from stream.messages import MessageError, decode_mask_message, encode_mask_message
from stream.sinks.base import SinkError
from stream.sinks.zmq_pub import ZmqPubSink
from stream.subscriber import Subscriber

from .mask_helpers import (
    Feeder,
    free_port_block,
    needs_node_client,
    node_subscribe,
    real_samples,
    segstream,
    stream_info,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "stream" / "schemas" / "mask-header.schema.json").read_text())


def _maps(mask: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Distinct, non-constant planes per frame, so a mix-up of parts or frames shows."""
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    return {
        "entropy": ((xx * 3 + yy + 17 * k) % 256).astype(np.uint8),
        "margin": ((yy * 5 + mask.astype(np.int64) * 9 + k) % 256).astype(np.uint8),
    }


def _publish(camvid: Path, options: str):
    classes, frames, masks = real_samples(camvid)
    port = free_port_block()
    sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}?{options}")
    sink.open(stream_info(classes, frames[0]))
    feeder = Feeder(sink, frames, masks, rate=40)
    for k, r in enumerate(feeder.results):
        r.maps = _maps(r.mask, k)
    return port, sink, feeder, masks


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_python_subscriber_reads_entropy_and_margin(camvid, encoding):
    port, sink, feeder, masks = _publish(
        camvid, f"confidence=raw&maps=entropy,margin&maps_encoding={encoding}"
    )
    assert sink.wants_maps == ("entropy", "margin")  # so the infer stage computes them
    got = []
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub, feeder:
        while len(got) < 5:
            msg = sub.recv(timeout=10)
            assert msg is not None, "no mask within 10 s"
            got.append(msg)
    for msg in got:
        k = msg.seq % len(masks)
        jsonschema.validate(msg.header, SCHEMA)
        names = [(p["name"], p["encoding"]) for p in msg.header["parts"]]
        assert names == [("confidence", "raw"), ("entropy", encoding), ("margin", encoding)]
        want = _maps(masks[k], k)
        assert np.array_equal(msg.entropy, want["entropy"]) and np.array_equal(msg.margin, want["margin"])
        assert np.array_equal(msg.mask, masks[k]) and msg.confidence is not None


def test_maps_are_off_unless_asked_and_bad_options_are_one_line(camvid):
    classes, frames, masks = real_samples(camvid, 1)
    msg = decode_mask_message(
        encode_mask_message(stream="s", seq=0, frame_index=0, mask=masks[0], classes=classes)
    )
    assert msg.maps == {} and msg.entropy is None and msg.margin is None
    assert ZmqPubSink("zmq-pub://127.0.0.1:5555").wants_maps == ()
    with pytest.raises(SinkError, match=r"maps=entropy,variance: variance \(expected entropy,margin\)"):
        ZmqPubSink("zmq-pub://127.0.0.1:5555?maps=entropy,variance")
    with pytest.raises(SinkError, match="maps_encoding=jpeg"):
        ZmqPubSink("zmq-pub://127.0.0.1:5555?maps=entropy&maps_encoding=jpeg")
    with pytest.raises(SinkError, match="maps_encoding applies only with maps="):
        ZmqPubSink("zmq-pub://127.0.0.1:5555?maps_encoding=png")
    # a map part whose size disagrees with the header is refused, never half-decoded
    ent = np.zeros_like(masks[0])
    parts = encode_mask_message(
        stream="s", seq=0, frame_index=0, mask=masks[0], classes=classes, maps={"entropy": ent}
    )
    parts[-1] = bytes(parts[-1])[:-1]
    with pytest.raises(MessageError, match="entropy part has"):
        decode_mask_message(parts)


@needs_node_client
def test_node_client_reads_entropy_and_margin(camvid):
    port, sink, feeder, masks = _publish(camvid, "encoding=rle&maps=entropy,margin")
    with feeder:
        proc = node_subscribe(port, "--count", "6", "--timeout", "10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["ok"] and summary["received"] == 6
    for name in ("entropy", "margin"):
        sent = [
            float(_maps(masks[s % len(masks)], s % len(masks))[name].mean()) / 255 for s in summary["seqs"]
        ]
        assert summary["maps"][name]["encoding"] == "raw"
        assert np.allclose(summary["maps"][name]["means"], sent, atol=1e-9)


@pytest.mark.timeout(180)
def test_segstream_run_publishes_entropy_from_the_model(tmp_path, avi_clip):
    """A whole run of the bundled (trained) model: the sink's maps= makes the infer stage compute entropy
    and margin from the logits; a lossless `segstream subscribe --save` receives every frame's maps and
    writes them as PNGs."""
    port, n = free_port_block(), 6
    rec = segstream("subscribe", f"tcp://127.0.0.1:{port}", "--lossless", "--save", str(tmp_path / "rec"),
                    "--timeout", "90")  # fmt: skip
    run = segstream(
        "run", str(avi_clip.path), "--max-frames", str(n), "--no-progress",
        "--sink", f"zmq-pub://127.0.0.1:{port}?wait_recorders=1&maps=entropy,margin&maps_encoding=png",
    )  # fmt: skip
    run_out, run_err = run.communicate(timeout=150)
    rec_out, rec_err = rec.communicate(timeout=60)
    assert run.returncode == 0, run_err
    assert rec.returncode == 0, rec_err
    headers = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("????????.json"))]
    assert [h["seq"] for h in headers] == list(range(n))
    for h in headers:
        jsonschema.validate(h, SCHEMA)
        assert [p["name"] for p in h["parts"]] == ["entropy", "margin"]
        stem = tmp_path / "rec" / f"{h['seq']:08d}"
        ent = cv2.imread(f"{stem}_entropy.png", cv2.IMREAD_UNCHANGED)
        mar = cv2.imread(f"{stem}_margin.png", cv2.IMREAD_UNCHANGED)
        assert ent.shape == mar.shape == (h["height"], h["width"]) and ent.dtype == np.uint8
        # a real model's maps: mostly sure (low entropy, high margin), unsure somewhere (class borders)
        assert ent.mean() < 128 < mar.mean() and ent.max() > ent.min() and mar.min() < 200
        # where the top two classes are close, the entropy is higher than where one class dominates
        assert ent[mar < 64].mean() > ent[mar > 192].mean()
    # the subscriber's per-mask line shows the maps' means
    assert len(re.findall(r"entropy 0\.\d+\s+margin 0\.\d+", rec_out)) == n, rec_out
