"""The minimal client printed in docs/PROTOCOL.md section 10, extracted from the page and run as it
stands against a real publisher: it ends on the 2-part end message, survives a class-table port
that never answers, and skips hostile messages instead of crashing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engines.meta import ClassTable
from stream.messages import encode_end_message, encode_mask_message
from stream.sinks.base import Result, StreamInfo
from stream.sinks.zmq_pub import ZmqPubSink

from .mask_helpers import free_port_block

PAGE = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
CLASSES = ClassTable(names=("Sky", "Road", "Car"), palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)), ignore_index=3)


def page_client(tmp_path: Path) -> Path:
    text = PAGE.read_text()
    section = text[text.index("## 10. A minimal client") : text.index("## 11.")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "section 10 must hold exactly one python block"
    path = tmp_path / "page_client.py"
    path.write_text(blocks[0])
    return path


def _start(client: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(client), f"tcp://127.0.0.1:{port}"],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # connected and subscribed before the first mask
    return proc


def _mask(seq: int) -> np.ndarray:
    m = np.full((30, 40), 1, np.uint8)  # mostly Road
    m[:5] = 0
    m[-2:, : seq % 40] = 3  # the ignore index
    return m


def test_page_client_against_a_real_publisher_ends_on_the_end_message(tmp_path):
    client = page_client(tmp_path)
    port = free_port_block()
    sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}")
    sink.open(StreamInfo("0", 40, 30, 25.0, CLASSES, live=False))
    proc = _start(client, port)
    try:
        for seq in range(20):
            now = time.time()
            frame = np.zeros((30, 40, 3), np.uint8)
            sink.write(
                Result(seq=seq, frame_index=seq, frame=frame, mask=_mask(seq), timestamps={"capture": now})
            )
            time.sleep(0.02)
    finally:
        sink.close()  # sends the 2-part end message the old page client crashed on
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "end of stream", out
    named = [ln for ln in lines if ln.endswith(" Road")]
    assert len(named) >= 15 and [int(ln.split()[0]) for ln in named] == sorted(
        int(ln.split()[0]) for ln in named
    )


@pytest.mark.timeout(60)
def test_page_client_survives_a_dead_class_table_and_hostile_messages(tmp_path):
    """Nothing answers on PORT+1 (the old client blocked forever in req.recv()), and every hostile
    message of the attack is sent before each good one."""
    client = page_client(tmp_path)
    port = free_port_block()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    proc = _start(client, port)
    try:
        for seq in range(3):
            good = [
                bytes(f)
                for f in encode_mask_message(
                    stream="0", seq=seq, frame_index=seq, mask=_mask(seq), classes=CLASSES
                )
            ]
            head = json.loads(good[1])
            for bad in (
                [b"0", b"[" * 100_000 + b"]" * 100_000, good[2]],
                [b"0", b"[" * 30_000 + b"]" * 30_000, good[2]],
                [
                    b"0",
                    json.dumps({**head, "width": 32768, "height": 32768, "encoding": "raw"}).encode(),
                    b"x",
                ],
                [b"0", json.dumps({**head, "seq": -1}).encode(), good[2]],
                [b"0", json.dumps({**head, "width": "40"}).encode(), good[2]],
                [b"0", b"\xff\xfe not json"],
                [b"0"],
            ):
                pub.send_multipart(bad)
            pub.send_multipart(good)
            time.sleep(2.5)  # the class-table request times out (2 s) each time
        pub.send_multipart(encode_end_message("0", 2, 3))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(0)
        ctx.term()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["0 class 1", "1 class 1", "2 class 1", "end of stream"], out + err
