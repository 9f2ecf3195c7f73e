"""Perceptual hashes of images and videos, and the rules that call two of them near duplicates.

An image hash is the 64-bit DCT pHash of ``imagehash`` (8x8 low frequencies of a
32x32 greyscale thumbnail, each bit = above the median), stored as a signed
int64 so it fits an Arrow ``int64`` column. Re-encodes, rescales and mild
crops/colour changes move a handful of bits; unrelated images differ in ~32.
Because each bit is "above the median of 64 values", a natural image's hash has
exactly 32 ones and distances between two such hashes are even. Flat images
(one colour, a plain gradient) have almost no ones: ``informative`` tells them apart.

A video fingerprint is the list of pHashes of frames sampled uniformly in time
(``uniform_frame_indices``), so two encodes of the same clip line up frame by
frame whatever their fps or resolution.

Match rules (``fingerprints_match``; an image is a fingerprint of one frame):
- images: Hamming distance <= ``threshold`` bits;
- videos: resample the longer fingerprint to the shorter length L (uniformly, as
  ``uniform_frame_indices``); for each temporal offset s in [-max_offset, max_offset]
  count aligned frame pairs (i, i+s) within ``threshold`` bits; the pair matches when
  the best count / L >= ``min_frame_match``. Dividing by L (not by the overlap) means
  a shift never makes a short overlap look like a full match. The rule is symmetric.

A second image hash, the 64-bit difference hash (``image_dhash``: 9x8 greyscale
thumbnail, each bit = "brighter than its right neighbour"), is computed from the same
decoded pixels (``image_hashes_bytes``). It looks at gradients rather than low DCT
frequencies, so two distinct images that collide on pHash rarely also collide on dHash:
``phash_dedup`` uses it to confirm pHash matches (precision at scale).

Candidate keys for images: bit-sampling LSH (``lsh_masks``). Each of ``tables`` tables
samples ``bits`` of the 64 bit positions (seeded); a key is (table, hash & mask). Two
hashes at Hamming distance d share table t's key when none of their d differing bits is
among its sampled ones, with probability C(64-d, k) / C(64, k) over random bit choices,
so a pair becomes a candidate with probability (``candidate_probability``)

    P(d) = 1 - (1 - C(64-d, k) / C(64, k)) ** L        (k = bits, L = tables)

Random pairs (d ~ 32) share a key with probability ~ L / 2^k, so with k chosen from the
row count (``lsh_bits_for``: expected rows per bucket ~ ``bucket_rows`` for uniformly
spread hashes) the candidates per row stay bounded as n grows, and L is the smallest
count giving P(threshold) >= the target recall (``lsh_tables_for``). Two hashes collide
in table t exactly when (a ^ b) & mask_t == 0, which lets each candidate pair be counted
once, in the first table it collides in (``first_collision``).

Candidate keys for videos (``fingerprint_keys``, and images when ``chunks`` is given):
the 64 bits are split into ``chunks`` contiguous chunks (as equal as possible); a key is
(chunk index, chunk value). Pigeonhole: two hashes within ``chunks - 1`` bits agree on
at least one whole chunk, so with ``chunks = threshold + 1`` every image pair within the
threshold shares a key (recall 1, but buckets of ~n / 2^(64/chunks) rows: quadratic).
Videos key every *informative* frame (flat frames such as black fades would put every
video with a fade in one bucket), so a video pair becomes a candidate when some frame
pair differs in at most ``chunks - 1`` bits and is not flat.
"""
from __future__ import annotations

from math import ceil, comb, log, log2
from typing import Iterable, Sequence

import numpy as np

HASH_BITS = 64
_MASK64 = (1 << 64) - 1
# A natural image's pHash has 32 ones; flat images and plain gradients have 0-2.
INFORMATIVE_ONES = (16, 48)


def _to_int64(bits: np.ndarray) -> int:
    """Pack 64 booleans (row-major, as imagehash orders them) into a signed int64."""
    value = 0
    for b in bits.reshape(-1):
        value = (value << 1) | int(bool(b))
    return value - (1 << 64) if value >= (1 << 63) else value


def image_phash(image) -> int:
    """pHash of a PIL image (any mode) as a signed 64-bit integer."""
    import imagehash

    return _to_int64(imagehash.phash(image, hash_size=8).hash)


def image_dhash(image) -> int:
    """Difference hash (9x8 greyscale, horizontal gradients) of a PIL image as a signed 64-bit integer."""
    import imagehash

    return _to_int64(imagehash.dhash(image, hash_size=8).hash)


