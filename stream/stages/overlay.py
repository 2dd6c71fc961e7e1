"""overlay / publish: restore seq order, colorize and blend, write every sink, acknowledge.

Order: results from several infer workers arrive in any order; a bounded reorder buffer releases
them by seq. A seq that stays missing is skipped and counted -- after ``reorder_timeout_s`` for live
sources (``dropped``), after ``lost_timeout_s`` for files (``lost``: only when a frame vanished and
no replay brought it back), so the run always completes.

Every seq written or skipped is acknowledged to capture, which frees its ring slot (credits).
Sinks are opened on the first frame (its header carries the source's size and rate) and closed
on every exit path, so an mp4 is finalized even on stop or SIGTERM.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from stream import headers as H
from stream.stages.base import Declares, Stage, StageConfig


@dataclass
class OverlayConfig(StageConfig):
    sinks: list[str] = field(default_factory=list)
    opacity: float = 0.5
    legend: bool = False
    shade_uncertain: float | None = None
    slots: int = 8
    reorder_timeout_s: float = 0.5
    lost_timeout_s: float = 60.0


def colorize_blend(frame: np.ndarray, mask: np.ndarray, lut: np.ndarray, opacity: float) -> np.ndarray:
    """Class ids -> palette colours (cv2.LUT) blended onto the frame (cv2.addWeighted)."""
    import cv2

    color = cv2.LUT(cv2.merge([mask, mask, mask]), lut)
    return cv2.addWeighted(frame, 1.0 - opacity, color, opacity, 0.0)


class LiveStats:
    """Per-stage time (ms, smoothed) from the timestamps every header carries, and output fps, for live
    views: the data path already measures itself, so no extra messages are needed."""

    STAGES = ("capture", "preprocess", "infer", "overlay")

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.ms: dict[str, float] = {}
        self.last_out: float | None = None
        self.fps = 0.0

    def update(self, ts: dict[str, float]) -> dict:
        now = time.time()
        prev = ts.get("source")
        for stage in self.STAGES:
            t = ts.get(stage)
            if t is None:
                continue
            if prev is not None:
                d = 1000.0 * (t - prev)
                old = self.ms.get(stage)
                self.ms[stage] = d if old is None else old + self.alpha * (d - old)
            prev = t
        if self.last_out is not None and now > self.last_out:
            inst = 1.0 / (now - self.last_out)
            self.fps = inst if not self.fps else self.fps + self.alpha * (inst - self.fps)
        self.last_out = now
        stats = {s: {"ms": round(v, 2)} for s, v in self.ms.items()}
        stats.setdefault("overlay", {})["fps"] = round(self.fps, 2)
        return stats


class OverlayStage(Stage):
    stage = "overlay"
    # a live stream's overlay restarts (next segment file); a finished mp4 cannot be resumed
    declares = Declares("sink", True, ("results",), ("acks", "outputs"), "restart", "fatal")
    Config = OverlayConfig

    def setup(self) -> None:
        import zmq

        from engines.meta import ModelMeta
        from stream.transport import open_socket, parse_endpoint
        from stream.uri import open_sink

        self.meta = ModelMeta.from_json(self.ctx.model["meta"])
        self.sinks = [open_sink(s) for s in self.cfg.sinks]  # spec errors surface before any frame
        # compiled encoders load (~0.5 s; compiling them the first time after an install takes seconds)
        # while the other stages start, not when the first frame waits
        self.warming = threading.Thread(target=self._warm_sinks, args=(list(self.sinks),), daemon=True)
        self.warming.start()
        self.opened = False
        self.inp = open_socket(self.zctx, self.ctx.endpoints["in"])
        if self.ctx.endpoints.get("in_remote"):
            self.inp.bind(parse_endpoint(self.ctx.endpoints["in_remote"], "pull", True).address)
        self.acks = (
            open_socket(self.zctx, self.ctx.endpoints["acks"]) if "acks" in self.ctx.endpoints else None
        )
        self.poller = zmq.Poller()
        self.poller.register(self.inp, zmq.POLLIN)
        self.zmq = zmq
        self.buffer: dict[int, tuple[H.FrameHeader, dict]] = {}
        self.next_seq = 0
        self.total: int | None = None
        self.missing_since: float | None = None
        self.live = False
        self.to_ack: list[int | str] = []
        self.written = 0
        self.duplicates = 0
        self.lut = self.meta.classes.lut_bgr()
        self.blend = self._blend_fn()
        self.src: dict = {}
        self.source_error: str | None = None
        self.done = False
        self.live_stats = LiveStats()
        self.files: list[str] = []
        self.gen = 0  # the model generation of the last frame written (stream.swap)
        self.last_write: float | None = None

    def _blend_fn(self):
        try:  # the shared overlay renderer (palette, legend); a plain LUT blend is the fallback
            from stream.overlay import Overlay

            ov = Overlay(
                self.meta.classes,
                opacity=self.cfg.opacity,
                legend=self.cfg.legend,
                uncertain=self.cfg.shade_uncertain,
            )
            return ov.render
        except ImportError:
            return lambda frame, mask: colorize_blend(frame, mask, self.lut, self.cfg.opacity)

    def heartbeat_extra(self):
        return {
            "written": getattr(self, "written", 0),
            "next_seq": getattr(self, "next_seq", 0),
            "total": getattr(self, "total", None),
            "duplicates": getattr(self, "duplicates", 0),
            "files": list(getattr(self, "files", [])),
        }

    @staticmethod
    def _warm_sinks(sinks: list) -> None:
        for s in sinks:
            try:
                s.warm()
            except Exception as e:  # noqa: BLE001 - open() calls warm() again and reports it there
                print(f"overlay: loading {type(s).__name__} ahead failed ({e}); open() retries", flush=True)

    def open_sinks(self, hdr: H.FrameHeader) -> None:
        from stream.sinks.base import StreamInfo

        while self.warming.is_alive():  # heartbeats go on: a first compilation outlasts a stall timeout
            self.heartbeat()
            self.warming.join(0.05)

        src = hdr.source
        h, w = hdr.shape[:2] if hdr.shape else (src.get("h", 0), src.get("w", 0))
        info = StreamInfo(
            stream_id=hdr.stream,
            width=int(w),
            height=int(h),
            fps=float(src.get("fps") or 0.0),
            classes=self.meta.classes,
            live=bool(src.get("live")),
            total_frames=src.get("total"),
        )
        for s in self.sinks:
            roll = getattr(s, "roll", None)
            if self.ctx.instance > 0 and roll is not None:
                # a restarted overlay (live source) must not overwrite what the one before it wrote
                path = roll(self.ctx.instance)
                self.report("notice", message=f"overlay restarted: output continues in {path}")
            try:
                s.open(info)
            except Exception as e:
                self.report("fatal", message=str(e))
                raise
        # the files this instance writes, so the run's summary names every one of them
        self.files = [str(s.path) for s in self.sinks if getattr(s, "roll", None) and hasattr(s, "path")]
        self.opened = True

    def prime(self, hdr: H.FrameHeader) -> None:
        """The stream's frames are coming (stream.headers.PRIME): open the sinks and run the blend on its
        frame size now, then tell capture (ack ``prime``), so the first frame waits on none of it."""
        from engines.runtime.preprocess import resize_to

        if hdr.stream != self.ctx.stream or len(hdr.shape) != 3 or hdr.shape[2] != 3:
            self.malformed(f"prime for stream {hdr.stream[:40]!r} shape {tuple(hdr.shape)}")
            return
        started = time.perf_counter()
        if not self.opened:
            self.open_sinks(hdr)
            for s in self.sinks:
                prime = getattr(s, "prime", None)
                if prime is not None:
                    prime()
        frame = np.zeros(tuple(hdr.shape), np.uint8)
        h, w = self.meta.input_size[1], self.meta.input_size[0]
        mask = resize_to(np.zeros((h, w), np.uint8), frame.shape[:2], nearest=True)
        if any(s.wants_overlay for s in self.sinks):
            shading = {"confidence": mask} if self.cfg.shade_uncertain is not None else {}
            self.blend(frame, mask, **shading)
        self.to_ack.append("prime")
        self.metrics.extra["primed_ms"] = round((time.perf_counter() - started) * 1000, 1)

    def malformed(self, why: str) -> None:
        """A message that is not a result of ours (the results port may be tcp, open to anyone): count it,
        drop it, and keep going; the first few reasons go to the stage log."""
        n = self.metrics.extra["malformed"] = self.metrics.extra.get("malformed", 0) + 1
        if n <= 5:
            print(f"overlay: dropped a malformed message: {why}", flush=True)

    def joining(self) -> bool:
        """A restarted overlay on a live stream takes up at whatever seq comes first."""
        return self.ctx.instance > 0 and self.written == 0 and not self.buffer and self.next_seq == 0

    def check(self, hdr: H.FrameHeader, arrays: dict) -> str | None:
        """Why a decoded message cannot be a result of this pipeline (None when it can)."""
        if hdr.kind not in (H.FRAME, H.EOS):
            return None  # ignored below
        if hdr.stream != self.ctx.stream:
            return f"seq {hdr.seq}: stream {hdr.stream[:40]!r} is not this overlay's ({self.ctx.stream})"
        # capture never has more than the ring's frames in flight (a restarted live capture jumps that
        # far again): a seq further ahead is no frame of ours, and skipping up to it would walk a huge gap
        window = 4 * max(self.cfg.slots, 16)
        if hdr.seq < 0 or (hdr.seq >= self.next_seq + window and not self.joining()):
            return f"seq {hdr.seq} is far from the next expected seq {self.next_seq}"
        if hdr.kind == H.EOS:
            return None
        mask = arrays.get("mask")
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8 or not mask.size:
            return f"seq {hdr.seq}: no 2-D uint8 mask part"
        for name in ("confidence", "entropy", "margin"):
            m = arrays.get(name)
            if m is not None and (m.ndim != 2 or m.dtype != np.uint8):
                return f"seq {hdr.seq}: {name} part is not a 2-D uint8 map"
        frame = arrays.get("frame")
        if frame is not None:
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or not frame.size:
                return f"seq {hdr.seq}: inline frame is not an 8-bit BGR image"
            return None
        shape = tuple(hdr.shape)
        if self.ring is None or not 0 <= hdr.slot < self.ring.layout.slots:
            return f"seq {hdr.seq}: slot {hdr.slot} and no inline frame"
        if len(shape) != 3 or shape[2] != 3 or hdr.dtype != "uint8" or min(shape) <= 0:
            return f"seq {hdr.seq}: frame shape {shape} {hdr.dtype} is not an 8-bit BGR image"
        if not self.ring.fits("frame", int(np.prod(shape, dtype=np.int64))):
            return f"seq {hdr.seq}: frame shape {shape} does not fit a ring slot"
        return None

    def receive(self) -> None:
        for frames in self.incoming(min(self.cfg.heartbeat_s, 0.05)):
            try:
                hdr, arrays = H.decode(frames)
            except H.HeaderError as e:
                self.malformed(str(e))
                continue
            why = self.check(hdr, arrays)
            if why is not None:
                self.malformed(why)
                continue
            if hdr.source:
                self.src = hdr.source
                self.live = bool(self.src.get("live"))
            if hdr.kind in (H.FRAME, H.EOS) and self.live and self.joining():
                self.next_seq = hdr.seq
            if hdr.kind == H.EOS:
                self.total = hdr.seq
                # kept apart from self.src: results of other workers may still come after EOS
                self.source_error = hdr.source.get("error")
                continue
            if hdr.kind == H.PRIME:
                self.prime(hdr)
                continue
            if hdr.kind != H.FRAME:
                continue
            if hdr.seq < self.next_seq or hdr.seq in self.buffer:
                self.duplicates += 1  # a replayed frame that had made it after all
                continue
            self.metrics.frames_in += 1
            self.buffer[hdr.seq] = (hdr, arrays)

    def step(self) -> None:
        self.receive()
        while True:
            if self.next_seq in self.buffer:
                self.missing_since = None
                hdr, arrays = self.buffer.pop(self.next_seq)
                with self.metrics.busy():
                    self.write(hdr, arrays)
                self.advance()
                continue
            if self.total is not None and self.next_seq >= self.total:
                break
            if not self.buffer and self.total is None:
                break  # nothing later is known yet: just wait
            if not self.skip_if_stale():
                break
        self.metrics.queue_depth = len(self.buffer)
        self.flush_acks()
        if self.total is not None and self.next_seq >= self.total and not self.done:
            self.finish()

    def skip_if_stale(self) -> bool:
        """next_seq is missing while later frames (or EOS) are known; skip the gap once it is stale."""
        now = time.monotonic()
        if self.missing_since is None:
            self.missing_since = now
            return False
        limit = self.cfg.reorder_timeout_s if self.live else self.cfg.lost_timeout_s
        over_capacity = self.live and len(self.buffer) >= max(self.cfg.slots, 2)
        if now - self.missing_since < limit and not over_capacity:
            return False
        end = min(self.buffer) if self.buffer else self.total
        n = end - self.next_seq
        self.metrics.drop("reorder_timeout" if self.live else "lost", n)
        self.to_ack.extend(range(self.next_seq, end))
        self.next_seq = end
        self.missing_since = None
        return True

    def advance(self) -> None:
        self.next_seq += 1

    def write(self, hdr: H.FrameHeader, arrays: dict) -> None:
        from engines.runtime.preprocess import resize_to
        from stream.sinks.base import Result
        from stream.stages.preprocess import frame_of

        started, self.last_write = time.monotonic(), getattr(self, "last_write", None)
        if hdr.gen != self.gen:
            self.switch_model(hdr, started)
        if not self.opened:
            self.open_sinks(hdr)
        # a copy: once acknowledged the slot is reused, and a sink may keep the frame (live view)
        frame = np.array(frame_of(self.ring, hdr, arrays))
        mask = resize_to(np.asarray(arrays["mask"]), frame.shape[:2], nearest=True)
        conf = arrays.get("confidence")
        if conf is not None:
            conf = resize_to(np.asarray(conf), frame.shape[:2], nearest=False)
        maps = {
            k: resize_to(np.asarray(arrays[k]), frame.shape[:2], nearest=False)
            for k in ("entropy", "margin")
            if k in arrays
        }
        shading = {"confidence": conf} if self.cfg.shade_uncertain is not None else {}
        overlay = self.blend(frame, mask, **shading) if any(s.wants_overlay for s in self.sinks) else None
        depth = self.depth_of(hdr, arrays) if self.wants_depth else None
        hdr.stamp("overlay")
        result = Result(
            seq=hdr.seq,
            frame_index=hdr.index,
            frame=frame,
            mask=mask,
            overlay=overlay,
            confidence=conf,
            maps=maps,
            timestamps=dict(hdr.ts),
            drops={**hdr.drops, **self.metrics.drops},
            stats=self.live_stats.update(hdr.ts),
            source=H.link_of(hdr),
            infer_size=H.infer_size_of(hdr),
            classes=self.meta.classes,
            depth=depth,
        )
        for s in self.sinks:
            s.write(result)
        t_out = time.time()
        self.metrics.latency.add(t_out - hdr.ts.get("source", hdr.ts.get("capture", t_out)))
        if "camera" in hdr.ts:  # the camera's clock at capture (RTSP): glass-to-output
            self.metrics.glass.add(t_out - hdr.ts["camera"])
        self.to_ack.append(hdr.seq)
        self.last_write = started
        self.written += 1
        self.metrics.frames_out += 1

    @property
    def wants_depth(self) -> bool:
        return any(getattr(s, "wants_depth", False) for s in self.sinks)

    def depth_of(self, hdr: H.FrameHeader, arrays: dict) -> np.ndarray | None:
        """RGB-D: a copy of the frame's depth (its slot is reused once acknowledged); None when the frame
        has none or it cannot be read (counted, the mask still goes out)."""
        from stream.shm import ShmError, depth_of

        try:
            d = depth_of(self.ring, hdr, arrays)
        except ShmError:
            d = np.zeros((0, 0), np.uint16)
        if d is None:
            return None
        if d.ndim != 2 or d.dtype != np.uint16 or not d.size:  # the results port may carry anything
            self.metrics.extra["depth_unreadable"] = self.metrics.extra.get("depth_unreadable", 0) + 1
            return None
        return np.array(d)

    def switch_model(self, hdr: H.FrameHeader, now: float) -> None:
        """The first frame of a swapped-in model: its class table and colours from here on (the
        supervisor wrote them to the run folder before any frame went to the new model)."""
        import json
        from pathlib import Path

        from engines.meta import ModelMeta

        try:
            model = json.loads((Path(self.cfg.run_dir or ".") / f"model-g{hdr.gen}.json").read_text())
            self.meta = ModelMeta.from_json(model["meta"])
        except (OSError, ValueError, KeyError) as e:
            self.malformed(f"seq {hdr.seq}: model generation {hdr.gen} unknown ({e}); old class table kept")
            self.gen = hdr.gen
            return
        self.lut = self.meta.classes.lut_bgr()
        self.blend = self._blend_fn()
        # the gap between output frames around the switch: what a viewer of a live stream sees of it
        gap = None if self.last_write is None else round((now - self.last_write) * 1000, 1)
        self.gen = hdr.gen
        self.report("model_swapped", gen=hdr.gen, seq=hdr.seq, gap_ms=gap)

    def flush_acks(self) -> None:
        if self.to_ack and self.acks is not None:
            try:
                self.acks.send(b",".join(str(s).encode() for s in self.to_ack), self.zmq.NOBLOCK)
                self.to_ack.clear()
            except self.zmq.Again:
                pass

    def close_sinks(self) -> None:
        errors = []
        for s in getattr(self, "sinks", []):
            try:
                s.close()
            except Exception as e:  # noqa: BLE001 - close every sink, report the first failure
                errors.append(str(e))
        self.sinks = []
        if errors:
            self.report("fatal", message=errors[0])

    def finish(self) -> None:
        self.done = True
        self.close_sinks()
        self.report(
            "done",
            written=self.written,
            total=self.total,
            source_error=self.source_error,  # the source failed (capture's EOS says why)
            metrics=self.metrics.snapshot(),
            extra=self.heartbeat_extra(),
        )
        self.stopping = True

    def teardown(self) -> None:
        self.flush_acks()
        self.close_sinks()
