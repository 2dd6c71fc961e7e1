"""Reading a model's metadata from the ONNX file alone (engines.runtime.probe): no session, no imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engines.meta import META_KEY
from engines.runtime.base import ModelFileError
from engines.runtime.probe import onnx_metadata, probe

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "stream" / "assets" / "default.onnx"


def test_metadata_matches_what_onnx_runtime_reads():
    import onnxruntime as ort

    want = ort.InferenceSession(str(BUNDLED), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert onnx_metadata(BUNDLED) == dict(want.custom_metadata_map)
    assert META_KEY in onnx_metadata(BUNDLED)


def test_probe_gives_what_the_stages_need():
    from engines.runtime import load

    p = probe(BUNDLED)
    rt = load(BUNDLED, device="cpu", threads=1)
    assert p == {
        "meta": rt.meta.to_json(),
        "wants_uint8": rt.wants_uint8,
        "max_batch": rt.max_batch,
        "backend": rt.backend,
    }


def test_probe_imports_no_inference_library():
    code = (
        "import sys; from engines.runtime.probe import probe; probe(sys.argv[1]); "
        "print(sorted(m for m in ('onnxruntime', 'onnx', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BUNDLED)], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("content", [b"", b"junk" * 100, b"\x08\x07", b"\x0a\xff\xff\xff\xff\x0f"])
def test_a_file_that_is_no_onnx_model_is_one_clear_error(tmp_path, content):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="junk.onnx: not a loadable ONNX model"):
        probe(path)


def test_a_missing_file_and_other_model_kinds(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        probe(tmp_path / "nope.onnx")
    assert probe(tmp_path / "model.pt") is None  # read by its own backend
