"""infer: batch what is ready (up to the model's max batch, never waiting past a small deadline),
run the runtime, emit one message per frame with its class-id mask (model size, uint8) inline.

Inputs come from the ring slot named in the header (same host) or inline (tcp, another host).
Several infer workers may pull from one preprocess PUSH socket: ZeroMQ load-balances them, and
the overlay stage puts frames back in seq order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stream import headers as H
from stream.shm import ShmError
from stream.stages.base import Declares, Stage, StageConfig


@dataclass
class InferConfig(StageConfig):
    model: str = ""
    device: str = "auto"
    threads: int | None = None
    batch: int | None = None  # None: the model's max batch
    batch_deadline_ms: float = 5.0
    infer_mode: str = "scaled"


class InferStage(Stage):
    stage = "infer"
    # restarted; frames it held are replayed by file captures (lossless)
    declares = Declares(
        "worker", False, ("inputs",), ("results",), "restart-and-replay", "restart-and-replay"
    )
    Config = InferConfig

    def setup(self) -> None:
        import zmq

        from engines.runtime import backend_for, load
        from stream.transport import open_socket, parse_endpoint

        # ONNX Runtime threads that spin steal the cores the other stages need (FACTS.md)
        opts = {"spin": False} if backend_for(self.cfg.model) == "onnxruntime" else {}
        self.runtime = load(self.cfg.model, device=self.cfg.device, threads=self.cfg.threads, **opts)
        # on the CPU a batch is no cheaper per frame than single frames (stream.cpus; README "Inference":
        # 99.8 fps at batch 1, 103 at batch 4), while its arena grows with it: measured, an infer worker
        # that batched four streams' frames held 485 MiB against 86 MiB at batch 1, and frames waited for
        # their batch. So the CPU default is 1 (--batch N still asks for more); GPUs batch to the model's max.
        default = 1 if self.runtime.device == "cpu" else self.runtime.max_batch
        self.max_batch = max(1, min(self.cfg.batch or default, self.runtime.max_batch))
        # what a frame asks for (confidence, entropy, margin) comes in its header (capture sets it from
        # the stream's sinks): a remote worker, which knows no sink, computes the same as a local one
        from stream.stages.preprocess import feed_hwm

        # short: what waits for a worker waits in preprocess, where it is scheduled fairly across streams
        self.inp = open_socket(self.zctx, self.ctx.endpoints["in"], hwm=feed_hwm(self.cfg, self.ctx.model))
        self.attach_rings = parse_endpoint(self.ctx.endpoints["in"]).is_local
        # results go to the overlay of the frame's stream: an endpoint with {stream} is one socket per
        # stream, connected on the stream's first frame (streams come and go while the run goes on)
        self.out_spec = self.ctx.endpoints["out"]
        self.outs: dict[str, object] = {}
        self.out = None if "{stream}" in self.out_spec else open_socket(self.zctx, self.out_spec)
        self.poller = zmq.Poller()
        self.poller.register(self.inp, zmq.POLLIN)
        self.zmq = zmq
        self.batches = 0
        self.tiles = 0  # tiled mode: model-size tiles inferred
        self.warm_up()
        self.report(
            "ready", backend=self.runtime.backend, device=self.runtime.device, max_batch=self.max_batch
        )

    def warm_up(self) -> None:
        """Run the model once per batch size we will use before saying we are ready: the first
        calls allocate, JIT and autotune (about 2 s on CUDA), and that must not land on frames."""

        # on the CPU a batch-1 call is all the warming there is (allocations); a max-batch warm-up there
        # costs 8-16 frames of inference (0.3-0.5 s on 2 cores) of start-up for nothing. A session with a
        # thread pool needs three: measured on 2 cores, after one blank call the first real frames took
        # 14-17 ms against 8 ms steady (a live run's p99 was its first frames), after three 8 ms at once
        if self.runtime.device == "cpu":
            # the runtime's own blank test call at load (ONNX Runtime's) counts as the first
            done = int(getattr(self.runtime, "blank_runs", 0))
            sizes, rounds = {1}, max(0, (1 if self.cfg.threads == 1 else 3) - done)
        else:
            # every power of two up to the max: a CUDA-graph runtime captures one graph per such bucket
            # (engines.runtime.torch), which must not happen on a frame
            sizes = {1 << k for k in range(self.max_batch.bit_length()) if 1 << k <= self.max_batch}
            sizes, rounds = sizes | {self.max_batch}, 2
        for n in sorted(sizes):
            for _ in range(rounds):
                self.runtime.run(self.blank_batch(n))

    def blank_batch(self, n: int):
        """A prepared batch of ``n`` black frames (and depth images, for an RGB-D model)."""
        from engines.runtime.inputs import is_rgbd

        h, w = self.runtime.input_hw()
        rgbd = is_rgbd(self.runtime.meta)  # colour + a depth image per frame (engines.runtime.inputs)
        blank = np.zeros((h, w, 3 if rgbd else self.runtime.meta.channels), np.uint8)
        depth = [np.zeros((h, w), np.uint16)] * n if rgbd else None
        return self.runtime.prepare([blank] * n, depth=depth)

    def prime(self, hdr: H.FrameHeader) -> None:
        """A stream's frames are coming (stream.headers.PRIME). If they will ask for confidence (a sink
        reads it, or tiles blend by it), have the runtime build its whole-graph session now: the ONNX
        Runtime backend runs the graph without confidence until a frame asks (engines.runtime.prune),
        and building a session on a frame would hold that frame 50-150 ms."""
        wants = "confidence" in hdr.want or hdr.tiles is not None
        if wants and getattr(self.runtime, "has_confidence", False):
            for _ in range(1 if self.runtime.device != "cpu" or self.cfg.threads == 1 else 3):
                self.runtime.run(self.blank_batch(1), confidence=True)

    def heartbeat_extra(self):
        extra = {"batches": getattr(self, "batches", 0), "max_batch": getattr(self, "max_batch", 0)}
        if getattr(self, "tiles", 0):
            extra["tiles"] = self.tiles
        return extra

    def gather(self) -> list:
        if not self.poller.poll(int(self.cfg.heartbeat_s * 1000)):
            return []
        batch = []
        deadline = None
        while len(batch) < self.max_batch:
            item = self._recv()
            if item is None:
                if not batch or self.max_batch == 1:
                    break
                live = bool(batch[0][0].source.get("live"))
                if live or self.cfg.batch_deadline_ms <= 0 or self.runtime.device == "cpu":
                    # live: what is ready goes now; waiting only adds latency. CPU: a batch costs the same
                    # per frame as single frames, so batch only what is already queued (infer behind)
                    break
                if deadline is None:
                    deadline = time.monotonic() + self.cfg.batch_deadline_ms / 1000.0
                left = deadline - time.monotonic()
                if left <= 0 or not self.poller.poll(max(1, int(left * 1000))):
                    break
                continue
            hdr, arrays = item
            if hdr.kind != H.FRAME:
                if hdr.kind == H.PRIME:
                    self.prime(hdr)
                self.emit(hdr, H.encode(hdr, {k: v for k, v in arrays.items() if k == "frame"}))
                continue
            try:
                x = self.input_of(hdr, arrays)
            except (H.HeaderError, ShmError, ValueError) as e:
                self.malformed(str(e))
                continue
            batch.append((hdr, arrays, x))
        return batch

    def _recv(self):
        try:
            frames = self.inp.recv_multipart(self.zmq.NOBLOCK, copy=False)
        except self.zmq.Again:
            return None
        try:
            return H.decode(frames)
        except H.HeaderError as e:  # the inputs port may be tcp: anything may arrive there
            self.malformed(str(e))
            return self._recv()

    def malformed(self, why: str) -> None:
        """A message that is no frame of ours: counted, logged (the first few), dropped; the run goes on."""
        n = self.metrics.extra["malformed"] = self.metrics.extra.get("malformed", 0) + 1
        if n <= 5:
            print(f"{self.ctx.name}: dropped a malformed message: {why}", flush=True)

    def emit(self, hdr: H.FrameHeader, msg: list) -> None:
        """Send a result to its stream's overlay (one socket per stream, or the one --out of a worker)."""
        if self.out_spec and "{stream}" in self.out_spec:
            from stream.streams import ID_RE
            from stream.transport import open_socket

            sock = self.outs.get(hdr.stream)
            if sock is None:
                if not ID_RE.match(hdr.stream):
                    self.malformed(f"stream id {hdr.stream[:40]!r} is not a stream of this run")
                    return
                sock = self.outs[hdr.stream] = open_socket(
                    self.zctx, self.out_spec.replace("{stream}", hdr.stream)
                )
            # credits keep a live overlay's queue far below the HWM: a send that does not go through for
            # a while means that stream's overlay is gone (ended, restarting); its frames must not hold up
            # every other stream's
            end = time.monotonic() + 2.0
            while not self.stopping:
                try:
                    sock.send_multipart(msg, self.zmq.NOBLOCK, copy=False)
                    return
                except self.zmq.Again:
                    if time.monotonic() > end:
                        self.metrics.drop("undeliverable")
                        return
                    time.sleep(0.002)
                    self.heartbeat()
                    self.poll_control()
            return
        self.send_out(msg)

    def on_command(self, cmd) -> None:
        if cmd.get("cmd") == "forget":  # a stream was removed: drop its socket and ring
            sock = self.outs.pop(str(cmd.get("stream")), None)
            if sock is not None:
                sock.close(0)
            if cmd.get("ring"):
                self.forget_ring(str(cmd["ring"]))

    def input_of(self, hdr: H.FrameHeader, arrays: dict) -> np.ndarray:
        if "input" in arrays:
            return arrays["input"]
        ring = self.ring_for(hdr)
        if ring is None or not hdr.input:
            raise H.HeaderError(f"seq {hdr.seq}: no model input (no slot, nothing inline)")
        shape, dtype = hdr.input
        return ring.view(hdr.slot, "input", tuple(shape), dtype)

    def step(self) -> None:
        batch = self.gather()
        if not batch:
            return
        from engines.runtime.inputs import unpack

        with self.metrics.busy():
            self.metrics.frames_in += len(batch)
            self.metrics.queue_depth = len(batch)
            inputs = [x for _, _, x in batch]
            batch = [(h, a) for h, a, _ in batch]
            # what any frame of the batch asks for is made for the batch; each frame gets what it asked
            want = {w for h, _ in batch for w in h.want}
            self.confidence = "confidence" in want
            self.maps = tuple(sorted(want - {"confidence"}))
            maps: dict = {}
            overlap = batch[0][0].tiles  # set by preprocess for a tiled run's frames
            if overlap is not None:
                ids, conf = self.run_tiled(batch, inputs, float(overlap))
            else:
                # one frame: a view of its ring slot is already a contiguous batch of 1, no copy; an RGB-D
                # model's inputs come packed (stream.stages.preprocess) and go to the runtime as
                # {"image", "depth"} views of it
                x = unpack(inputs[0][None] if len(inputs) == 1 else np.stack(inputs), self.runtime.meta)
                if self.maps:
                    ids, maps = self.runtime.run_maps(x, self.maps + ("confidence",) * self.confidence)
                    conf = maps.pop("confidence", None)
                else:
                    ids, conf = self.runtime.run(x, confidence=self.confidence)
                self.batches += 1
            for i, (hdr, arrays) in enumerate(batch):
                hdr.stamp("infer")
                hdr.input = ()
                parts = {"mask": ids[i]}
                if conf is not None and "confidence" in hdr.want:
                    parts["confidence"] = conf[i]
                for name, m in maps.items():
                    if name in hdr.want:
                        parts[name] = m[i]
                for k in ("frame", "depth"):  # no ring: the frame (and RGB-D depth) ride along to the overlay
                    if k in arrays:
                        parts[k] = arrays[k]
                self.emit(hdr, H.encode(hdr, parts))
                self.metrics.frames_out += 1

    def run_tiled(self, batch: list, inputs: list[np.ndarray], overlap: float) -> tuple[list, list | None]:
        """Tiled mode: each input is the uint8 frame at the run's scale; its model-size tiles (of all
        frames in the batch together) go through the runtime in batches of up to max_batch and are
        blended back (engines.tiling); masks come out at each frame's full size."""
        from engines.tiling import infer_tiled, to_size

        w, h = self.runtime.meta.input_size
        # the blend weighs each tile's vote by its confidence: ask for it whenever the model has it
        want = bool(getattr(self.runtime, "has_confidence", True))

        def run_tiles(tiles: list[np.ndarray]):
            self.batches += 1
            self.tiles += len(tiles)
            return self.runtime.run(self.runtime.prepare(tiles), confidence=want)

        k = self.runtime.meta.classes.num_classes
        res = infer_tiled(inputs, (h, w), k, run_tiles, self.max_batch, overlap)
        # back to the frame's own size when the tiles were cut from a resized frame (infer_scale)
        out = [
            to_size(m, c, tuple(hdr.shape[:2]) if hdr.shape else m.shape)
            for (m, c), (hdr, _) in zip(res, batch, strict=True)
        ]
        return [m for m, _ in out], ([c for _, c in out] if self.confidence else None)

    def teardown(self) -> None:
        if hasattr(self, "runtime"):
            self.runtime.close()
