"""Run the driver's data-reading steps as Ray tasks.

Why: the driver only coordinates, so its memory must not depend on how much data a run holds.
Deriving manifests reads every checkpoint fragment; done on the driver, Arrow's allocator
(mimalloc) kept what the reads touched, and the driver grew with the rows (4 MiB -> 78 MiB of
allocator pages for one 24,000-row segment, with at most 6 MiB of Arrow data alive at once).
In a task that memory belongs to a worker, which Ray reuses or ends.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


def off_driver(fn: Callable[..., T], *args: Any, num_cpus: float = 0.25) -> T:
    """``fn(*args)`` in a Ray task when Ray is up (retried if its worker dies; the steps that go
    through here publish their outputs atomically, so a retry is safe), else in this process."""
    import ray

    if not ray.is_initialized():
        return fn(*args)
    return ray.get(ray.remote(num_cpus=num_cpus, max_retries=3)(fn).remote(*args))
