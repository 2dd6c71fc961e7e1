"""``--depth DIR``: the depth stream of an RGB-D run, a folder of 16-bit PNG depth images (millimetres,
0 = no measurement), paired with the colour frames by index: the k-th file in name order goes with colour
frame k. A colour frame without a depth image is not fed to the model: capture counts it as unpaired.

Read in the capture stage (one ``read`` per colour frame) and carried inline beside the frame; the
preprocess stage normalizes it as the model's metadata says (engines.depth.DepthSpec).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream.sources.base import SourceError


def depth_folder(uri: str) -> Path:
    """``DIR`` or ``images:DIR`` -> the folder (SourceError when it is not one)."""
    path = Path(uri.removeprefix("images:").removeprefix("//"))
    if not path.is_dir():
        raise SourceError(f"--depth {uri}: not a folder (expected a folder of 16-bit depth PNGs in mm)")
    return path


class DepthFolder:
    """Depth images of a folder by index; ``read(k)`` is the k-th PNG (None past the end)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.files = sorted(p for p in depth_folder(uri).iterdir() if p.suffix.lower() == ".png")
        if not self.files:
            raise SourceError(f"--depth {uri}: no .png files in the folder")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray | None:
        """(H, W) uint16 millimetres of colour frame ``index``; None when the folder has no such file.
        A file that is not a 16-bit single-channel PNG is a SourceError naming it."""
        from engines.data import DatasetError
        from engines.depth import read_depth

        if not 0 <= index < len(self.files):
            return None
        try:
            return read_depth(self.files[index])
        except DatasetError as e:
            raise SourceError(f"--depth: {e}") from None
