"""Resampling primitives: seeded per-row keys, n-gram statistics, and a distributed k-th key
(radix select over Ray Data). The stage kinds that use them live in ``stages/resample.py``."""
