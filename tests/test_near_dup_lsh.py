"""Image near-dup candidates by bit-sampling LSH: the recall the docstring states, against brute
force; candidates per row that do not grow with the corpus (the chunk keys they replaced did);
the same decisions whatever the block layout; dHash confirmation through Ray end to end."""
from __future__ import annotations

import io
import itertools
from math import sqrt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dedup.perceptual import (as_unsigned, candidate_probability, chunk_masks, image_hashes_bytes,
                              image_phash_bytes, lsh_bits_for, lsh_masks, lsh_tables_for, popcount)
from stages.perceptual_dedup import PHashDedupStage, PHashStage, image_group_pairs

THRESHOLD = 8


def random_hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


def plant(u: np.ndarray, per_distance: int, distances, seed: int) -> list[tuple[int, int, int]]:
    """Overwrite rows 1, 3, 5, ... with copies of rows 0, 2, 4, ... at d random bits: (a, b, d)."""
    rng = np.random.default_rng(seed)
    out, row = [], 0
    for d in distances:
        for _ in range(per_distance):
            flip = 0
            for pos in rng.choice(64, size=d, replace=False):
                flip |= 1 << int(pos)
            u[row + 1] = u[row] ^ np.uint64(flip)
            out.append((row, row + 1, d))
            row += 2
    return out


def stage_pairs(u: np.ndarray, masks: np.ndarray, threshold: int = THRESHOLD, u2=None, threshold2=None):
    """The stage's group rule over all key rows at once: (verified pairs as a set, candidate count)."""
    n, L = len(u), len(masks)
    u2 = np.zeros(n, dtype=np.uint64) if u2 is None else u2
    t = np.repeat(np.arange(L), n)
    idx = np.tile(np.arange(n), L)
    h, h2 = np.tile(u, L), np.tile(u2, L)
    order = np.lexsort((idx, h2, h, h & masks[t], t))
    t, h, h2, idx = t[order], h[order], h2[order], idx[order]
    rep, a, b, n_cand, _, _ = image_group_pairs(t, h.view(np.int64), h2.view(np.int64), masks, threshold, threshold2)
    dup = np.flatnonzero((rep != np.arange(len(rep))) & (t == 0))
    pairs = {(min(x, y), max(x, y)) for x, y in zip(idx[a].tolist() + idx[rep[dup]].tolist(),
                                                    idx[b].tolist() + idx[dup].tolist())}
    return pairs, n_cand


def brute_force(u: np.ndarray, threshold: int = THRESHOLD) -> set[tuple[int, int]]:
    d = popcount(u[:, None] ^ u[None, :])
    i, j = np.nonzero(np.triu(d <= threshold, 1))
    return set(zip(i.tolist(), j.tolist()))


# -- the curve --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 10_000, 1_000_000, 100_000_000])
def test_default_tables_are_the_fewest_reaching_the_target_recall(n):
    bits = lsh_bits_for(n)
    tables = lsh_tables_for(THRESHOLD, bits)
    assert candidate_probability(THRESHOLD, tables, bits) >= 0.95 > candidate_probability(THRESHOLD, tables - 1, bits)
    # Closer pairs are found more often, identical ones always.
    curve = [candidate_probability(d, tables, bits) for d in range(13)]
    assert curve[0] == 1.0 and all(x >= y for x, y in zip(curve, curve[1:]))


def test_masks_are_seeded_and_balanced():
    a, b = lsh_masks(28, 15, seed=0), lsh_masks(28, 15, seed=0)
    assert a.tolist() == b.tolist() and a.tolist() != lsh_masks(28, 15, seed=1).tolist()
    assert all(int(m).bit_count() == 15 for m in a)
    cover = [sum(int(m) >> bit & 1 for m in a) for bit in range(64)]  # 28 * 15 = 420 samples of 64 bits
    assert min(cover) >= 6 and max(cover) <= 7


