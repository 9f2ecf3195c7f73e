"""Hypothesis settings for the fuzz suite: few examples, no deadline, derandomized.

The fuzz tests run in CI on every change, so they trade breadth for a fixed, fast run: the
same examples every time (``derandomize``), no per-example deadline (a slow, busy machine must
not fail a test), and the failing example's reproduction blob printed (``print_blob``). Set
``HYPOTHESIS_PROFILE=fuzz-deep`` to explore many more random examples locally.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("fuzz-deep", max_examples=500, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
