"""Training loop: on-device data and augmentation, optimizers and schedules by name, validation, checkpoints,
exact resume, early stopping, time limit, plots.

The whole dataset lives on the training device as one uint8 tensor; each step indexes a batch with a seeded
permutation and augments it there (engines.data.BatchAugmenter), so a GPU run is never starved by the CPU.
Randomness is keyed by (seed, epoch, step): a run interrupted anywhere resumes with the very same batches.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.data import (
    DEFAULT_GROUP_REGEX,
    BatchAugmenter,
    Normalizer,
    SegmentationDataset,
    check_drives,
    compile_group_regex,
    drive_counts,
    drive_of,
    list_pairs,
    load_datasets,
    parse_augment,
    parse_size,
    split_by_drive,
)
from engines.depth import DepthSpec, load_rgbd_datasets
from engines.errors import SegstreamError
from engines.losses import build_loss, class_weights
from engines.meta import ModelMeta
from engines.metrics import ConfusionMatrix, ProbabilityMSE, torch_confusion
from engines.models.fusion import RGBD_MODELS, rgbd_arch

CHECKPOINT_FORMAT = "segstream-checkpoint"
CHECKPOINT_VERSION = 1
OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("poly", "cosine", "step", "constant")
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adagrad": 1e-2}  # others: 0.05


class TrainError(SegstreamError):
    pass


@dataclass
class TrainConfig:
    data: list[str]
    val_data: list[str] | None = None  # None: the 'val' folder beside the first --data, if any
    holdout_drive: list[str] | None = None  # validate on these drives of --data, train on the others
    group_regex: str | None = None  # drive = this regex on file names (default: the CamVid prefix)
    pretrained: bool | None = None  # None: load shipped encoder weights when the arch has them
    teacher: str | None = None  # .pt/.onnx whose soft predictions the student also learns from
    init: str | None = None  # .pt whose weights a new run starts from (fresh optimizer and schedule)
    distill_weight: float | None = None  # factor of the KL term (default 1.0 with a teacher)
    distill_temp: float | None = None  # softmax temperature of the KL term (default 2.0)
    out: str | None = None
    arch: str = "fastscnn"
    width: float | None = None
    modality: str = "rgb"  # rgbd: folders with depth/ beside images/ and labels/ (engines.depth)
    fusion: str = "early"  # rgbd: early (4-channel input) or mid (depth branch at 1/8: fastscnn-rgbd)
    depth_max_mm: float | None = None  # rgbd: depth scale of the normalization (DepthSpec default)
    epochs: int = 100
    batch_size: int = 8
    lr: float | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "poly"
    schedule_time: bool = False
    warmup_epochs: float = 1.0
    step_every: int = 30  # epochs between /10 steps of the 'step' schedule
    weight_decay: float = 1e-4
    l1: float = 0.0
    dropout: float = 0.1
    loss: str = "ce"
    class_weights: str = "none"
    size: str | None = None  # training crop WxH
    data_size: str | None = None  # resize every training image on load
    eval_size: str | None = None  # resize validation images on load (default: data size)
    augment: str = "default"
    scale_min: float = 0.5
    scale_max: float = 2.0
    patience: int = 0
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    time_limit: float | None = None  # minutes
    limit: int | None = None  # at most this many images per dataset (quick runs/tests)
    log_every: int = 25
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_miou: float
    stopped: str  # "done" | "early-stop" | "time-limit" | "interrupted" | "terminated"
    images_per_s: float


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise TrainError(f"--device '{name}': expected auto, cpu or cuda[:N]")
    return torch.device(name)


def build_optimizer(
    name: str, groups: list[dict], lr: float, momentum: float, cuda: bool = False
) -> torch.optim.Optimizer:
    name = name.lower()
    if name in ("gd", "sgd"):
        return torch.optim.SGD(groups, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "nesterov":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=0.0, alpha=0.99)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=cuda or None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=cuda or None)
    raise TrainError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


def param_groups(model: nn.Module, weight_decay: float, decoupled: bool) -> list[dict]:
    """Weight decay on conv/linear weights only; biases and norm parameters are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(kind: str, progress: float, step: int, warmup_steps: int, epoch: int, step_every: int) -> float:
    """Multiplier of the base learning rate. progress in [0,1] over the post-warm-up part of training."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if kind == "poly":
        return (1 - progress) ** 0.9
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        return 0.1 ** (epoch // max(step_every, 1))
    if kind == "constant":
        return 1.0
    raise TrainError(f"unknown schedule '{kind}' (choose from {', '.join(SCHEDULES)})")


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**63 - 1)


def atomic_save(obj: Any, path: Path) -> None:
    """Write then rename so a crash while saving never leaves a truncated checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt or foreign file: the user's to fix
        raise TrainError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a segstream checkpoint")
    ck["_path"] = str(path)
    return ck


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step boundary and saves."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig, why in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
                self._old[sig] = signal.signal(sig, self._handler(why))
        return self

    def _handler(self, why: str):
        def handle(signum, frame):
            if self.reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: give up waiting
            self.reason = why

        return handle

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def default_builder(arch: str, **arch_args: Any) -> nn.Module:
    from engines.models import build_model

    return build_model(arch, **arch_args)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        console=None,
        builder: Callable[..., nn.Module] | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        from rich.console import Console

        self.cfg = cfg
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # logs and remote output: no wrapping at 80 columns
                console = Console(stderr=True, width=200)
        self.console = console
        self.builder = builder or default_builder
        self.ck = resume
        self.started = time.perf_counter()  # the time limit counts data loading too
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self._validate_cfg()

    # ------------------------------------------------------------------ setup
    def _validate_cfg(self) -> None:
        c = self.cfg
        if not c.data:
            raise TrainError("no training data: give --data DIR (repeat it to merge datasets)")
        if c.optimizer.lower() not in OPTIMIZERS:
            raise TrainError(f"unknown optimizer '{c.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
        if c.schedule not in SCHEDULES:
            raise TrainError(f"unknown schedule '{c.schedule}' (choose from {', '.join(SCHEDULES)})")
        if c.epochs < 1 or c.batch_size < 1:
            raise TrainError("--epochs and --batch-size must be >= 1")
        if c.precision not in ("auto", "fp32", "bf16"):
            raise TrainError(f"--precision '{c.precision}': expected auto, fp32 or bf16")
        if not 0 < c.scale_min <= c.scale_max:
            raise TrainError(f"--scale {c.scale_min}-{c.scale_max}: need 0 < min <= max")
        parse_augment(c.augment)
        parse_size(c.size), parse_size(c.data_size), parse_size(c.eval_size)
        compile_group_regex(c.group_regex)
        if c.holdout_drive is not None:
            drives = [d for d in c.holdout_drive if d]
            if not drives:
                raise TrainError("--holdout-drive: give a drive name (e.g. 0001TP)")
            if c.val_data:
                raise TrainError(
                    f"--holdout-drive {','.join(drives)} and --val-data {' '.join(c.val_data)} both choose "
                    "the validation images; give one of them"
                )
            # from the file names alone, before minutes of decoding images
            check_drives(drives, drives_in(c.data, c.group_regex, c.limit), "--holdout-drive")
        if c.modality not in ("rgb", "rgbd"):
            raise TrainError(f"--modality '{c.modality}': expected rgb or rgbd")
        if c.modality == "rgbd":
            try:
                rgbd_arch(c.arch, c.fusion)
            except ValueError as e:
                raise TrainError(str(e)) from None
            if c.teacher is not None:
                raise TrainError("--teacher: distillation is built for RGB models; not with --modality rgbd")
            if c.pretrained:
                raise TrainError(
                    "--pretrained: the shipped encoder weights are RGB only; not with --modality rgbd"
                )
            self.depth_spec = DepthSpec(**({"max_mm": float(c.depth_max_mm)} if c.depth_max_mm else {}))
        elif c.arch in RGBD_MODELS:
            raise TrainError(f"--arch {c.arch} takes RGB + depth: give --modality rgbd")
        build_loss(c.loss, 2, None)  # a bad --loss is reported before the data is loaded
        if c.init is not None and not Path(c.init).is_file():
            raise TrainError(f"--init {c.init}: file not found")
        if c.teacher is None and (c.distill_weight is not None or c.distill_temp is not None):
            raise TrainError("--distill-weight/--distill-temp need a --teacher MODEL")
        if c.teacher is not None:
            if c.distill_weight is not None and not c.distill_weight > 0:
                raise TrainError(f"--distill-weight must be > 0, got {c.distill_weight}")
            if c.distill_temp is not None and not c.distill_temp > 0:
                raise TrainError(f"--distill-temp must be > 0, got {c.distill_temp}")
            if not Path(c.teacher).is_file():
                raise TrainError(f"--teacher {c.teacher}: file not found")

    def _val_roots(self) -> list[str]:
        c = self.cfg
        if c.holdout_drive:
            return []  # validation images come out of --data
        if c.val_data is not None:
            return list(c.val_data)
        sib = Path(c.data[0]).resolve().parent / "val"
        if sib.is_dir() and sib.resolve() != Path(c.data[0]).resolve():
            return [str(sib)]
        return []

    def _drives_or_names(self, data: SegmentationDataset) -> list[str]:
        """Drives of a dataset; without --holdout-drive a name the regex misses counts as '?'."""
        pattern = compile_group_regex(self.cfg.group_regex)
        unmatched = None if self.cfg.holdout_drive else "?"
        return [drive_of(n, pattern, unmatched) for n in data.names]

    def setup(self) -> None:
        c = self.cfg
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % (2**32))
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
        t0 = time.perf_counter()
        data_size = parse_size(c.data_size)
        rgbd = c.modality == "rgbd"
        load = load_rgbd_datasets if rgbd else load_datasets
        self.train_set: SegmentationDataset = load(c.data, size=data_size, limit=c.limit)
        val_roots = self._val_roots()
        eval_size = parse_size(c.eval_size) or data_size
        self.val_set = load(val_roots, size=eval_size, limit=c.limit) if val_roots else None
        if c.holdout_drive:
            if eval_size is not None and eval_size != data_size:
                raise TrainError("--holdout-drive validates on --data images: --eval-size cannot differ")
            self.train_set, self.val_set = split_by_drive(self.train_set, c.holdout_drive, c.group_regex)
        # which drives trained and which validated, for config.json and the model's metadata
        self.train_drives = drive_counts(self._drives_or_names(self.train_set))
        self.val_drives = drive_counts(self._drives_or_names(self.val_set)) if self.val_set else {}
        if self.val_set is not None and self.val_set.classes != self.train_set.classes:
            raise TrainError(f"{val_roots[0]}: class table differs from the training data's")
        self.classes = self.train_set.classes
        self.num_classes = self.classes.num_classes
        self.ignore = self.train_set.ignore_index
        self.crop = parse_size(c.size)
        self.augs = parse_augment(c.augment)
        self.console.print(
            f"data: {len(self.train_set)} training images {self.train_set.size[0]}x{self.train_set.size[1]} "
            f"from {', '.join(self.train_set.roots)}; "
            + (
                f"{len(self.val_set)} validation images {self.val_set.size[0]}x{self.val_set.size[1]}"
                if self.val_set is not None
                else "no validation data"
            )
            + f" ({time.perf_counter() - t0:.1f} s)"
        )

        # model (RGB-D: the network that fuses depth as --fusion says, fed 4 channels)
        self.arch, in_channels = rgbd_arch(c.arch, c.fusion) if rgbd else (c.arch, 3)
        self.arch_args: dict[str, Any] = {
            "num_classes": self.num_classes,
            "in_channels": in_channels,
            "dropout": float(c.dropout),
        }
        if c.width is not None:
            self.arch_args["width"] = float(c.width)
        if self.ck is not None:
            self.arch_args = dict(self.ck["arch_args"])
        self.model = self.builder(self.arch, **self.arch_args)
        self.pretrained = self._load_init() if (c.init and self.ck is None) else self._load_pretrained()
        self.model.to(self.device)
        self.channels_last = bool(c.extra.get("channels_last", self.cuda))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = torch.bfloat16 if (self.cuda and c.precision in ("auto", "bf16")) else None
        if c.precision == "bf16" and not self.cuda:
            self.amp_dtype = torch.bfloat16
        self.fwd_model = torch.compile(self.model) if c.compile else self.model
        self.n_params = sum(p.numel() for p in self.model.parameters())

        # data on the device
        self.train_images = torch.from_numpy(self.train_set.images).to(self.device)
        self.train_labels = torch.from_numpy(self.train_set.labels).to(self.device)
        if self.val_set is not None:
            self.val_images = torch.from_numpy(self.val_set.images).to(self.device)
            self.val_labels = torch.from_numpy(self.val_set.labels).to(self.device)
        # depth normalized once (float, on the device); the augmenter warps it with the image
        self.train_depth = self.val_depth = None
        if rgbd:
            norm_depth = self.depth_spec.normalize
            self.train_depth = torch.from_numpy(norm_depth(self.train_set.depth)).to(self.device)
            if self.val_set is not None:
                self.val_depth = torch.from_numpy(norm_depth(self.val_set.depth)).to(self.device)
        from engines.models import input_normalization

        norm = input_normalization(self.model)
        self.meta = ModelMeta(
            arch=self.arch,
            classes=self.classes,
            input_size=(self.val_set or self.train_set).size,
            channels=in_channels,
            **({"mean": norm[0], "std": norm[1]} if norm else {}),
            extra={
                "arch_args": self.arch_args,
                "train_size": list(self.crop or self.train_set.size),
                "seed": c.seed,
                "train_drives": self.train_drives,
                "val_drives": self.val_drives,
                "encoder_init": self.pretrained,  # "imagenet" or None (random)
                # every runtime feeds depth the way training normalized it (engines.depth.depth_spec_of)
                **(
                    {"modality": "rgbd", "fusion": c.fusion, "depth": self.depth_spec.to_dict()}
                    if rgbd
                    else {}
                ),
            },
        )
        self.normalizer = Normalizer(self.meta.mean, self.meta.std, self.device)
        self.augmenter = BatchAugmenter(
            self.augs, self.crop, self.ignore, self.normalizer, scale_range=(c.scale_min, c.scale_max)
        )

        # loss
        weights = None
        if c.class_weights != "none":
            from engines.data import class_pixel_counts

            weights = class_weights(
                class_pixel_counts(self.train_set.labels, self.num_classes), c.class_weights
            )
        self.criterion = build_loss(c.loss, self.num_classes, self.ignore, weights).to(self.device)
        self.teacher = None
        if c.teacher:
            from engines.losses import DistillKL
            from engines.teacher import Teacher

            self.teacher = Teacher(c.teacher, self.device, c.threads)
            self.teacher.check_classes(self.classes)
            self.distill_weight = 1.0 if c.distill_weight is None else float(c.distill_weight)
            self.distill = DistillKL(
                self.num_classes, self.ignore, 2.0 if c.distill_temp is None else float(c.distill_temp)
            )
            seen = sorted(set(self.val_drives) & set(self.teacher.meta.extra.get("train_drives") or {}))
            self.console.print(
                f"teacher: {c.teacher} ({self.teacher.meta.arch}, {self.teacher.backend}); KL weight "
                f"{self.distill_weight:g}, temperature {self.distill.temperature:g}"
                + (
                    f"\n[yellow]warning: the teacher trained on validation drive(s) {', '.join(seen)}: "
                    "the student's validation figures are not held-out"
                    if seen
                    else ""
                )
            )
        self._kd_acc = torch.zeros((), device=self.device)

        # optimizer and schedule
        self.gd = c.optimizer.lower() == "gd"
        n = len(self.train_set)
        self.batch = min(c.batch_size, n)
        self.steps_per_epoch = 1 if self.gd else max(n // self.batch, 1)
        self.base_lr = c.lr if c.lr is not None else DEFAULT_LR.get(c.optimizer.lower(), 0.05)
        self.optimizer = build_optimizer(
            c.optimizer, param_groups(self.model, c.weight_decay, True), self.base_lr, c.momentum, self.cuda
        )
        self.warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))
        self.l1_params = [p for p in self.model.parameters() if p.ndim > 1] if c.l1 > 0 else []

        # state
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_miou = -1.0
        self.best_loss = math.inf
        self.bad_vals = 0
        self.partial = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0, "images": 0}
        self.last_confusion: np.ndarray | None = None
        self._validated_at = -1
        self._last_line = time.perf_counter()
        self.time_progress = 0.0  # how far --schedule-time has annealed (0..1), kept across resumes
        self._resumed_progress = 0.0
        if self.ck is not None:
            self._restore(self.ck)

    def _load_init(self) -> str:
        """Warm start (e.g. a second annealing cycle): the weights of INIT, a fresh optimizer and schedule."""
        ck = load_checkpoint(self.cfg.init)
        if ck["arch"] != self.arch:
            raise TrainError(f"--init {self.cfg.init}: arch '{ck['arch']}' is not --arch '{self.arch}'")
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:  # other class count or width: the user's to fix
            first = str(e).strip().splitlines()[0]
            raise TrainError(f"--init {self.cfg.init}: weights do not fit this model ({first})") from None
        self.console.print(f"weights: started from {self.cfg.init} (epoch {ck.get('epoch')})")
        seen = json.loads(ck.get("meta") or "{}").get("extra", {}).get("train_drives") or {}
        leak = sorted(set(self.val_drives) & set(seen))
        if leak:  # validation would measure memory of those drives, not generalization
            self.console.print(
                f"[yellow]warning: --init {self.cfg.init} trained on validation drive(s) {', '.join(leak)}"
            )
        return f"init:{Path(self.cfg.init).name}"

    def _load_pretrained(self) -> str | None:
        """Load shipped encoder weights into a new run's model; a resumed run has its own weights."""
        from engines.models import has_pretrained, load_pretrained

        want = self.cfg.pretrained
        if want and not has_pretrained(self.model):
            raise TrainError(f"--pretrained: arch '{self.cfg.arch}' has no pretrained encoder")
        if self.ck is not None:  # the resumed weights already hold whatever the run started from
            return json.loads(self.ck.get("meta") or "{}").get("extra", {}).get("encoder_init")
        if want is False or not has_pretrained(self.model) or self.cfg.modality == "rgbd":
            return None
        dropped = load_pretrained(self.model)
        self.console.print(
            f"encoder: ImageNet weights loaded (every tensor; left out: {', '.join(dropped) or 'nothing'})"
        )
        return "imagenet"

    def _restore(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        if ck.get("optimizer"):
            self.optimizer.load_state_dict(ck["optimizer"])
        sched = ck.get("scheduler") or {}
        self.time_progress = float(sched.get("time_progress", 0.0))
        self._resumed_progress = self.time_progress
        self.global_step = int(sched.get("global_step", 0))
        self.epoch = int(ck.get("epoch", 0))
        self.step_in_epoch = int(ck.get("step_in_epoch", 0))
        self.best_miou = float(ck.get("best_miou", -1.0))
        self.best_loss = float(ck.get("best_loss", math.inf))
        self.bad_vals = int(ck.get("bad_vals", 0))
        self.partial = dict(ck.get("partial") or self.partial)
        rng = ck.get("rng") or {}
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if self.cuda and rng.get("cuda") is not None:
            try:
                torch.cuda.set_rng_state(rng["cuda"])
            except Exception:  # a checkpoint from another kind of GPU: dropout masks differ, nothing else
                pass
        if rng.get("numpy") is not None:
            np.random.set_state(rng["numpy"])
        self.console.print(
            f"resumed from {ck.get('_path')}: {self.epoch} epochs done"
            + (f" (+{self.step_in_epoch} steps)" if self.step_in_epoch else "")
            + (f", best mIoU {self.best_miou:.4f}" if self.best_miou >= 0 else "")
            + (
                f"; --schedule-time anneal at {100 * self.time_progress:.0f}%, continued from there"
                if self.cfg.schedule_time and self.time_progress > 0
                else ""
            )
        )

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, full: bool) -> dict[str, Any]:
        ck: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "model": cpu_state_dict(self.model),
            "meta": self.meta.to_json(),
            "epoch": self.epoch,
            "best_miou": self.best_miou,
        }
        if full:
            ck.update(
                optimizer=self.optimizer.state_dict(),
                scheduler={
                    "global_step": self.global_step,
                    "kind": self.cfg.schedule,
                    "time_progress": self.time_progress,
                },
                scaler=None,  # bf16 autocast needs no loss scaling
                rng={
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if self.cuda else None,
                    "numpy": np.random.get_state(),
                },
                config=asdict(self.cfg),
                step_in_epoch=self.step_in_epoch,
                partial=dict(self.partial),
                best_loss=self.best_loss,
                bad_vals=self.bad_vals,
            )
        return ck

    def save_last(self) -> None:
        atomic_save(self._checkpoint(full=True), self.run_dir / "last.pt")

    def save_best(self) -> None:
        atomic_save(self._checkpoint(full=False), self.run_dir / "best.pt")

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_lr(self, start_time: float) -> float:
        c = self.cfg
        total = c.epochs * self.steps_per_epoch
        prog = (self.global_step - self.warmup_steps) / max(total - self.warmup_steps, 1)
        if c.schedule_time:
            # a resumed time-boxed run continues its anneal from where it stopped (never back to the
            # top of the schedule) and finishes it within the new session's time limit
            p0 = self._resumed_progress
            if c.time_limit:
                frac = min((time.perf_counter() - start_time) / (c.time_limit * 60), 1.0)
                self.time_progress = p0 + (1.0 - p0) * frac
            prog = max(prog, self.time_progress)
        lr = self.base_lr * lr_factor(
            c.schedule, prog, self.global_step, self.warmup_steps, self.epoch, c.step_every
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _forward_loss(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.train_depth is None:
            x, y = self.augmenter(self.train_images[idx], self.train_labels[idx], gen)
        else:
            x, y = self.augmenter(
                self.train_images[idx],
                self.train_labels[idx],
                gen,
                depth=self.train_depth[idx],
                depth_fill=self.depth_spec.invalid,
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.fwd_model(x)
        loss = self.criterion(logits, y)
        if self.teacher is not None:
            kd = self.distill(logits, self.teacher(x, self.normalizer.mean, self.normalizer.std), y)
            self._kd_acc += kd.detach()
            loss = loss + self.distill_weight * kd
        if self.l1_params:
            loss = loss + self.cfg.l1 * sum(p.abs().sum() for p in self.l1_params)
        return loss

    def _epoch_perm(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.epoch, 999_983))
        return torch.randperm(len(self.train_set), generator=g)

    def _train_epoch(self, progress, task, start_time: float, stop: _StopFlag) -> str | None:
        """Runs (the rest of) one epoch. Returns a stop reason when it had to stop early."""
        c = self.cfg
        self.model.train()
        perm = self._epoch_perm()
        n = len(self.train_set)
        gen = torch.Generator()
        loss_acc = torch.zeros((), device=self.device)
        t_epoch = time.perf_counter()
        images_done = 0

        def flush() -> None:
            nonlocal loss_acc
            v = float(loss_acc)  # the only host sync, every log_every steps
            if not math.isfinite(v):
                raise TrainError(
                    f"training loss became {v} in epoch {self.epoch + 1}; lower --lr or change --loss"
                )
            self.partial["loss_sum"] += v
            loss_acc = torch.zeros((), device=self.device)
            self.partial["kd_sum"] = self.partial.get("kd_sum", 0.0) + float(self._kd_acc)
            self._kd_acc = torch.zeros((), device=self.device)

        if self.gd:
            # full-batch gradient descent: accumulate the whole training set, one step per epoch
            lr = self._set_lr(start_time)
            self.optimizer.zero_grad(set_to_none=True)
            chunks = np.array_split(perm.numpy(), max(math.ceil(n / self.batch), 1))
            for k, ch in enumerate(chunks):
                gen.manual_seed(_step_seed(c.seed, self.epoch, k))
                idx = torch.from_numpy(ch).to(self.device, non_blocking=True)
                loss = self._forward_loss(idx, gen)
                (loss * (len(ch) / n)).backward()
                loss_acc += loss.detach() * (len(ch) / n)
                images_done += len(ch)
                if stop.reason:
                    return stop.reason  # partial gradient is dropped; the epoch reruns on resume
            self.optimizer.step()
            self.global_step += 1
            self.partial["loss_n"] += 1
            flush()
            dt = time.perf_counter() - t_epoch
            progress.update(
                task, advance=1, loss=self.partial["loss_sum"], ips=images_done / max(dt, 1e-9), lr=lr
            )
        else:
            for k in range(self.step_in_epoch, self.steps_per_epoch):
                why = stop.reason
                if c.time_limit and time.perf_counter() - start_time > c.time_limit * 60:
                    why = why or "time-limit"
                if why:
                    flush()
                    self.partial["seconds"] += time.perf_counter() - t_epoch
                    self.partial["images"] += images_done
                    return why
                lr = self._set_lr(start_time)
                gen.manual_seed(_step_seed(c.seed, self.epoch, k))
                idx = perm[k * self.batch : (k + 1) * self.batch].to(self.device, non_blocking=True)
                loss = self._forward_loss(idx, gen)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss_acc += loss.detach()
                self.global_step += 1
                self.step_in_epoch = k + 1
                self.partial["loss_n"] += 1
                images_done += self.batch
                if (k + 1) % c.log_every == 0 or k + 1 == self.steps_per_epoch:
                    flush()
                    dt = self.partial["seconds"] + time.perf_counter() - t_epoch
                    ips = (self.partial["images"] + images_done) / max(dt, 1e-9)
                    if not self.console.is_terminal and time.perf_counter() - self._last_line > 60:
                        # logs (nohup, CI) get no live bar: one plain line a minute shows the run is alive
                        self._last_line = time.perf_counter()
                        self.console.print(
                            f"epoch {self.epoch + 1} step {k + 1}/{self.steps_per_epoch}: loss "
                            f"{self.partial['loss_sum'] / max(self.partial['loss_n'], 1):.4f}, "
                            f"{ips:.2f} img/s, lr {lr:.2e}"
                        )
                    progress.update(
                        task,
                        advance=0,
                        loss=self.partial["loss_sum"] / max(self.partial["loss_n"], 1),
                        ips=ips,
                        lr=lr,
                    )
                progress.update(task, advance=1)
            if self.cuda:
                torch.cuda.synchronize()
        self.partial["seconds"] += time.perf_counter() - t_epoch
        self.partial["images"] += images_done
        return None

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.model.eval()
        cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)
        mse = ProbabilityMSE(self.num_classes, self.ignore)
        loss_sum = torch.zeros((), device=self.device)
        n = len(self.val_set)
        t0 = time.perf_counter()
        for a in range(0, n, self.batch):
            x = self.normalizer(self.val_images[a : a + self.batch])
            if self.val_depth is not None:
                x = torch.cat([x, self.val_depth[a : a + self.batch].unsqueeze(1)], dim=1)
            y = self.val_labels[a : a + self.batch].long()
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.fwd_model(x)
            logits = logits.float()
            loss_sum += self.criterion(logits, y) * x.shape[0]
            cm += torch_confusion(y, logits.argmax(1), self.num_classes, self.ignore)
            mse.update(logits.softmax(1), y)
        conf = ConfusionMatrix(self.num_classes, self.ignore)
        conf.add(cm)
        self.last_confusion = conf.matrix.copy()
        self.model.train()
        return {
            "val_loss": float(loss_sum) / n,
            "val_miou": conf.miou(),
            "pixel_acc": conf.pixel_accuracy(),
            "mean_acc": conf.mean_accuracy(),
            "val_mse": mse.value(),
            "val_seconds": time.perf_counter() - t0,
            "iou": [None if not np.isfinite(v) else round(float(v), 4) for v in conf.iou()],
        }

    # ------------------------------------------------------------------ run
    def fit(self, run_dir: Path) -> TrainResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        c = self.cfg
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        config = asdict(c)
        config.update(
            resolved={
                "device": str(self.device),
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "channels_last": self.channels_last,
                "lr": self.base_lr,
                "batch_size": self.batch,
                "steps_per_epoch": self.steps_per_epoch,
                "train_images": len(self.train_set),
                "val_images": len(self.val_set) if self.val_set is not None else 0,
                "train_roots": self.train_set.roots,
                "val_roots": self.val_set.roots if self.val_set is not None else [],
                "train_drives": self.train_drives,
                "val_drives": self.val_drives,
                "group_regex": c.group_regex or DEFAULT_GROUP_REGEX,
                "pretrained": self.pretrained,
                "normalization": {"mean": list(self.meta.mean), "std": list(self.meta.std)},
                "teacher": self.teacher.describe() if self.teacher is not None else None,
                "distill": (
                    {"weight": self.distill_weight, "temperature": self.distill.temperature}
                    if self.teacher is not None
                    else None
                ),
                "augment": list(self.augs),
                "params": self.n_params,
                "arch_args": self.arch_args,
            }
        )
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        self.console.print(
            f"training {self.arch}{f' (RGB-D, {c.fusion} fusion)' if c.modality == 'rgbd' else ''} "
            f"({self.n_params / 1e6:.2f} M params) on {self.device}"
            f"{' bf16 autocast, channels_last' if self.amp_dtype is not None and self.cuda else ''}: "
            f"{c.optimizer} lr {self.base_lr:g}, {c.schedule} schedule, batch {self.batch}, "
            f"{self.steps_per_epoch} steps/epoch, loss {c.loss}, augment {','.join(self.augs) or 'none'}"
            f" -> {run_dir}"
        )
        start = self.started
        stopped = "done"
        last_print = 0.0
        total_steps = c.epochs * self.steps_per_epoch
        done_steps = self.epoch * self.steps_per_epoch + (0 if self.gd else self.step_in_epoch)
        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s  lr {task.fields[lr]:.2e}"
            ),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        ips_run = 0.0
        with _StopFlag() as stop, progress:
            task = progress.add_task(
                "train",
                total=total_steps,
                completed=done_steps,
                epoch=self.epoch + 1,
                loss=0.0,
                ips=0.0,
                lr=0.0,
            )
            while self.epoch < c.epochs:
                progress.update(task, epoch=f"{self.epoch + 1}/{c.epochs}")
                why = self._train_epoch(progress, task, start, stop)
                if why:
                    stopped = why
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                p = self.partial
                train_loss = p["loss_sum"] / max(p["loss_n"], 1)
                ips_run = p["images"] / max(p["seconds"], 1e-9)
                row: dict[str, Any] = {
                    "epoch": self.epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss,
                    "val_loss": None,
                    "val_miou": None,
                    "pixel_acc": None,
                    "time": p["seconds"],
                    "images_per_s": ips_run,
                    "elapsed": time.perf_counter() - start,
                }
                if self.teacher is not None:
                    # the KL term alone (already inside train_loss, with its weight)
                    row["train_distill"] = p.get("kd_sum", 0.0) / max(p["loss_n"], 1)
                self.partial = {"loss_sum": 0.0, "loss_n": 0, "seconds": 0.0, "images": 0}
                improved = False
                validated = self.val_set is not None and (
                    self.epoch % max(c.val_every, 1) == 0 or self.epoch == c.epochs
                )
                if validated:
                    v = self.validate()
                    self._validated_at = self.global_step
                    row.update(v)
                    if v["val_miou"] > self.best_miou:
                        self.best_miou, improved, self.bad_vals = v["val_miou"], True, 0
                    else:
                        self.bad_vals += 1
                elif self.val_set is None and train_loss < self.best_loss:
                    self.best_loss, improved = train_loss, True
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if improved:
                    self.save_best()
                self.save_last()
                now = time.perf_counter()
                if validated and (improved or now - last_print > 15 or self.epoch == c.epochs):
                    last_print = now
                    progress.console.print(
                        f"epoch {self.epoch}: train loss {train_loss:.4f}, val loss {row['val_loss']:.4f}, "
                        f"mIoU {row['val_miou']:.4f}, pixel acc {row['pixel_acc']:.4f}, "
                        f"{ips_run:.1f} img/s{'  (best)' if improved else ''}"
                    )
                elif not validated and now - last_print > 15:
                    last_print = now
                    progress.console.print(
                        f"epoch {self.epoch}: train loss {train_loss:.4f}, {ips_run:.1f} img/s"
                    )
                if c.patience and self.bad_vals >= c.patience:
                    stopped = "early-stop"
                    progress.console.print(
                        f"early stop: no mIoU gain in {self.bad_vals} validations (best {self.best_miou:.4f})"
                    )
                    break
                if stop.reason:
                    stopped = stop.reason
                    break
                if c.time_limit and time.perf_counter() - start > c.time_limit * 60:
                    stopped = "time-limit"
                    break
            if stopped in ("time-limit", "interrupted", "terminated"):
                if stopped != "interrupted":  # Ctrl-C means "now"; a time box gets its last answer
                    self._final_validation(progress.console)
                self.save_last()
                if not (run_dir / "best.pt").exists():
                    self.save_best()
        self.write_plots()
        msg = {
            "done": "finished",
            "early-stop": "stopped early",
            "time-limit": "time limit reached",
            "interrupted": "interrupted",
            "terminated": "terminated",
        }[stopped]
        self.console.print(
            f"{msg} after {self.epoch} epochs"
            + (f" (+{self.step_in_epoch} steps)" if self.step_in_epoch else "")
            + (f"; best val mIoU {self.best_miou:.4f}" if self.best_miou >= 0 else "")
            + f"; checkpoints in {run_dir} (resume with --resume {run_dir})"
        )
        return TrainResult(run_dir, self.epoch, self.best_miou, stopped, ips_run)

    def _final_validation(self, console) -> None:
        """Validate the weights a time-boxed run ends with, so best.pt is never older than the last step
        even with --val-every > 1."""
        if self.val_set is None or self.global_step == self._validated_at:
            return
        v = self.validate()
        better = v["val_miou"] > self.best_miou
        console.print(f"final weights: val mIoU {v['val_miou']:.4f}{'  (best)' if better else ''}")
        if better:
            self.best_miou = v["val_miou"]
            self.save_best()

    def write_plots(self) -> None:
        try:
            from engines.plots import plot_run

            plot_run(self.run_dir, self.classes.names, self.last_confusion)
        except ImportError as e:  # matplotlib is an optional extra
            self.console.print(f"plots skipped: {e}")


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: TrainConfig,
    console=None,
    builder: Callable[..., nn.Module] | None = None,
) -> TrainResult:
    """Start a new run in cfg.out (refuses a folder that already holds a checkpoint)."""
    run_dir = new_run_dir(cfg)
    if (run_dir / "last.pt").exists():
        raise TrainError(f"{run_dir} already holds a run (last.pt); continue it with --resume {run_dir}")
    cfg.out = str(run_dir)
    tr = Trainer(cfg, console=console, builder=builder)
    tr.setup()
    return tr.fit(run_dir)