def test_candidates_and_recall_match_brute_force():
    u = random_hashes(4000, seed=1)
    planted = plant(u, 60, range(13), seed=2)
    bits = lsh_bits_for(len(u))
    tables = lsh_tables_for(THRESHOLD, bits)
    masks = lsh_masks(tables, bits, seed=0)
    found, n_cand = stage_pairs(u, masks)
    # Candidates: the pairs that agree on every sampled bit of a table, once per such table;
    # identical hashes collapse and count once.
    x = (u[:, None] ^ u[None, :])[np.triu_indices(len(u), 1)]
    assert n_cand == sum(int(((x & m) == 0).sum() - (x == 0).sum()) for m in masks) + int((x == 0).sum())
    # Every pair reported is within the threshold (verification is exact) ...
    truth = brute_force(u)
    assert found <= truth
    # ... and the planted ones are found at the stated rate: all of them where a miss is unlikely
    # (analytic miss < 1e-3 per pair), and within 3 sigma of the analytic curve elsewhere (the
    # balanced masks do better than the curve, which assumes independent bit draws).
    for d in range(THRESHOLD + 1):
        pairs = [(a, b) for a, b, dd in planted if dd == d]
        rate = np.mean([p in found for p in pairs])
        p = candidate_probability(d, tables, bits)
        if 1 - p < 1e-3 / len(pairs):
            assert rate == 1.0, d
        else:
            assert rate >= p - 3 * sqrt(p * (1 - p) / len(pairs)), (d, rate, p)
    assert len(found & truth) / len(truth) >= 0.95  # against the exact all-pairs answer


def test_candidates_per_row_stay_bounded_as_rows_double():
    """Uniform hashes: the chunk keys' candidates per row double with n, the LSH keys' do not grow."""
    old, new, bits_used = [], [], []
    bucket_rows = 4  # small, so that a test-sized n already chooses its bits from the row count
    for n in (2000, 4000, 8000):
        u = random_hashes(n, seed=n)
        chunks = chunk_masks(THRESHOLD + 1)
        x = (u[:, None] ^ u[None, :])[np.triu_indices(n, 1)]
        hit = np.zeros(len(x), dtype=bool)
        for m in chunks:
            hit |= (x & m) == 0
        old.append(hit.sum() / n)
        bits = lsh_bits_for(n, bucket_rows=bucket_rows)
        tables = lsh_tables_for(THRESHOLD, bits)
        _, n_cand = stage_pairs(u, lsh_masks(tables, bits, seed=0))
        new.append(n_cand / n)
        bits_used.append(bits)
        assert n_cand / n <= 1.2 * tables * bucket_rows / 2  # ~tables * rows per bucket / 2, whatever n
    assert bits_used == [9, 10, 11]  # one more bit per doubling
    assert old[2] / old[0] > 3.5  # quadratic work: 4x the rows, ~4x the candidates per row
    assert max(new) < 1.5 * min(new)


# -- the stage through Ray --------------------------------------------------------------------
def _signed(u: np.ndarray) -> list[int]:
    return u.view(np.int64).tolist()


def _rows(n: int, seed: int):
    """n rows of random hashes with planted copies at 0-3 pHash bits (dHash 0-2 bits), one pair
    within the pHash threshold whose dHash is far (different pictures), and rows without hashes."""
    u, u2 = random_hashes(n, seed), random_hashes(n, seed + 1)
    planted = plant(u, 40, range(4), seed + 2)
    rng = np.random.default_rng(seed + 3)
    for a, b, _ in planted:
        u2[b] = u2[a] ^ np.uint64(1 << int(rng.integers(64)))
    far = (len(planted) * 2, len(planted) * 2 + 1)  # pHash 3 bits apart, dHash unrelated
    u[far[1]] = u[far[0]] ^ np.uint64(0b111)
    ids = [f"s{i:05d}" for i in range(n)]
    h, h2 = _signed(u), _signed(u2)
    h[-1] = None  # no hash: never a near duplicate
    prefer = rng.integers(0, 5, size=n).astype(float)
    table = pa.table({"sample_id": ids, "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()),
                      "phash": pa.array(h, pa.int64()), "dhash": pa.array(h2, pa.int64()),
                      "width": pa.array(prefer), "_chunk": [f"c{i % 3}" for i in range(n)],
                      "_decided_at": pa.nulls(n, pa.string())})
    return table, planted, far


def _expected(table: pa.Table, pairs) -> dict[str, str]:
    """Drops from exact connected components of the given pairs: best width, then smallest id."""
    ids, width = table.column("sample_id").to_pylist(), table.column("width").to_pylist()
    parent = list(range(len(ids)))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[max(find(a), find(b))] = min(find(a), find(b))
    comps: dict[int, list[int]] = {}
    for i in range(len(ids)):
        comps.setdefault(find(i), []).append(i)
    out = {}
    for members in comps.values():
        if len(members) > 1:
            rep = min(members, key=lambda i: (-width[i], ids[i]))
            out.update({ids[i]: f"near_dup_of:{ids[rep]}" for i in members if i != rep})
    return out


