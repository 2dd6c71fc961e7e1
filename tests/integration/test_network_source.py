"""Network source against a real stream: Debian's ffmpeg serves a clip as MPEG-TS over tcp / http / udp on
localhost; the server is killed and restarted mid-run and the source must reconnect and go on."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.sources.base import ReadStatus, SourceError
from stream.sources.network import NetworkSource
from stream.transport import free_tcp_port
from stream.uri import open_source
from tests.reading import read_ok

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


class Server:
    """``ffmpeg -re -stream_loop -1 -i CLIP -c copy -f mpegts URL`` (one client, like a camera)."""

    def __init__(self, clip: Path, proto: str, port: int) -> None:
        self.clip, self.proto, self.port = clip, proto, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return {
            "tcp": f"tcp://127.0.0.1:{self.port}",
            "http": f"http://127.0.0.1:{self.port}/live.ts",
            "udp": f"udp://127.0.0.1:{self.port}",
        }[self.proto]

    @property
    def client_url(self) -> str:
        # UDP: a larger receive queue, and an overrun drops data instead of ending the stream
        return f"{self.url}?fifo_size=100000&overrun_nonfatal=1" if self.proto == "udp" else self.url

    def start(self) -> None:
        out = {
            "tcp": [f"{self.url}?listen=1"],
            "http": ["-listen", "1", self.url],
            "udp": [f"{self.url}?pkt_size=1316"],
        }[self.proto]
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
             "-c", "copy", "-f", "mpegts", *out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def server(request: pytest.FixtureRequest, sample_clip) -> Iterator[Server]:
    srv = Server(sample_clip.path, getattr(request, "param", "tcp"), free_tcp_port())
    srv.start()
    yield srv
    srv.stop()


def open_when_listening(uri: str, deadline_s: float = 10.0) -> NetworkSource:
    """The server needs a moment to listen; connection refused until then."""
    end = time.monotonic() + deadline_s
    while True:
        src = open_source(uri)
        assert isinstance(src, NetworkSource)
        try:
            src.open()
            return src
        except SourceError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", ["tcp", "http", "udp"], indirect=True)
def test_stream_reconnects_after_a_server_restart(server: Server) -> None:
    sep = "&" if "?" in server.client_url else "?"
    src = open_when_listening(f"{server.client_url}{sep}backoff_min=0.2&backoff_max=1&timeout=2")
    try:
        before = read_ok(src, 10, within_s=10)
        assert len(before) == 10
        assert before[0].image.shape == (540, 960, 3)

        server.stop()
        # Whatever was buffered drains, then nothing comes: TIMEOUT, never EOS (no budget given).
        end = time.monotonic() + 10
        while src.read(timeout=0.5).status is ReadStatus.OK and time.monotonic() < end:
            pass
        assert src.read(timeout=0.5).status is ReadStatus.TIMEOUT

        server.start()
        end = time.monotonic() + 15
        while src.stats.reconnects < 1 and time.monotonic() < end:
            src.read(timeout=0.5)
        assert src.stats.reconnects >= 1
        after = read_ok(src, 10, within_s=10)
        assert len(after) == 10
        assert after[0].index > before[-1].index  # indices keep counting across the reconnect
    finally:
        src.close()


@pytest.mark.timeout(30)
def test_reconnect_budget_spent_ends_in_eos_with_the_reason(server: Server) -> None:
    src = open_when_listening(f"{server.url}?reconnect=2&backoff_min=0.1&backoff_max=0.2&timeout=1")
    try:
        assert len(read_ok(src, 3, within_s=10)) == 3
        server.stop()
        t0, end = time.monotonic(), time.monotonic() + 15
        while (f := src.read(timeout=0.5)).status is not ReadStatus.EOS and time.monotonic() < end:
            pass
        assert f.status is ReadStatus.EOS
        assert "gave up after 3 failed reconnect attempts" in (f.error or "")
        assert time.monotonic() - t0 < 10
        assert src.stats.extra["reconnect_failures"] == 3
    finally:
        src.close()


@pytest.mark.timeout(30)
def test_unreachable_stream_is_a_clear_error_within_a_bounded_time() -> None:
    uri = f"tcp://127.0.0.1:{free_tcp_port()}?open_timeout=3"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"tcp://127\.0\.0\.1:\d+.*cannot open stream") as e:
        open_source(uri).open()
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(e.value)
