"""Run plots as PNG (matplotlib, imported lazily, Agg backend): loss, mIoU, learning rate, confusion."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _line_plot(path: Path, rows: list[dict], keys: Sequence[str], ylabel: str, logy: bool = False) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    drawn = 0
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in rows if r.get(k) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="." if len(pts) < 50 else None, label=k)
            drawn += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if drawn > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: Path, matrix: np.ndarray, names: Sequence[str]) -> None:
    """Row-normalized confusion heatmap (rows: true class, columns: prediction)."""
    plt = _pyplot()
    m = np.asarray(matrix, np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_run(run_dir: str | Path, names: Sequence[str], confusion: np.ndarray | None = None) -> None:
    """loss.png, miou.png, lr.png from log.jsonl; confusion.png from the last validation's matrix."""
    run_dir = Path(run_dir)
    rows = read_log(run_dir)
    if rows:
        _line_plot(run_dir / "loss.png", rows, ["train_loss", "val_loss"], "loss")
        _line_plot(run_dir / "miou.png", rows, ["val_miou", "pixel_acc"], "validation")
        _line_plot(run_dir / "lr.png", rows, ["lr"], "learning rate")
    if confusion is not None:
        plot_confusion(run_dir / "confusion.png", confusion, names)
