"""Image near-duplicate candidates, measured: bit-sampling LSH (phash_dedup today) against the
contiguous-chunk pigeonhole keys it replaced (chunks = threshold + 1), in the same run.

Part 1, hashes (``--n``, default 100,000; 1,000,000 runs in a few minutes here)
    Uniformly random 64-bit hashes, plus ``--planted`` pairs at every Hamming distance
    0..12 (a copy of a random row with d random bits flipped). Both schemes key the same
    hashes. The new one runs the stage's own per-group code (``image_group_pairs``) one
    LSH table at a time (a bucket never spans tables, so this is the stage's answer) and
    verifies every candidate. The old one is counted, not verified (at 1M it would
    verify ~3e10 pairs): sum over chunks of C(bucket size, 2), an upper bound of its
    distinct pairs, and the exact distinct count on the ``--exact`` subset, scaled by
    (n / subset)^2.
    Ground truth: the planted pairs (recall at each distance: measured on the stage's
    output and on the masks alone, beside the analytic curve), and every pair of the
    first ``--exact`` rows by numpy popcount (exact all-pairs answer within the threshold).

Part 2, images (``--images``, default 4,000)
    Procedurally generated distinct images (seeded: gradients, block textures and random
    shapes, 64-400 px, JPEG), plus the scikit-image photos; a share get a planted near
    copy (re-encode, rescale, 1-3% crop, brightness/contrast, a colour-channel tint).
    Both hashes come from the same decode as in the ``phash`` stage. Every pair is
    compared (all pairs, popcount): pairs within the pHash threshold that are not planted
    are false matches; precision = planted / all within threshold, with pHash alone and
    confirmed by dHash at several thresholds; the rate of false matches per pair of
    distinct images gives the expected false pairs and precision at 1M images.

Run:  .venv/bin/python bench/near_dedup.py --n 100000
      .venv/bin/python bench/near_dedup.py --n 1000000 --images 0
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from math import comb
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup.perceptual import (as_unsigned, candidate_probability, chunk_masks, first_collision,  # noqa: E402
                              lsh_bits_for, lsh_masks, lsh_tables_for, measured_recall, popcount)
from stages.perceptual_dedup import CONFIRM_THRESHOLD, image_group_pairs  # noqa: E402

DISTANCES = range(0, 13)


# -- corpus of hashes -----------------------------------------------------------------------------
def hash_corpus(n: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n int64 hashes; planted pairs (a, b, d) sit in the first rows (a < b), so the exact
    subset holds them all."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    pairs = []
    row = 0
    for d in DISTANCES:
        for _ in range(planted):
            flip = np.uint64(0)
            for pos in rng.choice(64, size=d, replace=False):
                flip |= np.uint64(1) << np.uint64(pos)
            u[row + 1] = u[row] ^ flip
            pairs.append((row, row + 1, d))
            row += 2
    if row > n:
        raise SystemExit(f"--n {n} is too small for {planted} planted pairs at {len(DISTANCES)} distances")
    p = np.array(pairs, dtype=np.int64)
    return u.view(np.int64), p[:, :2], p[:, 2]


def exact_pairs(u: np.ndarray, threshold: int, block: int = 2048) -> set[tuple[int, int]]:
    """Every pair (i < j) of ``u`` within ``threshold`` bits: all pairs by popcount, in blocks."""
    out: set[tuple[int, int]] = set()
    for s in range(0, len(u), block):
        x = popcount(u[s:s + block, None] ^ u[None, :])
        ii, jj = np.nonzero(x <= threshold)
        ii = ii + s
        keep = ii < jj
        out.update(zip(ii[keep].tolist(), jj[keep].tolist()))
    return out


def chunk_candidates_exact(u: np.ndarray, masks: np.ndarray, block: int = 1024) -> int:
    """Distinct pairs of ``u`` that share some chunk (the old stage's candidate count)."""
    total = 0
    for s in range(0, len(u), block):
        x = u[s:s + block, None] ^ u[None, :]
        hit = np.zeros(x.shape, dtype=bool)
        for m in masks:
            hit |= (x & m) == 0
        ii, jj = np.nonzero(hit)
        total += int(((ii + s) < jj).sum())
    return total


# -- the two schemes ------------------------------------------------------------------------------
def old_scheme(h: np.ndarray, threshold: int) -> dict:
    t0 = time.perf_counter()
    masks = chunk_masks(threshold + 1)
    u = as_unsigned(h)
    bucket_sum, largest = 0, 0
    for m in masks:
        _, counts = np.unique(u & m, return_counts=True)
        bucket_sum += int((counts * (counts - 1) // 2).sum())
        largest = max(largest, int(counts.max()))
    return {"masks": masks, "bucket_pairs": bucket_sum, "largest_bucket": largest,
            "seconds": time.perf_counter() - t0}


def new_scheme(h: np.ndarray, h2: np.ndarray | None, masks: np.ndarray, threshold: int,
               confirm_threshold: int | None) -> dict:
    """The stage's pair rule, one table at a time: verified pairs (i < j, row indices)."""
    t0 = time.perf_counter()
    n = len(h)
    u = as_unsigned(h)
    u2 = as_unsigned(h2) if h2 is not None else np.zeros(n, dtype=np.uint64)
    idx = np.arange(n, dtype=np.int64)
    a_all, b_all = [], []
    n_cand = n_ver = largest = 0
    for t, m in enumerate(masks):
        order = np.lexsort((idx, u2, u, u & m))
        tt = np.full(n, t, dtype=np.int64)
        rep, a, b, c, v, big = image_group_pairs(tt, u[order].view(np.int64), u2[order].view(np.int64), masks,
                                                 threshold, confirm_threshold)
        n_cand, n_ver, largest = n_cand + c, n_ver + v, max(largest, big)
        a_all.append(order[a])
        b_all.append(order[b])
        if t == 0:  # identical rows: verified duplicates of their first row, counted in table 0
            dup = np.flatnonzero(rep != np.arange(n))
            a_all.append(order[rep[dup]])
            b_all.append(order[dup])
    a, b = np.concatenate(a_all), np.concatenate(b_all)
    pairs = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    return {"candidates": n_cand, "verified_pairs": n_ver, "pairs": pairs, "largest_bucket": largest,
            "seconds": time.perf_counter() - t0}


def part_hashes(n: int, planted: int, subset: int, threshold: int, seed: int) -> None:
    t0 = time.perf_counter()
    h, pp, pd_ = hash_corpus(n, planted, seed)
    print(f"== hashes: n={n:,} uniform random + {len(pp):,} planted pairs ({planted} at each d in 0..12); "
          f"built in {time.perf_counter() - t0:.1f} s")
    bits = lsh_bits_for(n)
    tables = lsh_tables_for(threshold, bits)
    masks = lsh_masks(tables, bits, 0)
    print(f"new scheme (stage defaults for {n:,} rows): bit-sampling LSH, {tables} tables x {bits} bits, "
          f"seed 0; key rows per row {tables}")

    old = old_scheme(h, threshold)
    sub = as_unsigned(h[:subset])
    t0 = time.perf_counter()
    old_sub = chunk_candidates_exact(sub, old["masks"])
    old_est = old_sub * (n / subset) ** 2 if subset < n else old_sub
    print(f"old scheme (chunks={threshold + 1}): pairs examined, sum of C(bucket,2): {old['bucket_pairs']:,} "
          f"({old['bucket_pairs'] / n:,.1f} per row), largest bucket {old['largest_bucket']:,}, counted in "
          f"{old['seconds']:.1f} s; distinct candidate pairs on the {subset:,}-row subset {old_sub:,} "
          f"({time.perf_counter() - t0:.1f} s) -> ~{old_est:,.0f} at n ({old_est / n:,.1f} per row); "
          f"recall 1 within {threshold} bits")

    new = new_scheme(h, None, masks, threshold, None)
    print(f"new scheme: {new['candidates']:,} candidate pairs examined ({new['candidates'] / n:.2f} per row), "
          f"{new['verified_pairs']:,} verified, largest bucket {new['largest_bucket']}, {new['seconds']:.1f} s "
          f"(keys, sort, candidates, verification; numpy, one process)")
    print(f"pairs examined old/new: {old['bucket_pairs'] / max(1, new['candidates']):,.0f}x")

    print(f"recall of planted pairs by distance (threshold {threshold}):")
    print("    d  analytic  masks(MC)  candidates  found(verified)")
    x = as_unsigned(h[pp[:, 0]]) ^ as_unsigned(h[pp[:, 1]])
    cand = first_collision(x, masks) >= 0
    found = np.array([(int(a), int(b)) in new["pairs"] for a, b in pp])
    for d in DISTANCES:
        sel = pd_ == d
        mc = measured_recall(masks, d, 4000, seed=d)
        ver = f"{found[sel].mean():.4f}" if d <= threshold else "   -  "
        print(f"   {d:2d}   {candidate_probability(d, tables, bits):.4f}    {mc:.4f}     "
              f"{cand[sel].mean():.4f}      {ver}")

    t0 = time.perf_counter()
    truth = exact_pairs(sub, threshold)
    in_sub = {p for p in new["pairs"] if p[1] < subset}
    hit = len(truth & in_sub)
    unplanted = len(new["pairs"] - {(int(a), int(b)) for a, b in pp})
    print(f"exact all-pairs on the first {subset:,} rows ({time.perf_counter() - t0:.1f} s): {len(truth):,} pairs "
          f"within {threshold}; the new scheme found {hit:,} (recall {hit / max(1, len(truth)):.4f}), "
          f"{len(in_sub - truth)} outside the threshold (0 expected: every pair is verified)")
    print(f"verified pairs that are not planted (random hashes within {threshold} bits by chance): {unplanted}; "
          f"expected for uniform hashes: {comb(n, 2) * sum(comb(64, i) for i in range(threshold + 1)) / 2**64:.1f}")


# -- images ---------------------------------------------------------------------------------------
def procedural_image(rng: np.random.Generator):
    """A distinct synthetic picture: a smooth colour field, optional block texture, 1-12 shapes."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(64, 400)), int(rng.integers(64, 400))
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.zeros((h, w, 3))
    for c in range(3):
        a, b, ph = rng.normal(0, 3, 3)
        base[..., c] = 127 + 60 * np.sin(3 * a * xx + 3 * b * yy + ph)
    if rng.random() < 0.6:
        s = int(rng.integers(2, 32))
        noise = rng.normal(0, 40, (h // s + 1, w // s + 1, 3))
        base += np.kron(noise, np.ones((s, s, 1)))[:h, :w]
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(5, w)), y0 + int(rng.integers(5, h))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)], fill=colour)
    return im


def _jpeg(im, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_copy(im, rng: np.random.Generator) -> tuple[str, bytes]:
    """A planted near duplicate: the edits a crawl produces."""
    from PIL import Image, ImageEnhance

    w, h = im.size
    kind = ["jpeg_q30", "rescale", "crop", "brightness", "contrast", "tint"][int(rng.integers(0, 6))]
    if kind == "jpeg_q30":
        return kind, _jpeg(im, 30)
    if kind == "rescale":
        f = float(rng.uniform(0.5, 1.5))
        return kind, _jpeg(im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BILINEAR), 80)
    if kind == "crop":
        c = rng.uniform(0.01, 0.03, 4)
        return kind, _jpeg(im.crop((int(w * c[0]), int(h * c[1]), w - int(w * c[2]), h - int(h * c[3]))))
    if kind == "brightness":
        return kind, _jpeg(ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2))))
    if kind == "contrast":
        return kind, _jpeg(ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.8, 1.25))))
    arr = np.asarray(im.convert("RGB")).astype(np.float64) * rng.uniform(0.85, 1.15, 3)
    return kind, _jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))


def image_corpus(n: int, share: float, seed: int):
    """(phash, dhash) of n distinct images (procedural + scikit-image photos) and planted copies."""
    import skimage.data
    from PIL import Image

    from dedup.perceptual import image_hashes_bytes

    rng = np.random.default_rng(seed)
    photos = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "clock",
              "hubble_deep_field", "immunohistochemistry", "page", "moon", "brick", "grass", "gravel"]  # not cat: chelsea
    bases = []
    for name in photos:
        if hasattr(skimage.data, name):
            bases.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
    ph, dh, origin, kinds = [], [], [], []
    for i in range(n):
        im = bases[i] if i < len(bases) else procedural_image(rng)
        p, d = image_hashes_bytes(_jpeg(im))
        ph.append(p), dh.append(d), origin.append(i), kinds.append("orig")
        if rng.random() < share:
            kind, data = near_copy(im, rng)
            p, d = image_hashes_bytes(data)
            ph.append(p), dh.append(d), origin.append(i), kinds.append(kind)
    return np.array(ph, np.int64), np.array(dh, np.int64), np.array(origin), np.array(kinds)


def part_images(n: int, threshold: int, seed: int) -> None:
    t0 = time.perf_counter()
    ph, dh, origin, kinds = image_corpus(n, 0.2, seed)
    m = len(ph)
    planted = int((kinds != "orig").sum())
    print(f"\n== images: {n:,} distinct images (procedural + scikit-image photos), {planted:,} planted near copies, "
          f"{m:,} rows; images and hashes in {time.perf_counter() - t0:.1f} s")
    u, u2 = as_unsigned(ph), as_unsigned(dh)
    iu = np.triu_indices(m, 1)
    dp = popcount(u[:, None] ^ u[None, :])[iu]
    dd = popcount(u2[:, None] ^ u2[None, :])[iu]
    same = origin[iu[0]] == origin[iu[1]]
    distinct_pairs = int((~same).sum())
    print(f"pHash distances of the {distinct_pairs:,} pairs of distinct images (all pairs): "
          f"median {int(np.median(dp[~same]))}, histogram d<=20: {np.bincount(dp[~same], minlength=21)[:21].tolist()}")
    edits = dict(zip(*[x.tolist() for x in np.unique(kinds[kinds != "orig"], return_counts=True)]))
    print(f"planted copies by pHash distance: {np.bincount(dp[same], minlength=13)[:13].tolist()}; beyond 12: "
          f"{int((dp[same] > 12).sum())} (edits: {edits})")
    print(f"planted copies by dHash distance: {np.bincount(dd[same], minlength=21)[:21].tolist()}; beyond 20: "
          f"{int((dd[same] > 20).sum())}")
    within = dp <= threshold
    print(f"pairs within {threshold} pHash bits: planted {int((within & same).sum())} of {int(same.sum())}, "
          f"distinct {int((within & ~same).sum())}")
    print("  confirm    recall(planted within pHash t)  false pairs  precision  false rate/pair  "
          "expected false pairs at 1M images  precision at 1M (3% planted)")
    for thr2 in (None, 8, 10, 12, 14, 16, 20):
        ok = within if thr2 is None else within & (dd <= thr2)
        tp, fp = int((ok & same).sum()), int((ok & ~same).sum())
        rate = (fp + 0.5) / distinct_pairs if fp == 0 else fp / distinct_pairs  # 0.5: an upper-ish bound
        at_1m = rate * comb(1_000_000, 2)
        true_1m = 30_000 * tp / max(1, int(same.sum()))  # planted pairs found, at the share found here
        label = "pHash only" if thr2 is None else f"dHash<={thr2}"
        print(f"  {label:11s}  {tp / max(1, int((within & same).sum())):.4f}                      {fp:6d}   "
              f"{tp / max(1, tp + fp):.4f}    {rate:.2e}{'(<)' if fp == 0 else '   '}     {at_1m:12,.0f}"
              f"                  {true_1m / (true_1m + at_1m):.4f}")
    print(f"  (stage default: dHash<={CONFIRM_THRESHOLD}; 'precision at 1M' assumes 30,000 planted pairs of which the "
          f"share within the pHash threshold found here)")

    # The stage's candidate rule on these rows, with and without the default confirmation.
    bits = lsh_bits_for(m)
    tables = lsh_tables_for(threshold, bits)
    for thr2 in (None, CONFIRM_THRESHOLD):
        new = new_scheme(ph, dh if thr2 is not None else None, lsh_masks(tables, bits, 0), threshold, thr2)
        found = new["pairs"]
        tp = sum(1 for a, b in found if origin[a] == origin[b])
        truth = int((within & same & (dd <= thr2 if thr2 is not None else True)).sum())
        c = clusters(m, found, u, threshold)
        label = "pHash only" if thr2 is None else f"dHash<={thr2}"
        print(f"stage rule, {label} ({tables} tables x {bits} bits): {new['candidates']:,} candidates "
              f"({new['candidates'] / m:.2f} per row), {len(found)} verified pairs, {tp} planted (of {truth} within "
              f"the thresholds: recall {tp / max(1, truth):.4f}), precision {tp / max(1, len(found)):.4f}; "
              f"components: {c['rows_dropped']} rows dropped, largest cluster {c['largest']}, "
              f"{c['far_from_rep']} dropped rows further than {threshold} bits from their representative")


def clusters(n: int, pairs, u: np.ndarray, threshold: int) -> dict:
    """What connected components make of the pairs (as the stage: smallest index represents)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    dropped = np.flatnonzero(roots != np.arange(n))
    far = int((popcount(u[dropped] ^ u[roots[dropped]]) > threshold).sum())
    return {"rows_dropped": len(dropped), "largest": int(sizes.max()), "far_from_rep": far}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="hashes in part 1")
    ap.add_argument("--planted", type=int, default=1000, help="planted pairs per distance 0..12")
    ap.add_argument("--exact", type=int, default=20_000, help="rows compared all-pairs (exact answer)")
    ap.add_argument("--images", type=int, default=4000, help="distinct images in part 2 (0: skip)")
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    part_hashes(a.n, a.planted, min(a.exact, a.n), a.threshold, a.seed)
    if a.images:
        part_images(a.images, a.threshold, a.seed)


if __name__ == "__main__":
    main()
