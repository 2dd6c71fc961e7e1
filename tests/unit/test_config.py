"""PipelineConfig: every rejection names the key and the value."""

from __future__ import annotations

import pytest

from stream.config import ConfigError, PipelineConfig


def test_defaults_are_valid_and_roundtrip_json():
    cfg = PipelineConfig(source="clip.mp4", model="m.onnx", sinks=["out.mp4"], workers=2)
    again = PipelineConfig.from_json(cfg.to_json())
    assert again == cfg


@pytest.mark.parametrize(
    ("kw", "key", "value"),
    [
        ({"backend": "tflite"}, "backend", "'tflite'"),
        ({"max_frames": 0}, "max_frames", "0"),
        ({"batch": -2}, "batch", "-2"),
        ({"workers": -1}, "workers", "-1"),
        ({"opacity": 1.5}, "opacity", "1.5"),
        ({"slots": 1}, "slots", "1"),
        ({"heartbeat_s": -1}, "heartbeat_s", "-1"),
        ({"stall_timeout_s": 0.1}, "stall_timeout_s", "0.1"),
        ({"sinks": [""]}, "sinks", "['']"),
        ({"source": ""}, "source", "''"),
        ({"remote_infer": ["tcp://h:1"]}, "remote_infer", "['tcp://h:1']"),
        ({"remote_infer": ["tcp://h", "tcp://h:2"]}, "remote_infer", "'tcp://h'"),
    ],
)
def test_bad_values_name_key_and_value(kw, key, value):
    with pytest.raises(ConfigError) as e:
        PipelineConfig(**kw)
    assert f"'{key}' = {value}" in str(e.value)


def test_zero_workers_needs_remote_endpoints():
    with pytest.raises(ConfigError, match="'workers' = 0"):
        PipelineConfig(workers=0)
    PipelineConfig(workers=0, remote_infer=["tcp://*:5555", "tcp://*:5556"])


def test_unknown_key_and_bad_json():
    with pytest.raises(ConfigError, match="'bogus' = 1: unknown key"):
        PipelineConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        PipelineConfig.from_json("{")
