"""Newest-frame-wins reader for live sources (webcam, network streams).

A background thread runs the source's capture loop, which hands each frame to ``publish()``. The reader
keeps one slot: a frame that is replaced before ``read()`` took it is counted in ``stats.dropped``, so a
slow consumer never builds up latency and no drop goes unseen. When the loop ends (device gone, reconnect
budget spent) the next reads return EOS with the loop's message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from stream.sources.base import Frame, ReadStatus, Source, SourceError, SourceStats

log = logging.getLogger(__name__)


class LiveReader:
    def __init__(self, name: str, stats: SourceStats) -> None:
        self.name = name
        self.stats = stats
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._pending: Frame | None = None
        self._index = 0
        self._finished = False
        self._message: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def start(self, loop: Callable[[LiveReader], str | None]) -> None:
        """Run ``loop(self)`` in a daemon thread; its return value (or exception) is the EOS message."""

        def run() -> None:
            message: str | None = None
            try:
                message = loop(self)
            except Exception as e:  # the capture thread must always end in EOS, never die silently
                log.exception("%s: capture thread failed", self.name)
                message = f"{self.name}: capture failed ({type(e).__name__}: {e})"
            self.finish(message)

        self._thread = threading.Thread(target=run, name=f"capture:{self.name}", daemon=True)
        self._thread.start()

    def publish(self, image: np.ndarray, timestamp: float | None = None) -> None:
        """Offer a new frame; a frame still waiting in the slot is replaced and counted as dropped."""
        frame = Frame(ReadStatus.OK, image=image, index=self._index, timestamp=timestamp or time.time())
        with self._cond:
            self._index += 1
            self.stats.frames += 1
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = frame
            self._cond.notify_all()

    def finish(self, message: str | None = None) -> None:
        with self._cond:
            self._finished = True
            self._message = message
            self._cond.notify_all()

    def read(self, timeout: float = 1.0) -> Frame:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._pending is None and not self._finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Frame(ReadStatus.TIMEOUT, index=self._index, timestamp=time.time())
                self._cond.wait(left)
            if self._pending is not None:
                frame, self._pending = self._pending, None
                return frame
            return Frame(ReadStatus.EOS, index=self._index, timestamp=time.time(), error=self._message)

    def close(self, join_timeout: float = 5.0) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join_timeout)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within %.1f s", self.name, join_timeout)
        self._thread = None


class LiveSource(Source):
    """A Source whose ``open()`` starts ``self._reader``: reads come from its slot, ``close()`` stops it."""

    uri: str
    _reader: LiveReader | None = None

    def join_timeout(self) -> float:
        """How long ``close()`` waits for the capture thread to end."""
        return 5.0

    def read(self, timeout: float = 1.0) -> Frame:
        if self._reader is None:
            raise SourceError(f"{self.uri}: read() before open()")
        return self._reader.read(timeout)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close(join_timeout=self.join_timeout())
            self._reader = None
