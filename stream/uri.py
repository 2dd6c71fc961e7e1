"""One string says what to read or where to write: ``open_source(uri)`` and ``open_sink(spec)``.

Only the standard library is imported here; each source/sink module (OpenCV, PyAV, ZeroMQ) is imported
when its scheme is chosen, so ``segstream --help`` stays fast.

Source URIs::

    synthetic://?size=640x480&fps=30&frames=300&live=1&pace=180@5
    webcam:0  webcam:0?size=1280x720&fps=30  /dev/video0
    clip.mp4  file:clip.mkv  file:clip.mp4?loop=1
    rtsp://...  rtsps://...  rtmp://...  http(s)://...  tcp://...  udp://...  srt://...
        segstream options (reconnect, timeout, open_timeout, backoff_min, backoff_max, live, transport)
        are taken out of the query; the rest of the URL goes to FFmpeg untouched. reconnect=N: retries
        after the first failed reconnect attempt before the run fails (-1: never give up; default 10).
        timeout=S: no data for S seconds (a silent camera) counts as a lost stream. backoff_min/max: the
        delay between attempts doubles from min to max. live=1/0: read as a live stream / as a file
        (default: an http(s) URL whose server gives a size and a finite duration is a file, anything else
        is live). transport=tcp|udp (rtsp only; default tcp). Errors show the URI with its password
        redacted (stream.redact).
    images:DIR  DIR  'frames/*.png'  images:DIR?fps=10

Sink specs::

    out.mp4  file:out.mkv?crf=23&preset=ultrafast&fragmented=1&threads=0
    images:DIR?what=overlay,mask
    display  display://
    zmq-pub://HOST:PORT?...   (stream.sinks.zmq_pub.ZmqPubSink)
    http://HOST:PORT          (stream.sinks.http_view.HttpViewSink)
    mqtt://HOST:PORT/TOPIC?what=stats,polygons&qos=1   (stream.sinks.mqtt.MqttSink; mqtts:// for TLS)
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stream.sinks.base import SinkError
from stream.sources.base import SourceError

if TYPE_CHECKING:
    from stream.sinks.base import Sink
    from stream.sources.base import Source

IMAGE_EXTENSIONS = frozenset([".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"])
WRITABLE_VIDEO_EXTENSIONS = frozenset([".mp4", ".m4v", ".mov", ".mkv"])
NETWORK_SCHEMES = frozenset(
    ["rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "srt", "rtp", "hls"]
)
NETWORK_OPTION_KEYS = frozenset(
    ["reconnect", "timeout", "open_timeout", "backoff_min", "backoff_max", "live", "transport"]
)
_NETWORK_SECONDS = {"timeout": 5.0, "open_timeout": 10.0, "backoff_min": 0.5, "backoff_max": 5.0}
_GLOB_CHARS = re.compile(r"[*?\[]")


class Options:
    """Query-string options with typed getters whose errors name the URI, the key and the bad value."""

    def __init__(self, uri: str, values: dict[str, str], error: type[Exception] = SourceError) -> None:
        self.uri = uri
        self.values = dict(values)
        self._error = error
        self._used: set[str] = set()

    def _raw(self, key: str) -> str | None:
        self._used.add(key)
        return self.values.get(key)

    def _fail(self, key: str, value: str, expected: str) -> Exception:
        return self._error(f"{self.uri}: option {key}={value!r} is not {expected}")

    def str(self, key: str, default: str | None = None) -> str | None:
        v = self._raw(key)
        return default if v is None else v

    def int(self, key: str, default: int) -> int:
        v = self._raw(key)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise self._fail(key, v, "an integer") from None

    def float(self, key: str, default: float) -> float:
        v = self._raw(key)
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            raise self._fail(key, v, "a number") from None

    def bool(self, key: str, default: bool) -> bool:
        v = self._raw(key)
        if v is None:
            return default
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise self._fail(key, v, "a boolean (1/0)")

    def bad(self, key: str, expected: str) -> Exception:
        """The error for a value that parsed but is out of range; it names the key and the value."""
        return self._fail(key, self.values.get(key, ""), expected)

    def size(self, key: str, default: tuple[int, int] | None) -> tuple[int, int] | None:
        v = self._raw(key)
        if v is None:
            return default
        m = re.fullmatch(r"(\d+)[xX](\d+)", v)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise self._fail(key, v, "a size WIDTHxHEIGHT")
        return int(m.group(1)), int(m.group(2))

    def pace_change(self, key: str) -> tuple[int, float] | None:
        """``FRAME@FPS`` (e.g. ``pace=180@5``: from frame 180 on, 5 frames a second)."""
        v = self._raw(key)
        if v is None:
            return None
        m = re.fullmatch(r"(\d+)@(\d+(?:\.\d*)?)", v)
        if not m or float(m.group(2)) <= 0:
            raise self._fail(key, v, "FRAME@FPS (e.g. 180@5: from frame 180 on, 5 frames a second)")
        return int(m.group(1)), float(m.group(2))

    def list(self, key: str, default: list[str]) -> list[str]:
        v = self._raw(key)
        if v is None:
            return list(default)
        return [p.strip() for p in v.split(",") if p.strip()]

    def check_unused(self) -> None:
        """Reject options nobody asked for, so a typo is an error rather than silently ignored."""
        unknown = sorted(set(self.values) - self._used)
        if unknown:
            raise self._error(f"{self.uri}: unknown option(s) {', '.join(unknown)}")


def split_query(text: str) -> tuple[str, dict[str, str]]:
    """'path?a=1&b=2' -> ('path', {'a': '1', 'b': '2'}); a '?' not followed by k=v stays in the path."""
    base, sep, query = text.partition("?")
    if not sep:
        return text, {}
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or not all(k for k, _ in pairs) or "=" not in query:
        return text, {}
    return base, dict(pairs)


def _scheme(text: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", text)
    return m.group(1).lower() if m else None


def open_source(uri: str) -> Source:
    """Map a URI to a Source object. Nothing is opened yet: ``Source.open()`` validates and connects.

    Raises SourceError for an empty URI, an unknown scheme or a bad option value.
    """
    text = (uri or "").strip()
    if not text:
        raise SourceError(
            "no source given (expected a file, webcam:N, rtsp://..., images:DIR or synthetic://)"
        )
    scheme = _scheme(text)

    if scheme == "synthetic":
        from stream.sources.synthetic import SyntheticSource

        _, q = split_query(re.sub(r"^synthetic:(//)?", "", text, flags=re.I))
        opts = Options(text, q)
        src = SyntheticSource(
            size=opts.size("size", (640, 480)),
            fps=opts.float("fps", 30.0),
            frames=opts.int("frames", 0),
            live=opts.bool("live", True),
            seed=opts.int("seed", 0),
            uri=text,
            pace_change=opts.pace_change("pace"),
        )
        opts.check_unused()
        return src

    if scheme == "webcam" or re.fullmatch(r"/dev/video\d+(\?.*)?", text):
        from stream.sources.webcam import WebcamSource

        body, q = split_query(re.sub(r"^webcam:(//)?", "", text, flags=re.I))
        opts = Options(text, q)
        device: int | str
        if re.fullmatch(r"\d+", body or "0"):
            device = int(body or "0")
        elif body.startswith("/dev/"):
            device = body
        else:
            raise SourceError(
                f"{text}: webcam needs a camera index (webcam:0) or a device path (/dev/video0)"
            )
        src = WebcamSource(device, size=opts.size("size", None), fps=opts.float("fps", 0.0), uri=text)
        opts.check_unused()
        return src

    if scheme in NETWORK_SCHEMES:
        from stream.redact import redact
        from stream.sources.network import DEFAULT_RECONNECT, RTSP_TRANSPORTS, NetworkSource

        parts = urlsplit(text)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in pairs if k in NETWORK_OPTION_KEYS}
        rest = [(k, v) for k, v in pairs if k not in NETWORK_OPTION_KEYS]
        url = urlunsplit(parts._replace(query=urlencode(rest, safe=":/,")))
        opts = Options(redact(text), ours)  # errors quote the URI: never with its password
        reconnect = opts.int("reconnect", DEFAULT_RECONNECT)
        if reconnect < -1:
            raise opts.bad("reconnect", "a number of retries >= 0, or -1 (never give up)")
        secs = {k: opts.float(k, d) for k, d in _NETWORK_SECONDS.items()}
        for key, value in secs.items():
            if not 0 < value < float("inf"):  # also NaN
                raise opts.bad(key, "a positive number of seconds")
        if "backoff_max" in ours and secs["backoff_max"] < secs["backoff_min"]:
            raise opts.bad("backoff_max", f"at least backoff_min ({secs['backoff_min']:g})")
        live = (opts.str("live") or "auto").lower()
        transport = opts.str("transport")
        if transport is not None and scheme not in ("rtsp", "rtsps"):
            raise opts.bad("transport", f"for {scheme}:// (transport is an rtsp:// option)")
        if transport is not None and transport not in RTSP_TRANSPORTS:
            raise opts.bad("transport", " or ".join(RTSP_TRANSPORTS))
        return NetworkSource(
            url,
            reconnect=reconnect,
            read_timeout=secs["timeout"],
            open_timeout=secs["open_timeout"],
            backoff_min=secs["backoff_min"],
            backoff_max=secs["backoff_max"],
            live=None if live == "auto" else opts.bool("live", True),
            transport=transport,
            uri=text,
        )

    if scheme == "images":
        return _image_source(text, text[len("images:") :].removeprefix("//"))

    if scheme == "file":
        body = text[len("file:") :]
        if body.startswith("//"):  # file:///abs/path
            body = body[2:]
        return _path_source(text, body)

    if scheme is not None and len(scheme) > 1:  # one letter would be a Windows drive
        raise SourceError(
            f"{text}: unknown source scheme '{scheme}:' (use a file path, webcam:N, /dev/videoN, "
            "rtsp://, http(s)://, tcp://, udp://, images:DIR or synthetic://)"
        )
    return _path_source(text, text)


def _image_source(uri: str, body: str) -> Source:
    from stream.sources.images import ImageSource

    path, q = split_query(body)
    opts = Options(uri, q)
    src = ImageSource(path, fps=opts.float("fps", 0.0), loop=opts.bool("loop", False), uri=uri)
    opts.check_unused()
    return src


def _path_source(uri: str, body: str) -> Source:
    path, q = split_query(body)
    p = Path(path).expanduser()
    if _GLOB_CHARS.search(path) and not p.exists() or p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return _image_source(uri, body)
    from stream.sources.file import FileSource

    opts = Options(uri, q)
    src = FileSource(str(p), loop=opts.bool("loop", False), uri=uri)
    opts.check_unused()
    return src


def _lazy(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise SinkError(f"sink {name} is not available ({module}: {e})") from None


def default_encoder_threads() -> int:
    """x264 threads for a video sink: one on small machines, where the encoder already runs in its own
    stage process beside the others and frame threads only add hand-offs (measured on 2 cores: -22% CPU in
    the overlay stage); FFmpeg's automatic count (0) where spare cores can speed up large frames."""
    from stream import cpus

    return 1 if cpus.usable_cores() <= 4 else 0


