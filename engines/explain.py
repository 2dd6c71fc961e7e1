"""Class saliency for PyTorch segmentation models: Grad-CAM and integrated gradients.

Both explain one class ``c`` of one image with the score ``S_c = sum of logit c over the pixels the model
labels c`` (all pixels when it labels none): the segmentation form of Grad-CAM (Vinogradova et al. 2020,
"Towards interpretable semantic segmentation via gradient-weighted class activation mapping").

- Grad-CAM (Selvaraju et al. 2017): the activations A of one layer weighted by the spatial mean of
  dS_c/dA per channel, summed, ReLU. Coarse (the layer's resolution), cheap (one forward + backward).
- Integrated gradients (Sundararajan et al. 2017): (x - x0) times dS_c/dx averaged along the straight
  path from a baseline x0 (the mean image: zero after normalization) to x; per pixel, the positive part
  of the sum over channels. Full resolution, ``steps`` forward + backward passes.

Only networks whose gradients can be taken: ONNX and TensorRT files are compiled inference graphs that
carry no backward pass, so they are refused with a message that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.errors import SegstreamError
from engines.meta import ClassTable, ModelMeta

METHODS = ("gradcam", "ig")
#: the Grad-CAM layer per architecture: the last feature map before the classifier that still has
#: spatial detail (Fast-SCNN fuses its deep and shallow paths at 1/8 there)
DEFAULT_LAYERS = {"fastscnn": "fusion", "lite0-lraspp": "head"}


class ExplainError(SegstreamError):
    """The model, class, layer or method cannot be explained as asked."""


@dataclass
class Explanation:
    heatmap: np.ndarray  # (H, W) float32 in [0, 1] at the image's size
    mask: np.ndarray  # (H, W) uint8 class ids at the image's size
    class_id: int
    class_name: str
    method: str
    layer: str | None  # Grad-CAM's layer; None for integrated gradients
    class_pixels: int  # pixels the model labels with the class (0: the score summed every pixel)


def refuse_compiled(path: str | Path) -> None:
    """Raise ExplainError for model files that carry no gradients (anything but a .pt checkpoint)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".engine", ".plan"):
        kind = "an ONNX model" if suffix == ".onnx" else "a TensorRT engine"
        raise ExplainError(
            f"{path}: cannot explain {kind}: saliency needs gradients through the network, and a compiled "
            "inference graph has no backward pass; give the .pt checkpoint it was exported from"
        )
    if suffix != ".pt":
        raise ExplainError(f"{path}: unknown model file type '{suffix}' (explain takes a .pt checkpoint)")


def class_id(classes: ClassTable, name: str) -> int:
    """Class name (case-insensitive) or numeric id -> id; ExplainError naming the valid classes."""
    lowered = {n.lower(): i for i, n in enumerate(classes.names)}
    if name.lower() in lowered:
        return lowered[name.lower()]
    if name.isdigit() and int(name) < classes.num_classes:
        return int(name)
    raise ExplainError(f"--class '{name}': no such class; valid classes: {', '.join(classes.names)}")


def default_layer(net: nn.Module, arch: str, num_classes: int) -> str:
    """The Grad-CAM layer: the one named for the architecture, else the last convolution that is not
    the classifier (its output channels differ from the class count)."""
    names = dict(net.named_modules())
    if arch in DEFAULT_LAYERS and DEFAULT_LAYERS[arch] in names:
        return DEFAULT_LAYERS[arch]
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d) and m.out_channels != num_classes]
    if not convs:
        raise ExplainError(f"{arch}: no convolution to take Grad-CAM on; give --layer")
    return convs[-1]


def _module(net: nn.Module, layer: str) -> nn.Module:
    names = dict(net.named_modules())
    if layer not in names or not layer:
        top = [n for n, _ in net.named_children()]
        raise ExplainError(f"--layer '{layer}': no such module; top-level modules: {', '.join(top)}")
    return names[layer]


def _score(logits: torch.Tensor, cid: int, region: torch.Tensor) -> torch.Tensor:
    """Per-sample S_c: logit c summed over ``region`` (N,H,W bool)."""
    return (logits[:, cid] * region).sum(dim=(1, 2))


