"""A subscriber in another language: the Node.js client (tools/clients/node, written from
docs/PROTOCOL.md) decodes headers and raw / RLE / COCO-RLE / polygon masks from a real publisher and
checks them."""

from __future__ import annotations

import json

import pytest

from stream.sinks.zmq_pub import ZmqPubSink

from .mask_helpers import (
    Feeder,
    free_port_block,
    needs_node_client,
    node_subscribe,
    real_samples,
    stream_info,
)

pytestmark = needs_node_client


@pytest.mark.parametrize("encoding", ["raw", "rle", "coco-rle", "polygons"])
def test_node_client_decodes_and_checks_masks(camvid, encoding):
    classes, frames, masks = real_samples(camvid)
    port = free_port_block()
    # polygons at tolerance 0 are exact, so every encoding must give back the very pixels sent
    extra = "&tolerance=0" if encoding == "polygons" else ""
    sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}?encoding={encoding}&confidence=raw{extra}")
    sink.open(stream_info(classes, frames[0]))
    with Feeder(sink, frames, masks, rate=40):
        proc = node_subscribe(port, "--count", "12", "--timeout", "10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["ok"] and summary["errors"] == []
    assert summary["received"] == 12 and summary["seqs"] == sorted(set(summary["seqs"]))
    assert (summary["width"], summary["height"]) == (masks[0].shape[1], masks[0].shape[0])
    assert summary["encodings"] == [encoding]
    assert summary["classes_digest"] == classes.digest()
    assert summary["max_id"] == max(int(m.max()) for m in masks)  # it really read the pixels
    sent = [int(masks[seq % len(masks)].sum()) for seq in summary["seqs"]]
    assert summary["id_sums"] == sent


def test_node_client_reports_a_dead_endpoint(tmp_path):
    port = free_port_block()
    proc = node_subscribe(port, "--count", "1", "--timeout", "1")
    assert proc.returncode == 1 and "segstream node client:" in proc.stderr
