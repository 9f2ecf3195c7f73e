"""Per-row sampling keys that depend only on (seed, salt, sample_id), never on block layout.

A row's uniform draw ``u`` is a keyed BLAKE2b hash of its ``sample_id``: the
same row gets the same ``u`` whatever the partitioning, worker count or run,
and a different seed or stage name (the salt) gives an independent draw.

Every resample stage keeps, per group, the K rows with the smallest uint64
key; the keys are:

- uniform sampling without replacement: the hash itself (``row_hashes``);
- weighted sampling without replacement (Efraimidis-Spirakis): keeping the
  K largest ``u ** (1 / w)`` equals keeping the K smallest ``-ln(u) / w``,
  a non-negative float64 whose IEEE bit pattern, read as uint64, sorts the
  same way (``es_keys``).

``sortable_floats`` maps any float64 to a uint64 with the same order, so the
same distributed selection also finds exact quantiles of a numeric column.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

ALL_ONES = (1 << 64) - 1
_SIGN = np.uint64(1 << 63)


def row_hashes(sample_ids: Sequence[str], seed: int, salt: str) -> np.ndarray:
    """uint64 keyed hash of each sample_id (BLAKE2b-64 keyed by seed and salt)."""
    key = hashlib.blake2b(f"sailcurate-resample\0{seed}\0{salt}".encode(), digest_size=32).digest()
    digests = b"".join(hashlib.blake2b(str(s).encode("utf-8", "surrogateescape"), digest_size=8, key=key).digest()
                       for s in sample_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64) if digests else np.zeros(0, np.uint64)


def uniforms(hashes: np.ndarray) -> np.ndarray:
    """The top 53 bits of each hash as a float in the open interval (0, 1)."""
    return ((hashes >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0 ** -53)


def es_keys(hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Efraimidis-Spirakis keys as sortable uint64: smaller = kept first. Weights must be > 0."""
    with np.errstate(divide="ignore"):
        scores = -np.log(uniforms(hashes)) / np.asarray(weights, dtype=np.float64)
    return np.ascontiguousarray(scores, dtype=np.float64).view(np.uint64)


def sortable_floats(values: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (negatives flipped, sign bit set on positives)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits >> np.uint64(63) == 1, ~bits, bits | _SIGN)


def float_from_sortable(key: int) -> float:
    """Inverse of ``sortable_floats`` for one key."""
    k = np.uint64(key)
    bits = k & ~_SIGN if k >> np.uint64(63) == 1 else ~k
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])
