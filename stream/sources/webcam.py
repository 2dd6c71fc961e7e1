"""Webcams (V4L2 on Linux) through OpenCV, read by a newest-frame-wins thread (stream.sources.live)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2

from stream.sources.base import SourceError, SourceInfo, SourceStats
from stream.sources.live import LiveReader, LiveSource

# A camera that returns this many failed grabs in a row (≈ seconds) is taken as gone.
_MAX_FAILED_GRABS = 50


class WebcamSource(LiveSource):
    def __init__(
        self,
        device: int | str = 0,
        *,
        size: tuple[int, int] | None = None,
        fps: float = 0.0,
        uri: str | None = None,
    ) -> None:
        self.device = device
        self.size = size
        self.fps = fps
        self.uri = uri or (f"webcam:{device}" if isinstance(device, int) else str(device))
        self.stats = SourceStats()
        self._reader: LiveReader | None = None

    def _label(self) -> str:
        return f"camera {self.device}"

    def open(self) -> SourceInfo:
        dev_path = f"/dev/video{self.device}" if isinstance(self.device, int) else str(self.device)
        if sys.platform.startswith("linux") and not Path(dev_path).exists():
            raise SourceError(f"{self.uri}: {self._label()} is not available (no {dev_path})")
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.device, api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.uri}: {self._label()} is not available (cannot open {dev_path})")
        if self.size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver queue would add latency
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"{self.uri}: {self._label()} opened but delivers no frames")
        h, w = first.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS) or self.fps
        self._reader = LiveReader(self.uri, self.stats)

        def loop(reader: LiveReader) -> str | None:
            failed = 0
            try:
                reader.publish(first)
                while not reader.stopping:
                    ok, image = cap.read()
                    if not ok or image is None:
                        failed += 1
                        if failed >= _MAX_FAILED_GRABS:
                            return f"{self.uri}: {self._label()} stopped delivering frames"
                        time.sleep(0.02)
                        continue
                    failed = 0
                    reader.publish(image)
                return None
            finally:
                cap.release()

        self._reader.start(loop)
        return SourceInfo(uri=self.uri, width=w, height=h, fps=float(fps or 0.0), live=True)
