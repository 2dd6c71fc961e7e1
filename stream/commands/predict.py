"""`segstream predict`: class-id mask and colour overlay PNGs for images."""

from __future__ import annotations

import argparse

from stream.config import DEFAULT_MODEL

HELP = "segment images with a model: class-id mask PNG + colour overlay PNG per image"
DESCRIPTION = """Segment image files with a model file (.pt, .onnx, .engine). For each IMAGE writes
OUT/<name>_mask.png (uint8 class ids, full image size) and OUT/<name>_overlay.png (the image blended with
the class palette carried in the model file). --segments coco-rle,polygons also writes the masks as
COCO-style JSON: OUT/<name>_coco-rle.json per image, or with --json run one COCO dataset file
OUT/coco-rle.json for all images (pycocotools' COCO() loads it). COCO RLE is exact; polygons keep their
holes and are simplified to --tolerance pixels.

examples:
  segstream predict --model runs/fastscnn/best.pt a.jpg b.jpg --out preds/
  segstream predict a.jpg b.jpg --out preds/ --segments coco-rle,polygons --json run --tolerance 1
  segstream predict --model rgbd.onnx rgbd/val/images/*.png --depth rgbd/val/depth --out preds/

An RGB-D model (trained with --modality rgbd) takes each image's 16-bit depth PNG (millimetres) of the same
name from --depth DIR (default: the depth/ folder beside the image's folder)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model file: .pt checkpoint, .onnx, .engine/.plan (default: the bundled model)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--depth",
        metavar="DIR",
        help="RGB-D models: folder of 16-bit depth PNGs (mm) named like the images (default: ../depth/)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the palette (default 0.5)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N]")
    p.add_argument("--threads", type=int, help="inference threads (CPU)")
    from stream.config import add_infer_mode_arguments

    add_infer_mode_arguments(p)
    p.add_argument(
        "--segments",
        metavar="FORMATS",
        help="also write COCO-style JSON: coco-rle, polygons or both (comma-separated)",
    )
    p.add_argument(
        "--json", choices=("image", "run"), default="image", help="one JSON per image (default) or per run"
    )
    p.add_argument(
        "--tolerance", type=float, default=1.0, help="polygon simplification in pixels (default 1; 0: exact)"
    )
    p.add_argument(
        "--components", action="store_true", help="one segment per connected component, not per class"
    )


def colorize(mask, lut_bgr):
    """Class ids (h, w) uint8 -> BGR image by palette lookup (cv2.LUT, no per-pixel Python)."""
    import cv2

    return cv2.LUT(cv2.merge([mask, mask, mask]), lut_bgr)


def _depths(args: argparse.Namespace, meta) -> list | None:
    """The depth image of every IMAGE for an RGB-D model (None for an RGB one); errors name the file."""
    from pathlib import Path

    from engines.depth import depth_spec_of, read_depth, require_depth
    from engines.errors import SegstreamError

    dirs = [
        Path(args.depth) if args.depth else Path(n).resolve().parent.parent / "depth" for n in args.images
    ]
    # depth/ beside an RGB model's images is simply not used; --depth for it is a mistake
    has = bool(args.depth) or (depth_spec_of(meta) is not None and all(d.is_dir() for d in dirs))
    if require_depth(meta, has, "give --depth DIR (16-bit PNGs in mm named like the images)") is None:
        return None
    if args.infer_mode != "scaled":
        raise SegstreamError(f"--infer-mode {args.infer_mode}: RGB-D models run scaled only")
    return [read_depth(d / f"{Path(n).stem}.png") for n, d in zip(args.images, dirs, strict=True)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cv2

    from engines import tiling
    from engines.errors import SegstreamError
    from engines.runtime import load
    from stream.maskcodec import coco, segments

    tiling.check_params(args.infer_mode, args.infer_scale, args.tile_overlap)
    if not 0.0 <= args.alpha <= 1.0:
        raise SegstreamError(f"--alpha {args.alpha}: must be between 0 and 1")
    formats = [f.strip() for f in (args.segments or "").split(",") if f.strip()]
    bad = [f for f in formats if f not in segments.FORMATS]
    if bad:
        raise SegstreamError(f"--segments {args.segments}: {', '.join(bad)} is not one of {segments.FORMATS}")
    if not 0 <= args.tolerance <= 100:
        raise SegstreamError(f"--tolerance {args.tolerance:g}: must be 0..100 pixels")
    frames = []
    for name in args.images:
        img = cv2.imread(name, cv2.IMREAD_COLOR) if Path(name).is_file() else None
        if img is None:
            raise SegstreamError(f"{name}: not found or not a readable image")
        frames.append(img)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rt = load(args.model, device=args.device, threads=args.threads)
    depths = _depths(args, rt.meta)
    classes = rt.meta.classes
    lut = classes.lut_bgr()
    opts: dict = {"components": args.components}
    runs = {}
    if args.json == "run":
        for f in formats:
            params = {"components": args.components} | (
                {"tolerance": args.tolerance} if f == "polygons" else {}
            )
            runs[f] = coco.RunWriter(out / f"{f}.json", f, classes, params)
    for i, (name, img) in enumerate(zip(args.images, frames, strict=True)):
        if depths is not None:  # RGB-D: colour + depth as training fed them, mask back at image size
            from engines.runtime.preprocess import resize_to

            ids, _ = rt.run(rt.prepare([img], depth=[depths[i]]))  # {"image", "depth"}: every backend
            mask = resize_to(ids[0], img.shape[:2], nearest=True)
        else:
            mask = tiling.predict(rt, [img], args.infer_mode, args.infer_scale, args.tile_overlap)[0][0]
        stem = Path(name).stem
        cv2.imwrite(str(out / f"{stem}_mask.png"), mask)
        overlay = cv2.addWeighted(img, 1 - args.alpha, colorize(mask, lut), args.alpha, 0)
        cv2.imwrite(str(out / f"{stem}_overlay.png"), overlay)
        written = [out / f"{stem}_mask.png", out / f"{stem}_overlay.png"]
        for f in formats:
            fopts = dict(opts)
            if f == "polygons":
                fopts["tolerance"] = args.tolerance
                if classes.ignore_index is not None:
                    fopts.update(fill=classes.ignore_index, skip=(classes.ignore_index,))
            doc = segments.encode(mask, f, **fopts)
            if f in runs:
                runs[f].add(doc, image_id=i, file_name=Path(name).name)
            else:
                path = out / f"{stem}_{f}.json"
                coco.write_atomic(
                    path, coco.frame_json(doc, frame_index=i, file_name=Path(name).name, classes=classes)
                )
                written.append(path)
        print(f"{name} -> {', '.join(str(p) for p in written)}")
    for w in runs.values():
        print(f"wrote {w.close()}")
    rt.close()
    return 0
