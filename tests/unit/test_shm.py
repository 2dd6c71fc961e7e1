"""The shared-memory ring: real POSIX segments in /dev/shm, attached from a second process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream.shm import FrameRing, RingLayout, ShmError, SlotLedger, leftover_segments, remove_orphans, unlink

REPO = Path(__file__).resolve().parents[2]
LAYOUT = RingLayout(slots=3, frame_bytes=64 * 48 * 3, input_bytes=3 * 16 * 16 * 4)


def test_write_then_read_back_from_another_process():
    with FrameRing.create(LAYOUT, tag="t") as ring:
        assert ring.name.startswith("segstream-") and ring.name in leftover_segments()
        frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        ring.write(2, "frame", frame)
        ring.write(2, "input", np.full((3, 16, 16), 1.5, np.float32))
        code = (
            "import sys; import numpy as np; from stream.shm import FrameRing, RingLayout;"
            f"r = FrameRing.attach({ring.name!r}, RingLayout(**{LAYOUT.to_dict()!r}));"
            "f = r.view(2, 'frame', (48, 64, 3), 'uint8'); x = r.view(2, 'input', (3, 16, 16), '<f4');"
            "print(int(f.astype(np.int64).sum()), float(x.sum())); r.close()"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        total, xsum = out.stdout.split()
        assert int(total) == int(frame.astype(np.int64).sum())
        assert float(xsum) == 1.5 * 3 * 16 * 16
        # the attaching process left and must not have unlinked the owner's segment
        assert ring.name in leftover_segments()
    assert ring.name not in leftover_segments()


def test_slots_do_not_overlap():
    with FrameRing.create(LAYOUT) as ring:
        for s in range(3):
            ring.write(s, "frame", np.full((48, 64, 3), s + 1, np.uint8))
            ring.write(s, "input", np.full((3, 16, 16), -s, np.float32))
        for s in range(3):
            assert (ring.view(s, "frame", (48, 64, 3), "uint8") == s + 1).all()
            assert (ring.view(s, "input", (3, 16, 16), "float32") == -s).all()


def test_too_large_and_bad_slot_are_errors():
    with FrameRing.create(LAYOUT) as ring:
        assert not ring.fits("frame", 64 * 48 * 3 + 1)
        with pytest.raises(ShmError, match="does not fit"):
            ring.write(0, "frame", np.zeros((49, 64, 3), np.uint8))
        with pytest.raises(ShmError, match="slot 3"):
            ring.view(3, "frame", (1,), "uint8")


def test_attach_to_missing_segment_is_clear():
    with pytest.raises(ShmError, match="does not exist"):
        FrameRing.attach("segstream-0-missing", LAYOUT)


def test_ledger_credits_and_replay_order():
    led = SlotLedger(2)
    a, b = led.take(), led.take()
    assert {a, b} == {0, 1} and led.take() is None  # no credit left: capture must wait (files)
    led.sent(7, a, b"h7")
    led.sent(8, b, b"h8")
    assert led.unacked() == [(7, b"h7"), (8, b"h8")]
    assert led.ack(7) and not led.ack(7)  # a duplicate ack changes nothing
    assert led.take() == a and led.in_flight == 1


def test_orphaned_segment_of_a_dead_creator_is_removed():
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    name = f"segstream-{int(dead.stdout)}-orphan"
    import _posixshmem
    import os

    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_RDWR, mode=0o600)
    os.close(fd)
    try:
        assert name in remove_orphans()
        assert name not in leftover_segments()
    finally:
        unlink(name)


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MAP_POPULATE"), reason="MAP_POPULATE is Linux's")
def test_an_attached_ring_is_mapped_up_front_not_page_by_page_on_the_first_frames():
    """Every page of the ring is mapped when a stage attaches: writing a frame into each slot afterwards
    costs (next to) no page faults, where a lazily mapped ring faults once per 4 KiB page."""
    layout = RingLayout(slots=4, frame_bytes=960 * 540 * 3, input_bytes=3 * 360 * 480 * 4)
    pages = layout.total_bytes // 4096
    with FrameRing.create(layout, tag="pop") as ring:
        code = (
            "import resource, numpy as np; from stream.shm import FrameRing, RingLayout;"
            f"r = FrameRing.attach({ring.name!r}, RingLayout(**{layout.to_dict()!r}));"
            "f = np.full((540, 960, 3), 7, np.uint8); x = np.ones((3, 360, 480), np.float32);"
            "b = resource.getrusage(resource.RUSAGE_SELF).ru_minflt;"
            "[(r.write(s, 'frame', f), r.write(s, 'input', x)) for s in range(4)];"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - b); r.close()"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        faults = int(out.stdout.split()[-1])
    assert pages > 3000 and faults < pages // 20, (faults, pages)
