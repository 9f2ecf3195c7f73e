"""Shared fixtures: one in-process Ray for the session, demo inputs, a run helper."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for all in-process runs (starting Ray costs seconds)."""
    import ray

    from pipeline.runner import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory) -> Path:
    """The demo input as `make demo` builds it: 20 captioned real images, some broken on purpose."""
    from pipeline.demo_data import build_demo

    return build_demo(tmp_path_factory.mktemp("demo_input"))


@pytest.fixture(scope="session")
def demo_run(ray_local, demo_input, tmp_path_factory) -> Path:
    """One finished demo run that read-only tests share."""
    from pipeline.config import load_config
    from pipeline.runner import RunOptions, run_pipeline

    run_dir = tmp_path_factory.mktemp("demo_run") / "run"
    cfg = load_config(ROOT / "configs" / "demo.yaml", inputs=[str(demo_input)])
    run_pipeline(cfg, RunOptions(run_dir=str(run_dir)))
    return run_dir


def run_config(config_path, run_dir, inputs=(), overrides=(), smoke=False, limit=None, **options):
    """Run a pipeline in-process (the session's Ray) and return the run record."""
    from pipeline.config import load_config
    from pipeline.runner import RunOptions, run_pipeline

    cfg = load_config(config_path, overrides=list(overrides), inputs=list(inputs), smoke=smoke, limit=limit)
    return run_pipeline(cfg, RunOptions(run_dir=str(run_dir), **options))


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
