"""Shared-memory frame ring: same-host pixels without copies through sockets.

One POSIX segment (``/dev/shm/segstream-<pid>-<token>``) holds ``slots`` fixed-size slots. Each slot
has a frame region (the captured BGR frame) and an input region (the model input the preprocess
stage prepares for that frame), so a frame and its prepared input share one slot number. An RGB-D run's
ring has a third region per slot, ``depth``: the uint16 depth image paired with the frame.

Ownership: the supervisor creates the segment and is the only process that unlinks it on a normal
exit; stages attach without tracking. If the supervisor is SIGKILLed, its multiprocessing resource
tracker (a separate process) unlinks the segment, and the stages unlink it too when they notice
their parent is gone -- unlinking twice is harmless.

Slot reuse is protected by credits: capture takes a free slot per frame and gets it back only when
the overlay stage acknowledges the frame's seq (``SlotLedger``), so a slot is never overwritten
while any stage may still read it.
"""

from __future__ import annotations

import mmap
import os
import secrets
import time
from dataclasses import dataclass

import numpy as np

from engines.errors import SegstreamError

PREFIX = "segstream-"
ALIGN = 4096


class ShmError(SegstreamError):
    """A shared-memory segment cannot be created or attached."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class RingLayout:
    slots: int
    frame_bytes: int  # capacity of a slot's frame region
    input_bytes: int  # capacity of a slot's prepared-input region
    depth_bytes: int = 0  # capacity of a slot's depth region (RGB-D runs; 0: none)

    @property
    def slot_bytes(self) -> int:
        return _align(self.frame_bytes) + _align(max(self.input_bytes, 1)) + _align(self.depth_bytes)

    @property
    def total_bytes(self) -> int:
        return self.slots * self.slot_bytes

    def to_dict(self) -> dict[str, int]:
        d = {"slots": self.slots, "frame_bytes": self.frame_bytes, "input_bytes": self.input_bytes}
        if self.depth_bytes:  # RGB-D only: rings without depth keep their three sizes
            d["depth_bytes"] = self.depth_bytes
        return d

    def capacity(self, which: str) -> int:
        return {"frame": self.frame_bytes, "input": self.input_bytes, "depth": self.depth_bytes}[which]

    def offset(self, which: str) -> int:
        """Where a region starts inside its slot: frame, then input, then depth."""
        after_frame = _align(self.frame_bytes)
        after_input = after_frame + _align(max(self.input_bytes, 1))
        return {"frame": 0, "input": after_frame, "depth": after_input}[which]


def _shm_open(name: str, create: bool, size: int = 0) -> mmap.mmap:
    import _posixshmem  # the primitive multiprocessing.shared_memory uses, minus its tracking

    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
    except FileExistsError:
        raise ShmError(f"shared-memory segment {name} already exists") from None
    except FileNotFoundError:
        raise ShmError(f"shared-memory segment {name} does not exist (supervisor gone?)") from None
    try:
        if create:
            os.ftruncate(fd, size)
        else:
            size = os.fstat(fd).st_size
        # MAP_POPULATE: a stage maps every page when it attaches, at start-up, rather than fault them in
        # one by one on the first frames through each slot (measured: the first frames of a live run took
        # 7-9 ms in preprocess against 2.5 ms steady, and ran late through every later stage). Not the
        # creator: the supervisor would zero the ring's pages (18 ms for a 960x540 ring) before it starts
        # any stage, where the first stage to attach does it while the model loads
        populate = 0 if create else getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | populate)
    except OSError as e:
        if create:
            unlink(name)
        raise ShmError(f"shared-memory segment {name} ({size} bytes): {e}") from None
    finally:
        os.close(fd)


def unlink(name: str) -> bool:
    """Remove a segment by name; False when it was already gone."""
    import _posixshmem

    try:
        _posixshmem.shm_unlink("/" + name)
        return True
    except FileNotFoundError:
        return False


class FrameRing:
    """A ring of fixed slots in one shared-memory segment."""

    def __init__(self, name: str, layout: RingLayout, buf: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.layout = layout
        self._buf = buf
        self.owner = owner
        self._tracked = False
        self._np = np.frombuffer(buf, dtype=np.uint8)

    @classmethod
    def create(cls, layout: RingLayout, tag: str = "") -> FrameRing:
        name = f"{PREFIX}{os.getpid()}-{tag + '-' if tag else ''}{secrets.token_hex(4)}"
        ring = cls(name, layout, _shm_open(name, True, layout.total_bytes), owner=True)
        try:  # backstop: the resource tracker unlinks the segment if this process is SIGKILLed
            from multiprocessing import resource_tracker

            resource_tracker.register("/" + name, "shared_memory")
            ring._tracked = True
        except Exception:  # noqa: BLE001 - tracking is a safety net only
            pass
        return ring

    @classmethod
    def attach(cls, name: str, layout: RingLayout) -> FrameRing:
        buf = _shm_open(name, False)
        if len(buf) < layout.total_bytes:
            buf.close()
            raise ShmError(
                f"shared-memory segment {name} is {len(buf)} bytes, layout needs {layout.total_bytes}"
            )
        return cls(name, layout, buf, owner=False)

    def _region(self, slot: int, which: str, nbytes: int) -> np.ndarray:
        if not 0 <= slot < self.layout.slots:
            raise ShmError(f"slot {slot} outside ring of {self.layout.slots}")
        cap = self.layout.capacity(which)
        if nbytes > cap:
            raise ShmError(f"{which} of {nbytes} bytes does not fit a {cap}-byte slot")
        start = slot * self.layout.slot_bytes + self.layout.offset(which)
        return self._np[start : start + nbytes]

    def fits(self, which: str, nbytes: int) -> bool:
        return nbytes <= self.layout.capacity(which)

    def write(self, slot: int, which: str, arr: np.ndarray) -> None:
        dst = self._region(slot, which, arr.nbytes)
        np.copyto(dst.view(arr.dtype).reshape(arr.shape), arr, casting="no")

    def view(self, slot: int, which: str, shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
        """A view (no copy) of a slot region; valid until the slot is released."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return self._region(slot, which, n).view(dt).reshape(shape)

    def close(self) -> None:
        """Detach; the owner also unlinks."""
        self._np = None  # drop the numpy export before closing the mmap
        try:
            self._buf.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with the process
            pass
        if self.owner:
            unlink(self.name)
            if self._tracked:
                from multiprocessing import resource_tracker

                try:
                    resource_tracker.unregister("/" + self.name, "shared_memory")
                except Exception:  # noqa: BLE001
                    pass

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def depth_of(ring: FrameRing | None, hdr, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The depth image paired with a frame: inline (``arrays["depth"]``), or in its ring slot when the
    header says so (``hdr.depth`` = (shape, dtype)); a view, valid until the slot is acknowledged."""
    if "depth" in arrays:
        return arrays["depth"]
    if not hdr.depth:
        return None
    if ring is None or hdr.slot < 0:
        raise ShmError(f"seq {hdr.seq}: depth in a ring slot, but no ring or slot to read it from")
    shape, dtype = hdr.depth
    return ring.view(hdr.slot, "depth", shape, dtype)


class SlotLedger:
    """Capture's book of slots: which are free, which seq holds which slot, since when.

    A slot goes out with a seq and comes back when that seq is acknowledged downstream. Unacknowledged
    entries keep what is needed to re-send the frame after a stage restart: the header alone when the
    pixels are in the slot, the whole message when they travelled inline (a frame larger than the slot's
    frame region still takes a slot: its credit, and the room for its prepared model input).
    """

    def __init__(self, slots: int) -> None:
        self.free: list[int] = list(range(slots))[::-1]
        # seq -> (slot, sent at, what to re-send: header bytes, or every part of an inline message)
        self.out: dict[int, tuple[int, float, bytes | list[bytes]]] = {}

    def take(self) -> int | None:
        return self.free.pop() if self.free else None

    def give_back(self, slot: int) -> None:
        self.free.append(slot)

    def sent(self, seq: int, slot: int, message: bytes | list[bytes]) -> None:
        self.out[seq] = (slot, time.monotonic(), message)

    def ack(self, seq: int) -> bool:
        entry = self.out.pop(seq, None)
        if entry is None:
            return False
        self.free.append(entry[0])
        return True

    @property
    def in_flight(self) -> int:
        return len(self.out)

    def unacked(self) -> list[tuple[int, bytes | list[bytes]]]:
        """(seq, what ``sent`` stored) of every frame still out, oldest first."""
        return [(s, e[2]) for s, e in sorted(self.out.items())]


def leftover_segments() -> list[str]:
    """Names of segstream segments currently in /dev/shm (Linux), for tests and cleanup."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def remove_orphans() -> list[str]:
    """Unlink segments whose creating process (pid in the name) no longer exists."""
    removed = []
    for name in leftover_segments():
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if unlink(name):
                removed.append(name)
        except PermissionError:
            pass
    return removed