def open_sink(spec: str) -> Sink:
    """Map a sink spec to a Sink object; ``Sink.open(StreamInfo)`` creates files/windows/sockets.

    Raises SinkError for an empty spec, an unknown scheme, an unsupported extension or a bad option.
    """
    text = (spec or "").strip()
    if not text:
        raise SinkError(
            "empty sink spec (expected out.mp4, images:DIR, display, zmq-pub://... or http://...)"
        )
    scheme = _scheme(text)

    if text.lower() in ("display", "display:", "display://") or scheme == "display":
        from stream.sinks.display import DisplaySink

        _, q = split_query(re.sub(r"^display:?(//)?", "", text, flags=re.I))
        opts = Options(text, q, SinkError)
        sink = DisplaySink(title=opts.str("title", "segstream") or "segstream", spec=text)
        opts.check_unused()
        return sink
    if scheme == "zmq-pub":
        return _lazy("stream.sinks.zmq_pub", "ZmqPubSink")(text)
    if scheme in ("http", "https"):
        return _lazy("stream.sinks.http_view", "HttpViewSink")(text)
    if scheme in ("mqtt", "mqtts"):
        return _lazy("stream.sinks.mqtt", "MqttSink")(text)
    if scheme == "images":
        from stream.sinks.images import ImageFolderSink

        path, q = split_query(text[len("images:") :].removeprefix("//"))
        opts = Options(text, q, SinkError)
        sink = ImageFolderSink(
            path,
            what=opts.list("what", ["overlay"]),
            image_format=opts.str("format", "png") or "png",
            spec=text,
            json_mode=opts.str("json", "frame") or "frame",  # what=coco-rle|polygons: per frame or run
            tolerance=opts.float("tolerance", 1.0),
            components=opts.bool("components", False),
        )
        opts.check_unused()
        return sink

    body = text
    if scheme == "file":
        body = text[len("file:") :].removeprefix("//")
    elif scheme is not None and len(scheme) > 1:
        raise SinkError(
            f"{text}: unknown sink scheme '{scheme}:' (use out.mp4, images:DIR, display, zmq-pub://HOST:PORT "
            "or http://HOST:PORT)"
        )
    path, q = split_query(body)
    suffix = Path(path).suffix.lower()
    if suffix not in WRITABLE_VIDEO_EXTENSIONS:
        raise SinkError(
            f"{text}: cannot tell what to write for '{suffix or 'no extension'}' "
            f"(video: {', '.join(sorted(WRITABLE_VIDEO_EXTENSIONS))}; images: images:DIR; display; "
            "zmq-pub://HOST:PORT; http://HOST:PORT)"
        )
    from stream.sinks.video import VideoFileSink

    opts = Options(text, q, SinkError)
    sink = VideoFileSink(
        path,
        crf=opts.int("crf", 23),
        preset=opts.str("preset", "ultrafast") or "ultrafast",
        codec=opts.str("codec", "libx264") or "libx264",
        fragmented=opts.bool("fragmented", False),
        threads=opts.int("threads", default_encoder_threads()),
        spec=text,
    )
    opts.check_unused()
    return sink
