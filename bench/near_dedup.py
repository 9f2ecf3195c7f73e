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

Part 3 (``--ray N``): the stage itself through a local Ray on N rows of the part-1 corpus.

Run:  .venv/bin/python bench/near_dedup.py --n 100000 --ray 100000
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
              "hubble_deep_field", "immunohistochemistry", "page", "moon", "brick", "grass", "gravel"]  # cat = chelsea
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


def joint_histograms(u: np.ndarray, u2: np.ndarray, origin: np.ndarray, block: int = 1024):
    """65x65 counts of (pHash distance, dHash distance) over all pairs (i < j): distinct images, and
    planted copies (same origin). Blocked, so 20k+ images fit in memory."""
    hist = {False: np.zeros(65 * 65, dtype=np.int64), True: np.zeros(65 * 65, dtype=np.int64)}
    for s in range(0, len(u), block):
        rows = slice(s, min(len(u), s + block))
        dp = np.bitwise_count(u[rows, None] ^ u[None, :]).astype(np.int64)
        dd = np.bitwise_count(u2[rows, None] ^ u2[None, :]).astype(np.int64)
        upper = np.arange(s, rows.stop)[:, None] < np.arange(len(u))[None, :]
        same = origin[rows, None] == origin[None, :]
        code = dp * 65 + dd
        for flag in (False, True):
            sel = upper & (same == flag)
            hist[flag] += np.bincount(code[sel], minlength=65 * 65)
    return hist[False].reshape(65, 65), hist[True].reshape(65, 65)


def tail_fit(counts: np.ndarray, ds: list[int]) -> tuple[float, float]:
    """Least-squares line through log(count) at the even distances ``ds``: (intercept, slope)."""
    x = np.array(ds, dtype=float)
    y = np.log(np.maximum(counts[ds], 0.5))
    slope, icpt = np.polyfit(x, y, 1)
    return float(icpt), float(slope)


