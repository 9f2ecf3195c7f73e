"""The disk fills up mid-run: the run stops with a clear message, nothing half-written looks
complete, and the same command rerun after space is freed finishes with the undisturbed result.

The run directory lives on its own small tmpfs (a real filesystem that really runs out of space:
every write past its size fails with ENOSPC), sized from an undisturbed run's bytes so that it
fills either while the shards are written or while the decode checkpoint is. Freeing space is a
remount with a larger size. The runner, the stages, the CLI (``pipeline.cli.main``, in-process
on the session's Ray: its exit status and stderr are what a user gets) and the files are all
real. Mounting needs root (as here and in CI); elsewhere the tests skip, saying why.

How a shard is published (stages/shard.py): its tar is written under a temporary dot-name and
renamed, then its ``_index/NNNNNN.parquet`` part is written; a rerun skips a shard only when both
exist, and ``index.parquet`` / ``shards.json`` / the sink's ``_SUCCESS.json`` come last.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest

CONFIG = ROOT / "configs" / "demo.yaml"
SMALL_SHARDS = "shard.samples_per_shard=2"  # 15 kept demo samples -> 8 shards: the disk fills between two
SLACK = 64 * 1024  # run.json rewrites, records, directory entries


def _used_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (whole pages, as tmpfs counts them)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


class Tmpfs:
    """A tmpfs of a given size mounted at ``where``; unmounted at teardown whatever happened."""

    def __init__(self, where: Path):
        self.where = where
        self.mounted = False

    def mount(self, size: int) -> None:
        self.where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
        self.mounted = True

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.where)], check=True)

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.where)]).returncode != 0:
                subprocess.run(["umount", "-l", str(self.where)])  # a straggling worker still has a file open
            self.mounted = False


@pytest.fixture
def small_disk(tmp_path):
    disk = Tmpfs(tmp_path / "disk")
    yield disk
    disk.unmount()


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """The demo input and an undisturbed run of it on an ordinary disk."""
    from pipeline.demo_data import build_demo

    root = tmp_path_factory.mktemp("disk_full")
    data = build_demo(root / "input")
    run_config(CONFIG, root / "reference", inputs=[str(data)], overrides=[SMALL_SHARDS])
    return data, root / "reference"


def _sailcurate_run(data: Path, run_dir: Path, capfd) -> tuple[int, str]:
    from pipeline.cli import main

    capfd.readouterr()
    rc = main(["run", str(CONFIG), "--input", str(data), "--out", str(run_dir), "--set", SMALL_SHARDS])
    return rc, capfd.readouterr().err


def _assert_same_result(run_dir: Path, ref: Path) -> None:
    tars = sorted(p.name for p in (ref / "shards").glob("*.tar"))
    assert sorted(p.name for p in (run_dir / "shards").glob("*.tar")) == tars
    for name in tars + ["index.parquet", "shards.json"]:
        assert (run_dir / "shards" / name).read_bytes() == (ref / "shards" / name).read_bytes(), name
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    assert assert_conservation(run_dir) == assert_conservation(ref)
    for stage in json.loads((ref / "run.json").read_text())["order"]:
        pd.testing.assert_frame_equal(manifest(run_dir, stage), manifest(ref, stage))


def _no_temporaries(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith("."))]
    assert not left, f"temporaries left behind: {left}"


def _assert_failed_with_disk_full(rc: int, err: str, folder: Path) -> None:
    assert rc == 2, err[-3000:]
    line = next((ln for ln in err.splitlines() if ln.startswith("sailcurate: storage error:")), None)
    assert line is not None, err[-3000:]
    # The message says what happened and names the file that could not be written.
    assert "[Errno 28] No space left on device" in line and f"'{folder}/" in line, line
    assert "the disk is full; free space and rerun the same command" in err
    assert "Traceback (most recent call last)" not in err, err[-3000:]


def test_disk_full_during_shard_write_fails_clearly_and_a_rerun_completes(reference, small_disk, capfd):
    data, ref = reference
    shard_bytes = _used_bytes(ref / "shards")
    before_shards = _used_bytes(ref) - shard_bytes
    small_disk.mount(before_shards + SLACK + shard_bytes // 2)  # room for half the shards
    run_dir = small_disk.where / "run"

    rc, err = _sailcurate_run(data, run_dir, capfd)
    _assert_failed_with_disk_full(rc, err, run_dir / "shards")
    shards = run_dir / "shards"
    # Nothing announces the shards as complete...
    assert not (shards / "shards.json").exists() and not (shards / "index.parquet").exists()
    assert not (run_dir / "checkpoints" / "shard" / "_SUCCESS.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] != "succeeded"
    # ...no partial tar is left under any name, and every tar that is there is whole.
    _no_temporaries(shards)
    written = sorted(p.name for p in shards.glob("*.tar"))
    assert len(written) < len(list((ref / "shards").glob("*.tar"))), "the disk never filled during the shard write"
    for name in written:
        assert (shards / name).read_bytes() == (ref / "shards" / name).read_bytes(), f"{name} is not whole"
    # A shard counts as done on a rerun only with its index part, and that part matches its tar.
    for part in sorted((shards / "_index").glob("*.parquet")):
        tar = f"demo-{part.stem}.tar"
        assert tar in written, f"index part {part.name} published for a missing shard"
        assert pq.read_table(part).equals(pq.read_table(ref / "shards" / "_index" / part.name))

    small_disk.resize(2 * _used_bytes(ref) + SLACK)  # free space
    rc, err = _sailcurate_run(data, run_dir, capfd)
    assert rc == 0, err[-3000:]
    assert "decode: up to date" in err and "filter: up to date" in err  # committed work was kept
    _assert_same_result(run_dir, ref)


def test_disk_full_during_checkpoint_write_fails_clearly_and_a_rerun_completes(reference, small_disk, capfd):
    data, ref = reference
    # Room for run.json (rewritten through a temporary: twice its size) and half the decode
    # checkpoint. Checkpoints hold media references, not bytes (a few pages in all), so the slack
    # the shard test allows would hold the whole checkpoint here.
    small_disk.mount(2 * _used_bytes(ref / "run.json") + _used_bytes(ref / "checkpoints" / "decode") // 2)
    run_dir = small_disk.where / "run"

    rc, err = _sailcurate_run(data, run_dir, capfd)
    parts = run_dir / "checkpoints" / "decode" / "parts"
    _assert_failed_with_disk_full(rc, err, parts.parent)  # a fragment, or a unit's row count beside them
    assert not (run_dir / "checkpoints" / "decode" / "_SUCCESS.json").exists()
    assert not (run_dir / "shards").exists()
    _no_temporaries(run_dir / "checkpoints")
    # Fragments written side by side may all be cut short, so none may be committed: each that is
    # holds what its name says (its chunk and row count), and a rerun redoes only the other chunks.
    for part in sorted(parts.glob("*.parquet")):
        assert pq.read_metadata(part).num_rows == int(part.name.split("--n")[1].split("--")[0])

    small_disk.resize(2 * _used_bytes(ref) + SLACK)
    rc, err = _sailcurate_run(data, run_dir, capfd)
    assert rc == 0, err[-3000:]
    assert "decode: resuming," in err
    _assert_same_result(run_dir, ref)
