"""A run killed mid-stage (SIGKILL to the driver) resumes: no sample lost, none duplicated."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from conftest import ROOT, run_config
from helpers import assert_conservation

CONFIG = """
name: resume
sources:
  images: {{path: {input}, format: jsonl_images}}
stages:
  - {{name: ingest, kind: ingest, source: images, chunk_rows: 4}}
  - {{name: decode, kind: decode, reencode: png, checkpoint: true, resources: {{batch_size: 2}}}}
  - name: filter
    kind: filter
    rules: [{{column: len(text), min: 20}}]
  - {{name: shard, kind: shard, corpus: resume, samples_per_shard: 16}}
"""


def _cli(config: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(config), "--out", str(run_dir)],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_mid_stage_then_rerun_gives_the_same_shards(ray_local, tmp_path):
    from pipeline.demo_data import build_demo

    data = build_demo(tmp_path / "input", repeat=6)  # 120 rows -> 30 chunks of 4
    config = tmp_path / "resume.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(input=data)))
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"

    proc = _cli(config, killed_dir, tmp_path / "first.log")
    parts = killed_dir / "checkpoints" / "decode" / "parts"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-stage
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)  # and the local Ray it had started
    assert not (killed_dir / "checkpoints" / "decode" / "_SUCCESS.json").exists(), "killed after the stage had finished"
    committed = len(list(parts.glob("*.parquet")))
    assert committed >= 3

    second = _cli(config, killed_dir, tmp_path / "second.log")
    try:
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        _kill_group(second)
    log = (tmp_path / "second.log").read_text()
    assert "decode: resuming," in log and "of 30 chunks already committed" in log

    run_config(config, reference_dir)  # the same pipeline, never interrupted
    got = pd.read_parquet(killed_dir / "shards" / "index.parquet")
    want = pd.read_parquet(reference_dir / "shards" / "index.parquet")
    assert got["sample_id"].is_unique
    assert sorted(got["sample_id"]) == sorted(want["sample_id"])
    assert len(got) == 120 - 6 * 4  # per 20 demo rows: bad JSON, missing file, 16 px thumbnail, truncated JPEG
    for tar in sorted((reference_dir / "shards").glob("*.tar")):
        assert (killed_dir / "shards" / tar.name).read_bytes() == tar.read_bytes(), tar.name
    assert assert_conservation(killed_dir) == assert_conservation(reference_dir)
