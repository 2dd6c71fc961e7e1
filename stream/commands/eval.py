"""`segstream eval`: accuracy and speed of a model file on a labelled dataset folder."""

from __future__ import annotations

import argparse

from stream.config import DEFAULT_MODEL

HELP = "evaluate a model (.pt/.onnx/engine) on a labelled folder: IoU table, JSON, confusion PNG, speed"
DESCRIPTION = """Run a model file (PyTorch .pt, ONNX .onnx or TensorRT .engine) over a labelled folder
(CamVid layout) at batch 1, compare its masks with the labels at the label resolution (void pixels
excluded), and print per-class IoU, precision, recall and F1 with mIoU, pixel accuracy and mean class
accuracy. Also reports the runtime's inference speed (bare model run and full predict, ms/image).

Leave-drive-out figures: --by-drive groups the images by drive (the file-name prefix before the first
'_', e.g. CamVid's 0001TP_006690.png; --group-regex for other naming) and reports each drive's mIoU and
their mean; --drive D keeps only the images of drive D (repeatable), e.g. a drive the model never trained
on. A .pt/.onnx trained by `segstream train` names the drives it trained on; a held-out figure is one on
drives not in that list, and eval says so when they overlap.

examples:
  segstream eval --model runs/fastscnn/best.pt --data ../shared/data/camvid/val --json val.json
  segstream eval --model best.onnx --data ../shared/data/camvid/train --drive 0001TP --by-drive"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model file: .pt checkpoint, .onnx, .engine/.plan (default: the bundled model)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="labelled folder (images/, labels/)")
    p.add_argument(
        "--size",
        metavar="WxH",
        help="evaluate at this resolution (images and labels resized; labels nearest). "
        "Default: each label's own size",
    )
    p.add_argument("--json", metavar="OUT", help="write all figures (and the confusion matrix) as JSON here")
    p.add_argument(
        "--confusion",
        metavar="PNG",
        help="confusion-matrix heatmap (default: beside --json, else not written)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N]")
    p.add_argument("--threads", type=int, help="inference threads (CPU)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    from stream.config import add_infer_mode_arguments

    add_infer_mode_arguments(p)
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default 3)")
    p.add_argument(
        "--by-drive",
        action="store_true",
        help="also report mIoU per drive (file-name group) and the mean over drives",
    )
    p.add_argument(
        "--drive",
        action="append",
        metavar="DRIVE",
        help="evaluate only the images of this drive (repeatable; comma lists allowed)",
    )
    p.add_argument(
        "--calibration",
        action="store_true",
        help="also bin pixels by confidence: accuracy per bin, expected calibration error, mean entropy "
        "on right vs wrong pixels (computed from the logits: slower)",
    )
    p.add_argument("--bins", type=int, default=10, help="confidence bins for --calibration (default 10)")
    p.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="how a file name gives its drive: the named group 'drive', else group 1, else the match "
        r"(default '^([^_]+)_')",
    )


def add_calibration(calib, lab, mask, maps: dict, classes) -> None:
    """Labelled pixels of one image into the calibration bins (maps resized to the label, linear)."""
    from engines.runtime.preprocess import resize_to

    valid = lab < classes.num_classes
    if classes.ignore_index is not None:
        valid &= lab != classes.ignore_index
    conf = resize_to(maps["confidence"][0], lab.shape, nearest=False)
    ent = resize_to(maps["entropy"][0], lab.shape, nearest=False)
    calib.update(conf[valid], (mask == lab)[valid], ent[valid])


def print_calibration(console, c: dict) -> None:
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    t = Table(title="calibration: pixels by confidence (max softmax)")
    for col in ("confidence", "pixels", "share", "accuracy", "mean confidence", "gap"):
        t.add_column(col, justify="right")
    for b in c["bins"]:
        gap = None if not b["pixels"] else b["accuracy"] - b["confidence"]
        t.add_row(
            f"{b['lo']:.1f}-{b['hi']:.1f}",
            str(b["pixels"]),
            pct(b["pixels"] / c["pixels"] if c["pixels"] else None),
            pct(b["accuracy"]),
            pct(b["confidence"]),
            "-" if gap is None else f"{100 * gap:+.1f}",
        )
    console.print(t)
    console.print(
        f"expected calibration error {100 * c['ece']:.2f}%  (accuracy {pct(c['accuracy'])}%, "
        f"mean confidence {pct(c['mean_confidence'])}%)"
    )
    console.print(
        f"mean entropy / ln(C): right pixels {c['mean_entropy_right'] or 0:.3f}, "
        f"wrong pixels {c['mean_entropy_wrong'] or 0:.3f}"
    )


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import cv2
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from engines import tiling
    from engines.calibration import Calibration
    from engines.data import (
        DatasetError,
        DatasetNotFound,
        check_drives,
        compile_group_regex,
        drive_of,
        find_class_table,
        list_pairs,
        parse_size,
    )
    from engines.errors import SegstreamError
    from engines.metrics import ConfusionMatrix
    from engines.runtime import load

    tiling.check_params(args.infer_mode, args.infer_scale, args.tile_overlap)
    if args.infer_mode == "tiled" and getattr(args, "calibration", False):
        raise SegstreamError("--calibration needs --infer-mode scaled (tiled masks carry no per-class maps)")
    console = Console()
    root = Path(args.data)
    if not root.is_dir():
        raise DatasetNotFound(f"dataset folder not found: {root}")
    size = parse_size(args.size)
    if (root / "depth").is_dir() and not (root / "images").is_dir():  # NYUv2-style RGB-D folder
        from engines.depth import list_triplets

        pairs = [(img, lab) for img, lab, _ in list_triplets(root)]
    else:
        pairs = list_pairs(root)
    wanted = [d.strip() for arg in (args.drive or []) for d in arg.split(",") if d.strip()]
    grouped = args.by_drive or bool(wanted) or args.group_regex is not None
    drives: list[str] = []
    if grouped:
        pattern = compile_group_regex(args.group_regex)
        drives = [drive_of(img.name, pattern) for img, _ in pairs]
        if wanted:
            check_drives(wanted, drives, "--drive")
            keep = [i for i, d in enumerate(drives) if d in wanted]
            pairs, drives = [pairs[i] for i in keep], [drives[i] for i in keep]
    pairs = pairs[: args.limit or None]
    drives = drives[: len(pairs)]
    if not pairs:
        raise DatasetNotFound(f"{root}: no images found")
    rt = load(args.model, device=args.device, threads=args.threads)
    from engines.depth import depth_spec_of, read_depth, require_depth

    # an RGB-D model reads DIR/depth/NAME.png beside each image (engines.depth's folder layouts)
    rgbd = (
        require_depth(
            rt.meta,
            depth_spec_of(rt.meta) is not None and (root / "depth").is_dir(),
            (f"{root} has no depth/ folder (16-bit PNGs in mm named like the images)"),
        )
        is not None
    )
    if rgbd and args.infer_mode == "tiled":
        raise SegstreamError("--infer-mode tiled: RGB-D models run scaled only")
    # None: a model from before drives were recorded in model files (the drives it saw are unknown)
    trained_on = rt.meta.extra.get("train_drives")
    seen = sorted(set(drives) & set(trained_on or {}))
    if seen:
        console.print(
            f"[yellow]note: the model trained on drive(s) {', '.join(seen)} of this evaluation: "
            "their figures are not held-out"
        )
    classes = rt.meta.classes
    try:
        data_classes = find_class_table(root)
    except DatasetError:
        data_classes = None
    if data_classes is not None and data_classes.names != classes.names:
        console.print(
            f"[yellow]warning: the class names of {root} ({len(data_classes.names)}) differ from the "
            f"model's ({len(classes.names)}); label ids are compared as they are"
        )
    cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
    calib = Calibration(args.bins) if args.calibration else None
    per_drive = {d: ConfusionMatrix(classes.num_classes, classes.ignore_index) for d in sorted(set(drives))}
    run_s: list[float] = []
    predict_s: list[float] = []
    for i, (img_path, lab_path) in enumerate(pairs):
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        if img is None or lab is None:
            raise DatasetError(f"cannot decode {img_path if img is None else lab_path}")
        dep = read_depth(root / "depth" / f"{img_path.stem}.png") if rgbd else None
        if size is not None:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
            dep = None if dep is None else cv2.resize(dep, size, interpolation=cv2.INTER_NEAREST)
        if i == 0:
            for _ in range(max(args.warmup, 0)):
                if rgbd:
                    rt.run(rt.prepare([img], depth=[dep]))
                else:
                    rt.predict([img], full_size=True)
        t0 = time.perf_counter()
        if rgbd:
            batch = rt.prepare([img], depth=[dep])  # the model's two inputs, image and depth
            t1 = time.perf_counter()
        elif args.infer_mode == "tiled":  # cutting, running and blending the tiles are one step
            ids = tiling.predict(rt, [img], "tiled", args.infer_scale, args.tile_overlap)[0][0][None]
            t1 = t0
        else:
            batch = rt.prepare([img])
            t1 = time.perf_counter()
        if args.infer_mode == "tiled":
            pass  # the tiles' masks are made above; tiled mode has no calibration maps
        elif calib is None:
            ids, _ = rt.run(batch)
        else:
            ids, maps = rt.run_maps(batch, ("confidence", "entropy"))
        t2 = time.perf_counter()
        mask = ids[0]
        if mask.shape != lab.shape:
            mask = cv2.resize(mask, (lab.shape[1], lab.shape[0]), interpolation=cv2.INTER_NEAREST)
        if calib is not None:
            add_calibration(calib, lab, mask, maps, classes)
        t3 = time.perf_counter()
        run_s.append(t2 - t1)
        predict_s.append(t3 - t0)
        cm.update(lab, mask)
        if drives:
            per_drive[drives[i]].update(lab, mask)
    rt.close()

    s = cm.summary(list(classes.names))
    run_ms = 1000 * float(np.median(run_s))
    pred_ms = 1000 * float(np.median(predict_s))
    s.update(
        model=str(args.model),
        backend=rt.backend,
        device=str(rt.device),
        data=str(root),
        images=len(pairs),
        drives=sorted(set(drives)) or None,
        input_size=list(rt.meta.input_size),
        infer_mode={"mode": args.infer_mode, "scale": args.infer_scale, "overlap": args.tile_overlap},
        speed={
            "run_ms": run_ms,
            "run_fps": 1000 / run_ms,
            "predict_ms": pred_ms,
            "predict_fps": 1000 / pred_ms,
            "batch": 1,
        },
    )
    if calib is not None:
        s["calibration"] = calib.summary()
    if drives:
        by_drive = {
            d: {
                "images": drives.count(d),
                "miou": m.miou(),
                "pixel_accuracy": m.pixel_accuracy(),
                "iou": m.summary(list(classes.names))["iou"],
                "trained_on": None if trained_on is None else d in trained_on,
            }
            for d, m in per_drive.items()
        }
        s.update(
            by_drive=by_drive,
            mean_drive_miou=float(np.mean([v["miou"] for v in by_drive.values()])),
            group_regex=compile_group_regex(args.group_regex).pattern,
            model_train_drives=trained_on,
        )
    table = Table(title=f"{Path(args.model).name} on {root} ({len(pairs)} images)")
    for col in ("class", "IoU", "precision", "recall", "F1", "pixels"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    for k, name in enumerate(s["classes"]):
        table.add_row(
            name,
            pct(s["iou"][k]),
            pct(s["precision"][k]),
            pct(s["recall"][k]),
            pct(s["f1"][k]),
            str(s["pixels"][k]),
        )
    table.add_section()
    table.add_row(
        "[bold]mean",
        f"[bold]{pct(s['miou'])}",
        pct(s["macro_precision"]),
        pct(s["macro_recall"]),
        pct(s["macro_f1"]),
        str(sum(s["pixels"])),
    )
    console.print(table)
    console.print(
        f"mIoU {pct(s['miou'])}%  pixel accuracy {pct(s['pixel_accuracy'])}%  "
        f"mean class accuracy {pct(s['mean_accuracy'])}%"
    )
    if drives:
        dt = Table(title="by drive")
        for col in ("drive", "images", "mIoU", "pixel acc", "trained on it"):
            dt.add_column(col, justify="left" if col == "drive" else "right")
        for d, v in s["by_drive"].items():
            dt.add_row(
                d,
                str(v["images"]),
                pct(v["miou"]),
                pct(v["pixel_accuracy"]),
                {True: "yes", False: "no", None: "unknown"}[v["trained_on"]],
            )
        dt.add_section()
        dt.add_row("[bold]mean over drives", "", f"[bold]{pct(s['mean_drive_miou'])}", "", "")
        console.print(dt)
    if calib is not None:
        print_calibration(console, s["calibration"])
    console.print(
        f"speed ({rt.backend} on {rt.device}, batch 1, "
        f"input {rt.meta.input_size[0]}x{rt.meta.input_size[1]}): "
        f"model run {run_ms:.2f} ms ({1000 / run_ms:.1f} fps), with pre/post-processing {pred_ms:.2f} ms "
        f"({1000 / pred_ms:.1f} fps)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(s, indent=2))
        console.print(f"wrote {args.json}")
    png = args.confusion or (str(Path(args.json).with_suffix("")) + "_confusion.png" if args.json else None)
    if png:
        try:
            from engines.plots import plot_confusion
        except ImportError:
            console.print("confusion PNG skipped: matplotlib not installed")
        else:
            plot_confusion(Path(png), cm.matrix, list(classes.names))
            console.print(f"wrote {png}")
    return 0
