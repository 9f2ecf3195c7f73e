"""minhash_dedup's candidate verification: a low banding threshold finds the pairs, the exact
Jaccard of the shingle sets decides them (bench/dedup.py measures recall and precision)."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest
from pydantic import ValidationError

from dedup.minhash import band_hashes, optimal_bands, shingles, signatures
from helpers import pydoc_paragraphs
from stages.dedup import MinHashDedupStage


def _jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def _long_paragraphs() -> list[str]:
    return pydoc_paragraphs(80)


def _edited(text: str, lo: float, hi: float, rng: random.Random) -> str:
    """Delete random words until the Jaccard to ``text`` falls in [lo, hi)."""
    for _ in range(100):
        words = text.split()
        while _jaccard(" ".join(words), text) >= hi:
            del words[rng.randrange(len(words))]
        out = " ".join(words)
        if lo <= _jaccard(out, text) < hi:
            return out
    raise AssertionError("no edit lands in the range")


def _shared_band(texts: list[str], bands: int, rows: int) -> bool:
    """Do all the texts fall in one LSH bucket of some band?"""
    bh = band_hashes(signatures(texts), bands, rows)
    return bool((bh == bh[0]).all(axis=0).any())


@pytest.fixture(scope="module")
def trio():
    """s000: an edit of P at J in [0.6, 0.7) (below the threshold); s001: P; s002: an edit of P at
    J in [0.85, 0.95); all three in one bucket of the 25 x 5 banding (candidate_threshold 0.5), so
    s000, the bucket's smallest id, is the star centre that verification must not connect through."""
    paras = _long_paragraphs()
    bands, rows = optimal_bands(0.5, 128)
    for seed in range(50):
        rng = random.Random(seed)
        base = paras[seed % len(paras)]
        far, near = _edited(base, 0.6, 0.7, rng), _edited(base, 0.85, 0.95, rng)
        if _jaccard(far, near) < 0.8 and _shared_band([far, base, near], bands, rows):
            others = [p for p in paras if p != base][:3]
            return [far, base, near] + others
    raise AssertionError("no seed gives a shared bucket")


def _dataset(texts, blocks):
    import ray.data as rd

    n = len(texts)
    table = pa.table({
        "sample_id": [f"s{i:03d}" for i in range(n)], "source": ["t"] * n, "source_key": [str(i) for i in range(n)],
        "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()), "text": texts,
        "_chunk": ["c0"] * n, "_decided_at": pa.nulls(n, pa.string()),
    })
    return rd.from_arrow(table).repartition(blocks)


def _dropped(stage, ds) -> dict[str, str]:
    out = stage.transform(ds, seed=0, log=print).to_pandas()
    assert len(out) == ds.count()
    d = out[out["status"] == "dropped"]
    return dict(zip(d["sample_id"], d["reason"]))


def test_verification_keeps_the_pair_below_threshold_and_joins_the_one_above(ray_local, trio):
    wide = dict(threshold=0.8, candidate_threshold=0.5)
    # Without verification every candidate is a duplicate: the J<0.7 edit goes too.
    plain = _dropped(MinHashDedupStage(MinHashDedupStage.Params(**wide), "near"), _dataset(trio, 2))
    assert set(plain) == {"s001", "s002"} and set(plain.values()) == {"near_dup_of:s000"}
    # With it, only the J>=0.85 pair is joined, although the bucket's centre (s000) was rejected.
    verified = _dropped(MinHashDedupStage(MinHashDedupStage.Params(verify=True, **wide), "near"), _dataset(trio, 3))
    assert verified == {"s002": "near_dup_of:s001"}


def test_candidate_threshold_is_not_above_threshold():
    with pytest.raises(ValidationError, match="candidate_threshold"):
        MinHashDedupStage.Params(threshold=0.8, candidate_threshold=0.9)
