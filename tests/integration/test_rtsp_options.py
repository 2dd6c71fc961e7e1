"""RTSP options, redaction and the link counters' wire form, without a server (fast; the behaviour against a
real RTSP server is in test_rtsp.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from engines.meta import ClassTable
from stream import headers as H
from stream.messages import MessageError, decode_header, encode_mask_message
from stream.metrics import RunMetrics, StageMetrics
from stream.redact import redact, secrets_of
from stream.sources.base import SourceError
from stream.uri import open_source

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "stream" / "schemas" / "mask-header.schema.json").read_text()
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rtsp://admin:pa55@cam:554/live", "rtsp://admin:***@cam:554/live"),
        ("rtsp://admin:p@ss:wd@cam/live", "rtsp://admin:***@cam/live"),  # raw '@' and ':' in a password
        (
            "lost rtsp://u:x@h/a (refused); rtsp://v:y@h/b",
            "lost rtsp://u:***@h/a (refused); rtsp://v:***@h/b",
        ),
        ("http://cam/snap?user=u&password=pw&fps=5", "http://cam/snap?user=u&password=***&fps=5"),
        ("rtsp://cam/live?Token=abc", "rtsp://cam/live?Token=***"),
        ("rtsp://viewer@cam/live", "rtsp://viewer@cam/live"),  # no password: nothing to hide
        ("rtsp://cam:554/live?transport=tcp", "rtsp://cam:554/live?transport=tcp"),
    ],
)
def test_redact_hides_passwords_and_tokens_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown
    for secret in secrets_of(text):
        assert secret not in redact(text)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("rtsp://u:pw9@cam/live?transport=sctp", "option transport='sctp' is not tcp or udp"),
        ("http://u:pw9@cam/live?transport=udp", "option transport='udp' is not for http://"),
        ("rtsp://u:pw9@cam/live?reconnect=-2", "option reconnect='-2'"),
        ("rtsp://u:pw9@cam/live?timeout=0", "option timeout='0' is not a positive number of seconds"),
        ("rtsp://u:pw9@cam/live?backoff_min=2&backoff_max=1", "option backoff_max='1' is not at least"),
    ],
)
def test_bad_rtsp_options_name_key_and_value_never_the_password(uri: str, message: str) -> None:
    with pytest.raises(SourceError) as e:
        open_source(uri)
    assert message in str(e.value)
    assert "pw9" not in str(e.value) and "u:***@cam" in str(e.value)


def test_transport_defaults_to_tcp_and_udp_is_passed_to_ffmpeg() -> None:
    assert open_source("rtsp://cam/live")._ffmpeg_options()["rtsp_transport"] == "tcp"
    src = open_source("rtsp://cam/live?transport=udp&timeout=3")
    assert src._ffmpeg_options()["rtsp_transport"] == "udp" and src.read_timeout == 3.0
    assert "transport" not in src.url  # segstream's options never reach FFmpeg's URL


def test_link_counters_travel_in_the_mask_header_and_validate() -> None:
    # declared header fields (issue 13), no longer ad-hoc ``extra`` keys
    hdr = H.FrameHeader(source={"uri": "rtsp://v:***@cam/live"}, link={
        "reconnects": 2, "outages": 3, "outage_s": 7.25, "down": False, "junk": [1]})  # fmt: skip
    hdr, _ = H.decode(H.encode(hdr))  # as the overlay receives it
    link = H.link_of(hdr)
    assert link == {
        "reconnects": 2,
        "outages": 3,
        "outage_s": 7.25,
        "down": False,
        "uri": "rtsp://v:***@cam/live",
    }
    assert H.link_of(H.FrameHeader(link={"reconnects": "many", "outage_s": -1})) == {}
    classes = ClassTable(names=["a", "b"], palette=[(0, 0, 0), (255, 255, 255)])
    mask = np.zeros((4, 6), np.uint8)
    frames = encode_mask_message(stream="0", seq=1, frame_index=1, mask=mask, classes=classes, source=link)
    header = decode_header(frames[1])
    assert header["source"] == link
    jsonschema.validate(header, SCHEMA)
    for bad in ({"reconnects": -1}, {"outage_s": "long"}, {"down": 1}, [1]):
        raw = json.loads(frames[1])
        raw["source"] = bad
        with pytest.raises(MessageError, match="source must be an object"):
            decode_header(json.dumps(raw).encode())


def test_stats_report_has_streams_and_glass_latency_and_survives_a_capture_restart() -> None:
    run = RunMetrics()
    cap = StageMetrics("capture")
    cap.source = {
        "stream": "0",
        "uri": "rtsp://cam",
        "reconnects": 1,
        "outages": 1,
        "outage_s": 2.5,
        "down": False,
    }
    run.update("capture", cap.snapshot())
    run.instance_died("capture")  # a restarted capture opens the stream anew: its counters start at 0
    cap2 = StageMetrics("capture")
    cap2.source = {
        "stream": "0",
        "uri": "rtsp://cam",
        "reconnects": 2,
        "outages": 3,
        "outage_s": 1.0,
        "down": True,
    }
    run.update("capture", cap2.snapshot())
    ov = StageMetrics("overlay")
    ov.glass.add(0.040)
    ov.latency.add(0.020)
    run.update("overlay", ov.snapshot())
    rep = run.report(10, 1.0)
    assert rep["streams"] == {
        "0": {"uri": "rtsp://cam", "reconnects": 3, "outages": 4, "outage_s": 3.5, "down": True}
    }
    assert rep["glass_to_output_ms"]["count"] == 1 and 39 < rep["glass_to_output_ms"]["p50"] <= 41
    assert rep["latency_ms"]["count"] == 1  # glass is its own histogram, not mixed into latency
    assert "glass" not in rep["stages"]["overlay"]
