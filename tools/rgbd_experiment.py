"""The depth-is-necessary experiment: two classes that look the same and differ only in distance.

Generates a labelled RGB-D dataset (NYUv2-style folders: image/, label/, depth/ 16-bit PNG mm,
classes.json), with a textured wall (class 'wall') and boxes of identical colour and texture that are
either near (1.0-1.4 m, class 'near') or far (2.3-2.7 m, class 'far'), about 2% of depth pixels invalid
(0). Trains the same Fast-SCNN on RGB only, RGB-D early fusion (4-channel input) and RGB-D mid fusion
(depth branch fused at 1/8) for the same short budget, and prints per-class IoU on a held-out split.

    python3 tools/rgbd_experiment.py --out runs/rgbd-exp --steps 400

No real RGB-D data set is on this machine, so the data is generated; the loader it goes through
(engines.depth.RGBDDataset) is the one for real NYUv2-style folders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSES = {"names": ["wall", "near", "far"], "palette": [[90, 90, 90], [230, 120, 20], [20, 120, 230]]}
NEAR_MM, FAR_MM, WALL_MM = (1000, 1400), (2300, 2700), (3800, 4400)


def make_scene(
    rng: np.random.Generator, size: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(BGR uint8, label uint8, depth uint16 mm) of one scene; ``size`` = side or (width, height).

    Boxes are 1/4-1/2 of the shorter side: large enough that a small network at low resolution sees
    whole boxes (the earlier 1/6-1/3 boxes at 64x64 were too few pixels to learn in a short budget)."""
    w, h = (size, size) if isinstance(size, int) else size
    wall = rng.normal(110, 18, (h, w)).astype(np.float32)
    img = np.repeat(cv2.GaussianBlur(wall, (5, 5), 1.2)[..., None], 3, axis=2)
    lab = np.zeros((h, w), np.uint8)
    ramp = np.linspace(*WALL_MM, w, dtype=np.float32)[None, :].repeat(h, 0)
    depth = ramp + rng.normal(0, 10, (h, w))
    for _ in range(int(rng.integers(1, 4))):
        s = int(rng.integers(min(w, h) // 4, min(w, h) // 2 + 1))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        cls = int(rng.integers(1, 3))
        lo, hi = NEAR_MM if cls == 1 else FAR_MM
        # same colour, texture and size distribution for both classes: only the depth differs
        tex = rng.normal(0, 12, (s, s, 1)).astype(np.float32)
        img[y : y + s, x : x + s] = np.array([40, 140, 220], np.float32) + tex
        lab[y : y + s, x : x + s] = cls
        depth[y : y + s, x : x + s] = rng.uniform(lo, hi) + rng.normal(0, 10, (s, s))
    depth = np.clip(depth, 1, 65535).astype(np.uint16)
    depth[rng.random((h, w)) < 0.02] = 0  # sensor holes
    return np.clip(img, 0, 255).astype(np.uint8), lab, depth


def generate(root: Path, n: int, size: int | tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """Write ``n`` scenes to ``root`` in the NYUv2-style layout; returns ``root``. Deterministic: the
    same ``seed`` writes the same files (one NumPy generator drives every draw)."""
    rng = np.random.default_rng(seed)
    for d in ("image", "label", "depth"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    for i in range(n):
        img, lab, dep = make_scene(rng, size)
        cv2.imwrite(str(root / "image" / f"{i:05d}.png"), img)
        cv2.imwrite(str(root / "label" / f"{i:05d}.png"), lab)
        cv2.imwrite(str(root / "depth" / f"{i:05d}.png"), dep)
    return root


def train_and_eval(
    train_root: Path,
    val_root: Path,
    modality: str,
    fusion: str = "early",
    steps: int = 400,
    seed: int = 0,
    arch: str = "convpool",
    lr: float = 1e-2,
    batch: int = 16,
) -> dict:
    """Train one network on one modality for ``steps`` Adam steps (batch ``batch``); IoU per class on val.

    ``arch`` is the RGB network (convpool: two conv+pool stages, quick on a CPU); mid fusion always
    builds fastscnn-rgbd (the depth branch is fused into Fast-SCNN's 1/8 features), at width 0.5."""
    import torch

    from engines.depth import DepthSpec, RGBDDataset, rgbd_input
    from engines.metrics import ConfusionMatrix
    from engines.models import build_model
    from engines.models.fusion import rgbd_arch

    torch.manual_seed(seed)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = DepthSpec(max_mm=5000.0)
    tr, va = RGBDDataset.load(train_root), RGBDDataset.load(val_root)
    x_tr = torch.from_numpy(rgbd_input(tr.rgb.images, tr.depth, mean, std, spec))
    x_va = torch.from_numpy(rgbd_input(va.rgb.images, va.depth, mean, std, spec))
    if modality == "rgb":
        x_tr, x_va, cin = x_tr[:, :3], x_va[:, :3], 3
    else:
        arch, cin = rgbd_arch("fastscnn" if fusion == "mid" else arch, fusion)
    y_tr = torch.from_numpy(tr.rgb.labels).long()
    # boxes cover a minority of the pixels: inverse-sqrt-frequency weights keep them from being ignored
    freq = torch.bincount(y_tr.view(-1), minlength=3).float()
    weights = (freq.sum() / freq.clamp(min=1)).sqrt()
    extra = {"width": 0.5} if arch.startswith("fastscnn") else {}
    net = build_model(arch, num_classes=3, in_channels=cin, dropout=0.0, **extra)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_tr), (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(x_tr[idx]), y_tr[idx], weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    net.eval()
    cm = ConfusionMatrix(3)
    with torch.no_grad():
        for i in range(0, len(x_va), 32):
            cm.update(va.rgb.labels[i : i + 32], net(x_va[i : i + 32]).argmax(1).numpy())
    iou = cm.iou()
    m = cm.matrix
    # among box pixels: how often near and far are told apart (0.5 = a coin toss)
    sep = (m[1, 1] + m[2, 2]) / max(1, m[1:, 1:].sum())
    return {
        "modality": modality if modality == "rgb" else f"rgbd-{fusion}",
        "arch": arch,
        "steps": steps,
        "train_s": round(train_s, 1),
        "iou": {n: round(float(v), 3) for n, v in zip(CLASSES["names"], iou, strict=True)},
        "near_far_separation": round(float(sep), 3),
        "depth": spec.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/rgbd-exp", help="where the generated data and results go")
    p.add_argument("--train", type=int, default=256, help="training scenes")
    p.add_argument("--val", type=int, default=64, help="validation scenes")
    p.add_argument("--size", default="64x48", help="scene size WxH (default 64x48)")
    p.add_argument("--steps", type=int, default=400, help="Adam steps per model (batch 16)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--arch", default="convpool", help="network for RGB and early fusion (default convpool)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--generate-only", action="store_true", help="write the data set and stop (for the CLI)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.train < 1 or args.val < 1:
        p.error("--steps, --train and --val must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    w, h = (int(v) for v in args.size.lower().split("x"))
    tr = generate(out / "train", args.train, (w, h), seed=1)
    va = generate(out / "val", args.val, (w, h), seed=2)
    if args.generate_only:
        print(f"wrote {tr} and {va}")
        return 0
    kw = {"steps": args.steps, "lr": args.lr, "arch": args.arch}
    results = [
        train_and_eval(tr, va, "rgb", **kw),
        train_and_eval(tr, va, "rgbd", "early", **kw),
        train_and_eval(tr, va, "rgbd", "mid", **kw),
    ]
    print(
        f"{'model':<12} {'arch':<14} {'wall':>6} {'near':>6} {'far':>6} "
        f"{'near/far separated':>19} {'train s':>8}"
    )
    for r in results:
        i = r["iou"]
        print(
            f"{r['modality']:<12} {r['arch']:<14} {i['wall']:>6.3f} {i['near']:>6.3f} {i['far']:>6.3f} "
            f"{r['near_far_separation']:>19.3f} {r['train_s']:>8.1f}"
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
