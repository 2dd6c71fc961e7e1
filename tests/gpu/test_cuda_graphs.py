"""CUDA graphs in the PyTorch runtime (engines/runtime/torch.py): the frame path (uint8 NHWC -> normalize on
the device -> model -> ids, and confidence when asked) captured per (batch bucket, H, W, confidence) and
replayed, against the same runtime run eagerly, on frames of the bundled clip through the bundled model.

The CUDA tests skip without a CUDA GPU; the few that check what happens without one run everywhere else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.procs import REPO, env

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU: "
    + ("torch is a CPU-only build" if torch.version.cuda is None else "no device visible"),
)
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

MODEL = REPO / "stream" / "assets" / "default.pt"  # Fast-SCNN trained on CamVid, 480x360, max batch 8


@pytest.fixture(scope="module")
def clip_frames(sample_clip) -> list[np.ndarray]:
    """8 frames spread over the bundled clip (960x540 BGR): neighbours differ, so stale inputs show."""
    cap = cv2.VideoCapture(str(sample_clip.path))
    frames = []
    for i in range(sample_clip.frames):
        ok, frame = cap.read()
        if not ok or len(frames) == 8:
            break
        if i % 27 == 0:
            frames.append(frame)
    cap.release()
    assert len(frames) == 8, f"read {len(frames)} frames from {sample_clip.path}"
    return frames


def _runtimes(size: tuple[int, int], **kw):
    from engines.runtime.torch import TorchRuntime

    graphs = TorchRuntime(MODEL, device="cuda", input_size=size, **kw)
    eager = TorchRuntime(MODEL, device="cuda", input_size=size, cuda_graphs=False, **kw)
    assert graphs.cuda_graphs and not eager.cuda_graphs
    return graphs, eager


def _same(graph_out, eager_out, what: str) -> None:
    ids_g, conf_g = graph_out
    ids_e, conf_e = eager_out
    assert ids_g.shape == ids_e.shape and ids_g.dtype == np.uint8
    differ = int(np.count_nonzero(ids_g != ids_e))
    assert differ == 0, f"{what}: {differ} of {ids_e.size} ids differ between graph and eager"
    assert (conf_g is None) == (conf_e is None)
    if conf_e is not None:
        worst = int(np.abs(conf_g.astype(int) - conf_e).max())
        assert worst <= 1, f"{what}: confidence differs by up to {worst}"


# --- without a GPU ---------------------------------------------------------------------------------------


def test_batch_buckets() -> None:
    from engines.runtime.torch import batch_bucket

    assert [batch_bucket(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [batch_bucket(n, 6) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    assert batch_bucket(1, 1) == 1
    for n, top in ((0, 4), (5, 4)):
        with pytest.raises(ValueError, match="outside"):
            batch_bucket(n, top)


def test_what_a_graph_captures_is_what_eager_run_computes(clip_frames) -> None:
    """The function a graph captures (uint8 frames on the device -> ids, confidence) against eager ``run``
    on the same uint8 batch, on the CPU (where the uint8 path runs too): a slip in the graph side's
    normalization, channel order or outputs shows without a GPU."""
    from engines.runtime.preprocess import prepare_batch
    from engines.runtime.torch import TorchRuntime

    rt = TorchRuntime(MODEL, device="cpu")
    frames = prepare_batch(clip_frames[:2], rt.meta, uint8=True)
    for confidence in (False, True):
        ids, conf = rt.run(frames, confidence=confidence)
        with torch.no_grad():
            outs = [t.numpy() for t in rt._frame_outputs(torch.from_numpy(frames), confidence)]
        assert len(outs) == (2 if confidence else 1)
        assert np.array_equal(outs[0], ids) and len(np.unique(ids)) >= 3
        if confidence:
            assert np.array_equal(outs[1], conf)
    # and the float path agrees with the uint8 one (the graph's normalization is the CPU blob's)
    ids_f, _ = rt.run(prepare_batch(clip_frames[:2], rt.meta))
    assert float(np.mean(ids_f == ids)) >= 0.999


@without_cuda
def test_cuda_graphs_refused_without_cuda_and_off_on_cpu(clip_frames) -> None:
    from engines.runtime import BackendUnavailable, load

    with pytest.raises(BackendUnavailable, match="CUDA graphs need a CUDA device"):
        load(MODEL, device="cpu", cuda_graphs=True)
    rt = load(MODEL, device="cpu", cuda_graphs=None)
    assert not rt.cuda_graphs and rt.graph_error is None
    ids, _ = rt.run(rt.prepare(clip_frames[:1]))
    assert ids.shape == (1, 360, 480) and rt.graphs == ()


@without_cuda
def test_graphs_bench_says_it_needs_cuda() -> None:
    r = subprocess.run(
        [sys.executable, "tools/bench_infer.py", "--graphs", "--quick"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not usable" in lines[0], r.stderr


# --- on a CUDA GPU ---------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("size", [(480, 360), (640, 352)], ids=["480x360", "640x352"])
def test_graphs_equal_eager_on_clip_frames(clip_frames, size: tuple[int, int]) -> None:
    graphs, eager = _runtimes(size)
    w, h = size
    for n in (1, 4):
        for confidence in (False, True):
            outs = []
            # two calls on different frames: the second must see its own frames (static input refreshed)
            for chunk in (clip_frames[:n], clip_frames[8 - n :]):
                g = graphs.run(graphs.prepare(chunk), confidence=confidence)
                e = eager.run(eager.prepare(chunk), confidence=confidence)
                _same(g, e, f"{w}x{h} batch {n} confidence={confidence}")
                outs.append(g[0])
            assert not np.array_equal(outs[0], outs[1]), "two different frame sets gave the same ids"
            assert (n, h, w, confidence) in graphs.graphs
    assert graphs.graph_error is None and len(graphs.graphs) == 4 and eager.graphs == ()
    assert len(np.unique(outs[1])) >= 3  # a decisive model: equal ids mean something


@needs_cuda
def test_buckets_other_shapes_and_the_graph_bound(clip_frames) -> None:
    graphs, eager = _runtimes((480, 360), max_batch=4)
    # 3 frames run in the batch-4 graph; their results match eager's on 3 frames (kernels chosen for
    # another batch size may round differently: near-ties only)
    g3 = graphs.run(graphs.prepare(clip_frames[:3]))[0]
    e3 = eager.run(eager.prepare(clip_frames[:3]))[0]
    assert g3.shape == (3, 360, 480) and float(np.mean(g3 == e3)) >= 0.999
    assert graphs.graphs == ((4, 360, 480, False),)
    _same(graphs.run(graphs.prepare(clip_frames[:4])), eager.run(eager.prepare(clip_frames[:4])), "batch 4")
    assert len(graphs.graphs) == 1  # the same graph
    # frames of another size (tiles, adaptive sizes) get a graph of their own, up to max_graphs ...
    graphs.max_graphs = 2
    small = np.stack([cv2.resize(f, (320, 240)) for f in clip_frames[:1]])
    _same(graphs.run(small), eager.run(small), "320x240 batch 1")
    assert (1, 240, 320, False) in graphs.graphs
    # ... then run eagerly, still right, and not an error
    other = np.stack([cv2.resize(f, (256, 192)) for f in clip_frames[:2]])
    _same(graphs.run(other), eager.run(other), "256x192 batch 2")
    assert len(graphs.graphs) == 2 and graphs.graph_error is None and graphs.cuda_graphs


@needs_cuda
def test_graphs_off_runs_eagerly(clip_frames) -> None:
    from engines.runtime import load

    rt = load(MODEL, device="cuda", cuda_graphs=False)
    ids, conf = rt.run(rt.prepare(clip_frames[:4]), confidence=True)
    assert ids.shape == conf.shape == (4, 360, 480)
    assert rt.graphs == () and rt.graph_error is None


# a capture that fails for real: a network that reads a value back to the host mid-forward (.item(), a
# synchronization, which stream capture refuses). In its own process, so that whatever a failed capture
# leaves behind cannot touch the other tests.
_FAILING_CAPTURE = """
import sys
import cv2, numpy as np, torch
from engines.runtime.torch import TorchRuntime

