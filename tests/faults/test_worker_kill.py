"""A Ray worker process killed with SIGKILL mid-stage costs a retry, never a sample.

Two stages are hit, each once, while a real in-process run is working through them:

- a CPU stage: the task that reads and decodes images (``configs/demo.yaml``, ingest + decode,
  a stateless task chain) is killed while decode's checkpoint is still being committed;
- a judge stage: the actor of the stateful judge pool (``configs/demo_judge.yaml``), found as the
  worker holding a connection to the judge endpoint, is killed mid-request.

Ray retries the lost task (Ray Data's tasks retry system failures) and restarts the lost actor,
which redoes its batch; the fragments a retry writes carry the same names (a hash of their
sample ids), so nothing is counted twice. The run must finish with conservation holding and the
same shards (byte for byte), shard index and manifests as an undisturbed run of the same config.

The judge endpoint is a ``SchemaServer`` (tests/faults/schema_server.py): it stands in for the
model server, answering each request as a pure function of the request, with a small delay per
request so the judge stage lasts long enough to be hit. The runner, the stages, the openai
engine client, Ray's retries, the manifests and the shards are all real.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import psutil

from conftest import ROOT, run_config
from faults.endpoint import config_on_server
from faults.schema_server import FaultPlan, SchemaServer
from helpers import assert_conservation

# Ray titles a worker process "ray::<what it runs>" while it runs it (Ray Data names fused
# tasks after their functions, actor pool workers "MapWorker(...)").
SOURCE_DECODE_TASK = "ray::MapBatches(read_and_chain)"
POOL_ACTOR = "ray::MapWorker("


# -- finding and killing one worker ----------------------------------------------------------------
def own_ray_workers(title_prefix: str) -> list[psutil.Process]:
    """Ray worker processes of *this* test process's Ray whose title starts with ``title_prefix``.

    The session's Ray runs in-process, so its raylet and workers are our descendants; other Ray
    clusters on the same host (other test runs) are not, and are never touched."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(title_prefix):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def busy(actor: psutil.Process) -> bool:
    """An actor pool worker running a batch: Ray titles it "...).submit" while it does."""
    try:
        return actor.cmdline()[0].endswith(".submit")
    except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
        return False


def talks_to(proc: psutil.Process, port: int) -> bool:
    try:
        return any(c.raddr and c.raddr.port == port for c in proc.net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass
class Kill:
    pid: int
    title: str
    stage_finished_at_kill: bool  # the stage's checkpoint completion record existed
    done_at_kill: int             # work units of the stage done when the signal was sent
    gone: bool                    # the process was dead afterwards


class KillOnce(threading.Thread):
    """Polls for a target worker and SIGKILLs the first one found, exactly once."""

    def __init__(self, find: Callable[[], psutil.Process | None], stage_finished: Callable[[], bool],
                 work_done: Callable[[], int]):
        super().__init__(daemon=True)
        self.find, self.stage_finished, self.work_done = find, stage_finished, work_done
        self.kill: Kill | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            proc = self.find()
            if proc is not None:
                finished, done = self.stage_finished(), self.work_done()
                try:
                    title = " ".join(proc.cmdline()).strip()
                    proc.send_signal(signal.SIGKILL)  # psutil checks the pid was not reused
                except psutil.NoSuchProcess:
                    continue  # it finished its task and exited in between: look again
                self.kill = Kill(proc.pid, title, finished, done, gone=_dies(proc))
                return
            time.sleep(0.01)

    def __enter__(self) -> "KillOnce":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=30)


def _dies(proc: psutil.Process, within_s: float = 15.0) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# -- what a run published -------------------------------------------------------------------------
def assert_same_outputs(got: Path, want: Path) -> None:
    """Byte-identical shard files (tars, index, shard list); manifests with the same rows.
    (Manifests hold no timing fields; run.json's seconds and dates differ and are not compared.)"""
    files = sorted(p.relative_to(want) for p in (want / "shards").rglob("*") if p.is_file())
    assert sorted(p.relative_to(got) for p in (got / "shards").rglob("*") if p.is_file()) == files
    assert any(f.suffix == ".tar" for f in files)
    for rel in files:
        assert (got / rel).read_bytes() == (want / rel).read_bytes(), f"{rel} differs from the undisturbed run's"
    manifests = sorted(p.name for p in (want / "manifests").glob("*.parquet"))
    assert sorted(p.name for p in (got / "manifests").glob("*.parquet")) == manifests
    for name in manifests:
        a, b = (pd.read_parquet(d / "manifests" / name).sort_values("sample_id", ignore_index=True)
                for d in (got, want))
        pd.testing.assert_frame_equal(a, b, obj=f"manifests/{name}")


