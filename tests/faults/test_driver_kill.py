"""The driver is killed (SIGKILL) in the middle of each pipeline's longest stage; the same
pipeline run again on the same run directory resumes and ends exactly where an undisturbed run
ends: the same output files byte for byte, the same manifests, conservation at every stage.

How each case goes:

1. ``sailcurate run`` starts as a separate driver process on the session's Ray cluster (as
   ``ray job submit`` drivers do); the test watches the killed stage's checkpoint folder and
   sends SIGKILL to the driver once the stage is half done: for a map stage, after at least one
   of its fragments is committed (``checkpoints/<segment>/parts``) and before its
   ``_SUCCESS.json``; for a global stage (whose fragments are all written at the very end), while
   its whole-dataset decision is being computed: once its ``_started.json`` is there and the
   driver has logged that Ray Data began executing (or as soon as a fragment is there, if that
   comes first). Ray then ends the dead driver's workers and actors; the test waits for that, so
   nothing of the dead run writes on.
2. The same config is run again on that run directory: it must say it resumes the stage, keeping
   the chunks that were committed and redoing the others.
3. The reference is the same config run undisturbed from the killed stage on (``--from STAGE``:
   that stage and everything after it computed from scratch) on a copy of the run directory
   taken right after the kill, so both runs share the checkpoints of the stages that had
   finished before the driver reached the killed one (each complete, with its _SUCCESS record,
   before the killed stage began; recomputing them would only double the test's time).

The killed stage of each pipeline is the one that takes longest in a real run (run.json records
each segment's seconds; on these inputs and the stand-in model below, Ray Data's fixed cost per
segment hides the model time, so where there is a model the model stage is taken):

==================  ==============  ==============================================================
pipeline            killed stage    why
==================  ==============  ==============================================================
dedup_text          minhash_dedup   a global shuffle over every document; longest measured
dedup_images        phash_dedup     LSH buckets and components over every image; longest measured
resample_text       ngram           counts every n-gram, then a distributed select; longest measured
charts              chart_spec      the language model (rendering is milliseconds a chart)
charts_from_specs   chart_render    the one stage with work per row: matplotlib draws each chart
charts_recaption    recaption       a VLM writes a caption for every chart image
demo_judge          judge           VIR + ITA scores from a VLM for every image-caption pair
demo_caption_qa     caption_qa      a language model writes QA pairs from every caption
video               judge           a VLM over 16 frames per QA pair
instruction2        validate        the VLM validity + category pass over every sample
cot                 difficulty      k=4 policy answers per question, plus verification
caption2            judge           VIR + ITA scores from a VLM for every image-caption pair
==================  ==============  ==============================================================

The demo pipeline's case is tests/test_resume.py (a driver that started its own Ray). The
pipelines up to video run whole (those ending in shards have them compared byte for byte).
instruction2, cot and caption2 run up to the killed stage's segment (``cut_after``): their
killed stage comes early and what follows it is a long row of global stages that would triple
the time; what a resume can get wrong lies in the killed segment's checkpoint and manifests,
compared here, and tests/faults/test_determinism.py runs every pipeline whole.

Model stages talk to a ``SchemaServer`` (tests/faults/schema_server.py): it stands in for the
model server, answering each request as a pure function of the request. During the killed run it
waits ``delay_s`` before each answer, as a slow model would, so the stage lasts long enough to be
killed half-way; from the moment of the kill it holds new requests (``STALL_S``), so that the
dead driver's workers, in the second or two Ray takes to end them, cannot finish the stage's
remaining chunks on their own. Once they are gone it answers at once, for the rerun and the
reference alike. The runner, the stages, the engine client, Ray, the checkpoints,
manifests and shards are all real. Small commit units, one model actor and one row per model
call (``chunk_rows`` / ``chunk_videos`` / ``resources`` overrides, applied to every run of a case)
make each killed map stage commit its chunks one after another, and the rerun must find some
committed and some not; the killed driver also runs with small Ray Data blocks (``DRIVER``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import psutil
import pytest

from conftest import ROOT, run_config
from faults import inputs
from faults.endpoint import config_on_server
from faults.schema_server import FaultPlan, SchemaServer
from helpers import assert_conservation

TIMING_COLUMNS = {"decode_s"}  # manifest columns that measure time, not content
RAY_DATA_STARTS = "Starting execution of Dataset"  # Ray Data's log line as a plan begins to run
BLOCK_BYTES = 8 * 1024
STALL_S = 300.0  # the model's answer time from the kill on; also the engine's timeout (never reached)
KILL_DEADLINE_S = 300


# -- the pipelines ------------------------------------------------------------------------------
def _docs(tmp: Path) -> list[str]:
    return [str(inputs.prose(tmp / "docs")["all"])]


def _two_sources(tmp: Path) -> list[str]:
    docs = inputs.prose(tmp / "docs")
    return [f"human={docs['human']}", f"synthetic={docs['synthetic']}"]


def _topics(tmp: Path) -> list[str]:
    return [str(inputs.TOPICS)]


def _specs(tmp: Path) -> list[str]:
    return [str(inputs.SPECS)]


def _demo_images(tmp: Path) -> list[str]:
    from pipeline.demo_data import build_demo

    return [str(build_demo(tmp / "demo"))]


def _images_with_copies(tmp: Path) -> list[str]:
    from pipeline.demo_data import build_demo

    return [str(inputs.demo_with_copies(build_demo(tmp / "demo"), tmp / "copies"))]


def _caption2(tmp: Path) -> list[str]:
    return [f"images={_images_with_copies(tmp)[0]}", f"topics={inputs.TOPICS}"]


@dataclass
class Case:
    config: str
    stage: str                                 # the stage the driver is killed in
    inputs: Callable[[Path], list[str]]        # scratch folder -> --input values
    overrides: list[str] = field(default_factory=list)
    delay_s: float = 0.5                       # the model server's delay per answer in the killed run
    cut: bool = False                          # run only up to the killed stage's segment (cut_after)


CASES = {
    "dedup_text": Case("dedup_text", "minhash_dedup", _docs, ["ingest.chunk_rows=10"]),
    "charts": Case("charts", "chart_spec", _topics, ["ingest.chunk_rows=2"]),
    "charts_from_specs": Case("charts_from_specs", "chart_render", _specs, ["ingest.chunk_rows=2"]),
    "charts_recaption": Case("charts_recaption", "recaption", _demo_images, ["ingest.chunk_rows=4"]),
    "demo_judge": Case("demo_judge", "judge", _demo_images, ["ingest.chunk_rows=4"]),
    "demo_caption_qa": Case("demo_caption_qa", "caption_qa", _demo_images, ["ingest.chunk_rows=4"]),
    "dedup_images": Case("dedup_images", "phash_dedup", _images_with_copies, ["ingest.chunk_rows=4"]),
    "resample_text": Case("resample_text", "ngram", _two_sources, ["ngram.overused_share=0.01"]),
    "video": Case("video", "judge", inputs.video_qa, ["ingest.chunk_videos=2"]),
    "instruction2": Case("instruction2", "validate", inputs.instruction_sources, cut=True),
    "cot": Case("cot", "difficulty", inputs.cot_sources, cut=True),
    "caption2": Case("caption2", "judge", _caption2, ["ingest.chunk_rows=4"], cut=True),
}


def test_every_shipped_pipeline_has_a_case():
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    # demo: tests/test_resume.py; caption2_cpu: its stages are caption2's, killed in that case here
    assert shipped == {case.config for case in CASES.values()} | {"demo", "caption2_cpu"}


def one_row_at_a_time(config: Path, stage: str) -> None:
    """Rewrite ``config`` so that the segment holding ``stage`` handles one row per call with one
    actor per model stage: Ray Data then writes each chunk's fragments as soon as its rows are
    through, while the model works on the next ones. (With the default batches, a stage bundles
    its input up to a full batch, and a pool on every CPU leaves none for the writes: on inputs
    this small, nothing would be committed until the whole stage was done.)"""
    import yaml

    from pipeline.config import load_config
    from pipeline.graph import build_plan

    seg = build_plan(load_config(config)).segment_of(stage)
    stateful = {n.name for n in seg.nodes if n.stage_cls.stateful}
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    for spec in raw["stages"]:
        if spec["name"] in {n.name for n in seg.nodes}:
            res = spec.get("resources") or {}
            res["batch_size"] = 1
            if spec["name"] in stateful:
                res["concurrency"] = 1
            spec["resources"] = res
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def cut_after(config: Path, stage: str) -> None:
    """Rewrite ``config`` to end with the segment holding ``stage``: only the stages it reads from
    (transitively) and the segment itself stay. What a resumed stage can get wrong is in its own
    checkpoint and manifests, which the comparison covers; the stages after it are pure functions
    of that checkpoint (tests/faults/test_determinism.py runs every pipeline whole)."""
    import yaml

    from pipeline.config import load_config
    from pipeline.graph import build_plan

    plan = build_plan(load_config(config))
    keep = {n.name for n in plan.segment_of(stage).nodes}
    todo = list(keep)
    while todo:
        for parent in plan.nodes[todo.pop()].parents:
            if parent not in keep:
                keep.add(parent)
                todo.append(parent)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["stages"] = [s for s in raw["stages"] if s["name"] in keep]
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


# -- killing the driver ---------------------------------------------------------------------------
def _segment_of(config: Path, stage: str) -> tuple[str, bool]:
    """(checkpoint folder name, whether it is a global stage) of the segment holding ``stage``."""
    from pipeline.config import load_config
    from pipeline.graph import build_plan

    seg = build_plan(load_config(config)).segment_of(stage)
    return seg.name, seg.mode == "global"


def _busy_ray_workers() -> set[int]:
    """Worker processes of the session's Ray (our descendants) running work that writes to a run
    directory: Ray titles a worker ``ray::<what runs>``; Ray Data map tasks (fragment writes
    included) and actor pools carry ``MapBatches`` / ``MapWorker``, the sink writers are
    ``write_*`` tasks. Ray Data's own detached actors, which outlive every job, are left out."""
    out = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline()).strip()
        except psutil.Error:
            continue
        ray_data = title.startswith("ray::") and ("MapBatches" in title or "MapWorker" in title)
        if ray_data or title.startswith("ray::write_"):
            out.add(proc.pid)
    return out


