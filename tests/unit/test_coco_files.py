"""COCO JSON from the images sink (per frame and per run) and from `segstream predict`, loaded back by
pycocotools' COCO API; and the Python subscriber reading coco-rle / polygons from a real publisher."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.sinks.base import Result, SinkError, StreamInfo
from stream.subscriber import Subscriber
from stream.uri import open_sink
from tests.procs import run

coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the dev extra")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _samples(camvid: Path, n: int = 3):
    images = sorted((camvid / "val" / "images").glob("*.jpg"))[:n]
    frames = [cv2.imread(str(p)) for p in images]
    labels = [
        cv2.imread(str(camvid / "val" / "labels" / f"{p.stem}.png"), cv2.IMREAD_UNCHANGED) for p in images
    ]
    return ClassTable.from_json_file(camvid / "classes.json"), images, frames, labels


def _write(spec: str, classes, frames, labels) -> None:
    sink = open_sink(spec)
    sink.preflight()
    sink.open(StreamInfo("0", frames[0].shape[1], frames[0].shape[0], 25.0, classes, live=False))
    for i, (frame, lab) in enumerate(zip(frames, labels, strict=True)):
        sink.write(Result(seq=i, frame_index=i, frame=frame, mask=lab))
    sink.close()


def _load(path: Path):
    return coco_api.COCO(str(path))


def test_images_sink_writes_one_coco_file_per_run(camvid, tmp_path):
    classes, _, frames, labels = _samples(camvid)
    _write(f"images:{tmp_path}?what=coco-rle,polygons&json=run&tolerance=0", classes, frames, labels)
    assert not list(tmp_path.glob("*.part"))  # finalized
    for kind in ("coco-rle", "polygons"):
        coco = _load(tmp_path / f"{kind}.json")
        assert sorted(coco.getImgIds()) == [0, 1, 2]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(classes.names)
        for i, lab in enumerate(labels):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
            rebuilt = np.full(lab.shape, 255, np.uint8)
            for a in anns:
                if kind == "coco-rle":
                    rebuilt[coco.annToMask(a).astype(bool)] = a["category_id"]
                else:  # holes are in segstream_polygons; "segmentation" has the exteriors for COCO readers
                    doc = {"polygons": a["segstream_polygons"]}
                    from stream.maskcodec.polygons import Polygon, rasterize

                    polys = [
                        Polygon(
                            np.array(p["exterior"]).reshape(-1, 2),
                            [np.array(h).reshape(-1, 2) for h in p["holes"]],
                        )
                        for p in doc["polygons"]
                    ]
                    rasterize(polys, *lab.shape, rebuilt, a["category_id"])
                assert a["area"] == int((lab == a["category_id"]).sum())
            if kind == "polygons":
                rebuilt[rebuilt == 255] = classes.ignore_index  # the ignore id has no polygons
            assert np.array_equal(rebuilt, lab)


def test_images_sink_writes_a_coco_file_per_frame(camvid, tmp_path):
    classes, _, frames, labels = _samples(camvid, 2)
    _write(f"images:{tmp_path}?what=mask,coco-rle&components=1", classes, frames, labels)
    files = sorted((tmp_path / "coco-rle").glob("*.json"))
    assert [f.name for f in files] == ["000000.json", "000001.json"]
    doc = json.loads(files[1].read_text())
    assert doc["format"] == "coco-rle" and doc["components"] is True and doc["size"] == list(labels[1].shape)
    coco = _load(files[1])
    areas = sorted(a["area"] for a in coco.loadAnns(coco.getAnnIds()))
    assert sum(areas) == labels[1].size
    n_regions = sum(
        cv2.connectedComponents((labels[1] == c).astype(np.uint8), connectivity=8)[0] - 1
        for c in np.unique(labels[1])
    )
    assert len(areas) == n_regions  # one annotation per connected component


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("images:{d}?what=coco-rle&json=video", "json='video'"),
        ("images:{d}?what=polygons&tolerance=-1", "tolerance=-1"),
        ("images:{d}?what=polygons&tolerance=x", "tolerance='x'"),
        ("images:{d}?what=coco", "coco-rle"),
    ],
)
def test_images_sink_options_are_checked(tmp_path, spec, words):
    with pytest.raises(SinkError, match=words.replace("(", r"\(")):
        open_sink(spec.format(d=tmp_path))


def test_predict_writes_coco_json(camvid, tmp_path):
    _, images, _, _ = _samples(camvid, 2)
    out = tmp_path / "pred"
    predict = ["predict", *images, "--out", out, "--threads", "1"]
    proc = run(*predict, "--segments", "coco-rle,polygons", "--json", "run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for kind in ("coco-rle", "polygons"):
        coco = _load(out / f"{kind}.json")
        assert sorted(img["file_name"] for img in coco.loadImgs(coco.getImgIds())) == sorted(
            p.name for p in images
        )
    masks = [cv2.imread(str(out / f"{p.stem}_mask.png"), cv2.IMREAD_UNCHANGED) for p in images]
    coco = _load(out / "coco-rle.json")
    for i, mask in enumerate(masks):
        rebuilt = np.zeros_like(mask)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[i])):
            rebuilt[coco.annToMask(a).astype(bool)] = a["category_id"]
        assert np.array_equal(rebuilt, mask)  # the JSON is the very mask the PNG holds
    bad = run(*predict, "--segments", "rle2", timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "rle2" in bad.stderr


@pytest.mark.parametrize("encoding", ["coco-rle", "polygons"])
def test_python_subscriber_reads_segments_from_a_real_publisher(camvid, encoding):
    import socket
    import threading
    import time

    classes, _, frames, labels = _samples(camvid, 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = open_sink(
        f"zmq-pub://127.0.0.1:{port}?encoding={encoding}&tolerance=0&classes={port + 7}"
        if encoding == "polygons"
        else f"zmq-pub://127.0.0.1:{port}?encoding={encoding}&classes={port + 7}"
    )
    sink.open(StreamInfo("cam0", frames[0].shape[1], frames[0].shape[0], 25.0, classes, live=True))
    stop = threading.Event()

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            sink.write(Result(seq=seq, frame_index=seq, frame=frames[seq % 2], mask=labels[seq % 2]))
            seq += 1
            time.sleep(0.02)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}?classes={port + 7}") as sub:
            got = [sub.recv(10) for _ in range(4)]
    finally:
        stop.set()
        t.join(5)
        sink.close()
    assert all(m is not None for m in got)
    for m in got:
        assert m.header["encoding"] == encoding and m.segments["format"] == encoding
        assert np.array_equal(m.mask, labels[m.seq % 2])
        assert m.classes is not None and m.classes.digest() == classes.digest()
    assert sub.stats.skipped == {}