def resume(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    console=None,
    builder: Callable[..., nn.Module] | None = None,
) -> TrainResult:
    """Continue a run from its last.pt (or a given checkpoint); ``overrides`` may change e.g. epochs."""
    ck = load_checkpoint(path)
    if not ck.get("config"):
        raise TrainError(f"{ck['_path']}: holds weights only (a best.pt?); resume needs last.pt")
    cfg = TrainConfig.from_dict(ck["config"])
    cfg.time_limit = None  # a time box belongs to one session, not to the run
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    # the run continues where its checkpoint lies (the folder may have been moved since)
    run_dir = Path(ck["_path"]).parent
    cfg.out = str(run_dir)
    tr = Trainer(cfg, console=console, builder=builder, resume=ck)
    tr.setup()
    return tr.fit(run_dir)


def drives_in(roots: list[str], regex: str | None = None, limit: int | None = None) -> dict[str, int]:
    """{drive: images} of dataset folders, from the file names alone (nothing decoded)."""
    from engines.data import DatasetNotFound

    pattern = compile_group_regex(regex)
    names = []
    for r in roots:
        if not Path(r).is_dir():
            raise DatasetNotFound(f"dataset folder not found: {r}")
        names += [img.name for img, _ in list_pairs(Path(r))[: limit or None]]
    return drive_counts([drive_of(n, pattern) for n in names])


