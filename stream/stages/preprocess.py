"""preprocess: frame in its ring slot -> model input (resize, normalize, layout).

The input goes into the same slot's input region (same host) or inline in the message when an
infer worker may be on another host (tcp) or there is no ring. Runtimes that normalize on their own
device (``wants_uint8``) get resized uint8 frames, four times fewer bytes than float32.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream import headers as H
from stream.stages.base import Declares, Stage, StageConfig

if TYPE_CHECKING:
    import numpy as np

    from engines.meta import ModelMeta


@dataclass
class PreprocessConfig(StageConfig):
    batch: int | None = None
    remote_infer: list[str] = field(default_factory=list)  # workers elsewhere: inputs travel inline
    infer_mode: str = "scaled"
    infer_scale: float = 1.0
    tile_overlap: float = 0.25
    adaptive: bool = False


def feed_hwm(cfg, model: dict | None) -> int:
    """Messages queued per infer worker connection, each side (a connection holds about twice this): enough
    for the batches asked for with --batch, else 1 (the CPU batches only what is queued anyway, and every
    frame queued past preprocess is one a live stream waits behind)."""
    return max(1, min(-(-(cfg.batch or 1) // 2), 16))


def prepare_rgbd_packed(frame: np.ndarray, depth_mm: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """An RGB-D model's two inputs for one frame (``image`` 3 x H x W, ``depth`` 1 x H x W, float32,
    engines.depth.prepare_rgbd), packed into one 4 x H x W array for the ring slot or the message: the
    infer stage unpacks them (views, no copy) and hands the runtime both (engines.runtime.inputs)."""
    from engines.depth import prepare_rgbd
    from engines.runtime.inputs import pack

    return pack(prepare_rgbd([frame], [depth_mm], meta), meta)[0]


def frame_of(ring, hdr: H.FrameHeader, arrays: dict):
    """The frame a header refers to: its ring slot (no copy) or the inline part."""
    if "frame" in arrays:
        return arrays["frame"]
    if ring is None or hdr.slot < 0:
        raise H.HeaderError(f"seq {hdr.seq}: no frame (no slot, nothing inline)")
    return ring.view(hdr.slot, "frame", hdr.shape, hdr.dtype)


class PreprocessStage(Stage):
    stage = "preprocess"
    # restarted; frames it held are replayed by file captures (lossless)
    declares = Declares("worker", False, ("frames",), ("inputs",), "restart-and-replay", "restart-and-replay")
    Config = PreprocessConfig

    def setup(self) -> None:
        import zmq

        from engines.meta import ModelMeta
        from stream.transport import open_socket, parse_endpoint

        self.meta = ModelMeta.from_json(self.ctx.model["meta"])
        self.uint8 = bool(self.ctx.model.get("wants_uint8", False))
        self.inp = open_socket(self.zctx, self.ctx.endpoints["in"])
        # a short queue to the infer workers: frames wait here instead, in one queue per stream, and go
        # out round-robin across streams as a worker has room (a fast file cannot starve a live camera)
        self.out = open_socket(self.zctx, self.ctx.endpoints["out"], hwm=feed_hwm(self.cfg, self.ctx.model))
        self.queues: dict[str, deque] = {}  # per stream: (model generation, message, is a frame)
        # a model swap (stream.swap): each generation of infer workers pulls from its own socket, so every
        # frame goes to the workers of the model it was prepared for; the old socket stays open (lingering
        # frames still reach the old workers) until the supervisor retires that generation
        self.gen = 0
        self.outs = {0: self.out}
        self.sent = {0: 0}  # frames sent per generation
        self.drained_told: set[int] = set()
        self.queued = 0
        self.last_fed = ""
        self.monitor = None
        self.remote: dict | None = None
        self._peers: set[int] = set()  # tcp connections (by fd) of the remote infer workers
        if self.ctx.endpoints.get("out_remote"):  # tcp workers share the same PUSH (load-balanced)
            address = parse_endpoint(self.ctx.endpoints["out_remote"], "push", True).address
            # a worker that vanishes takes the frames it was handed with it: watch connections so the
            # supervisor can have capture re-send them; ZMTP heartbeats find a peer whose host went away
            # without closing the connection
            self.monitor = self.out.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            self.out.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            self.out.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            self.out.bind(address)
            self.remote = {"endpoint": address, "connected": 0, "lost": 0}
        self.inline = bool(self.cfg.remote_infer)
        self.adaptive = None
        if self.cfg.adaptive:  # live sources: input size follows the drops (stream.adaptive)
            from stream.adaptive import AdaptiveInput

            self.adaptive = AdaptiveInput(self.meta)
        self.poller = zmq.Poller()
        self.poller.register(self.inp, zmq.POLLIN)
        self.feed_poller = zmq.Poller()  # with frames queued: wake on input, on room downstream, on control
        self.feed_poller.register(self.inp, zmq.POLLIN)
        self.feed_poller.register(self.out, zmq.POLLOUT)
        if self.ctl_down is not None:
            self.feed_poller.register(self.ctl_down, zmq.POLLIN)
        self.zmq = zmq
        self.warm_up()

    def warm_up(self) -> None:
        """The first resize/blob call initializes OpenCV's kernels (tens of ms); do it before this stage
        reports in, so capture is not told to start until it would land on no frame."""
        import numpy as np

        from engines.runtime.preprocess import prepare_batch

        w, h = self.meta.input_size
        blank = np.zeros((h * 3 // 2, w * 3 // 2, 3), np.uint8)
        from engines.runtime.inputs import is_rgbd

        if is_rgbd(self.meta):  # RGB-D: colour + depth (engines.depth)
            prepare_rgbd_packed(blank, np.zeros(blank.shape[:2], np.uint16), self.meta)
            return
        prepare_batch([blank], self.meta, uint8=self.uint8)

    def on_command(self, cmd) -> None:
        if cmd.get("cmd") == "forget" and cmd.get("ring"):  # a removed stream's ring: detach it
            self.forget_ring(str(cmd["ring"]))
        elif cmd.get("cmd") == "model_prepare":
            self.prepare_gen(int(cmd["gen"]))
        elif cmd.get("cmd") == "model_switch":
            self.switch_gen(int(cmd["gen"]), cmd["model"])
        elif cmd.get("cmd") == "model_retired":
            sock = self.outs.pop(int(cmd["gen"]), None)
            if sock is not None and int(cmd["gen"]) != self.gen:
                sock.close(0)

    def gen_endpoint(self, gen: int) -> str:
        from stream.swap import gen_endpoint

        return gen_endpoint(self.ctx.endpoints["out"], gen)

    def prepare_gen(self, gen: int) -> None:
        """Bind the new generation's socket before its workers connect (no reconnect delay at the switch)."""
        from stream.transport import open_socket

        if gen in self.outs or gen <= self.gen:
            return  # repeated command
        sock = open_socket(self.zctx, self.gen_endpoint(gen), hwm=feed_hwm(self.cfg, self.ctx.model))
        self.outs[gen] = sock
        self.sent[gen] = 0

    def switch_gen(self, gen: int, model: dict) -> None:
        """From the next frame on, prepare for the new model and send to its workers."""
        from engines.meta import ModelMeta

        if gen <= self.gen:
            self.report("model_switched", gen=gen)  # repeated command: say so again, change nothing
            return
        self.prepare_gen(gen)
        self.meta = ModelMeta.from_json(model["meta"])
        self.uint8 = bool(model.get("wants_uint8", False))
        if self.adaptive is not None:
            from stream.adaptive import AdaptiveInput

            self.adaptive = AdaptiveInput(self.meta)
        self.feed_poller.register(self.outs[gen], self.zmq.POLLOUT)
        self.gen = gen
        self.report("model_switched", gen=gen)

    def check_drained(self) -> None:
        """An older generation with nothing left to send: tell the supervisor how many frames it got, so
        that its workers are stopped once they answered every one of them."""
        for gen in list(self.outs):
            if gen >= self.gen or gen in self.drained_told:
                continue
            if any(g == gen for q in self.queues.values() for g, _, _ in q):
                continue
            self.drained_told.add(gen)
            try:
                self.feed_poller.unregister(self.outs[gen])
            except KeyError:
                pass
            self.report("gen_drained", gen=gen, sent=self.sent[gen])

    def poll_control(self) -> list:
        self.poll_monitor()
        return super().poll_control()

    def poll_monitor(self) -> None:
        """Count the remote workers connected; report each one that goes away at once."""
        if self.monitor is None:
            return
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if not bytes(ev.get("endpoint") or b"").startswith(b"tcp://"):
                continue  # local workers are the supervisor's to watch
            fd = int(ev["value"])
            if ev["event"] == zmq.EVENT_ACCEPTED:
                self._peers.add(fd)
            elif ev["event"] == zmq.EVENT_DISCONNECTED and fd in self._peers:
                self._peers.discard(fd)
                self.remote["lost"] += 1
                self.report("peer_lost", endpoint=self.remote["endpoint"], connected=len(self._peers))
            self.remote["connected"] = len(self._peers)

    def heartbeat_extra(self) -> dict:
        return {"remote": dict(self.remote)} if getattr(self, "remote", None) else {}

    def step(self) -> None:
        if self.queued:  # frames wait for room downstream: wake on that, on new input, on control
            self.feed_poller.poll(int(self.cfg.heartbeat_s * 1000))
        for frames in self.incoming(0 if self.queued else self.cfg.heartbeat_s):
            with self.metrics.busy():
                self.take(frames)
        self.feed()
        if self.gen:
            self.check_drained()
        self.metrics.queue_depth = self.queued

    def feed(self) -> None:
        """Round-robin across streams with frames waiting, while the infer workers have room."""
        while self.queued:
            ids = [sid for sid, q in self.queues.items() if q]
            after = [sid for sid in ids if sid > self.last_fed]
            sid = min(after) if after else min(ids)
            gen, msg, is_frame = self.queues[sid][0]
            try:
                self.outs[gen].send_multipart(msg, self.zmq.NOBLOCK, copy=False)
            except self.zmq.Again:
                return
            self.queues[sid].popleft()
            self.queued -= 1
            self.sent[gen] += is_frame
            self.last_fed = sid

    def enqueue(self, stream: str, msg: list, is_frame: bool = False) -> None:
        self.queues.setdefault(stream, deque()).append((self.gen, msg, is_frame))
        self.queued += 1

    def take(self, frames: list) -> None:
        from engines.runtime.preprocess import prepare_batch
        from engines.tiling import work_image
        from stream.shm import ShmError, depth_of

        try:
            hdr, arrays = H.decode(frames)
            if hdr.kind != H.FRAME:
                if hdr.kind == H.PRIME:
                    self.prime(hdr)
                    if self.cfg.infer_mode == "tiled":  # infer then readies what tiles need
                        hdr.tiles = self.cfg.tile_overlap
                self.enqueue(hdr.stream, H.encode(hdr))
                return
            ring = self.ring_for(hdr)
            frame = frame_of(ring, hdr, arrays)
            if hdr.depth:  # RGB-D: capture put the paired depth into the slot's depth region
                arrays["depth"] = depth_of(ring, hdr, arrays)
        except (H.HeaderError, ShmError, ValueError) as e:
            self.malformed(str(e))
            return
        self.metrics.frames_in += 1
        if self.cfg.infer_mode == "tiled":
            # tiled: infer cuts model-size tiles from the uint8 frame at the run's scale; the
            # header says so, so any infer worker (remote ones too) knows what it received
            x = work_image(frame, self.meta.input_size[::-1], self.cfg.infer_scale)
            hdr.tiles = self.cfg.tile_overlap
        elif "depth" in arrays:  # RGB-D: the paired depth image, normalized as in training
            x = prepare_rgbd_packed(frame, arrays["depth"], self.meta)
        elif self.adaptive is not None:
            meta = self.adaptive.meta_for(sum(hdr.drops.values()))
            x = prepare_batch([frame], meta, uint8=self.uint8)[0]
            hdr.infer_size = tuple(meta.input_size)
            self.metrics.extra["adaptive"] = self.adaptive.stats()
        else:
            x = prepare_batch([frame], self.meta, uint8=self.uint8)[0]
        hdr.stamp("preprocess")
        hdr.gen = self.gen
        # a frame that came inline (no ring, or too large for its slot) rides along to the overlay
        keep = {"frame": arrays["frame"]} if "frame" in arrays else {}
        if "depth" in arrays and not hdr.depth:  # RGB-D depth that came inline rides along too (zmq-pub)
            keep["depth"] = arrays["depth"]
        if not self.inline and ring is not None and hdr.slot >= 0 and ring.fits("input", x.nbytes):
            ring.write(hdr.slot, "input", x)
            hdr.input = (tuple(x.shape), x.dtype.str)
            msg = H.encode(hdr, keep)
        else:
            hdr.input = ()
            if self.inline:
                hdr.ring = ()  # a worker on another host cannot attach it; the overlay has its own
            msg = H.encode(hdr, {**keep, "input": x})
        self.enqueue(hdr.stream, msg, is_frame=True)
        self.metrics.frames_out += 1

    def prime(self, hdr: H.FrameHeader) -> None:
        """A stream's frames are coming (stream.headers.PRIME): attach its ring and run the resize on its
        frame size once, so its first frame finds both ready."""
        import numpy as np

        from engines.runtime.inputs import is_rgbd
        from engines.runtime.preprocess import prepare_batch

        self.ring_for(hdr)  # HeaderError / ShmError: counted as malformed by take(), like a frame's
        if len(hdr.shape) == 3 and self.cfg.infer_mode == "scaled" and not is_rgbd(self.meta):
            prepare_batch([np.zeros(hdr.shape, np.uint8)], self.meta, uint8=self.uint8)

    def malformed(self, why: str) -> None:
        """A message that is no frame of ours (or names a ring that is gone): count, log, drop, go on."""
        n = self.metrics.extra["malformed"] = self.metrics.extra.get("malformed", 0) + 1
        if n <= 5:
            print(f"preprocess: dropped a malformed message: {why}", flush=True)
