"""A pipeline the cluster can never schedule fails at once with a config error, instead of hanging.

Ray Data waits forever for resources that never come: an actor pool whose minimum size leaves no
room for the source read beside it, or a `num_gpus: 1` stage on a cluster without GPUs. The runner
compares what each map segment needs at minimum with the cluster before it writes anything
(pipeline/cluster_fit.py). These tests use the session's local Ray, whose CPU count is this
machine's: every size below is derived from `ray.cluster_resources()`.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_config
from pipeline.cli import build_parser, main
from pipeline.cluster_fit import Cluster, Need, problems
from pipeline.config import load_config
from pipeline.graph import build_plan
from pipeline.runner import ResourceError, RunOptions, Runner, segment_needs

DEMO_JUDGE = ROOT / "configs" / "demo_judge.yaml"
GUARD_S = 120  # a hang is a failure, not a stuck test session


def returns_within(seconds: float, fn):
    """Run ``fn`` in a thread; fail if it has not returned (or raised) after ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: the run hangs instead of failing"
    return box, time.monotonic() - started


def cpus(ray) -> float:
    return float(ray.cluster_resources()["CPU"])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def test_an_actor_pool_that_leaves_no_cpu_for_the_read_fails_before_anything_is_written(ray_local, demo_input, tmp_path):
    # The hang seen on a 2-CPU cluster: 3 actors at 0.5 CPU held for the segment, beside a 1-CPU source read.
    # In general 2T-1 actors of 0.5 CPU: T - 0.5 CPUs held, so the 1-CPU read never gets a CPU.
    total = cpus(ray_local)
    pool = int(2 * total) - 1
    run_dir = tmp_path / "run"
    overrides = ["clip_score.resources.num_gpus=0", "clip_score.resources.num_cpus=0.5",
                 f"clip_score.resources.concurrency={pool}", "judge.resources.num_gpus=0"]
    box, seconds = returns_within(GUARD_S, lambda: run_config(DEMO_JUDGE, run_dir, inputs=[f"images={demo_input}"],
                                                                overrides=overrides))
    error = box.get("error")
    assert isinstance(error, ResourceError), box
    message = str(error)
    assert seconds < 30, seconds
    assert f"segment 'clip_score' holds actor pools of {pool} x 0.5 CPU for 'clip_score'" in message
    assert "plus 1 CPU for one task of 'ingest' beside them" in message
    assert f"{_num(pool * 0.5 + 1)} CPU at once, but the cluster has {_num(total)} CPU" in message
    assert f"resources.concurrency (now {pool})" in message and "add nodes" in message
    assert "--no-resource-check" in message
    assert message.count("\n  - ") == 1  # the judge's segment (one 1-CPU actor beside a 1-CPU read) fits
    # Nothing was started or written: no run.json, no checkpoint, not even the run directory.
    assert not run_dir.exists()


def test_a_gpu_stage_on_a_cluster_without_gpus_is_a_config_error_from_the_cli(ray_local, demo_input, tmp_path, capsys):
    if ray_local.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    run_dir = tmp_path / "run"
    # demo_judge.yaml as shipped: clip_score and judge ask for one GPU each (no --smoke)
    box, seconds = returns_within(GUARD_S, lambda: main(["run", str(DEMO_JUDGE), "--input", f"images={demo_input}",
                                                         "--out", str(run_dir)]))
    assert box.get("value") == 2, box
    err = capsys.readouterr().err
    assert seconds < 30, seconds
    assert "config error" in err and str(DEMO_JUDGE) in err
    for stage in ("clip_score", "judge"):
        assert (f"stage {stage!r} asks resources.num_gpus=1 per actor, but the cluster has no GPU "
                f"(1 x {{CPU: {_num(cpus(ray_local))}}})") in err
    assert "set resources.num_gpus: 0" in err and "--smoke" in err and "add GPU nodes" in err
    assert not run_dir.exists()


def test_a_pool_that_exactly_fits_beside_the_read_runs_unchanged(ray_local, demo_input, tmp_path):
    # Two actors holding T-1 CPUs, the 1-CPU read beside them: the tightest plan the check lets
    # through (tasks take turns, so the stateless decode and the write need no CPU of their own).
    total = cpus(ray_local)
    config = tmp_path / "clip.yaml"
    config.write_text(
        "name: clip_fit\n"
        "sources: {images: {path: unused, format: jsonl_images}}\n"
        "stages:\n"
        "  - {name: ingest, kind: ingest, source: images, chunk_rows: 8}\n"
        "  - {name: decode, kind: decode, min_side: 32}\n"
        "  - name: clip_score\n"
        "    kind: clip_score\n"
        f"    resources: {{concurrency: 2, num_cpus: {(total - 1) / 2}, batch_size: 4}}\n"
        "  - {name: shard, kind: shard, corpus: clip_fit, samples_per_shard: 50}\n",
        encoding="utf-8")
    logs: list[str] = []
    box, _ = returns_within(GUARD_S * 2, lambda: run_config(config, tmp_path / "run", inputs=[str(demo_input)],
                                                            smoke=True, log=logs.append))
    record = box.get("value")
    assert record is not None, box
    assert record["status"] == "succeeded" and "resource_warnings" not in record
    assert record["config"]["stages"][2]["resources"]["concurrency"] == 2  # Ray Data starts both at once
    assert record["stages"]["shard"]["counts"]["kept"] == record["stages"]["clip_score"]["counts"]["kept"] > 0
    assert not any("warning" in line for line in logs)