def _dropped(df: pd.DataFrame) -> dict[str, str]:
    d = df[df["status"] == "dropped"]
    return dict(zip(d["sample_id"], d["reason"]))


def test_stage_drops_exactly_the_confirmed_clusters_whatever_the_layout(ray_local):
    import ray.data as rd

    table, planted, far = _rows(3000, seed=7)
    u = as_unsigned(table.column("phash").to_numpy(zero_copy_only=False)[:-1].astype(np.int64))
    u2 = as_unsigned(table.column("dhash").to_numpy(zero_copy_only=False)[:-1].astype(np.int64))
    truth = [(a, b) for a, b in brute_force(u) if popcount(np.array([u2[a] ^ u2[b]]))[0] <= 10]
    assert far not in truth and {(a, b) for a, b, _ in planted} <= set(truth)
    expected = _expected(table, truth)

    results = []
    for blocks, partitions in ((1, None), (7, 3)):
        stage = PHashDedupStage(PHashDedupStage.Params(prefer="width", partitions=partitions), "near")
        out = stage.transform(rd.from_arrow(table).repartition(blocks), seed=0, log=print).to_pandas()
        assert sorted(out["sample_id"]) == sorted(table.column("sample_id").to_pylist())  # conservation
        results.append((_dropped(out), stage.run_stats))
    (drops, stats), (drops2, stats2) = results
    assert drops == expected and drops2 == expected
    assert stats == stats2
    assert stats["scheme"] == "bit_sampling" and stats["confirm"] == "dhash" and stats["confirm_threshold"] == 10
    assert stats["bits"] == lsh_bits_for(3000) and stats["tables"] == lsh_tables_for(THRESHOLD, stats["bits"])
    assert stats["rows_dropped"] == len(expected) and stats["verified_pairs"] == len(truth)


def test_without_confirmation_the_pHash_match_alone_drops(ray_local):
    import ray.data as rd

    table, planted, far = _rows(600, seed=11)
    ids = table.column("sample_id").to_pylist()
    confirmed = PHashDedupStage(PHashDedupStage.Params(), "near")
    out = _dropped(confirmed.transform(rd.from_arrow(table), seed=0, log=print).to_pandas())
    alone = PHashDedupStage(PHashDedupStage.Params(confirm=None), "near")
    out_alone = _dropped(alone.transform(rd.from_arrow(table), seed=0, log=print).to_pandas())
    assert ids[far[1]] not in out and out_alone[ids[far[1]]] == f"near_dup_of:{ids[far[0]]}"
    assert alone.run_stats["confirm"] is None
    assert set(out_alone) - set(out) == {ids[far[1]]}


def test_phash_stage_writes_both_hashes_from_one_decode():
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    batch = pd.DataFrame({"sample_id": ["a", "b"], "status": ["kept"] * 2, "reason": [None] * 2,
                          "image": [data, b"junk"]})
    out = PHashStage(PHashStage.Params(), "phash").process(batch.copy())
    assert (out.loc[0, "phash"], out.loc[0, "dhash"]) == image_hashes_bytes(data)
    assert out.loc[0, "phash"] == image_phash_bytes(data)
    assert out.loc[1, "status"] == "error" and pd.isna(out.loc[1, "dhash"])
    assert "dhash" in PHashStage(PHashStage.Params(), "phash").output_columns()
    assert "dhash" not in PHashStage(PHashStage.Params(second_output=None), "phash").output_columns()


def test_distinct_photos_are_far_apart_on_both_hashes():
    """The confirming hash separates different photos as well as pHash does."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "clock", "moon", "page"]
    hashes = {}
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        hashes[name] = as_unsigned(list(image_hashes_bytes(buf.getvalue())))
    for a, b in itertools.combinations(names, 2):
        d = popcount(hashes[a] ^ hashes[b])
        assert d[0] > THRESHOLD and d[1] > 10, (a, b, d)


def test_crawl_edits_stay_within_the_confirm_threshold():
    """The edits phash_dedup must catch (tests/test_perceptual_dedup.py) also keep the dHash close."""
    from stages.perceptual_dedup import CONFIRM_THRESHOLD
    from test_perceptual_dedup import EDITS, PHOTOS, encode, photo

    for name in PHOTOS:
        im = photo(name)
        base = as_unsigned(list(image_hashes_bytes(encode(im))))
        for edit, fn in EDITS.items():
            d = popcount(base ^ as_unsigned(list(image_hashes_bytes(fn(im)))))
            assert d[0] <= THRESHOLD and d[1] <= CONFIRM_THRESHOLD, (name, edit, d)
