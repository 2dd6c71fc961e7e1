"""Shared fixtures: the real data beside the repo (../shared/data), never copied into it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (the shared/ folder must sit beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def camvid(shared_data: Path) -> Path:
    return shared_data / "camvid"


@pytest.fixture(scope="session")
def video_dir(shared_data: Path) -> Path:
    return shared_data / "video"


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
