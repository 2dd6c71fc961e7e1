"""A window (cv2.imshow). Turns itself off with a one-line notice when there is no display.

Qt aborts the whole process when it cannot reach the display server, so the window is first tried in a
short-lived child process; only when that works does this process open one. Pressing q or Esc in the
window sets ``quit_requested`` (the overlay stage may end the run on it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from stream.sinks.base import Result, Sink, StreamInfo

log = logging.getLogger(__name__)

_PROBE = "import cv2; cv2.namedWindow('probe'); cv2.waitKey(1); cv2.destroyAllWindows()"


def display_available(timeout: float = 10.0) -> tuple[bool, str]:
    """(True, '') when an OpenCV window can be opened here, else (False, why)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith(
        "linux"
    ):
        return False, "no display ($DISPLAY and $WAYLAND_DISPLAY are unset)"
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"opening a window did not finish within {timeout:.0f} s"
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or "").strip().splitlines() if ln.strip()]
        return False, f"cannot open a window ({lines[-1].strip() if lines else f'exit {r.returncode}'})"
    return True, ""


class DisplaySink(Sink):
    wants_overlay = True

    def __init__(self, title: str = "segstream", spec: str | None = None) -> None:
        self.title = title
        self.spec = spec or "display"
        self.enabled = False
        self.notice: str | None = None  # why the window is off, when it is
        self.quit_requested = False

    def open(self, info: StreamInfo) -> None:
        ok, why = display_available()
        if not ok:
            self.notice = f"display off: {why}"
            log.warning("%s", self.notice)
            self.wants_overlay = False  # nothing to draw for
            return
        import cv2

        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        cv2.resizeWindow(self.title, info.width, info.height)
        self.enabled = True
        self.wants_overlay = True

    def write(self, result: Result) -> None:
        if not self.enabled:
            return
        import cv2

        cv2.imshow(self.title, result.overlay if result.overlay is not None else result.frame)
        if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        if self.enabled:
            import cv2

            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self.enabled = False
