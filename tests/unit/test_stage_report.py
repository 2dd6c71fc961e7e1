"""A stage's reports to the supervisor: the first one (its "I am up") must arrive even when it is sent
the moment the control socket was connected, as a stage forked from a pre-imported template does."""

from __future__ import annotations

import json

import zmq

from stream.config import PipelineConfig
from stream.stages.base import Stage, StageContext


def test_a_report_sent_right_after_connecting_is_not_lost(tmp_path):
    zctx = zmq.Context.instance()
    up = zctx.socket(zmq.PULL)
    up.bind(f"ipc://{tmp_path}/ctl-up")
    try:
        for i in range(10):  # the old code dropped every one of these (no peer yet: zmq.Again)
            ctx = StageContext(
                stage="capture",
                name=f"capture-{i}",
                config=json.loads(PipelineConfig().to_json()),
                endpoints={"ctl_up": f"push+connect:ipc://{tmp_path}/ctl-up"},
            )
            stage = Stage(ctx)
            stage.connect_control()
            stage.report("hb")
            assert up.poll(3000), f"report {i} was lost"
            msg = json.loads(up.recv())
            assert msg["stage"] == f"capture-{i}" and msg["type"] == "hb"
            stage.ctl_up.close(0)
    finally:
        up.close(0)
