"""Shared fixtures: everything comes from the clone itself (tests/fixtures, stream/assets) or is made here.

- ``camvid``: tests/fixtures/camvid, 18 real CamVid frames with labels at 240x180 in the layout
  `segstream train` reads (origin, licence and how it was made: tests/fixtures/README.md).
- ``sample_clip``: the bundled stream/assets/sample.mp4 (960x540, 25 fps, 221 frames, H.264 + AAC; MIT).
- ``avi_clip``: a second, longer clip in another container, codec, size and rate, made once per session
  from the bundled one (no licence-unknown clip is kept in the repo).
- ``onnx_model``: a small Fast-SCNN exported to ONNX for the pipeline tests.

Nothing outside the clone is read: the suite passes with no data folder beside the checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SAMPLE_MP4 = REPO / "stream" / "assets" / "sample.mp4"


@dataclass(frozen=True)
class Clip:
    """A video file and what is known about it (measured when it was made; tests assert against it)."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int


def _in_repo(path: Path) -> Path:
    # These files are committed; missing means a broken checkout, which must fail, never skip.
    if not path.exists():
        pytest.fail(f"{path} is missing from the checkout (it is part of the repository)")
    return path


@pytest.fixture(scope="session")
def camvid() -> Path:
    """CamVid subset: train = 0001TP, 0006R0, 0016E5 (4 frames each), val = 0016E5 (6 frames), 240x180."""
    root = _in_repo(FIXTURES / "camvid")
    for split in ("train", "val"):
        _in_repo(root / split / "images")
    return root


@pytest.fixture(scope="session")
def sample_clip() -> Clip:
    return Clip(_in_repo(SAMPLE_MP4), 960, 540, 25.0, 221)


#: the made clip: the bundled clip's frames at 480x270, 10 fps, MPEG-4 Part 2 in AVI, played 3 times
AVI_SIZE, AVI_FPS, AVI_LOOPS = (480, 270), 10, 3


@pytest.fixture(scope="session")
def avi_clip(sample_clip: Clip, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """663 frames (3 x 221): long enough that a pipeline test can act on a run before it ends.

    Made with PyAV in about 2 s, and decoded back once to check its frame count.
    """
    import av
    import cv2

    with av.open(str(sample_clip.path)) as c:
        frames = [
            cv2.resize(f.to_ndarray(format="bgr24"), AVI_SIZE, interpolation=cv2.INTER_AREA)
            for f in c.decode(video=0)
        ]
    path = tmp_path_factory.mktemp("clips") / "highway.avi"
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=AVI_FPS)
        s.width, s.height, s.pix_fmt = AVI_SIZE[0], AVI_SIZE[1], "yuv420p"
        s.bit_rate = 3_000_000  # ≈ 37 KB a frame: close enough to the source for order checks
        for _ in range(AVI_LOOPS):
            for img in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                    out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    with av.open(str(path)) as c:
        made = sum(1 for _ in c.decode(video=0))
    assert made == AVI_LOOPS * sample_clip.frames, f"made clip decodes to {made} frames"
    return Clip(path, AVI_SIZE[0], AVI_SIZE[1], float(AVI_FPS), made)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory, camvid: Path) -> Path:
    """A small Fast-SCNN (random weights, CamVid classes, 160x120 input, max batch 4) exported to ONNX.

    For pipeline tests that need a real model file before the bundled one exists; built once a session.
    """
    import torch

    from engines.export import export_onnx
    from engines.meta import ClassTable, ModelMeta
    from engines.models import build_model

    torch.manual_seed(0)
    classes = ClassTable.from_json_file(camvid / "classes.json")
    meta = ModelMeta(arch="fastscnn", classes=classes, input_size=(160, 120), max_batch=4)
    path = tmp_path_factory.mktemp("onnx_model") / "fastscnn-160x120.onnx"
    export_onnx(build_model("fastscnn", classes.num_classes).eval(), meta, path)
    return path
