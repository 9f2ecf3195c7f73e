"""Object storage: a whole run reads its input from and writes everything to s3:// URIs.

The S3 server is moto in server mode on 127.0.0.1 (as s3fs's own test suite does), run from
its own small venv (`make venv` builds .venv/s3server: moto's botocore pins clash with the
main stack). The pipeline runs through the CLI in a subprocess so that its Ray workers get
the endpoint and credentials from the environment, exactly as on a cluster.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-never-logged-7f3a"


def _moto_server() -> Path:
    path = Path(os.environ.get("SAILCURATE_MOTO_SERVER", ROOT / ".venv" / "s3server" / "bin" / "moto_server"))
    if not path.exists():
        pytest.fail(f"{path} missing: `make venv` installs the S3 test server (moto) into .venv/s3server")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(_moto_server()), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}", scheme="http").create_dir("bkt")
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def _upload(local: Path, uri: str) -> None:
    from pipeline import storage

    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.write_bytes(f"{uri}/{p.relative_to(local)}", p.read_bytes())


def _sailcurate(env: dict, *args: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    full.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=900)


def _shard_bytes(run: str) -> dict[str, bytes]:
    from pipeline import storage

    return {i.base_name: storage.read_bytes(i.path) for i in storage.list_files(f"{run}/shards", ".tar")}


def test_a_run_reads_and_writes_s3_and_resumes_there(s3_env, demo_input, demo_run):
    """Input, checkpoints, manifests and shards all live in the bucket; the shards equal a local
    run's byte for byte; a rerun skips every stage; a run that lost its last stage's work and
    completion record (a crash before publish) is redone from the checkpoints before it."""
    import pandas as pd

    from pipeline import storage

    _upload(demo_input, "s3://bkt/demo_data")
    run = "s3://bkt/runs/demo"
    first = _sailcurate(s3_env, "run", "configs/demo.yaml", "--input", "s3://bkt/demo_data", "--out", run)
    assert first.returncode == 0, first.stderr[-3000:]
    local_shards = {p.name: p.read_bytes() for p in sorted((demo_run / "shards").glob("*.tar"))}
    assert local_shards and _shard_bytes(run) == local_shards

    fs, path = storage.resolve(f"{run}/manifests/decode.parquet")
    decode = pd.read_parquet(path, filesystem=fs)
    local_decode = pd.read_parquet(demo_run / "manifests" / "decode.parquet")
    assert sorted(decode["sample_id"]) == sorted(local_decode["sample_id"])
    assert storage.read_json(f"{run}/run.json")["status"] == "succeeded"

    again = _sailcurate(s3_env, "run", "configs/demo.yaml", "--input", "s3://bkt/demo_data", "--out", run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("up to date") + again.stderr.count("up to date") >= 1
    record = storage.read_json(f"{run}/run.json")
    assert all(not s["ran"] for s in record["stages"].values())

    # A crash after the filter segment wrote part of its fragments but before it published:
    # no completion record, one fragment missing. The rerun redoes what is missing.
    ckpt = f"{run}/checkpoints/filter"
    storage.remove(f"{ckpt}/_SUCCESS.json")
    parts = storage.list_files(f"{ckpt}/parts", ".parquet")
    assert parts
    storage.remove(parts[0].path)
    resumed = _sailcurate(s3_env, "run", "configs/demo.yaml", "--input", "s3://bkt/demo_data", "--out", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _shard_bytes(run) == local_shards
    record = storage.read_json(f"{run}/run.json")
    assert record["stages"]["filter"]["ran"] and not record["stages"]["decode"]["ran"]

    # Credentials come from the environment and are never written or printed.
    for proc in (first, again, resumed):
        assert SECRET not in proc.stdout + proc.stderr
    assert SECRET not in storage.read_bytes(f"{run}/run.json").decode()


def test_missing_bucket_is_a_clear_error(s3_env):
    proc = _sailcurate(s3_env, "run", "configs/demo.yaml", "--input", "s3://no-such-bucket/raw", "--out", "s3://bkt/runs/x")
    assert proc.returncode != 0
    assert "no-such-bucket" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
