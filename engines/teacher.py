"""Teachers for knowledge distillation: a frozen model that gives per-pixel logits for a training batch.

A teacher is a segstream checkpoint (.pt, run eagerly on the training device) or an exported ONNX model
(run by ONNX Runtime on the CPU; our exports end in an in-graph ArgMax over the logits, so the logits are
read from that node's input). The teacher sees exactly the augmented batch the student sees: the
student-normalized tensor is brought back to [0, 1] pixels and re-normalized with the teacher's own
mean/std (a pretrained encoder may expect another normalization than the student).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import SegstreamError
from engines.meta import ClassTable, ModelMeta


class TeacherError(SegstreamError):
    """The --teacher model cannot be used (missing, unreadable, other classes, no logits)."""


class Teacher:
    """``teacher(x_student_normalized) -> logits`` (float32 N x C x H x W on x's device), no gradients."""

    def __init__(self, path: str | Path, device: torch.device, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TeacherError(f"--teacher {self.path}: file not found")
        suffix = self.path.suffix.lower()
        if suffix == ".pt":
            self._load_torch(device)
        elif suffix == ".onnx":
            self._load_onnx(threads)
        else:
            raise TeacherError(f"--teacher {self.path}: expected a .pt checkpoint or an .onnx model")
        self.device = device
        self.mean = torch.tensor(self.meta.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.meta.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @property
    def classes(self) -> ClassTable:
        return self.meta.classes

    def describe(self) -> dict[str, Any]:
        """What config.json records about the teacher."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "arch": self.meta.arch,
            "train_drives": self.meta.extra.get("train_drives"),
        }

    def check_classes(self, classes: ClassTable) -> None:
        if tuple(self.classes.names) != tuple(classes.names):
            raise TeacherError(
                f"--teacher {self.path}: its {self.classes.num_classes} classes "
                f"({', '.join(self.classes.names[:6])}{', ...' if self.classes.num_classes > 6 else ''}) "
                f"differ from the training data's {classes.num_classes} "
                f"({', '.join(classes.names[:6])}{', ...' if classes.num_classes > 6 else ''}); "
                "a teacher must predict the same classes in the same order"
            )

    # ------------------------------------------------------------------ backends
    def _load_torch(self, device: torch.device) -> None:
        from engines.runtime.base import ModelFileError
        from engines.runtime.torch import model_from_checkpoint

        try:
            net, meta, _ = model_from_checkpoint(self.path)
        except ModelFileError as e:
            raise TeacherError(f"--teacher: {e}") from None
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.meta = meta
        self.backend = "torch"

    def _load_onnx(self, threads: int | None) -> None:
        import onnx
        import onnxruntime as ort

        from engines.meta import META_KEY

        try:
            model = onnx.load(str(self.path))
        except Exception as e:  # a truncated or foreign file
            raise TeacherError(
                f"--teacher {self.path}: not a readable ONNX model ({type(e).__name__})"
            ) from None
        props = {p.key: p.value for p in model.metadata_props}
        if META_KEY not in props:
            raise TeacherError(f"--teacher {self.path}: no segstream metadata (not exported by segstream)")
        self.meta = ModelMeta.from_json(props[META_KEY])
        argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
        if len(argmax) != 1:
            raise TeacherError(f"--teacher {self.path}: cannot find the logits (expected one ArgMax node)")
        logits = argmax[0].input[0]
        # expose the logits as an extra graph output (type only; ORT infers the shape)
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.logits_name = logits
        self.backend = "onnxruntime"

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, student_mean: torch.Tensor, student_std: torch.Tensor
    ) -> torch.Tensor:
        xt = ((x.float() * student_std + student_mean) - self.mean) / self.std
        if self.backend == "torch":
            return self.net(xt).float()
        arr = np.ascontiguousarray(xt.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([self.logits_name], {self.input_name: arr})
        return torch.from_numpy(out).to(x.device)