def _decode_grey(data: bytes):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (64, 64))  # JPEG: decode at reduced size, the hashes only need 32x32
        return im.convert("L")


def image_phash_bytes(data: bytes) -> int:
    """pHash of encoded image bytes (JPEG, PNG, ...); raises on undecodable data."""
    return image_phash(_decode_grey(data))


def image_hashes_bytes(data: bytes) -> tuple[int, int]:
    """(pHash, dHash) of encoded image bytes from one decode; raises on undecodable data."""
    grey = _decode_grey(data)
    return image_phash(grey), image_dhash(grey)


def video_fingerprint(frames: Iterable) -> list[int]:
    """pHashes of uniformly sampled frames (PIL images or HxWx3 uint8 arrays), in time order."""
    from PIL import Image

    out = []
    for f in frames:
        im = f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f))
        out.append(image_phash(im))
    return out


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or unsigned)."""
    return bin((a ^ b) & 0xFFFFFFFFFFFFFFFF).count("1")


def uniform_frame_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly from the first to the last frame (all when fewer)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return [int(i) for i in np.round(np.linspace(0, total - 1, count))]


def as_unsigned(hashes) -> np.ndarray:
    """Signed int64 hashes (as stored) -> uint64 bit patterns."""
    return np.asarray(hashes, dtype=np.int64).view(np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(x, dtype=np.uint64)).astype(np.int64)


def informative(h: int) -> bool:
    """False for flat frames (one colour, plain gradients): their hash says little."""
    ones = bin(h & _MASK64).count("1")
    return INFORMATIVE_ONES[0] <= ones <= INFORMATIVE_ONES[1]


def chunk_masks(chunks: int) -> np.ndarray:
    """uint64 masks of ``chunks`` contiguous bit ranges covering all 64 bits, most significant
    first; the first ``64 % chunks`` chunks are one bit wider."""
    if not 1 <= chunks <= HASH_BITS:
        raise ValueError(f"chunks must be in 1..{HASH_BITS}, got {chunks}")
    base, extra = divmod(HASH_BITS, chunks)
    masks, top = [], HASH_BITS
    for j in range(chunks):
        width = base + (1 if j < extra else 0)
        masks.append(((1 << width) - 1) << (top - width))
        top -= width
    return np.array(masks, dtype=np.uint64)


def chunk_values(hashes, chunks: int) -> np.ndarray:
    """(n, chunks) int64: each hash's chunks, shifted down (the LSH key values)."""
    u = as_unsigned(hashes).reshape(-1, 1)
    masks = chunk_masks(chunks)
    shifts = np.array([int(m).bit_length() - int(m).bit_count() for m in masks], dtype=np.uint64)
    return ((u & masks) >> shifts).astype(np.int64)


def fingerprint_keys(fingerprint: Sequence[int], chunks: int, skip_flat: bool) -> set[tuple[int, int]]:
    """The LSH keys (chunk index, chunk value) of a fingerprint's frames (one frame for an image)."""
    frames = [h for h in fingerprint if not skip_flat or informative(h)]
    if not frames:
        return set()
    vals = chunk_values(frames, chunks)
    return {(j, int(v)) for row in vals for j, v in enumerate(row)}


def resample(fingerprint: Sequence[int], length: int) -> list[int]:
    """The fingerprint at ``length`` uniformly spaced positions (as if sampled that sparsely)."""
    return [fingerprint[i] for i in uniform_frame_indices(len(fingerprint), length)]


