"""Several streams in one run (issue 13): each stream's table is validated before anything starts, and
every error names the stream, the key and the value."""

from __future__ import annotations

import pytest

from stream import headers as H
from stream.config import ConfigError, PipelineConfig
from stream.streams import StreamError, parse, stage_name
from tests.procs import run


def test_a_one_source_run_is_stream_0_with_the_names_it_always_had():
    (spec,) = PipelineConfig(source="synthetic://", sinks=["o.mp4"]).stream_specs()
    assert (spec.id, spec.uri, spec.sinks) == ("0", "synthetic://", ["o.mp4"])
    assert stage_name("capture", "0") == "capture" and stage_name("overlay", "cam1") == "overlay@cam1"


def test_stream_sinks_get_their_stream_id_and_options_reach_the_stream_config():
    cfg = PipelineConfig(
        streams=[
            {"id": "a", "uri": "synthetic://", "sinks": ["out-{stream}.mp4"], "max_frames": 5},
            {"id": "b", "uri": "synthetic://", "sinks": ["out-{stream}.mp4"], "live": False},
        ]
    )
    a, b = cfg.stream_specs()
    assert a.sinks == ["out-a.mp4"] and b.sinks == ["out-b.mp4"]
    ca, cb = cfg.for_stream(a), cfg.for_stream(b)
    assert (ca.max_frames, ca.sinks, ca.streams) == (5, ["out-a.mp4"], [])
    assert cb.live is False and cb.max_frames is None


@pytest.mark.parametrize(
    "streams, needle",
    [
        ([{"id": "a", "uri": "x"}, {"id": "a", "uri": "y"}], "key 'id' = 'a': used by two streams"),
        ([{"id": "a b", "uri": "x"}], "key 'id' = 'a b'"),
        ([{"id": "a", "uri": ""}], "key 'uri' = ''"),
        ([{"id": "a", "uri": "x", "fps": 3}], "key 'fps' = 3: unknown key"),
        ([{"id": "a", "uri": "x", "max_frames": 0}], "key 'max_frames' = 0"),
        ([{"id": "a", "uri": "x", "live": "yes"}], "key 'live' = 'yes'"),
        ([{"id": "a", "uri": "x", "sinks": "o.mp4"}], "key 'sinks' = 'o.mp4'"),
        (
            [{"id": "a", "uri": "x", "sinks": ["o.mp4"]}, {"id": "b", "uri": "y", "sinks": ["o.mp4"]}],
            "sink 'o.mp4' is also stream 'a''s",
        ),
        (["not a table"], "a stream must be a table"),
    ],
)
def test_bad_stream_tables_name_stream_key_and_value(streams, needle):
    with pytest.raises(ConfigError) as e:
        PipelineConfig(streams=streams)
    assert needle in str(e.value)


def test_remote_workers_serve_one_stream_only():
    with pytest.raises(ConfigError, match="remote_infer"):
        PipelineConfig(
            streams=[{"id": "a", "uri": "x"}, {"id": "b", "uri": "y"}],
            remote_infer=["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"],
        )


def test_stream_table_from_the_control_api_is_checked_the_same_way():
    with pytest.raises(StreamError, match="key 'uri' = None"):
        parse({"id": "cam"}, "add")


def test_header_carries_ring_and_requests_and_refuses_bad_ones():
    h = H.FrameHeader(stream="cam1", ring=("segstream-1-ab", 8, 100, 200), want=("confidence", "entropy"))
    back, _ = H.decode(H.encode(h))
    assert (back.stream, back.ring, back.want) == ("cam1", h.ring, h.want)
    for bad in (b'"rg":["/etc/passwd",1,2,3]', b'"rg":["segstream-x",1,-2,3]', b'"w":["weights"]'):
        raw = bytearray(H.encode(H.FrameHeader())[0])
        raw[-1:] = b"," + bad + b"}"
        with pytest.raises(H.HeaderError):
            H.decode([bytes(raw)])


def test_cli_refuses_a_sink_several_streams_would_share_in_one_line(tmp_path):
    out = run("run", "synthetic://", "synthetic://", "--sink", "o.mp4", cwd=tmp_path, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sink 'o.mp4' is also stream '0''s" in lines[0], out.stderr
    assert "{stream}" in lines[0]


def test_control_port_beyond_loopback_needs_a_token_and_requests_must_carry_it(tmp_path):
    import json

    from stream.control import ControlError, ControlServer, check_endpoint, read_token

    with pytest.raises(ControlError, match="--control-token FILE"):
        check_endpoint("tcp://0.0.0.0:7000", None, insecure=False)
    assert check_endpoint("tcp://127.0.0.1:7000", None, insecure=False)
    assert check_endpoint("tcp://0.0.0.0:7000", "t" * 16, insecure=False)
    with pytest.raises(ControlError, match="expected tcp://HOST:PORT"):
        check_endpoint("http://127.0.0.1:7000", None, insecure=False)
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ControlError, match="at least 16"):
        read_token(str(tmp_path / "short"))
    server = ControlServer(f"ipc://{tmp_path}/ctl", {"list": lambda req: {"streams": []}}, token="s" * 16)
    try:
        assert server.answer(json.dumps({"cmd": "list"}).encode()) == {
            "ok": False,
            "error": "wrong or missing token",
        }
        assert server.answer(json.dumps({"cmd": "list", "token": "s" * 16}).encode()) == {
            "ok": True,
            "streams": [],
        }
        assert (
            "unknown command 'drop'"
            in server.answer(b'{"cmd": "drop", "token": "' + b"s" * 16 + b'"}')["error"]
        )
        assert server.answer(b"[1, 2]")["error"] == "the request is not a JSON object"
    finally:
        server.close()
