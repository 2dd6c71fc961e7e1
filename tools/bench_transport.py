"""How fast can one process hand frames to another? ZeroMQ copy vs zero-copy vs the shm ring.

    python tools/bench_transport.py [--seconds 2] [--sizes 720p,1080p] [--slots 4]

Each mode runs a sender and a receiver in two processes for ``--seconds`` and prints frames/s,
GB/s and the ratio to ZeroMQ ipc copy=True. The receiver touches every frame it gets (a strided
sum) so nothing is measured that a real stage would not pay. The shm ring mode sends only a header
over ZeroMQ ipc and gets credits back, exactly as the pipeline does.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"480p": (480, 640), "720p": (720, 1280), "1080p": (1080, 1920)}
MODES = ("zmq-ipc-copy", "zmq-ipc-zerocopy", "zmq-tcp-zerocopy", "shm-ring+zmq-ipc")


def _touch(frame: np.ndarray) -> int:
    return int(frame[::97, ::89].sum())


def receiver(mode: str, addr: str, ack_addr: str, shape, ring_name, layout, ready, result) -> None:
    import zmq

    from stream import headers as H
    from stream.shm import FrameRing, RingLayout
    from stream.transport import open_socket

    ctx = zmq.Context()
    pull = open_socket(ctx, "pull+connect:" + addr, hwm=8)
    acks = open_socket(ctx, "push+connect:" + ack_addr, hwm=1000) if ring_name else None
    ring = FrameRing.attach(ring_name, RingLayout(**layout)) if ring_name else None
    ready.set()
    n = 0
    while True:
        parts = pull.recv_multipart(copy=False)
        hdr, arrays = H.decode(parts)
        if hdr.kind == H.EOS:
            break
        if ring is not None:
            _touch(ring.view(hdr.slot, "frame", hdr.shape, "uint8"))
            acks.send(str(hdr.seq).encode())
        else:
            _touch(arrays["frame"])
        n += 1
    result.put(n)
    if ring is not None:
        ring.close()
    ctx.destroy(linger=0)


def bench(mode: str, shape: tuple[int, int, int], seconds: float, slots: int) -> float:
    import zmq

    from stream import headers as H
    from stream.shm import FrameRing, RingLayout, SlotLedger
    from stream.transport import free_tcp_port, open_socket

    tmp = tempfile.mkdtemp(prefix="segstream-bench-")
    addr = f"tcp://127.0.0.1:{free_tcp_port()}" if "tcp" in mode else f"ipc://{tmp}/data"
    ack_addr = f"ipc://{tmp}/acks"
    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ring = ledger = None
    if mode.startswith("shm"):
        ring = FrameRing.create(RingLayout(slots=slots, frame_bytes=frame.nbytes, input_bytes=1), tag="bench")
        ledger = SlotLedger(slots)
    ctx = zmq.Context()
    push = open_socket(ctx, "push+bind:" + addr, hwm=8)
    acks = open_socket(ctx, "pull+bind:" + ack_addr, hwm=1000) if ring else None
    spawn = mp.get_context("spawn")
    ready, result = spawn.Event(), spawn.Queue()
    proc = spawn.Process(
        target=receiver,
        args=(
            mode,
            addr,
            ack_addr,
            shape,
            ring.name if ring else None,
            ring.layout.to_dict() if ring else None,
            ready,
            result,
        ),
    )
    proc.start()
    ready.wait(30)
    copy = mode == "zmq-ipc-copy"
    seq = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    try:
        while time.perf_counter() < end:
            hdr = H.FrameHeader(seq=seq, shape=shape)
            if ring is not None:
                slot = ledger.take()
                while slot is None:
                    for s in acks.recv().split(b","):
                        ledger.ack(int(s))
                    slot = ledger.take()
                ring.write(slot, "frame", frame)  # the one copy a capture stage makes anyway
                hdr.slot = slot
                ledger.sent(seq, slot, b"")
                push.send_multipart(H.encode(hdr), copy=False)
            else:
                push.send_multipart(H.encode(hdr, {"frame": frame}), copy=copy)
            seq += 1
        push.send_multipart(H.encode(H.FrameHeader(kind=H.EOS, seq=seq)))
        received = result.get(timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        proc.join(10)
        ctx.destroy(linger=0)
        if ring is not None:
            ring.close()
    return received / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="720p,1080p")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"frame transport between two processes ({args.seconds:g} s per cell)")
    for col in ("mode", "frame", "frames/s", "GB/s", "vs zmq copy"):
        table.add_column(col, justify="left" if col in ("mode", "frame") else "right")
    sizes = [s.strip() for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    results = {(m, s): bench(m, (*SIZES[s], 3), args.seconds, args.slots) for s in sizes for m in modes}
    for s in sizes:
        h, w = SIZES[s]
        base = results.get(("zmq-ipc-copy", s))
        for m in modes:
            fps = results[(m, s)]
            ratio = f"{fps / base:.2f}x" if base else "-"
            table.add_row(m, s, f"{fps:,.0f}", f"{fps * h * w * 3 / 1e9:.2f}", ratio)
    Console(width=100).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
