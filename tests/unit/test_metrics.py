"""Latency histogram percentiles and the merged per-stage report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.metrics import LatencyHistogram, RunMetrics, StageMetrics


def test_percentiles_match_numpy_within_bucket_width():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=np.log(0.02), sigma=0.5, size=5000)
    h = LatencyHistogram()
    for s in samples:
        h.add(float(s))
    for p in (50, 95, 99):
        assert h.percentile(p) == pytest.approx(np.percentile(samples, p), rel=0.03)
    assert h.summary_ms()["count"] == 5000


def test_sparse_roundtrip_and_merge():
    a, b = LatencyHistogram(), LatencyHistogram()
    for v in (0.01, 0.02, 0.03):
        a.add(v)
    b.add(0.5)
    a2 = LatencyHistogram.from_sparse(json.loads(json.dumps(a.to_sparse())))
    a2.merge(b)
    assert a2.n == 4 and a2.max == 0.5
    assert a2.percentile(100) == pytest.approx(0.5, rel=0.03)
    assert LatencyHistogram().percentile(50) == 0.0


def test_stage_snapshot_and_run_report_survive_a_restart():
    m = StageMetrics("infer")
    m.frames_in = m.frames_out = 10
    m.drop("lost", 2)
    with m.busy():
        sum(range(1000))
    snap = m.snapshot()
    assert snap["busy_pct"] > 0 and snap["drops"] == {"lost": 2}
    run = RunMetrics()
    run.update("infer", snap)
    run.instance_died("infer")  # the restarted instance starts from zero
    fresh = StageMetrics("infer")
    fresh.frames_out = 5
    run.update("infer", fresh.snapshot())
    ov = StageMetrics("overlay")
    ov.latency.add(0.02)
    run.update("overlay", ov.snapshot())
    rep = run.report(frames=15, wall_s=1.5)
    assert rep["stages"]["infer"]["frames_out"] == 15
    assert rep["drops"] == {"lost": 2}
    assert rep["fps"] == 10.0 and rep["latency_ms"]["count"] == 1
    json.dumps(rep)
