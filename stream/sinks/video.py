"""Video file output: H.264 (libx264, yuv420p) in MP4/MKV/MOV through PyAV, playable by every player and
browser (OpenCV's wheel has no H.264 encoder; its mp4v does not play in browsers).

Frame timing: for file sources (``StreamInfo.live`` False) frame k gets pts k at the source rate, so the
output has the input's frame count and rate. For live sources pts follow the capture clock
(``Result.timestamps["source"]`` or ``["capture"]``, else arrival time), so dropped frames do not
speed the video up.

``close()`` flushes the encoder and writes the index (moov); the pipeline closes sinks on Ctrl-C/SIGTERM.
``fragmented=True`` writes fragmented MP4, which stays playable up to the last fragment (about one second)
even if the process is killed outright.
"""

from __future__ import annotations

import logging
import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream.sinks.base import Result, Sink, SinkError, StreamInfo, check_writable_under

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # when the source does not know its rate
# x264 preset: measured at 960x540 on this 2-core machine, ultrafast ≈ 3x, superfast ≈ 1.7x the speed of
# veryfast, at ≈ 2.2x / 1.7x the file size. The default (stream/uri.py) is ultrafast: on 2 cores the encoder's
# CPU competes with inference, and superfast cost the overlay stage twice the CPU of ultrafast.


def segment_path(path: Path, segment: int) -> Path:
    """``out.mp4`` -> ``out.001.mp4``: where segment ``segment`` of a restarted run's video goes."""
    return path.with_name(f"{path.stem}.{segment:03d}{path.suffix}")


def _rate(fps: float) -> Fraction:
    """29.97 -> 30000/1001, 25.0 -> 25."""
    return Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(DEFAULT_FPS)


def to_i420_frame(image: np.ndarray) -> av.VideoFrame:
    """An even-sized BGR image as the encoder's yuv420p frame. OpenCV's converter instead of the
    encoder's libswscale: same BT.601 matrix (within one level), about 0.6 ms less CPU per 960x540 frame
    (see docs/performance.md)."""
    import cv2

    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


class VideoFileSink(Sink):
    wants_overlay = True

    def __init__(
        self,
        path: str,
        *,
        crf: int = 23,
        preset: str = "ultrafast",
        codec: str = "libx264",
        fragmented: bool = False,
        threads: int = 0,
        spec: str | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.crf = crf
        self.preset = preset
        self.codec = codec
        self.fragmented = fragmented
        self.threads = threads
        self.spec = spec or str(path)
        self.frames_written = 0
        self.resized_frames = 0  # frames whose size differed from the first one (scaled to fit)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] = (0, 0)  # (w, h) of the source frames
        self._enc_size: tuple[int, int] = (0, 0)  # even (w, h) for yuv420p
        self._live = False
        self._t0: float | None = None
        self._last_pts = -1
        self._time_base = Fraction(1, 25)

    def preflight(self) -> None:
        """What ``open()`` would refuse about the path, found before any process starts; creates nothing."""
        if self.path.is_dir():
            raise SinkError(f"{self.spec}: is a directory")
        check_writable_under(self.spec, self.path)
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise SinkError(f"{self.spec}: {self.path} is not writable")

    def roll(self, segment: int) -> Path:
        """Write to segment ``segment`` instead: ``out.mp4`` -> ``out.001.mp4`` (before ``open()``), so a
        restarted pipeline keeps what it wrote before."""
        if self._container is not None:
            raise SinkError(f"{self.spec}: roll() after open()")
        if segment > 0:
            self.path = segment_path(self.path, segment)
        return self.path

    def open(self, info: StreamInfo) -> None:
        if info.width <= 0 or info.height <= 0:
            raise SinkError(f"{self.spec}: invalid frame size {info.width}x{info.height}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"{self.spec}: cannot create folder {self.path.parent} ({e.strerror})") from None
        if self.path.is_dir():
            raise SinkError(f"{self.spec}: is a directory")
        if not os.access(self.path.parent, os.W_OK):
            raise SinkError(f"{self.spec}: folder {self.path.parent} is not writable")
        options = (
            {"movflags": "+frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
            if self.fragmented
            else {}
        )
        try:
            self._container = av.open(str(self.path), mode="w", options=options)
        except (av.error.FFmpegError, OSError) as e:
            raise SinkError(f"{self.spec}: cannot write ({getattr(e, 'strerror', None) or e})") from None
        self._live = info.live
        rate = _rate(info.fps)
        self._size = (info.width, info.height)
        self._enc_size = (info.width + info.width % 2, info.height + info.height % 2)
        try:
            stream = self._container.add_stream(self.codec, rate=rate)
        except (av.error.FFmpegError, ValueError) as e:
            self._container.close()
            raise SinkError(f"{self.spec}: encoder {self.codec!r} is not available ({e})") from None
        stream.width, stream.height = self._enc_size
        stream.pix_fmt = "yuv420p"
        opts = {"crf": str(self.crf), "preset": self.preset} if self.codec.startswith("libx26") else {}
        if self.fragmented:
            opts["g"] = str(max(1, round(float(rate))))  # a keyframe (= a fragment) every second
        stream.options = opts
        if self.threads:
            stream.codec_context.thread_count = self.threads
        # Live: millisecond pts from the capture clock; file: one tick per frame.
        self._time_base = Fraction(1, 1000) if self._live else 1 / rate
        stream.time_base = stream.codec_context.time_base = self._time_base
        self._stream = stream
        log.debug("video sink %s: %dx%d @ %s fps", self.path, *self._enc_size, rate)

    def prime(self) -> None:
        """Open the encoder now rather than on the first frame (x264's set-up is milliseconds a live frame
        should not wait for). The container header still waits for the first frame: until a frame is in
        it, the file stays empty."""
        if self._stream is None or self._container is None:
            return
        try:
            self._stream.codec_context.open()
        except (av.error.FFmpegError, OSError) as e:
            why = getattr(e, "strerror", None) or e
            raise SinkError(f"{self.spec}: cannot start the encoder ({why})") from None

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Make the frame the encoder's size: pad odd sizes by one edge pixel; rescale a changed size."""
        import cv2  # lazily: the supervisor imports this module for preflight() and needs no cv2

        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        h, w = image.shape[:2]
        if (w, h) != self._size:
            self.resized_frames += 1
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        ew, eh = self._enc_size
        if (ew, eh) != self._size:
            image = cv2.copyMakeBorder(
                image, 0, eh - self._size[1], 0, ew - self._size[0], cv2.BORDER_REPLICATE
            )
        return np.ascontiguousarray(image)

    def write(self, result: Result) -> None:
        if self._container is None or self._stream is None:
            raise SinkError(f"{self.spec}: write() before open() or after close()")
        image = result.overlay if result.overlay is not None else result.frame
        frame = to_i420_frame(self._fit(image))
        if self._live:
            ts = result.timestamps
            t = ts.get("source") or ts.get("capture") or time.time()
            if self._t0 is None:
                self._t0 = t
            pts = max(int(round((t - self._t0) * 1000)), self._last_pts + 1)
        else:
            pts = self.frames_written
        frame.pts = self._last_pts = pts
        frame.time_base = self._time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            raise SinkError(f"{self.spec}: write failed ({getattr(e, 'strerror', None) or e})") from None
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):  # flush delayed frames
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
            self._stream = None