def _title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return "(gone)"


# ``sailcurate run`` with Ray Data's block target at a few rows (the default is 128 MiB): the
# killed stage's output then leaves it in several blocks, hence several commits, even on these
# small inputs. The rerun and the reference run with the default blocks (results do not depend
# on blocks: tests/faults/test_determinism.py).
DRIVER = ("import sys; from ray.data import DataContext; "
          f"DataContext.get_current().target_max_block_size = {BLOCK_BYTES}; "
          "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")


def _start_driver(config: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    import ray

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", DRIVER, "run", str(config), "--out", str(run_dir)],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def kill_driver_mid_stage(config: Path, run_dir: Path, stage: str, log: Path,
                          before_kill: Callable[[], None] = lambda: None) -> tuple[str, bool]:
    """Run the pipeline as its own driver and SIGKILL it half-way through ``stage`` (calling
    ``before_kill`` just before); returns (its segment, whether it is a global stage)."""
    segment, is_global = _segment_of(config, stage)
    ckpt = run_dir / "checkpoints" / segment
    before = _busy_ray_workers()
    proc = _start_driver(config, run_dir, log)
    try:
        deadline, log_at_start = time.time() + KILL_DEADLINE_S, None
        while proc.poll() is None and time.time() < deadline:
            if any((ckpt / "parts").glob("*.parquet")):
                break
            if is_global:
                if log_at_start is None and (ckpt / "_started.json").exists():
                    log_at_start = log.stat().st_size
                if log_at_start is not None and RAY_DATA_STARTS in log.read_text(errors="replace")[log_at_start:]:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before {stage} could be killed:\n" + log.read_text()[-3000:]
        before_kill()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (ckpt / "_started.json").exists() and not (ckpt / "_SUCCESS.json").exists(), \
        f"{stage} was not mid-way when the driver died"
    # Ray ends a dead driver's workers and actors; wait for that, so nothing of it writes on.
    deadline = time.time() + 60
    while _busy_ray_workers() - before and time.time() < deadline:
        time.sleep(0.2)
    left = _busy_ray_workers() - before
    assert not left, f"workers of the killed driver are still running: {[_title(pid) for pid in left]}"
    return segment, is_global


