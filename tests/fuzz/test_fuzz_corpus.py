"""The fuzz corpus through the real runner on the session's local Ray (``tests/fuzz/corpus.py``).

One run reads every ingest format (WebDataset tars, JSONL + images, Parquet; video annotations
and mp4+json tars, decoded in the isolated decoder; instruction JSONL and Parquet) and decodes
the images. It must complete; conservation must hold at every stage; each hostile item
must end as the error (or, for a decompression bomb, dropped) row its reason names; nothing may
be written outside the run directory; and no Ray worker may die.
"""
from __future__ import annotations

import time

import pytest

from conftest import run_config
from helpers import assert_conservation, manifest

from .corpus import build_corpus
from .hostile import arena, tree


def dead_workers() -> set[str]:
    """Ids of Ray workers that exited abnormally (crash, OOM kill, unexpected error), from the
    GCS worker table. The state API (``ray.util.state.list_workers``) needs the dashboard, which
    the in-process test Ray runs without, so the table is read directly."""
    from ray._private.state import state
    from ray.core.generated import common_pb2, gcs_pb2

    bad = {common_pb2.WorkerExitType.Value(n) for n in ("SYSTEM_ERROR", "NODE_OUT_OF_MEMORY", "USER_ERROR")}
    out = set()
    for raw in state._connect_and_get_accessor().get_worker_table():
        w = gcs_pb2.WorkerTableData.FromString(raw)
        if not w.is_alive and w.HasField("exit_type") and w.exit_type in bad:
            out.add(w.worker_address.worker_id.hex())
    return out


@pytest.fixture(scope="module")
def fuzz_run(ray_local, tmp_path_factory):
    with arena(tmp_path_factory.mktemp("fuzz_corpus")) as root:
        config, expect = build_corpus(root)
        run_dir = root / "run"
        dead_before = dead_workers()
        before = tree(root)
        record = run_config(config, run_dir)
        after = {p: v for p, v in tree(root).items() if p != "run" and not p.startswith("run/")}
        time.sleep(0.5)  # the raylet reports a dead worker to the GCS asynchronously
        return {"root": root, "run_dir": run_dir, "expect": expect, "record": record, "written_outside": (before, after),
                "new_dead_workers": dead_workers() - dead_before}


def test_the_run_completes_with_conservation_at_every_stage(fuzz_run):
    counts = assert_conservation(fuzz_run["run_dir"])
    for stage, expected in fuzz_run["expect"].items():
        assert counts[stage]["in"] == len(expected), (stage, counts[stage])


def test_nothing_is_written_outside_the_run_directory(fuzz_run):
    before, after = fuzz_run["written_outside"]
    assert after == before
    assert not list(fuzz_run["root"].parent.glob("escape*"))


def test_no_ray_worker_died(fuzz_run):
    assert not fuzz_run["new_dead_workers"]


@pytest.mark.parametrize("stage", ["ingest_tar", "ingest_jsonl", "ingest_parquet", "decode"])
def test_image_ingest_formats_end_each_hostile_item_as_a_row_naming_its_flaw(fuzz_run, stage):
    _check_stage(fuzz_run, stage)


@pytest.mark.parametrize("stage", ["video_ann", "video_tar"])
def test_video_ingest_formats_end_each_hostile_item_as_a_row_naming_its_flaw(fuzz_run, stage):
    _check_stage(fuzz_run, stage)


@pytest.mark.parametrize("stage", ["instr_jsonl", "instr_parquet"])
def test_instruction_ingest_formats_end_each_hostile_item_as_a_row_naming_its_flaw(fuzz_run, stage):
    _check_stage(fuzz_run, stage)


def _check_stage(fuzz_run, stage: str) -> None:
    df = manifest(fuzz_run["run_dir"], stage)
    got = {r["source_key"]: r for r in df.to_dict("records")}
    expect = fuzz_run["expect"][stage]
    assert set(got) == set(expect), stage
    for key, (status, words) in expect.items():
        r = got[key]
        assert r["status"] == status, (stage, key, r["reason"])
        if words:
            assert any(w in r["reason"] for w in words), (stage, key, r["reason"])
