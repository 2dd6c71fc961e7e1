"""How the live view paces and hands over frames: stream/pacing.Pacer (the frame-rate cap of MJPEG and
of every WebRTC peer), WebRtcServer.next_frame and the WebRTC loop's encode executor."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stream.pacing import Pacer
from stream.webrtc import WebRtcServer, _SmallInline


def _offer(pacer: Pacer, times: list[float]) -> list[float]:
    """Offer a frame at each time (seconds from now); the times at which one was let through."""
    t0, sent = time.monotonic(), []
    for t in times:
        time.sleep(max(0.0, t0 + t - time.monotonic()))
        if pacer.wait_s() <= 0:
            pacer.take()
            sent.append(t)
    return sent


def test_a_source_at_the_cap_with_jitter_loses_no_frame():
    # 25 fps against a 25 fps cap, every other frame 4 ms early: a fixed minimum interval (the old
    # cap) refused each early frame, a frame lost (or held) just for the source's own jitter
    times = [i * 0.04 - (0.004 if i % 2 else 0.0) for i in range(12)]
    assert _offer(Pacer(25), times) == times


def test_a_faster_source_is_held_to_the_cap():
    times = [i * 0.01 for i in range(60)]  # 100 fps for 0.6 s
    sent = _offer(Pacer(25, burst=2), times)
    assert 14 <= len(sent) <= 2 + 0.6 * 25 + 1, sent  # the long-run rate, plus the burst


def test_wait_says_how_long():
    pacer = Pacer(10, burst=1)
    pacer.take()
    assert 0.05 < pacer.wait_s() <= 0.1


@pytest.mark.parametrize("rate, burst", [(0, 2), (-1, 2), (10, 0.5)])
def test_bad_settings_are_refused(rate: float, burst: float):
    with pytest.raises(ValueError, match="rate"):
        Pacer(rate, burst)


def test_a_frame_over_the_rate_cap_waits_out_the_cap_only():
    # the newest frame came too soon after the last one sent, and nothing newer follows: it goes out
    # when the cap allows (here 40 ms), not after a 0.5 s wake-up timeout (the old behaviour)
    server = WebRtcServer(lambda: ("image", 7, {}), max_fps=25)

    async def run() -> tuple[float, int]:
        server._event = asyncio.Event()
        pacer = Pacer(25, burst=1)
        pacer.take()  # the previous frame, just sent
        t0 = time.monotonic()
        got = await server.next_frame(6, pacer)
        return time.monotonic() - t0, got[1]

    elapsed, number = asyncio.run(run())
    assert number == 7 and 0.02 < elapsed < 0.25, elapsed


def test_only_small_frames_are_encoded_on_the_loop():
    class Frame:
        def __init__(self, w: int, h: int) -> None:
            self.width, self.height = w, h

    where = lambda _arg: threading.current_thread()
    with _SmallInline(max_workers=2) as pool:
        assert pool.submit(where, Frame(480, 360)).result() is threading.current_thread()
        assert pool.submit(where, Frame(1920, 1080)).result() is not threading.current_thread()
        # anything else the loop hands its executor (getaddrinfo, ...) must not block the loop
        assert pool.submit(where, "stun.example.org").result() is not threading.current_thread()
        failing = pool.submit(lambda _f: 1 / 0, Frame(2, 2))
        assert isinstance(failing.exception(), ZeroDivisionError)