# -- what must be equal ---------------------------------------------------------------------------
def outputs(run_dir: Path) -> dict[str, bytes]:
    """Every file the run wrote outside its checkpoints, media store (intermediate: a killed run
    leaves packs of blocks it redid), manifests and run record."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.relative_to(run_dir).as_posix().startswith(("checkpoints/", "media/", "manifests/"))
            and p.name != "run.json"}


def manifest_frame(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df = df.drop(columns=[c for c in df.columns if c in TIMING_COLUMNS])
    return df.sort_values("sample_id").reset_index(drop=True)


def assert_same_result(got: Path, want: Path) -> None:
    got_files, want_files = outputs(got), outputs(want)
    assert sorted(got_files) == sorted(want_files), "the resumed run wrote other output files"
    differ = [name for name in want_files if got_files[name] != want_files[name]]
    assert not differ, f"output files differ from the undisturbed run: {differ}"
    names = sorted(p.name for p in (want / "manifests").glob("*.parquet"))
    assert names == sorted(p.name for p in (got / "manifests").glob("*.parquet"))
    for name in names:
        pd.testing.assert_frame_equal(manifest_frame(got / "manifests" / name),
                                      manifest_frame(want / "manifests" / name), obj=f"manifests/{name}")
    assert assert_conservation(got) == assert_conservation(want)
    rec_got, rec_want = (json.loads((d / "run.json").read_text()) for d in (got, want))
    assert rec_got["status"] == rec_want["status"] == "succeeded"
    counts = [{name: stage["counts"] for name, stage in rec["stages"].items()} for rec in (rec_got, rec_want)]
    assert counts[0] == counts[1]


@pytest.mark.parametrize("name", list(CASES))
def test_driver_killed_in_the_longest_stage_then_rerun_equals_an_undisturbed_run(name, ray_local, tmp_path):
    case = CASES[name]
    with SchemaServer(FaultPlan(delay_s=case.delay_s)) as server:
        config = config_on_server(ROOT / "configs" / f"{case.config}.yaml", tmp_path / f"{name}.yaml", server.url,
                                  inputs=case.inputs(tmp_path), overrides=case.overrides, timeout_s=STALL_S)
        if case.cut:
            cut_after(config, case.stage)
        one_row_at_a_time(config, case.stage)
        killed, reference = tmp_path / "killed", tmp_path / "reference"

        def stall() -> None:
            server.plan = FaultPlan(delay_s=STALL_S)

        segment, is_global = kill_driver_mid_stage(config, killed, case.stage, tmp_path / "killed.log", stall)
        server.plan = FaultPlan()  # the model answers at once from now on (the same answers)...
        server.release.set()       # ...and the requests the dead run left waiting are let go
        shutil.copytree(killed, reference)  # the stages before the killed one were done: shared

        started = json.loads((killed / "checkpoints" / segment / "_started.json").read_text())["fingerprint"]
        said: list[str] = []
        record = run_config(config, killed, log=said.append)  # the same command again
        assert record["stages"][case.stage]["ran"], said
        assert record["stages"][segment]["fingerprint"] == started, "the code changed between the two runs"
        if not is_global:  # a map stage keeps the chunks it had committed and redoes the others
            resumed = [m for m in said if m.startswith(f"{segment}: resuming,")]
            assert resumed, "\n".join(said)
            done, total = map(int, re.search(r"resuming, (\d+) of (\d+) chunks", resumed[0]).groups())
            assert done < total, f"killed after every chunk was committed: {resumed[0]}"
        run_config(config, reference, from_stage=case.stage)  # the killed stage on, never interrupted
    assert_same_result(killed, reference)