def segment_dir(run_dir: Path, stage: str) -> Path:
    """The checkpoint folder of the segment that runs ``stage`` (named after its last stage)."""
    record = json.loads((run_dir / "run.json").read_text())
    return run_dir / "checkpoints" / record["stages"][stage]["segment"]


# -- the tests ----------------------------------------------------------------------------------------
def test_sigkill_of_a_cpu_stage_worker_is_retried_and_the_shards_match(ray_local, tmp_path):
    from pipeline.demo_data import build_demo

    data = build_demo(tmp_path / "input", repeat=4)  # 80 rows: 10 source chunks of 8
    overrides = ["decode.resources.batch_size=4"]  # many small tasks over the stage's whole run
    config = ROOT / "configs" / "demo.yaml"
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_config(config, reference, inputs=[str(data)], overrides=overrides)
    decode = segment_dir(reference, "decode")
    chunks = len(json.loads((decode / "_SUCCESS.json").read_text())["chunks"])
    assert chunks == 10

    ckpt = killed / "checkpoints" / decode.name
    units_read = lambda: len(list((ckpt / "counts").glob("*.json")))  # the source reader records each unit
    killer = KillOnce(  # once a unit is through: mid-stage, with work done and work to do
        find=lambda: next(iter(own_ray_workers(SOURCE_DECODE_TASK)), None) if units_read() >= 2 else None,
        stage_finished=lambda: (ckpt / "_SUCCESS.json").exists(),
        work_done=units_read,
    )
    with killer:
        record = run_config(config, killed, inputs=[str(data)], overrides=overrides)

    kill = killer.kill
    print(kill)
    assert kill is not None, "no ingest/decode worker was ever seen running"
    assert kill.title.startswith(SOURCE_DECODE_TASK)
    assert not kill.stage_finished_at_kill and 2 <= kill.done_at_kill < chunks, kill
    assert kill.gone, f"worker {kill.pid} survived SIGKILL"
    assert record["status"] == "succeeded"
    assert assert_conservation(killed) == assert_conservation(reference)
    assert_same_outputs(killed, reference)


def test_sigkill_of_the_judge_actor_is_retried_and_the_shards_match(ray_local, tmp_path):
    """The disturbed run reruns the judge stage onward (``--from judge``) on a copy of the
    undisturbed run's committed upstream checkpoints, so only the judge stage is hit (and the
    CLIP stages are not paid for twice)."""
    import shutil

    from pipeline.demo_data import build_demo

    data = build_demo(tmp_path / "input", repeat=2)  # 40 rows, 29 reach the judge
    overrides = ["judge.resources.batch_size=8"]  # several batches: the kill lands mid-stage
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    with SchemaServer(FaultPlan(delay_s=0.1)) as server:  # every answer takes 0.1 s: a slow model
        config = config_on_server(ROOT / "configs" / "demo_judge.yaml", tmp_path / "judge.yaml", server.url,
                                  inputs=[str(data)], overrides=overrides)
        answered = lambda: sum(server.served.values())
        run_config(config, reference)
        requests = answered()  # one attempt per request: the plan has no faults
        judged = assert_conservation(reference)["judge"]["in"]
        assert requests == 2 * judged > 16  # vir + ita per row, more than one batch

        # The disturbed run starts from the reference's committed upstream; all that the judge
        # stage and the stages after it wrote is removed, so it must be written anew.
        shutil.copytree(reference, killed)
        order = json.loads((reference / "run.json").read_text())["order"]
        for stage in order[order.index("judge"):]:
            (killed / "manifests" / f"{stage}.parquet").unlink()
            shutil.rmtree(segment_dir(killed, stage), ignore_errors=True)
        shutil.rmtree(killed / "shards")
        segment = segment_dir(reference, "judge").name
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        busy_judges = lambda: [p for p in own_ray_workers(POOL_ACTOR) if busy(p) and talks_to(p, port)]
        killer = KillOnce(
            find=lambda: next(iter(busy_judges()), None) if answered() - requests >= 8 else None,
            stage_finished=lambda: (killed / "checkpoints" / segment / "_SUCCESS.json").exists(),
            work_done=lambda: answered() - requests,
        )
        with killer:
            record = run_config(config, killed, from_stage="judge")
        resent = answered() - requests

    kill = killer.kill
    print(kill)
    assert kill is not None, "no judge actor was ever seen talking to the endpoint"
    assert kill.title.startswith(POOL_ACTOR)
    assert not kill.stage_finished_at_kill and 8 <= kill.done_at_kill < requests, kill
    assert kill.gone, f"judge actor {kill.pid} survived SIGKILL"
    assert resent >= requests  # every request answered again; the killed batch's twice
    assert record["status"] == "succeeded"
    assert record["stages"]["judge"]["ran"]
    assert assert_conservation(killed) == assert_conservation(reference)
    assert_same_outputs(killed, reference)