def test_the_min_pool_size_is_concurrency_when_pinned_else_one(demo_input):
    cfg = load_config(DEMO_JUDGE, inputs=[f"images={demo_input}"],
                      overrides=["clip_score.resources.concurrency=3", "clip_score.resources.num_cpus=0.5"])
    plan = build_plan(cfg, {})
    clip = {n.stage: n for n in segment_needs(plan.segment_of("clip_score"), {"CPU": 64.0, "GPU": 8.0})}
    assert (clip["clip_score"].held, clip["clip_score"].count) == (True, 3)
    assert clip["clip_score"].per_worker == {"CPU": 0.5, "GPU": 1.0}
    assert (clip["ingest"].held, clip["ingest"].per_worker) == (False, {"CPU": 1.0})  # the source read
    assert clip["fragment write"].per_worker == {"CPU": 0.25}
    judge = {n.stage: n for n in segment_needs(plan.segment_of("judge"), {"CPU": 64.0, "GPU": 8.0})}
    assert (judge["judge"].held, judge["judge"].count) == (True, 1)  # concurrency unset: starts at one
    assert judge["read of checkpoint clip_filter"].per_worker == {"CPU": 1.0}


def test_an_actor_must_fit_on_one_node_and_a_pool_on_the_nodes():
    two_gpu_nodes = Cluster({"CPU": 16.0, "GPU": 2.0}, [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    tp2 = Need("judge", True, 1, {"CPU": 1.0, "GPU": 2.0}, "resources.num_gpus (now 2)")
    read = Need("ingest", False, 1, {"CPU": 1.0}, "resources.num_cpus (now 1)")
    [msg] = problems("judge", [read, tp2], two_gpu_nodes)
    assert "stage 'judge': one actor needs {CPU: 1, GPU: 2} on one node, but no node has that" in msg
    assert "largest: {CPU: 8, GPU: 1}" in msg and "nodes: 2 x {CPU: 8, GPU: 1}" in msg
    assert "lower resources.num_gpus (now 2), or add nodes with 1 CPU and 2 GPU" in msg
    # 3 actors of 1.2 CPU: 3.6 of 4 CPUs in total, yet only one fits on each 2-CPU node
    small = Cluster({"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])
    [msg] = problems("s", [Need("clip", True, 3, {"CPU": 1.2}, "resources.concurrency (now 3)")], small)
    assert "starts at least 3 actors of {CPU: 1.2}, but only 2 fit on the cluster's nodes" in msg
    # two model stages of one segment each hold a GPU: both pools are held at once
    one_gpu = Cluster({"CPU": 8.0, "GPU": 1.0}, [{"CPU": 8.0, "GPU": 1.0}])
    pools = [Need("clip_score", True, 1, {"CPU": 1.0, "GPU": 1.0}, "resources.num_gpus (now 1)"),
             Need("judge", True, 1, {"CPU": 1.0, "GPU": 1.0}, "resources.num_gpus (now 1)")]
    [msg] = problems("judge", [read] + pools, one_gpu)
    assert "1 x 1 GPU for 'clip_score' + 1 x 1 GPU for 'judge' for its whole run: 2 GPU at once" in msg
    assert "the cluster has 1 GPU" in msg
    # what fits is not reported
    assert problems("judge", [read, Need("judge", True, 2, {"CPU": 1.0, "GPU": 1.0}, "")], two_gpu_nodes) == []


def test_an_autoscaling_cluster_gets_a_warning_not_an_error(ray_local, demo_input, tmp_path):
    # The autoscaler publishes its node groups to the GCS (what Ray Data's own autoscaler reads);
    # here the session's Ray is told it can add up to 4 GPU nodes.
    from ray.core.generated import autoscaler_pb2

    gcs = ray_local._private.worker.global_worker.gcs_client
    published = autoscaler_pb2.ClusterConfig()
    group = published.node_group_configs.add(name="gpu_worker", min_count=0, max_count=4)
    group.resources.update({"CPU": 8, "GPU": 1})
    gcs.report_cluster_config(published.SerializeToString())
    try:
        logs: list[str] = []
        cfg = load_config(DEMO_JUDGE, inputs=[f"images={demo_input}"])
        warnings = Runner(cfg, RunOptions(run_dir=str(tmp_path / "run"), log=logs.append)).check_resources()
    finally:
        gcs.report_cluster_config(autoscaler_pb2.ClusterConfig().SerializeToString())
    if ray_local.cluster_resources().get("GPU"):
        assert warnings == []
        return
    assert [w.split(" asks")[0] for w in warnings] == ["stage 'clip_score'", "stage 'judge'"]
    assert "node groups that can still grow" in logs[0] and "waits" in logs[0]


def test_no_resource_check_skips_the_check(demo_input, tmp_path):
    assert build_parser().parse_args(["run", "x.yaml", "--no-resource-check"]).resource_check is False
    assert build_parser().parse_args(["run", "x.yaml"]).resource_check is True
    logs: list[str] = []
    cfg = load_config(DEMO_JUDGE, inputs=[f"images={demo_input}"])  # GPU stages: an error when checked
    runner = Runner(cfg, RunOptions(run_dir=str(tmp_path / "run"), resource_check=False, log=logs.append))
    assert runner.check_resources() == []
    assert logs == ["resource check skipped (--no-resource-check)"]


def test_every_shipped_config_fits_a_two_cpu_machine_under_smoke():
    # --smoke is the laptop check of a cluster config: it must pass the check on 2 CPUs, no GPU.
    two_cpus = Cluster({"CPU": 2.0}, [{"CPU": 2.0}])
    for path in sorted(Path(ROOT / "configs").glob("*.yaml")):
        plan = build_plan(load_config(path, smoke=True), {})
        found = [p for seg in plan.segments if seg.mode != "global"
                 for p in problems(seg.name, segment_needs(seg, two_cpus.totals), two_cpus)]
        assert found == [], (path.name, found)
