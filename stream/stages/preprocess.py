"""preprocess: frame in its ring slot -> model input (resize, normalize, layout).

The input goes into the same slot's input region (same host) or inline in the message when an
infer worker may be on another host (tcp) or there is no ring. Runtimes that normalize on their own
device (``wants_uint8``) get resized uint8 frames, four times fewer bytes than float32.
"""

from __future__ import annotations

from stream import headers as H
from stream.stages.base import Stage


def frame_of(ring, hdr: H.FrameHeader, arrays: dict):
    """The frame a header refers to: its ring slot (no copy) or the inline part."""
    if "frame" in arrays:
        return arrays["frame"]
    if ring is None or hdr.slot < 0:
        raise H.HeaderError(f"seq {hdr.seq}: no frame (no slot, nothing inline)")
    return ring.view(hdr.slot, "frame", hdr.shape, hdr.dtype)


class PreprocessStage(Stage):
    stage = "preprocess"

    def setup(self) -> None:
        import zmq

        from engines.meta import ModelMeta
        from stream.transport import open_socket, parse_endpoint

        self.meta = ModelMeta.from_json(self.ctx.model["meta"])
        self.uint8 = bool(self.ctx.model.get("wants_uint8", False))
        self.inp = open_socket(self.zctx, self.ctx.endpoints["in"])
        self.out = open_socket(self.zctx, self.ctx.endpoints["out"])
        if self.ctx.endpoints.get("out_remote"):  # tcp workers share the same PUSH (load-balanced)
            self.out.bind(parse_endpoint(self.ctx.endpoints["out_remote"], "push", True).address)
        self.inline = bool(self.cfg.remote_infer) or self.ring is None
        self.poller = zmq.Poller()
        self.poller.register(self.inp, zmq.POLLIN)
        self.warm_up()

    def warm_up(self) -> None:
        """The first resize/blob call initializes OpenCV's kernels (tens of ms); do it before this stage
        reports in, so capture is not told to start until it would land on no frame."""
        import numpy as np

        from engines.runtime.preprocess import prepare_batch

        w, h = self.meta.input_size
        prepare_batch([np.zeros((h * 3 // 2, w * 3 // 2, 3), np.uint8)], self.meta, uint8=self.uint8)

    def step(self) -> None:
        from engines.runtime.preprocess import prepare_batch

        for frames in self.incoming(self.cfg.heartbeat_s):
            with self.metrics.busy():
                hdr, arrays = H.decode(frames)
                if hdr.kind != H.FRAME:
                    self.send_out(H.encode(hdr))
                    continue
                self.metrics.frames_in += 1
                batch = prepare_batch([frame_of(self.ring, hdr, arrays)], self.meta, uint8=self.uint8)
                x = batch[0]
                hdr.stamp("preprocess")
                # a frame that came inline is in no slot: it rides along so the overlay stage gets it
                keep = {"frame": arrays["frame"]} if "frame" in arrays else {}
                if not self.inline and self.ring.fits("input", x.nbytes):
                    self.ring.write(hdr.slot, "input", x)
                    hdr.extra["in"] = [list(x.shape), x.dtype.str]
                    msg = H.encode(hdr, keep)
                else:
                    hdr.extra.pop("in", None)
                    msg = H.encode(hdr, {**keep, "input": x})
                self.send_out(msg)
                self.metrics.frames_out += 1
