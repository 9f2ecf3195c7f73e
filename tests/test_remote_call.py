"""off_driver: the driver's data-reading steps (deriving manifests, concatenating shard indexes)
run as Ray tasks, so the driver's memory does not grow with the data (BENCHMARKS.md, driver)."""
import os

import pytest

from pipeline.remote_call import off_driver


# Lambdas: Ray's workers cannot import this test module, so the functions travel by value.
_pid_and_sum = lambda a, b: (__import__("os").getpid(), a + b)  # noqa: E731
_fail = lambda uri: open(uri)  # noqa: E731, SIM115


def test_without_ray_the_step_runs_here(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a process that never started Ray
    assert off_driver(_pid_and_sum, 2, 3) == (os.getpid(), 5)


def test_with_ray_the_step_runs_in_a_worker_and_its_error_keeps_its_type(ray_local):
    pid, total = off_driver(_pid_and_sum, 2, 3)
    assert total == 5 and pid != os.getpid()
    with pytest.raises(FileNotFoundError, match="no-such-dir/x.parquet"):
        off_driver(_fail, "/no-such-dir/x.parquet")