def gradcam(net: nn.Module, x: torch.Tensor, cid: int, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam (H, W) >= 0 at input size, logits (1, C, H, W)) for one normalized input (1, C, H, W)."""
    module = _module(net, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ExplainError(f"--layer '{layer}' does not output a feature map (N x C x H x W)")
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(hook)
    try:
        # an input that requires grad makes autograd record the graph (the weights are frozen)
        logits = net(x.detach().requires_grad_(True))
    finally:
        handle.remove()
    if "a" not in store:
        raise ExplainError(f"--layer '{layer}' is not used by the forward pass")
    region = _region(logits, cid)
    _score(logits, cid, region).sum().backward()
    a, g = store["a"], store["a"].grad
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    return cam[0, 0].detach(), logits.detach()


def _region(logits: torch.Tensor, cid: int) -> torch.Tensor:
    pred = logits.detach().argmax(dim=1)
    region = pred == cid
    return region if bool(region.any()) else torch.ones_like(region)


def integrated_gradients(
    net: nn.Module, x: torch.Tensor, cid: int, steps: int = 32, batch: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attribution (H, W) >= 0, logits (1, C, H, W)); baseline = the mean image (0 after normalization).

    The region S_c sums over is fixed by the prediction on the real input, so every path point scores
    the same pixels (otherwise the path integral is not that of one function)."""
    with torch.no_grad():
        logits = net(x)
    region = _region(logits, cid)
    baseline = torch.zeros_like(x)
    # midpoint Riemann sum: alphas strictly inside (0, 1)
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    total = torch.zeros_like(x)
    for i in range(0, steps, batch):
        a = alphas[i : i + batch].view(-1, 1, 1, 1)
        path = (baseline + a * (x - baseline)).requires_grad_(True)
        out = net(path)
        (grad,) = torch.autograd.grad(_score(out, cid, region).sum(), path)
        total += grad.sum(dim=0, keepdim=True)
    attribution = ((x - baseline) * total / steps).sum(dim=1)[0]
    return torch.relu(attribution).detach(), logits


def normalize_heatmap(h: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the 99.5th percentile (one hot pixel must not wash out the rest)."""
    top = float(np.percentile(h, 99.5)) if h.size else 0.0
    if top <= 0:
        top = float(h.max()) if h.size else 0.0
    return np.clip(h / top, 0.0, 1.0).astype(np.float32) if top > 0 else np.zeros_like(h, np.float32)


def explain(
    net: nn.Module,
    meta: ModelMeta,
    image_bgr: np.ndarray,
    class_name: str,
    method: str = "gradcam",
    layer: str | None = None,
    steps: int = 32,
    depth_mm: np.ndarray | None = None,
) -> Explanation:
    """Saliency of ``class_name`` for one uint8 BGR image (any size; run at the model's input size). An
    RGB-D model also takes the image's uint16 depth in mm (``depth_mm``): the saliency is over both."""
    import cv2

    from engines.runtime.preprocess import prepare_batch

    if method not in METHODS:
        raise ExplainError(f"--method '{method}': must be one of {', '.join(METHODS)}")
    if steps < 1:
        raise ExplainError(f"--steps {steps}: must be at least 1")
    cid = class_id(meta.classes, class_name)
    net = net.eval()
    for p in net.parameters():
        p.requires_grad_(False)  # gradients are wanted wrt activations/inputs only
    from engines.depth import prepare_rgbd, require_depth

    if require_depth(meta, depth_mm is not None, "give --depth FILE (a 16-bit PNG in mm)") is not None:
        # the network as trained takes colour and depth as one tensor (engines.depth)
        parts = prepare_rgbd([image_bgr], [depth_mm], meta)
        x = torch.from_numpy(np.concatenate([parts["image"], parts["depth"]], axis=1))
    else:
        x = torch.from_numpy(prepare_batch([image_bgr], meta))
    if method == "gradcam":
        layer = layer or default_layer(net, meta.arch, meta.classes.num_classes)
        with torch.enable_grad():
            heat, logits = gradcam(net, x, cid, layer)
    else:
        layer = None
        with torch.enable_grad():
            heat, logits = integrated_gradients(net, x, cid, steps=steps)
    ids = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    h, w = image_bgr.shape[:2]
    heat_np = cv2.resize(heat.numpy().astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
    return Explanation(
        heatmap=normalize_heatmap(heat_np),
        mask=mask,
        class_id=cid,
        class_name=meta.classes.names[cid],
        method=method,
        layer=layer,
        class_pixels=int((ids == cid).sum()),
    )


def panels(image_bgr: np.ndarray, ex: Explanation, classes: ClassTable, alpha: float = 0.5) -> np.ndarray:
    """One BGR picture: image | mask | overlay | heatmap, captioned, side by side."""
    import cv2

    from stream.overlay import blend, colorize

    color = colorize(ex.mask, classes.lut_bgr())
    heat = cv2.applyColorMap((ex.heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    tiles = [
        ("image", image_bgr),
        ("mask", color),
        ("overlay", blend(image_bgr, color, alpha)),
        (f"{ex.method} '{ex.class_name}'", blend(image_bgr, heat, 0.5)),
    ]
    out = []
    for title, tile in tiles:
        t = tile.copy()
        cv2.rectangle(t, (0, 0), (t.shape[1], 22), (0, 0, 0), thickness=-1)
        cv2.putText(t, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(t)
    return np.hstack(out)
