"""COCO RLE of class-id masks (stream/maskcodec/rle.py, segments.py) against pycocotools, the reference
implementation, on the real CamVid labels of tests/fixtures: our strings are byte-for-byte the ones
pycocotools writes, pycocotools decodes ours to exactly the class masks, and the mask-stream payload
round-trips exactly. Malformed payloads are refused with MessageError (skipped by subscribers)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.maskcodec import rle, segments
from stream.messages import MessageError, decode_mask_message, encode_mask_message
from tests.unit import rle_reference as ref

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the dev extra")
# pycocotools 2.0.x on NumPy 2 warns on every decode; nothing to do with this code
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _labels(camvid: Path) -> list[np.ndarray]:
    paths = sorted(camvid.glob("*/labels/*.png"))
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
    assert len(labels) >= 10 and all(lab is not None and lab.ndim == 2 for lab in labels)
    return labels


def test_strings_are_pycocotools_strings_on_real_labels(camvid):
    checked = 0
    for lab in _labels(camvid):
        for c in np.unique(lab):
            binary = lab == c
            ref = mask_api.encode(np.asfortranarray(binary.astype(np.uint8)))
            ours = rle.encode_binary(binary)
            assert ours["counts"] == ref["counts"].decode() and ours["size"] == ref["size"]
            back = rle.decode_counts(rle.string_to_counts(ours["counts"]), *lab.shape)
            assert np.array_equal(back, binary)
            checked += 1
    assert checked > 100


def test_rle_edge_cases_match_pycocotools():
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, dtype=bool)]
    big = np.zeros((40, 1000), bool)  # runs longer than 5 bits and deltas that go negative
    big[:, 3:900] = True
    big[17, 950:] = True
    cases.append(big)
    for binary in cases:
        ref = mask_api.encode(np.asfortranarray(binary.astype(np.uint8)))["counts"].decode()
        assert rle.encode_binary(binary)["counts"] == ref
        assert np.array_equal(rle.decode_counts(rle.string_to_counts(ref), *binary.shape), binary)


@pytest.mark.parametrize("components", [False, True])
def test_document_decodes_exactly_with_pycocotools_and_ours(camvid, components):
    for lab in _labels(camvid)[:6]:
        h, w = lab.shape
        doc = json.loads(json.dumps(segments.encode(lab, "coco-rle", components=components)))
        assert np.array_equal(segments.decode(doc, w, h, "coco-rle"), lab)
        union = np.zeros_like(lab)
        for s in doc["segments"]:
            m = mask_api.decode(s["segmentation"]).astype(bool)
            assert (lab[m] == s["category_id"]).all()
            assert s["area"] == int(mask_api.area(s["segmentation"])) == m.sum()
            assert s["bbox"] == [int(v) for v in mask_api.toBbox(s["segmentation"])]
            if components:
                n, _ = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
                assert n == 2  # background + exactly one region
            union[m] += 1
        assert (union == 1).all()  # every pixel in exactly one segment


def test_components_split_a_class_into_its_regions():
    lab = np.zeros((20, 30), np.uint8)
    lab[2:5, 2:5] = 3
    lab[10:15, 20:28] = 3
    lab[12, 1] = 3
    doc = segments.encode(lab, "coco-rle", components=True)
    threes = sorted(s["area"] for s in doc["segments"] if s["category_id"] == 3)
    assert threes == [1, 9, 40]
    assert len(segments.encode(lab, "coco-rle")["segments"]) == 2  # per class: 0 and 3


def _table(camvid: Path) -> ClassTable:
    return ClassTable.from_json_file(camvid / "classes.json")


def test_mask_message_round_trip_is_exact(camvid):
    classes = _table(camvid)
    lab = _labels(camvid)[0]
    frames = encode_mask_message(
        stream="cam0", seq=3, frame_index=3, mask=lab, classes=classes, encoding="coco-rle"
    )
    frames = [bytes(f) for f in frames]
    msg = decode_mask_message(frames)
    assert msg.header["encoding"] == "coco-rle" and msg.header["mask_bytes"] == len(frames[2])
    assert np.array_equal(msg.mask, lab)
    assert msg.segments["format"] == "coco-rle"
    assert {s["category_id"] for s in msg.segments["segments"]} == set(np.unique(lab).tolist())
    assert len(frames[2]) < lab.size // 4  # it is a compression, not a detour


def _tampered(camvid: Path, edit) -> list[bytes]:
    classes = _table(camvid)
    lab = _labels(camvid)[0]
    frames = [
        bytes(f)
        for f in encode_mask_message(
            stream="cam0", seq=0, frame_index=0, mask=lab, classes=classes, encoding="coco-rle"
        )
    ]
    doc = json.loads(frames[2])
    edit(doc)
    payload = json.dumps(doc).encode()
    header = json.loads(frames[1])
    header["mask_bytes"] = len(payload)
    return [frames[0], json.dumps(header).encode(), payload]


def _drop_segment(doc):
    doc["segments"].pop()


def _duplicate_segment(doc):
    doc["segments"].append(doc["segments"][0])


def _bad_chars(doc):
    doc["segments"][0]["segmentation"]["counts"] = "~~~"


def _short_counts(doc):
    doc["segments"][0]["segmentation"]["counts"] = doc["segments"][0]["segmentation"]["counts"][:-2]


def _wrong_size(doc):
    doc["size"] = [1, 1]


def _not_int_category(doc):
    doc["segments"][0]["category_id"] = "3"


@pytest.mark.parametrize(
    "edit", [_drop_segment, _duplicate_segment, _bad_chars, _short_counts, _wrong_size, _not_int_category]
)
def test_malformed_payloads_are_refused(camvid, edit):
    with pytest.raises(MessageError) as e:
        decode_mask_message(_tampered(camvid, edit))
    assert e.value.reason == "malformed"


def test_payload_that_is_not_json_is_refused(camvid):
    frames = _tampered(camvid, lambda d: None)
    header = json.loads(frames[1])
    header["mask_bytes"] = 5
    with pytest.raises(MessageError, match="not JSON"):
        decode_mask_message([frames[0], json.dumps(header).encode(), b"{oops"])


def test_documents_follow_the_published_schema(camvid):
    import jsonschema

    repo = Path(__file__).resolve().parents[2]
    schema = json.loads((repo / "stream/schemas/mask-segments.schema.json").read_text())
    header_schema = json.loads((repo / "stream/schemas/mask-header.schema.json").read_text())
    lab = _labels(camvid)[2]
    classes = _table(camvid)
    for fmt in segments.FORMATS:
        for components in (False, True):
            jsonschema.validate(
                json.loads(json.dumps(segments.encode(lab, fmt, components=components))), schema
            )
        frames = encode_mask_message(
            stream="s", seq=0, frame_index=0, mask=lab, classes=classes, encoding=fmt
        )
        jsonschema.validate(json.loads(bytes(frames[1])), header_schema)
    bad = segments.encode(lab, "polygons")
    del bad["fill"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# --------------------------------------------------------------- rle.class_strings (numba kernels)


def _vectorized(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """What class_strings replaces: the vectorized NumPy path, value by value."""
    starts, lengths, values = ref.value_runs(image)
    ids, areas, boxes = ref.class_boxes(starts, lengths, values, image.shape[0])
    gids, counts = ref.grouped_counts(starts, lengths, values, image.size)
    assert np.array_equal(ids, gids)
    return ids, areas, boxes, ref.counts_to_strings(counts)


def _assert_class_strings(image: np.ndarray, pycoco: bool = True) -> None:
    ids, areas, boxes, strings = rle.class_strings(image)
    assert ids.dtype == np.int64 and areas.dtype == np.int64 and boxes.shape == (ids.size, 4)
    assert np.array_equal(ids, np.unique(image))
    ref = _vectorized(image)
    assert np.array_equal(ids, ref[0]) and np.array_equal(areas, ref[1])
    assert np.array_equal(boxes, ref[2]) and strings == ref[3]
    if not pycoco:
        return
    for c, area, box, text in zip(ids.tolist(), areas.tolist(), boxes.tolist(), strings, strict=True):
        binary = np.asfortranarray((image == c).astype(np.uint8))
        coco = mask_api.encode(binary)
        assert text == coco["counts"].decode()
        assert area == int(mask_api.area(coco)) and box == [int(v) for v in mask_api.toBbox(coco)]


def test_class_strings_are_the_vectorized_and_pycocotools_ones_on_real_labels(camvid):
    for lab in _labels(camvid):
        _assert_class_strings(lab)
        _assert_class_strings(lab.astype(np.int32), pycoco=False)  # same values, component dtype


def _random_masks(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = [(1, 1), (1, 9), (9, 1), (1, 64), (64, 1), (2, 3), (7, 5), (8, 8), (13, 17), (40, 33)]
    masks = []
    for h, w in shapes:
        masks.append(np.zeros((h, w), np.uint8))  # all one class
        masks.append(np.full((h, w), 255, np.uint8))
        masks.append(((np.arange(h)[:, None] + np.arange(w)) % 2).astype(np.uint8) * 7)  # checkerboard
        masks.append(rng.integers(0, 3, (h, w), dtype=np.uint8))  # short runs
        masks.append(rng.integers(0, 256, (h, w), dtype=np.uint8))  # many classes
        blocks = rng.integers(0, 4, (h // 4 + 1, w // 4 + 1), dtype=np.uint8)
        masks.append(np.kron(blocks, np.ones((4, 4), np.uint8))[:h, :w])  # long runs across columns
    return masks


def test_class_strings_on_random_masks_of_many_shapes():
    rng = np.random.default_rng(7)
    for mask in _random_masks(rng):
        _assert_class_strings(mask)
        _assert_class_strings(mask.astype(np.int32), pycoco=False)


def test_class_strings_on_int32_labels():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3000, (60, 70)).astype(np.int32)  # components: thousands of labels
    labels[10:30, 5:60] = 0
    _assert_class_strings(labels, pycoco=False)
    _assert_class_strings(labels[:7, :3], pycoco=True)
    # values that cannot index a table (negative, huge) are numbered first: same strings
    for offset in (-1500, 2**31 - 3001):
        ids, areas, boxes, strings = rle.class_strings(labels + np.int32(offset))
        ref = rle.class_strings(labels)
        assert np.array_equal(ids, ref[0] + offset) and np.array_equal(areas, ref[1])
        assert np.array_equal(boxes, ref[2]) and strings == ref[3]
    wide = labels.astype(np.int64)
    assert rle.class_strings(wide)[3] == rle.class_strings(labels)[3]


def test_class_strings_long_runs_and_big_counts():
    # counts of 6 chunks and deltas that go negative, in a frame larger than a camera's
    mask = np.zeros((1100, 1300), np.uint8)
    mask[:, 3:900] = 1
    mask[517, 950:] = 2
    mask[-1, -1] = 3
    _assert_class_strings(mask)
    assert rle.class_strings(np.zeros((0, 5), np.uint8))[3] == []


def test_class_strings_on_views_and_after_shape_changes():
    rng = np.random.default_rng(3)
    big = rng.integers(0, 4, (50, 60), dtype=np.uint8)
    for view in (big[::2, ::3], big[5:20, 7:], big.T, big[:1], big[:, :1]):
        _assert_class_strings(view, pycoco=False)
        _assert_class_strings(np.ascontiguousarray(view), pycoco=False)


def test_class_strings_rejects_what_it_cannot_encode():
    with pytest.raises(ValueError):
        rle.class_strings(np.zeros((2, 3, 1), np.uint8))
    with pytest.raises(ValueError):
        rle.class_strings(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        rle.class_strings(np.full((2, 3), 2**40, np.int64))


def test_warm_compiles_every_kernel(camvid):
    from stream.maskcodec import rle_kernels

    rle.warm()
    # the entry points (helpers they call are compiled into them)
    kernels = [f for n, f in vars(rle_kernels).items() if hasattr(f, "signatures") and n[0] != "_"]
    assert len(kernels) == 3 and all(f.signatures for f in kernels)
    compiled = [len(f.signatures) for f in kernels]
    lab = _labels(camvid)[0]
    labels = cv2.connectedComponents(np.uint8(lab == lab[0, 0]), connectivity=8)[1]  # int32
    for image in (lab, labels, lab[:1, :3], labels[:3, :1] - 1):
        rle.class_strings(image)
    assert [len(f.signatures) for f in kernels] == compiled  # no frame compiles anything
    mask = np.array([[1, 1], [0, 1]], np.uint8)
    ref = [mask_api.encode(np.asfortranarray(np.uint8(mask == c)))["counts"].decode() for c in (0, 1)]
    assert rle.class_strings(mask)[3] == ref == ["112", "0111"]


def test_class_strings_from_threads():
    # scratch buffers are per thread: concurrent encoders (nogil kernels) must not share them
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    masks = [rng.integers(0, 5, (30 + i % 3, 40), dtype=np.uint8) for i in range(24)]
    expected = [rle.class_strings(m)[3] for m in masks]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda m: rle.class_strings(m)[3], masks)) == expected