def frame_match_fraction(a: Sequence[int], b: Sequence[int], threshold: int, max_offset: int = 0) -> float:
    """Best share, over offsets |s| <= max_offset, of the shorter fingerprint's L frames whose
    aligned frame in the other (resampled to L) is within ``threshold`` bits."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    x, y = as_unsigned(resample(a, n)), as_unsigned(resample(b, n))
    close = popcount(x[:, None] ^ y[None, :]) <= threshold
    best = max(int(np.trace(close, offset=s)) for s in range(-min(max_offset, n - 1), min(max_offset, n - 1) + 1))
    return best / n


def fingerprints_match(a: Sequence[int], b: Sequence[int], threshold: int, min_frame_match: float = 1.0,
                       max_offset: int = 0) -> bool:
    """The near-duplicate rule (module docstring): images within ``threshold`` bits; videos with at
    least ``min_frame_match`` of their frames aligned within it."""
    return frame_match_fraction(a, b, threshold, max_offset) >= min_frame_match - 1e-12


# -- bit-sampling LSH for single 64-bit hashes ------------------------------------------------
def candidate_probability(d: int, tables: int, bits: int) -> float:
    """Probability that two hashes ``d`` bits apart share a key in at least one of ``tables``
    tables of ``bits`` sampled bits (bit choices uniformly random): 1-(1-C(64-d,k)/C(64,k))^L."""
    one = comb(HASH_BITS - d, bits) / comb(HASH_BITS, bits)
    return 1.0 - (1.0 - one) ** tables


def lsh_bits_for(n: int, bucket_rows: int = 32, lo: int = 8, hi: int = 32) -> int:
    """Sampled bits per key so that ``n`` uniformly spread hashes fill ~``bucket_rows`` rows
    per bucket (n / 2^k): candidates per row then stay bounded as n grows."""
    if n <= bucket_rows:
        return lo
    return int(min(hi, max(lo, ceil(log2(n / bucket_rows)))))


def lsh_tables_for(threshold: int, bits: int, min_recall: float = 0.95, max_tables: int = 4096) -> int:
    """The fewest tables whose ``candidate_probability`` at ``threshold`` bits is >= ``min_recall``."""
    one = comb(HASH_BITS - threshold, bits) / comb(HASH_BITS, bits)
    if one >= 1.0:
        return 1
    if one <= 0.0:
        raise ValueError(f"no table of {bits} bits can hold a pair {threshold} bits apart")
    tables = max(1, ceil(log(1.0 - min_recall) / log(1.0 - one)))
    if tables > max_tables:
        raise ValueError(f"{tables} tables of {bits} bits needed for recall {min_recall} at {threshold} bits; "
                         "lower bits or the threshold")
    return tables


def lsh_masks(tables: int, bits: int, seed: int) -> np.ndarray:
    """uint64 masks of ``tables`` tables of ``bits`` distinct bit positions each, dealt in turn from
    seeded random permutations of the 64 positions (a fresh one when one runs out), so every bit
    is sampled about equally often. Measured, that balance gives a higher recall than the
    independent draws ``candidate_probability`` assumes (0.98 against 0.96 at 8 bits, 17 x 12)."""
    if not 1 <= bits <= HASH_BITS:
        raise ValueError(f"bits must be in 1..{HASH_BITS}, got {bits}")
    rng = np.random.default_rng(seed)
    deck: list[int] = []
    masks = []
    for _ in range(tables):
        m = 0
        while int(m).bit_count() < bits:
            if not deck:
                deck = rng.permutation(HASH_BITS).tolist()
            pos = deck.pop()
            if not m >> pos & 1:
                m |= 1 << pos
            else:  # already in this table (a permutation boundary): put it back for the next table
                deck.insert(0, pos)
        masks.append(m)
    return np.array(masks, dtype=np.uint64)


def first_collision(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For XORs ``x`` of hash pairs: the first table whose masked bits are all equal (-1: none)."""
    x = np.asarray(x, dtype=np.uint64)
    first = np.full(len(x), -1, dtype=np.int64)
    for t in range(len(masks) - 1, -1, -1):
        first[(x & masks[t]) == 0] = t
    return first


def measured_recall(masks: np.ndarray, d: int, trials: int, seed: int) -> float:
    """Share of random pairs ``d`` bits apart that collide in some table of these masks
    (the actual seeded masks, where ``candidate_probability`` averages over all bit choices)."""
    rng = np.random.default_rng(seed)
    flips = np.zeros(trials, dtype=np.uint64)
    for i in range(trials):
        for pos in rng.choice(HASH_BITS, size=d, replace=False):
            flips[i] |= np.uint64(1) << np.uint64(pos)
    return float(np.mean(first_collision(flips, masks) >= 0))


def _runs(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows already sorted by ``keys``: for each row, the end (exclusive) of its run of equal keys,
    and each run's start index."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return np.repeat(ends, np.diff(np.append(starts, n))), starts


def bucket_pairs(table: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (table, key): every pair (i < j) of rows in one bucket, as index arrays."""
    end, _ = _runs([table, key])
    left, right = [], []
    idx = np.arange(len(table), dtype=np.int64)
    off = 1
    while len(idx):
        idx = idx[idx + off < end[idx]]
        left.append(idx)
        right.append(idx + off)
        off += 1
    if not left:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(left), np.concatenate(right)
