"""Automatic configuration: measure candidate run configurations on this machine, pick one for a target fps.

Each candidate (model file x input size x precision x backend x batch x workers/threads x scaled/tiled)
is measured through the real pipeline: `segstream run SOURCE --config CANDIDATE --stats-json` as a
subprocess, so start-up, transport, preprocessing and output cost what they cost in production. Its
accuracy is the mIoU of the same model file and mode on a labelled folder (engines.tiling.predict, the
code the infer stage runs), at the source's frame size when the source is larger than the model.

Model variants are made here, cheaply: an input size is the same dynamic-H/W ONNX graph with another
``input_size`` in its metadata; INT8 is engines.quantize on the folder's images (ONNX Runtime CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.errors import SegstreamError

PRECISIONS = ("fp32", "int8")
BACKENDS = ("onnxruntime", "torch")


class TuneError(SegstreamError):
    """A tune option or input is unusable; the message names it."""


@dataclass(frozen=True)
class Candidate:
    """One run configuration to measure."""

    model: str  # model file the run loads
    backend: str
    size: tuple[int, int]  # model input (w, h)
    precision: str
    workers: int
    threads: int
    batch: int
    infer_mode: str = "scaled"
    infer_scale: float = 1.0
    name: str = ""  # the base model's name (variants are files of their own)

    @property
    def label(self) -> str:
        mode = "scaled" if self.infer_mode == "scaled" else f"tiled x{self.infer_scale:g}"
        w, h = self.size
        return (
            f"{self.name or Path(self.model).stem} {w}x{h} {self.precision} {self.backend} b{self.batch} "
            f"{self.workers}w x {self.threads}t {mode}"
        )

    def run_config(self) -> dict[str, Any]:
        """The PipelineConfig keys this candidate sets (source and sinks stay the user's)."""
        d: dict[str, Any] = {
            "model": str(self.model),
            "batch": self.batch,
            "workers": self.workers,
            "threads": self.threads,
            "infer_mode": self.infer_mode,
        }
        if self.infer_mode == "tiled":
            d["infer_scale"] = float(self.infer_scale)
        return d


@dataclass
class Result:
    candidate: Candidate
    fps: float | None = None
    latency_p50_ms: float | None = None
    drops: int = 0
    frames: int = 0
    miou: float | None = None
    thin_iou: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    pareto: bool = False
    confirmed_fps: float | None = None  # the chosen one, measured again

    @property
    def speed(self) -> float | None:
        """The fps to judge by: a second measurement can only lower it (the machine may be busy)."""
        if self.fps is None:
            return None
        return self.fps if self.confirmed_fps is None else min(self.fps, self.confirmed_fps)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = {**asdict(self.candidate), "label": self.candidate.label}
        return d


# ---------------------------------------------------------------- model variants


def sized_variant(model: Path, size: tuple[int, int], out_dir: Path) -> Path:
    """The same ONNX graph with metadata input size ``size``; the file itself when it already is. Fails
    for a graph exported with fixed H/W."""
    from engines.export import get_meta, load_onnx, set_meta

    m = load_onnx(model)
    meta = get_meta(m, model)
    if tuple(meta.input_size) == tuple(size):
        return model
    if not meta.extra.get("onnx", {}).get("dynamic_hw", False):
        raise TuneError(f"{model}: exported for {meta.input_size[0]}x{meta.input_size[1]} only (fixed H/W)")
    out = out_dir / f"{model.stem}-{size[0]}x{size[1]}.onnx"
    if not out.is_file():
        set_meta(m, replace(meta, input_size=(int(size[0]), int(size[1]))))
        out.parent.mkdir(parents=True, exist_ok=True)
        import onnx

        onnx.save(m, str(out))
    return out


def int8_variant(model: Path, calib_dir: Path, out_dir: Path, count: int = 16) -> Path:
    """INT8 Q/DQ copy of an ONNX model (static quantization, calibrated on ``calib_dir``'s images)."""
    from engines.quantize import quantize_model

    out = out_dir / f"{model.stem}-int8.onnx"
    if not out.is_file():
        quantize_model(model, out, calib_dir, count=count)
    return out


# ---------------------------------------------------------------- measurements


def source_size(source: str) -> tuple[int, int] | None:
    """(w, h) of a source's frames when it can be known without running it (files, image folders,
    synthetic); None for cameras and network streams. A missing or bad source raises its one-line error."""
    from stream.config import PipelineConfig
    from stream.pipeline import probe_source

    info = probe_source(PipelineConfig(source=source))
    return (int(info.width), int(info.height)) if info is not None and info.width else None


def miou_of(
    model: str,
    mode: str,
    scale: float,
    data: Path,
    limit: int,
    frame_size: tuple[int, int] | None,
    thin: Iterable[str] = ("Pole", "SignSymbol", "Pedestrian"),
) -> tuple[float, dict[str, float | None]]:
    """mIoU (and thin-class IoU) of a model file in one mode on a labelled folder; frames (and labels,
    nearest) resized to ``frame_size`` first when given, i.e. judged at the source's resolution."""
    import cv2

    from engines import tiling
    from engines.data import list_pairs
    from engines.metrics import ConfusionMatrix
    from engines.runtime import load

    rt = load(model, device="cpu", threads=min(2, os.cpu_count() or 1))
    try:
        names = list(rt.meta.classes.names)
        cm = ConfusionMatrix(rt.meta.classes.num_classes, rt.meta.classes.ignore_index)
        for img_path, lab_path in list_pairs(data)[: limit or None]:
            img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
            if img is None or lab is None:
                raise TuneError(f"cannot decode {img_path if img is None else lab_path}")
            if frame_size is not None and (img.shape[1], img.shape[0]) != frame_size:
                img = cv2.resize(img, frame_size, interpolation=cv2.INTER_LINEAR)
                lab = cv2.resize(lab, frame_size, interpolation=cv2.INTER_NEAREST)
            ids, _ = tiling.predict(rt, [img], mode, scale)[0]
            cm.update(lab, ids)
    finally:
        rt.close()
    s = cm.summary(names)
    return s["miou"], {n: s["iou"][names.index(n)] for n in thin if n in names}


def write_config(path: Path, cand: Candidate, comment: Iterable[str] = ()) -> Path:
    """A TOML run config (what `segstream run --config` reads) for one candidate."""
    lines = [f"# {c}" for c in comment]
    for k, v in cand.run_config().items():
        lines.append(f"{k} = {json.dumps(v)}")  # JSON strings, ints and floats are valid TOML values
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline_fps(
    cand: Candidate,
    source: str,
    frames: int,
    work: Path,
    sinks: list[str] | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run `segstream run SOURCE --config CANDIDATE` for ``frames`` frames; its stats JSON figures."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(work / "candidate.toml", cand)
    stats = work / "stats.json"
    stats.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "stream", "run", source, "--config", str(cfg), "--no-progress"]
    cmd += ["--max-frames", str(frames), "--stats-json", str(stats)]
    for s in sinks or [str(work / "out.mp4")]:
        cmd += ["--sink", s]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    if out.returncode != 0 or not stats.is_file():
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        return {"error": (lines[-1] if lines else f"exit {out.returncode}")[:200]}
    rep = json.loads(stats.read_text())
    if not sinks:
        (work / "out.mp4").unlink(missing_ok=True)  # tune's own output: only its speed mattered
    return {
        "fps": float(rep["fps"]),
        "latency_p50_ms": float(rep["latency_ms"]["p50"]),
        "drops": int(sum(rep.get("drops", {}).values())),
        "frames": int(rep["frames"]),
    }


# ---------------------------------------------------------------- choosing


def mark_pareto(results: list[Result]) -> None:
    """Pareto-optimal: no other measured result is at least as fast and as accurate, and better in one."""
    ok = [r for r in results if r.fps is not None]
    for r in results:
        r.pareto = False
    for r in ok:
        acc = r.miou if r.miou is not None else -1.0
        r.pareto = not any(
            o is not r
            and o.fps >= r.fps
            and (o.miou if o.miou is not None else -1.0) >= acc
            and (o.fps > r.fps or (o.miou if o.miou is not None else -1.0) > acc)
            for o in ok
        )


def pick(results: list[Result], target_fps: float) -> Result | None:
    """The most accurate result at or above the target (by ``speed``: a confirmation run can only lower
    it; ties: the faster); without mIoU figures, the one that infers the most pixels per frame (input
    size, tiles), then the faster."""

    def pixels(r: Result) -> float:
        w, h = r.candidate.size
        return w * h * (r.candidate.infer_scale**2 * 4 if r.candidate.infer_mode == "tiled" else 1)

    meets = [r for r in results if r.speed is not None and r.speed >= target_fps and not r.error]
    if not meets:
        return None
    return max(meets, key=lambda r: (r.miou if r.miou is not None else -1.0, pixels(r), r.fps))


# ---------------------------------------------------------------- the candidate grid


@dataclass
class Grid:
    models: list[Path]  # ONNX models (sizes and INT8 are made from them)
    sizes: list[tuple[int, int]]
    precisions: list[str]
    backends: list[str]
    batches: list[int]
    threads: list[tuple[int, int]]  # (workers, threads per worker)
    torch_models: dict[Path, Path] = field(default_factory=dict)  # ONNX -> its .pt checkpoint, when shipped
    tiled: bool = False  # the source is larger than the model input: also try tiled modes


def candidates(grid: Grid) -> list[Candidate]:
    """The grid in measuring order, likeliest useful first (a small budget still measures those):
    ONNX Runtime FP32 per size and threading, then INT8, then torch, then tiled. ``model`` is the base
    ONNX file; ``materialize`` makes the size / INT8 variant when the candidate's turn comes."""
    from engines.meta import ModelMeta
    from engines.runtime.probe import probe

    out: list[Candidate] = []

    def add(c: Candidate) -> None:
        if c not in out:
            out.append(c)

    for model in grid.models:
        if "onnxruntime" in grid.backends:
            for prec in grid.precisions:
                for size in grid.sizes:
                    for wt in grid.threads:
                        for b in grid.batches:
                            add(Candidate(str(model), "onnxruntime", size, prec, *wt, b, name=model.stem))
        if "torch" in grid.backends and model in grid.torch_models:
            light = probe(model)
            size = ModelMeta.from_json(light["meta"]).input_size if light else grid.sizes[0]
            for wt in grid.threads:
                pt = str(grid.torch_models[model])
                add(Candidate(pt, "torch", tuple(size), "fp32", *wt, 1, name=model.stem))
        if grid.tiled:
            for size in grid.sizes:
                for scale in (0.5, 1.0):
                    wt = grid.threads[0]
                    add(
                        Candidate(str(model), "onnxruntime", size, "fp32", *wt, 1, "tiled", scale, model.stem)
                    )
    return out


def materialize(cand: Candidate, out_dir: Path, calib: Path | None) -> Candidate:
    """The candidate with the model file it runs: the size variant, then its INT8 copy (ONNX only)."""
    if cand.backend != "onnxruntime":
        return cand
    path = sized_variant(Path(cand.model), cand.size, out_dir)
    if cand.precision == "int8":
        if calib is None:
            raise TuneError("precision int8 needs --data (its images calibrate the quantization)")
        path = int8_variant(path, calib, out_dir)
    return replace(cand, model=str(path))


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise TuneError(f"size {text!r}: expected WxH, e.g. 480x360") from None
    if not (32 <= w <= 4096 and 32 <= h <= 4096):
        raise TuneError(f"size {text!r}: width and height must be 32..4096")
    return w, h


def plot(results: list[Result], target_fps: float, path: Path, chosen: Result | None) -> Path:
    """mIoU vs fps scatter: every measured candidate, the Pareto front, the target, the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.fps is not None]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for prec, marker in (("fp32", "o"), ("int8", "s")):
        pts = [r for r in ok if r.candidate.precision == prec]
        if pts:
            ax.scatter(
                [r.fps for r in pts], [100 * (r.miou or 0) for r in pts], marker=marker, alpha=0.6, label=prec
            )
    front = sorted((r for r in ok if r.pareto), key=lambda r: r.fps)
    if front:
        ax.plot(
            [r.fps for r in front], [100 * (r.miou or 0) for r in front], "k--", lw=1, label="Pareto front"
        )
    ax.axvline(target_fps, color="tab:red", lw=1, label=f"target {target_fps:g} fps")
    if chosen is not None:
        ax.scatter([chosen.fps], [100 * (chosen.miou or 0)], s=160, facecolors="none", edgecolors="tab:red")
        ax.annotate(
            chosen.candidate.label,
            (chosen.fps, 100 * (chosen.miou or 0)),
            fontsize=7,
            xytext=(5, 5),
            textcoords="offset points",
        )
    ax.set_xlabel("pipeline fps (segstream run, this machine)")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
