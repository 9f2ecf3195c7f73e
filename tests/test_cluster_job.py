"""The same command runs on a real Ray cluster through `ray job submit --working-dir .`."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import assert_conservation

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def local_cluster(tmp_path):
    """`ray start --head` on 127.0.0.1 with its own ports and temp dir; stopped in teardown, even on failure."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 clusters require a token (written to ~/.ray/auth_token by `ray start`); the CLI must opt in.
    env["RAY_AUTH_MODE"] = "token"
    gcs, dash = _free_port(), _free_port()
    # Every listening port chosen free: the defaults (e.g. the agent's 52365) clash with the in-process Ray
    # other tests keep running.
    ports = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port"):
        ports += [flag, str(_free_port())]
    temp_dir = Path("/tmp") / f"ray_sc_{os.getpid()}_{gcs}"  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--disable-usage-stats", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--temp-dir", str(temp_dir), *ports, "--block"],
        env=env, cwd=ROOT, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            if _ray("job", "list", "--address", address, env=env, timeout=60).returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("the Ray dashboard never answered:\n" + (tmp_path / "head.log").read_text()[-3000:])
        yield address, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        head.wait(timeout=30)


def test_demo_runs_as_a_ray_job(local_cluster, demo_input, tmp_path):
    address, env = local_cluster
    run_dir = tmp_path / "job_run"
    for _ in range(30):  # the node's agent comes up a little after the dashboard
        submit = _ray("job", "submit", "--address", address, "--working-dir", ".", "--no-wait", "--",
                      "sailcurate", "run", "configs/demo.yaml", "--input", str(demo_input), "--out", str(run_dir),
                      env=env)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job_id = re.search(r"(raysubmit_\w+)", submit.stdout + submit.stderr).group(1)
    status = ""
    deadline = time.time() + 300
    while time.time() < deadline:
        out = _ray("job", "status", "--address", address, job_id, env=env)
        text = (out.stdout + out.stderr).upper()  # the CLI says "Job '...' succeeded"
        status = next((s for s in ("SUCCEEDED", "FAILED", "STOPPED") if s in text), "")
        if status:
            break
        time.sleep(3)
    logs = _ray("job", "logs", "--address", address, job_id, env=env)
    logs = logs.stdout + logs.stderr
    assert status == "SUCCEEDED", f"job {job_id}: {status or 'timed out'}\n{logs[-4000:]}"
    # The job ran against the cluster (RAY_ADDRESS), not a Ray of its own, and left a full run directory.
    assert "Started a local Ray instance" not in logs
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert sorted(p.name for p in (run_dir / "shards").glob("*.tar")) == [f"demo-{i:06d}.tar" for i in range(3)]
    counts = assert_conservation(run_dir)
    assert counts["shard"]["kept"] == 15
    assert "shard" in logs and "kept" in logs  # the per-stage summary reached the job log
