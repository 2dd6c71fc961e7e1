"""A two-input RGB-D model (image, depth) served by a real Triton server (PyTriton's bundled tritonserver,
docs/deploy/pytriton_serve.py, as in test_triton.py): the triton:// runtime sends both inputs, over gRPC
and through system shared memory, and gets the masks ONNX Runtime gives locally."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.integration.test_triton import pytriton_server
from tests.unit.test_rgbd_inputs import SIZE, experiment, train_few_steps

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return experiment().generate(tmp_path_factory.mktemp("scenes"), 4, SIZE, seed=11)


@pytest.fixture(scope="module")
def model(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.export import export_onnx

    net, meta = train_few_steps("fastscnn", scenes)  # early fusion: concatenated inside the graph
    path = tmp_path_factory.mktemp("model") / "rgbd.onnx"
    export_onnx(net, meta, path)
    return path


@pytest.fixture(scope="module")
def served(model: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytriton_server(model, tmp_path_factory.mktemp("triton"), "--name", "rgbd") as port:
        yield f"triton://127.0.0.1:{port}/rgbd"


@pytest.mark.parametrize("shm", ["on", "off"])
def test_triton_runs_the_two_input_model_like_onnxruntime(served: str, model: Path, scenes, shm: str) -> None:
    from engines.depth import read_depth
    from engines.runtime import load

    names = sorted((scenes / "image").glob("*.png"))
    frames = [cv2.imread(str(p)) for p in names]
    depths = [read_depth(scenes / "depth" / p.name) for p in names]
    with load(f"{served}?shm={shm}") as remote, load(model, device="cpu") as local:
        assert remote.input_names == ["image", "depth"]
        inputs = local.prepare(frames, depth=depths)
        ids, conf = remote.run(inputs, confidence=True)
        want, want_conf = local.run(inputs, confidence=True)
        assert np.array_equal(ids, want) and np.array_equal(conf, want_conf)
        assert len(np.unique(want)) > 1  # a trained model: the masks are not one class
        # other depth, other masks, on both: the served graph reads the depth it is sent
        far = remote.prepare(frames, depth=[np.full_like(d, 4500) for d in depths])
        assert np.array_equal(remote.run(far)[0], local.run(far)[0])
        assert not np.array_equal(local.run(far)[0], want)
