"""A real RTSP camera for the tests: GStreamer's gst-rtsp-server on 127.0.0.1, run as its own process.

It runs under the system interpreter (/usr/bin/python3), where Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0 live -- the project's own Python need not have PyGObject, and a camera is
another process anyway, so the tests can kill, stop (SIGSTOP: alive but silent) and restart it.

    /usr/bin/python3 rtsp_server.py --port 8554 --pattern 320x240@30 [--switch 480x360:3]
    /usr/bin/python3 rtsp_server.py --port 8554 --clip sample.mp4 [--user u --password p]

Serves ``rtsp://127.0.0.1:PORT/live``: a live H.264 test pattern (x264enc, zerolatency, one keyframe a
second, SPS/PPS in-band so a client may join any time) or the H.264 track of an mp4 file, sent at its
own pace without re-encoding. ``--switch WxH:S`` changes the pattern's size S seconds after a client
started playing (a camera reconfigured mid-stream: new SPS, same connection). With ``--user`` and
``--password`` the server requires HTTP basic authentication. It prints ``READY`` once it listens.
RTCP sender reports carry the server's wall clock (NTP), which is how a client measures
glass-to-output latency.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def size_fps(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)@(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH@FPS")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def switch_spec(text: str) -> tuple[int, int, float]:
    m = re.fullmatch(r"(\d+)x(\d+):([\d.]+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH:SECONDS")
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def launch_line(args: argparse.Namespace) -> str:
    if args.clip:
        # the mp4's H.264 as it is: qtdemux gives avc/au, which rtph264pay takes without a parser
        return (
            f'( filesrc location="{args.clip}" ! qtdemux name=d d.video_0 ! queue '
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
    w, h, fps = args.pattern
    return (
        f"( videotestsrc is-live=true pattern=ball ! capsfilter name=size "
        f'caps="video/x-raw,width={w},height={h},framerate={fps}/1" ! videoconvert '
        f"! x264enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={fps} bitrate=800 "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pattern", type=size_fps, default=(320, 240, 30))
    p.add_argument("--clip", default=None)
    p.add_argument("--switch", type=switch_spec, default=None)
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    args = p.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)  # one pipeline for every client, like a camera

    if args.switch is not None:
        w, h, after = args.switch

        def configured(_factory, media) -> None:
            size = media.get_element().get_by_name("size")
            fps = args.pattern[2]

            def switch() -> bool:
                size.set_property(
                    "caps", Gst.Caps.from_string(f"video/x-raw,width={w},height={h},framerate={fps}/1")
                )
                print(f"SWITCHED {w}x{h}", flush=True)
                return False

            GLib.timeout_add(int(after * 1000), switch)

        factory.connect("media-configure", configured)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(
            Gst.Structure.new_from_string("user,media.factory.access=true,media.factory.construct=true")
        )
        factory.set_permissions(perms)

    server.get_mount_points().add_factory("/live", factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