def part_images(n: int, threshold: int, seed: int) -> None:
    t0 = time.perf_counter()
    ph, dh, origin, kinds = image_corpus(n, 0.2, seed)
    m = len(ph)
    print(f"\n== images: {n:,} distinct images (procedural + scikit-image photos), {int((kinds != 'orig').sum()):,} "
          f"planted near copies, {m:,} rows; images and hashes in {time.perf_counter() - t0:.1f} s")
    u, u2 = as_unsigned(ph), as_unsigned(dh)
    dist, plant = joint_histograms(u, u2, origin)
    n_dist, n_plant = int(dist.sum()), int(plant.sum())
    dp_hist, dd_plant = dist.sum(axis=1), plant.sum(axis=0)
    uniform = np.array([comb(32, d // 2) ** 2 / comb(64, 32) if d % 2 == 0 else 0.0 for d in range(65)])
    print(f"pHash distances of the {n_dist:,} pairs of distinct images (all pairs), d = 0..20: "
          f"{dp_hist[:21].tolist()}")
    print("  ratio to balanced uniform hashes (32 ones): "
          + ", ".join(f"d={d}: {dp_hist[d] / (uniform[d] * n_dist):.1f}x" for d in range(8, 21, 2) if dp_hist[d]))
    edits = dict(zip(*[x.tolist() for x in np.unique(kinds[kinds != "orig"], return_counts=True)]))
    print(f"planted copies ({n_plant}; {edits}) by pHash distance 0..12: {plant.sum(axis=1)[:13].tolist()}, "
          f"beyond: {int(plant.sum(axis=1)[13:].sum())}; by dHash distance 0..16: {dd_plant[:17].tolist()}, "
          f"beyond: {int(dd_plant[17:].sum())}")
    t = threshold
    planted_within = int(plant[:t + 1].sum())
    print(f"pairs within {t} pHash bits: planted {planted_within} of {n_plant}, distinct {int(dist[:t + 1].sum())}")

    # Chance pairs within t bits are too rare to count on this many images: extrapolate the tail
    # (a straight line through log counts at d = t+2 .. t+8), and measure how often the dHash
    # agrees when the pHashes are close (the confirming check's filter), at looser pHash radii.
    ds = list(range(t + 2, t + 9, 2))
    icpt, slope = tail_fit(dp_hist, ds)
    est_within = sum(np.exp(icpt + slope * d) for d in range(0, t + 1, 2))
    rate = est_within / n_dist
    pairs_1m = comb(1_000_000, 2)
    true_1m = 30_000 * planted_within / max(1, n_plant)
    print(f"pHash alone: measured false pairs within {t}: {int(dist[:t + 1].sum())}; extrapolated from the tail at d in "
          f"{ds}: {est_within:.2f} here, a rate of {rate:.2e} per pair of distinct images (uniform hashes: "
          f"{uniform[:t + 1].sum():.2e}) -> ~{rate * pairs_1m:,.0f} false pairs among 1M images; with 30,000 true "
          f"pairs (3%) precision ~{true_1m / (true_1m + rate * pairs_1m):.4f}")
    print("  dHash confirm   recall of planted (within pHash t)   P(dHash within | distinct, pHash<=12 / <=16)   "
          "false pairs at 1M   precision at 1M")
    for thr2 in (8, 10, 12, 14, 16):
        rec = plant[:t + 1, :thr2 + 1].sum() / max(1, planted_within)
        c12 = dist[:13, :thr2 + 1].sum() / max(1, dist[:13].sum())
        c16 = dist[:17, :thr2 + 1].sum() / max(1, dist[:17].sum())
        cond = max(c12, c16, 0.5 / max(1, dist[:17].sum()))  # the larger: conservative
        fp_1m = rate * cond * pairs_1m
        tp_1m = true_1m * rec
        print(f"  <= {thr2:2d}{' (default)' if thr2 == CONFIRM_THRESHOLD else '          '}   {rec:.4f}"
              f"                                {c12:.2e} / {c16:.2e}                    {fp_1m:10,.1f}"
              f"         {tp_1m / (tp_1m + fp_1m):.5f}")
    print(f"  (of {int(dist[:13].sum())} / {int(dist[:17].sum())} distinct pairs within 12 / 16 pHash bits)")

    # The stage's candidate rule on these rows, with and without the default confirmation.
    bits = lsh_bits_for(m)
    tables = lsh_tables_for(threshold, bits)
    for thr2 in (None, CONFIRM_THRESHOLD):
        new = new_scheme(ph, dh if thr2 is not None else None, lsh_masks(tables, bits, 0), threshold, thr2)
        found = new["pairs"]
        tp = sum(1 for a, b in found if origin[a] == origin[b])
        truth = int(plant[:threshold + 1, :(thr2 if thr2 is not None else 64) + 1].sum())
        c = clusters(m, found, u, threshold)
        label = "pHash only" if thr2 is None else f"dHash<={thr2}"
        print(f"stage rule, {label} ({tables} tables x {bits} bits): {new['candidates']:,} candidates "
              f"({new['candidates'] / m:.2f} per row), {len(found)} verified pairs, {tp} planted (of {truth} within "
              f"the thresholds: recall {tp / max(1, truth):.4f}), precision {tp / max(1, len(found)):.4f}; "
              f"components: {c['rows_dropped']} rows dropped, largest cluster {c['largest']}, "
              f"{c['far_from_rep']} dropped rows further than {threshold} bits from their representative")


def clusters(n: int, pairs, u: np.ndarray, threshold: int) -> dict:
    """What connected components make of the pairs (as the stage: smallest index represents)."""
    from dedup.components import union_find_labels

    labels = union_find_labels(pairs, range(n))
    roots = np.array([labels[i] for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    dropped = np.flatnonzero(roots != np.arange(n))
    far = int((popcount(u[dropped] ^ u[roots[dropped]]) > threshold).sum())
    return {"rows_dropped": len(dropped), "largest": int(sizes.max()), "far_from_rep": far}


def part_ray(n: int, planted: int, threshold: int, seed: int) -> None:
    """The stage itself on n rows of the hash corpus (dHash = an independent random hash, planted
    copies 1 bit apart on it), through a local Ray: seconds, stats, planted pairs resolved."""
    import os

    import pyarrow as pa
    import ray.data as rd

    from pipeline.runner import ensure_ray
    from stages.perceptual_dedup import PHashDedupStage

    h, pp, pd_ = hash_corpus(n, planted, seed)
    h2 = np.random.default_rng(seed + 1).integers(0, 2**64, size=n, dtype=np.uint64)
    h2[pp[:, 1]] = h2[pp[:, 0]] ^ np.uint64(1)
    ids = [f"s{i:07d}" for i in range(n)]
    table = pa.table({"sample_id": ids, "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()),
                      "phash": pa.array(h), "dhash": pa.array(h2.view(np.int64)),
                      "_decided_at": pa.nulls(n, pa.string())})
    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray()
    ds = rd.from_arrow(table).repartition(max(1, n // 10_000)).materialize()
    stage = PHashDedupStage(PHashDedupStage.Params(threshold=threshold), "near")
    t0 = time.perf_counter()
    out = stage.transform(ds, seed=0, log=lambda m: None).select_columns(["sample_id", "status"]).to_pandas()
    dt = time.perf_counter() - t0
    dropped = set(out.loc[out["status"] == "dropped", "sample_id"])
    within = pd_ <= threshold
    resolved = np.mean([ids[b] in dropped or ids[a] in dropped for (a, b) in pp[within]])
    s = stage.run_stats
    print(f"\n== the stage through Ray (local, this machine), {n:,} rows: {dt:.1f} s ({n / dt:,.0f} rows/s); "
          f"{s['tables']} tables x {s['bits']} bits, {s['candidate_pairs']:,} candidate pairs "
          f"({s['candidate_pairs'] / n:.1f} per row), {s['verified_pairs']:,} verified, largest bucket "
          f"{s['largest_bucket']}, {s['rows_dropped']:,} rows dropped, largest cluster {s['largest_cluster']}; "
          f"planted pairs within {threshold} bits resolved: {resolved:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="hashes in part 1")
    ap.add_argument("--planted", type=int, default=1000, help="planted pairs per distance 0..12")
    ap.add_argument("--exact", type=int, default=20_000, help="rows compared all-pairs (exact answer)")
    ap.add_argument("--images", type=int, default=4000, help="distinct images in part 2 (0: skip)")
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--ray", type=int, default=0, help="also run the stage through local Ray on this many rows")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    part_hashes(a.n, a.planted, min(a.exact, a.n), a.threshold, a.seed)
    if a.images:
        part_images(a.images, a.threshold, a.seed)
    if a.ray:
        part_ray(a.ray, min(a.planted, a.ray // 40), a.threshold, a.seed)


if __name__ == "__main__":
    main()