class HostSync(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
    def forward(self, x):
        if x.sum().item() < 0:  # never true; the read-back is the point
            x = -x
        return self.net(x)

cap = cv2.VideoCapture(sys.argv[2])
frames = [cap.read()[1] for _ in range(2)]
rt = TorchRuntime(sys.argv[1], device="cuda")
rt.model.net = HostSync(rt.model.net)
ref = TorchRuntime(sys.argv[1], device="cuda", cuda_graphs=False)
for _ in range(2):
    ids, conf = rt.run(rt.prepare(frames), confidence=True)
    ids_e, conf_e = ref.run(ref.prepare(frames), confidence=True)
    assert np.array_equal(ids, ids_e) and np.abs(conf.astype(int) - conf_e).max() <= 1
print("cuda_graphs", rt.cuda_graphs)
print("graphs", len(rt.graphs))
print("graph_error", rt.graph_error)
"""


@needs_cuda
def test_failed_capture_falls_back_to_eager_with_the_reason(sample_clip) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _FAILING_CAPTURE, str(MODEL), str(sample_clip.path)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert out["cuda_graphs"] == "False" and out["graphs"] == "0", r.stdout
    assert out["graph_error"].startswith("capturing a CUDA graph for batch 2 at 480x360 failed: "), r.stdout


@needs_cuda
def test_batch1_timing_eager_vs_graphs(clip_frames, capsys) -> None:
    """Prints (does not assert) batch-1 480x360 latency, eager vs graphs, FP16 and FP32: the figure of
    issue 11 (target <= 1.5 ms). tools/gpu_check.sh has the full table (tools/bench_infer.py --graphs)."""
    lines = [f"batch 1, 480x360, {torch.cuda.get_device_name()}, bundled model, wall time of run():"]
    for fp16 in (True, False):
        graphs, eager = _runtimes((480, 360), fp16=fp16)
        p50 = {}
        for name, rt in (("eager", eager), ("graphs", graphs)):
            batch = rt.prepare(clip_frames[:1])
            for _ in range(10):
                rt.run(batch)
            ts = []
            for _ in range(200):
                t0 = time.perf_counter()
                rt.run(batch)
                ts.append(time.perf_counter() - t0)
            p50[name] = float(np.median(ts)) * 1e3
        assert graphs.graphs == ((1, 360, 480, False),) and graphs.graph_error is None
        prec, e, g = "fp16" if fp16 else "fp32", p50["eager"], p50["graphs"]
        lines.append(f"  {prec}: eager p50 {e:.2f} ms, graphs p50 {g:.2f} ms ({e / g:.1f}x)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@needs_cuda
def test_graphs_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "graphs.json"
    r = subprocess.run(
        [sys.executable, "tools/bench_infer.py", "--graphs", "--quick", "--model", str(MODEL), "--json", out],
        cwd=REPO,
        env=env(COLUMNS="140"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())["results"]
    assert {r["mode"] for r in rows} == {"eager", "graphs"} and all(r["p50_ms"] > 0 for r in rows)
    assert all(not r["note"] for r in rows), rows
