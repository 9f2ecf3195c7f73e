"""Model stages report how busy their actors were (run.json ``stages.<name>.actors``).

The judge runs against the deterministic schema server (tests/faults/schema_server.py) with a
fixed delay per request, so each batch is known to take at least that long inside the actor:
the busy time has a hard lower bound, and busy + waiting fit inside the actors' span.
"""
from __future__ import annotations

import json

from conftest import ROOT, run_config
from faults.endpoint import config_on_server
from faults.schema_server import FaultPlan, SchemaServer

DELAY_S = 0.05


def test_judge_and_clip_actors_report_busy_and_waiting_time(ray_local, demo_input, tmp_path):
    with SchemaServer(FaultPlan(delay_s=DELAY_S)) as server:
        config = config_on_server(ROOT / "configs" / "demo_judge.yaml", tmp_path / "judge.yaml", server.url,
                                  inputs=[f"images={demo_input}"], overrides=["judge.resources.batch_size=4"],
                                  max_concurrency=1)
        record = run_config(config, tmp_path / "run")
        requests = server.served["ok"]

    judge = record["stages"]["judge"]
    timing = judge["actors"]
    assert timing["actors"] >= 1
    assert timing["rows"] == judge["counts"]["in"] > 0   # every judged row went through an actor
    assert timing["batches"] >= -(-timing["rows"] // 4)  # batches of at most 4 rows
    # one request at a time (max_concurrency 1), each held DELAY_S by the server
    assert requests == 2 * timing["rows"]                 # two rubrics per row
    assert timing["busy_s"] >= requests * DELAY_S
    assert timing["busy_s"] <= timing["span_s"] + 1e-3
    assert 0.0 <= timing["waiting_share"] <= 1.0
    assert timing["setup_s_max"] >= 0

    clip = record["stages"]["clip_score"]["actors"]        # the other model stage of the segment
    assert clip["rows"] == record["stages"]["clip_score"]["counts"]["in"]
    # stateless stages have no actors to time
    assert "actors" not in record["stages"]["decode"]
    # the record on disk says the same
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk["stages"]["judge"]["actors"] == timing