def train_folds(
    cfg: TrainConfig,
    console=None,
    builder: Callable[..., nn.Module] | None = None,
) -> dict[str, TrainResult]:
    """k-fold by drive: one run per drive of cfg.data (in OUT/fold-DRIVE), each validating on its drive
    only. Writes OUT/folds.json (per-drive best mIoU, their mean, and what each fold trained on)."""
    from rich.console import Console

    if cfg.holdout_drive:
        raise TrainError("--folds-by-drive holds out every drive in turn; do not also give --holdout-drive")
    if cfg.val_data:
        raise TrainError("--folds-by-drive validates on each held-out drive; do not also give --val-data")
    drives = drives_in(cfg.data, cfg.group_regex, cfg.limit)
    if len(drives) < 2:
        raise TrainError(
            f"--folds-by-drive needs at least 2 drives in --data; found {', '.join(drives) or 'none'} "
            "(see --group-regex)"
        )
    console = console or Console(stderr=True)
    root = new_run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, TrainResult] = {}
    summary: dict[str, Any] = {
        "group_regex": cfg.group_regex or DEFAULT_GROUP_REGEX,
        "data": list(cfg.data),
        "drives": drives,
        "folds": {},
    }
    for drive in drives:
        console.print(f"[bold]fold {len(results) + 1}/{len(drives)}: holding out drive {drive}")
        fold_cfg = replace(cfg, holdout_drive=[drive], out=str(root / f"fold-{drive}"))
        res = train(fold_cfg, console=console, builder=builder)
        results[drive] = res
        summary["folds"][drive] = {
            "val_miou": res.best_miou,
            "epochs": res.epochs_done,
            "stopped": res.stopped,
            "run": str(res.run_dir),
            "val_images": drives[drive],
            "train_drives": {d: n for d, n in drives.items() if d != drive},
        }
        done = [f["val_miou"] for f in summary["folds"].values()]
        summary["mean_miou"] = float(np.mean(done))
        summary["complete"] = len(done) == len(drives)
        (root / "folds.json").write_text(json.dumps(summary, indent=2))
        if res.stopped == "interrupted":
            break
    rows = ", ".join(f"{d} {100 * f['val_miou']:.1f}" for d, f in summary["folds"].items())
    console.print(
        f"leave-one-drive-out mIoU: {rows}; mean {100 * summary['mean_miou']:.1f}% -> {root / 'folds.json'}"
    )
    return results
