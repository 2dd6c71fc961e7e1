"""What the supervisor decides before any stage starts: run folders of dead runs, ring size from the source,
sink pre-flight, segment names (issue 10, section 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.meta import ClassTable, ModelMeta
from stream.config import PipelineConfig
from stream.pipeline import FRAME_CAPACITY, RUN_DIR_PREFIX, probe_source, remove_orphan_run_dirs, ring_layout
from stream.shm import SlotLedger
from stream.sinks.base import SinkError
from stream.sinks.video import VideoFileSink, segment_path
from stream.sources.base import SourceError


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_run_folders_of_dead_supervisors_are_removed_and_others_kept(tmp_path):
    dead = tmp_path / f"{RUN_DIR_PREFIX}{dead_pid()}-abc"
    alive = tmp_path / f"{RUN_DIR_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{RUN_DIR_PREFIX}xyz"  # no pid in the name: not ours to judge
    for d in (dead, alive, unnamed):
        d.mkdir()
        (d / "capture.log").write_text("log")
    assert remove_orphan_run_dirs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and alive.exists() and unnamed.exists()


def model_info() -> dict:
    classes = ClassTable(names=("a", "b"), palette=((0, 0, 0), (255, 255, 255)))
    meta = ModelMeta(arch="x", classes=classes, input_size=(160, 120), max_batch=1)
    return {"meta": meta.to_json(), "wants_uint8": False, "max_batch": 1, "backend": "onnxruntime"}


def test_ring_is_sized_from_the_probed_source():
    cfg = PipelineConfig(source="synthetic://?size=3840x2160&frames=1", slots=4)
    info = probe_source(cfg)
    assert (info.width, info.height) == (3840, 2160)
    layout = ring_layout(cfg, model_info(), (info.width, info.height))
    assert layout.frame_bytes == 3840 * 2160 * 3 and layout.slots == 4
    assert layout.input_bytes == 160 * 120 * 3 * 4
    assert ring_layout(cfg, model_info(), None).frame_bytes == FRAME_CAPACITY  # camera/network: unknown


def test_without_room_for_frames_the_ring_keeps_only_model_inputs(monkeypatch):
    import shutil

    cfg = PipelineConfig(source="synthetic://", slots=8)
    free = 8 * 160 * 120 * 3 * 4 * 2  # room for the inputs, not for 4K frames
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(free, 0, free))
    layout = ring_layout(cfg, model_info(), (3840, 2160))
    assert layout is not None and layout.frame_bytes == 0 and layout.input_bytes == 160 * 120 * 3 * 4


def test_probe_reports_a_missing_file_and_leaves_live_sources_closed(tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        probe_source(PipelineConfig(source=str(tmp_path / "missing.mp4")))
    # a camera is not opened twice (capture opens it): nothing to probe, no error
    assert probe_source(PipelineConfig(source="webcam:9")) is None


def test_video_sink_preflight_finds_what_open_would_refuse(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SinkError, match="is not a folder"):
        VideoFileSink(str(tmp_path / "plain" / "sub" / "o.mp4")).preflight()
    with pytest.raises(SinkError, match="is a directory"):
        VideoFileSink(str(tmp_path)).preflight()
    target = tmp_path / "new" / "deeper" / "o.mp4"
    VideoFileSink(str(target)).preflight()  # folders open() would create: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]  # the probe file is gone


def test_segments_of_a_restarted_run_are_numbered_beside_the_first():
    assert segment_path(Path("/v/out.mp4"), 1) == Path("/v/out.001.mp4")
    assert segment_path(Path("clip.v2.mkv"), 12) == Path("clip.v2.012.mkv")
    sink = VideoFileSink("out.mp4")
    assert sink.roll(0) == Path("out.mp4") and sink.roll(3) == Path("out.003.mp4")


def test_ledger_keeps_the_whole_message_of_an_inline_frame():
    led = SlotLedger(2)
    a, b = led.take(), led.take()
    pixels = np.arange(12, dtype=np.uint8).tobytes()
    led.sent(5, a, b"header-only")
    led.sent(6, b, [b"header", pixels])  # too large for its slot's frame region: the pixels ride along
    assert led.unacked() == [(5, b"header-only"), (6, [b"header", pixels])]
    assert led.ack(6) and led.in_flight == 1 and led.take() == b


def test_remote_timeout_must_be_positive():
    from stream.config import ConfigError

    with pytest.raises(ConfigError, match="remote_timeout_s"):
        PipelineConfig(remote_timeout_s=0)
