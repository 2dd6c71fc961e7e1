"""capture: read the Source, write each frame once into a ring slot, send its header downstream.

Credits: a frame takes a free slot and its seq holds it until the overlay stage acknowledges that
seq (ack socket). Files wait for a slot (backpressure, never a drop); live sources keep reading and
count a frame as dropped when no slot is free (newest wins, latency stays bounded by the ring).

After an infer/preprocess restart the supervisor sends ``replay``: every unacknowledged frame (its
pixels are still in its slot) is sent again, and so is EOS; the overlay stage discards duplicates.

Live sources: every frame header also carries the source's link counters (``FrameHeader.link``: reconnects,
outages, seconds of outage, down) for the mask header and the live view, and the camera's own capture
time when the source knows it (``ts.camera``, RTSP), from which the overlay measures glass-to-output
latency. Whatever leaves this stage that names the source goes through ``stream.redact``.

RGB-D (``depth``): each colour frame is paired with a depth frame (stream.sources.depth_pairing: by index
or by timestamp within a tolerance); the depth image goes into the slot's depth region beside the frame
(``FrameHeader.depth`` says its shape) or inline where there is no ring or it does not fit, and a replay
re-sends it as it does the frame. A colour frame without depth is counted as ``unpaired_depth``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from stream import headers as H
from stream.redact import redact
from stream.stages.base import Declares, Stage, StageConfig


@dataclass
class CaptureConfig(StageConfig):
    source: str = ""
    live: bool | None = None  # None: as the source says
    max_frames: int | None = None
    slots: int = 8
    reorder_timeout_s: float = 0.5
    want: list[str] = field(default_factory=list)  # maps this stream's sinks need (FrameHeader.want)
    depth: str | None = None  # RGB-D: the depth source URI (stream.sources.depth)
    depth_pairing: str = "index"  # index | timestamp
    depth_tolerance_ms: float = 20.0  # timestamp pairing: the farthest a depth frame may be from its colour


PRIME_WAIT_S = 1.0  # a live source's longest wait for the overlay to be primed before it reads


class CaptureStage(Stage):
    stage = "capture"
    # a live capture reopens its source; a file's cannot resume mid-file
    declares = Declares("source", True, ("acks",), ("frames",), "restart", "fatal")
    Config = CaptureConfig

    def setup(self) -> None:
        import zmq

        from stream.shm import SlotLedger
        from stream.sources.base import SourceError
        from stream.transport import open_socket
        from stream.uri import open_source

        self.source = open_source(self.cfg.source)
        try:
            self.info = self.source.open()
        except SourceError as e:
            self.report("fatal", message=redact(str(e)))
            raise
        self.live = self.info.live if self.cfg.live is None else self.cfg.live
        self.depth = None
        if self.cfg.depth is not None:  # RGB-D: depth frames paired with the colour frames
            from stream.sources.depth import open_depth
            from stream.sources.depth_pairing import DepthPairer

            self.depth = DepthPairer(
                open_depth(self.cfg.depth), self.cfg.depth_pairing, self.cfg.depth_tolerance_ms
            )
            try:
                self.depth.open(self.live, colour_timed=self.live or self.info.fps > 0 or self._has_pts())
            except SourceError as e:
                self.report("fatal", message=redact(str(e)))
                raise
        self.out = open_socket(self.zctx, self.ctx.endpoints["out"])
        self.acks = open_socket(self.zctx, self.ctx.endpoints["acks"])
        self.poller = zmq.Poller()
        self.poller.register(self.acks, zmq.POLLIN)
        if self.ctl_down is not None:
            self.poller.register(self.ctl_down, zmq.POLLIN)
        self.ledger = SlotLedger(self.ring.layout.slots) if self.ring else None
        self.inline_budget = self.cfg.slots  # frames in flight when there is no ring
        self.inline_out: dict[int, list[bytes]] = {}
        self.seq = self.ctx.seq_start
        self.eos_sent = False
        self.pending: list[list] = []  # messages the socket would not take yet (peer restarting)
        self.src_info = {
            "w": self.info.width,
            "h": self.info.height,
            "fps": self.info.fps,
            "live": self.live,
            "total": self._total(),
            "uri": redact(self.info.uri),
        }
        self.zmq = zmq
        self.stream = self.ctx.stream
        self.ring_ref = (
            (self.ring.name, *self.ring.layout.to_dict().values()) if self.ring is not None else ()
        )
        # what this stream's sinks need from infer besides class ids: carried in every header
        self.want = tuple(self.cfg.want)
        # frames wait until every stage is up (model loaded): start-up is not latency, and a live
        # source would only drop frames meanwhile. Standalone (no supervisor): go at once.
        self.go = self.ctl_down is None
        self.primed = False  # PRIME sent (stream.headers)
        self.prime_until: float | None = None  # live: frames wait (bounded) until the overlay is primed

    def _has_pts(self) -> bool:
        return hasattr(self.source, "last_pts")  # a video file: frames carry their PTS

    def colour_time(self, frame) -> float:
        """A colour frame's time for timestamp pairing: its arrival (live), its PTS (a video file), or
        index / fps (an image folder, the recorded synthetic pattern)."""
        if self.live:
            return frame.timestamp
        pts = getattr(self.source, "last_pts", None)
        if pts is not None:
            return float(pts)
        return frame.index / self.info.fps if self.info.fps > 0 else 0.0

    def _total(self) -> int | None:
        t = self.info.total_frames
        if self.cfg.max_frames is not None:
            t = self.cfg.max_frames if t is None else min(t, self.cfg.max_frames)
        return t

    def heartbeat_extra(self):
        if not hasattr(self, "src_info"):
            return {}
        st = self.source.stats
        return {
            "source": self.src_info,
            "sent": self.seq,
            # where a restarted capture continues: past every seq this one may have had in flight
            "resume_seq": self.seq + self.cfg.slots + 1,
            "eos": self.eos_sent,
            "decode_errors": st.decode_errors,
            "reconnects": st.reconnects,
            **({"link": st.link()} if self.live else {}),
        }

    # -- credits --------------------------------------------------------------------------------
    def drain_acks(self) -> None:
        while True:
            try:
                raw = self.acks.recv(self.zmq.NOBLOCK)
            except self.zmq.Again:
                return
            for s in raw.split(b","):
                if s == b"prime":  # the overlay is ready for our frames
                    if self.prime_until is not None:
                        waited = time.monotonic() - (self.prime_until - PRIME_WAIT_S)
                        self.metrics.extra["prime_wait_ms"] = round(waited * 1000, 1)
                        self.prime_until = None
                elif s:
                    seq = int(s)
                    if self.ledger is None or not self.ledger.ack(seq):
                        self.inline_out.pop(seq, None)

    def reclaim_stale(self) -> None:
        """Live only: a credit unacknowledged for long belongs to a frame that died with a stage
        (the overlay skips such gaps); take the slot back so the ring cannot run dry."""
        if self.ledger is None or not self.live:
            return
        limit = max(2.0, 4 * self.cfg.reorder_timeout_s)
        now = time.monotonic()
        for seq, (_slot, sent_at, _hdr) in list(self.ledger.out.items()):
            if now - sent_at > limit:
                self.ledger.ack(seq)
                self.metrics.extra["reclaimed"] = self.metrics.extra.get("reclaimed", 0) + 1

    def in_flight(self) -> int:
        return self.ledger.in_flight if self.ledger is not None else len(self.inline_out)

    def send(self, frames: list) -> None:
        self.pending.append(frames)
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                self.out.send_multipart(self.pending[0], self.zmq.NOBLOCK, copy=False)
            except self.zmq.Again:
                return
            self.pending.pop(0)

    def on_command(self, cmd) -> None:
        if cmd.get("cmd") == "go":
            self.go = True
        if cmd.get("cmd") == "replay" and not self.live:
            self.replay()

    def replay(self) -> None:
        self.pending.clear()
        if self.ledger is not None:
            for _seq, stored in self.ledger.unacked():
                self.pending.append(list(stored) if isinstance(stored, list) else [stored])
        else:
            for _seq, msg in sorted(self.inline_out.items()):
                self.pending.append(msg)
        if self.eos_sent:
            self.pending.append(
                H.encode(
                    H.FrameHeader(kind=H.EOS, stream=self.stream, seq=self.seq, ts={"capture": time.time()})
                )
            )
        self.metrics.extra["replays"] = self.metrics.extra.get("replays", 0) + 1
        self.flush()

    # -- main loop ------------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> None:
        self.poller.poll(int(timeout_s * 1000))

    def finish(self) -> None:
        hdr = H.FrameHeader(kind=H.EOS, stream=self.stream, seq=self.seq, ts={"capture": time.time()})
        hdr.source = self.src_info
        if self.source_failure is not None:
            # the reason rides with EOS too: the overlay's "done" may reach the supervisor before this
            # stage's own "fatal" (sent once every frame is acknowledged), and the run must not end as ok
            hdr.source = {**self.src_info, "error": redact(self.source_failure[0])}
        self.send(H.encode(hdr))
        self.eos_sent = True
        self.source.close()

    source_failure: tuple[str, float] | None = None  # (why, when) the source ended with an error

    def report_source_failure(self) -> None:
        """A failed source ends the run with its reason (non-zero exit), once the frames it delivered are
        written (all acknowledged) or after 10 s: the run must not look successful, nor lose output."""
        if self.source_failure is not None:
            why, since = self.source_failure
            if self.in_flight() == 0 or time.monotonic() - since > 10.0:
                self.report("fatal", message=redact(why))
                self.source_failure = None

    def step(self) -> None:
        self.drain_acks()
        self.reclaim_stale()
        self.flush()
        self.metrics.queue_depth = self.in_flight()
        for line in self.source.take_notices():  # reconnect attempts, a truncated file: to the terminal
            self.report("notice", message=redact(line))
        if self.live:  # per stream in --stats-json, also while no frame comes (an outage)
            self.metrics.source = {
                "stream": self.stream,
                "uri": self.src_info["uri"],
                **self.source.stats.link(),
            }
        if self.eos_sent:
            self.report_source_failure()
            self.wait(self.cfg.heartbeat_s)
            return
        if self.draining or (self.cfg.max_frames is not None and self.seq >= self.cfg.max_frames):
            self.finish()
            return
        if not self.go:
            self.wait(0.02)
            return
        if not self.primed:
            self.prime()
        if self.prime_until is not None:
            left = self.prime_until - time.monotonic()
            if left > 0:
                self.wait(min(left, self.cfg.heartbeat_s))
                return
            self.prime_until = None  # the overlay did not answer: frames go anyway (it opens on the first)
        has_credit = self.in_flight() < (self.ring.layout.slots if self.ring else self.inline_budget)
        if not has_credit and not self.live:
            self.wait(self.cfg.heartbeat_s)  # backpressure: wait for an ack
            return
        from stream.sources.base import ReadStatus

        frame = self.source.read(timeout=self.cfg.heartbeat_s)
        if frame.status is ReadStatus.TIMEOUT:
            return
        if frame.status is ReadStatus.ERROR:
            self.metrics.drop("decode_error")
            return
        if frame.status is ReadStatus.EOS:
            if frame.error:  # the source failed (reconnect budget spent, connection lost)
                self.source_failure = (frame.error, time.monotonic())
            self.finish()
            return
        self.metrics.frames_in += 1
        if self.source.stats.dropped:  # the source's own newest-wins drops
            self.metrics.drops["source"] = self.source.stats.dropped
        self.drain_acks()
        has_credit = self.in_flight() < (self.ring.layout.slots if self.ring else self.inline_budget)
        if not has_credit:  # live only: the pipeline is full, this frame loses
            self.metrics.drop("capture_busy")
            return
        with self.metrics.busy():
            depth = None
            if self.depth is not None:
                from stream.sources.base import SourceError

                try:
                    depth = self.depth.pair(frame.index, self.colour_time(frame))
                except SourceError as e:  # a depth file that is no depth image, a decode error: the run
                    self.source_failure = (str(e), time.monotonic())  # fails in one line, outputs kept
                    self.finish()
                    return
                self.metrics.extra["depth_paired"] = self.depth.paired
                if depth is None:  # the model cannot take a colour frame alone
                    self.metrics.drop("unpaired_depth")
                    return
            self.emit(frame.image, frame.index, frame.timestamp or time.time(), frame.camera_time, depth)

    def prime(self) -> None:
        """Tell the stages downstream the frame size before the first frame, so the first-frame work of
        each (ring attach, kernel set-up, opening sinks: 5-7 ms per stage measured on 2 cores) is done
        before any frame waits on it. At 2/3 of the machine's pace such a hiccup takes several frames
        to drain: on a live source it was the p99. A live source waits for the overlay's answer (at most
        PRIME_WAIT_S) before it reads; a file's frames simply queue behind it."""
        self.primed = True
        w, h = int(self.src_info.get("w") or 0), int(self.src_info.get("h") or 0)
        if w <= 0 or h <= 0:  # size unknown until the first frame: nothing to warm up on
            return
        hdr = H.FrameHeader(
            kind=H.PRIME,
            stream=self.stream,
            seq=self.seq,
            shape=(h, w, 3),
            dtype="uint8",
            ring=self.ring_ref,
            want=self.want,
            ts={"capture": time.time()},
        )
        hdr.source = self.src_info
        self.send(H.encode(hdr))
        if self.live:
            self.prime_until = time.monotonic() + PRIME_WAIT_S

    def emit(
        self,
        image: np.ndarray,
        index: int,
        t_capture: float,
        camera_time: float | None = None,
        depth: np.ndarray | None = None,
    ) -> None:
        hdr = H.FrameHeader(
            stream=self.stream,
            seq=self.seq,
            index=index,
            shape=tuple(image.shape),
            dtype=str(image.dtype),
            ring=self.ring_ref,
            want=self.want,
        )
        hdr.ts["source"] = t_capture
        if camera_time is not None:
            hdr.ts["camera"] = camera_time
        hdr.source = self.src_info
        if self.live:
            hdr.link = self.source.stats.link()
        hdr.drops = dict(self.metrics.drops)
        slot = self.ledger.take() if self.ledger is not None else None
        # RGB-D: the paired depth image goes into the slot's depth region beside the frame, or inline
        # where it does not fit (no ring, no depth region, a larger depth image than the ring was sized for)
        parts = {}
        if depth is not None:
            if slot is not None and self.ring.fits("depth", depth.nbytes):
                self.ring.write(slot, "depth", np.ascontiguousarray(depth, dtype=np.uint16))
                hdr.depth = (tuple(depth.shape), "<u2")
                where = "depth_in_ring"
            else:
                parts["depth"] = depth
                where = "depth_inline"
            self.metrics.extra[where] = self.metrics.extra.get(where, 0) + 1  # how depth travels, counted
        if slot is not None:
            # every frame takes a slot (its credit, and the room for its prepared input); a frame larger
            # than the slot's frame region (the source changed size, or the ring was sized without a
            # probe) travels inline and the whole message is kept for a replay
            hdr.slot = slot
            if self.ring.fits("frame", image.nbytes):
                self.ring.write(slot, "frame", np.ascontiguousarray(image))
                hdr.stamp("capture")
                msg = H.encode(hdr, parts)
                # a replay needs the inline depth too: keep the whole message then
                self.ledger.sent(self.seq, slot, [bytes(m) for m in msg] if parts else bytes(msg[0]))
            else:
                hdr.stamp("capture")
                msg = H.encode(hdr, {"frame": image, **parts})
                self.ledger.sent(self.seq, slot, [bytes(m) for m in msg])
                self.metrics.extra["inline"] = self.metrics.extra.get("inline", 0) + 1
        else:
            hdr.stamp("capture")
            msg = H.encode(hdr, {"frame": image, **parts})
            # keep the whole message: a replay needs the pixels too
            self.inline_out[self.seq] = [bytes(m) for m in msg]
        self.send(msg)
        self.seq += 1
        self.metrics.frames_out += 1

    def teardown(self) -> None:
        if hasattr(self, "source"):
            self.source.close()
        if getattr(self, "depth", None) is not None:
            self.depth.close()
