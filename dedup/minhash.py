"""Vectorised MinHash signatures, bit-for-bit equal to ``datasketch.MinHash``.

``signatures(texts, num_perm, seed)`` returns a ``(len(texts), num_perm)``
uint32 matrix whose row *i* equals ``datasketch.MinHash(num_perm, seed)``
(its default ``affine32`` scheme, datasketch >= 2.0) updated with every
shingle of ``texts[i]`` as ``shingle.encode('utf8')``:

- each shingle is hashed with SHA-1, first 4 bytes little-endian
  (``datasketch.hashfunc.sha1_hash32``), sliced out of one UTF-8 buffer
  per batch (``shingle_spans``);
- the hash is pre-mixed with the MurmurHash3 32-bit finalizer (``_fmix``);
- permutation k is ``a_k * h + b_k mod 2**32`` with ``a_k`` odd, drawn from
  ``np.random.RandomState(seed)`` exactly as ``MinHash._init_permutations``;
- the signature is the column-wise minimum over the document's shingles, in
  numpy over all shingles of a slice of the batch at once.

``scheme="legacy"`` reproduces pre-2.0 sketches (``(a*h + b) % (2**61-1)``
truncated to 32 bits) for comparison with old indexes.

Shingles (``shingles``): the text is lowercased and whitespace collapsed;
``unit="words"`` gives n-grams of ``ngram`` words joined by one space,
``unit="chars"`` character n-grams of the normalised text. A document
shorter than ``ngram`` units but not empty gives ONE shingle: its whole
normalised text. An empty (or whitespace-only, or null) document has no
shingles; its signature is all ``0xFFFFFFFF`` (datasketch's empty MinHash),
and dedup stages must not bucket such rows (every empty doc would collide).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH32 = np.uint64((1 << 32) - 1)
EMPTY_VALUE = np.uint32(0xFFFFFFFF)
# Bound on the (shingles x num_perm) working matrix per numpy step: 256 KiB of uint32 stays
# in the CPU cache (measured: 8M cells was 25% slower on the bench corpus).
_MAX_CELLS = 64 * 1024


def normalize(text: str | None) -> str:
    """Lowercase and collapse whitespace (the text every shingle is cut from).

    ``str.split()`` splits on exactly the characters ``re``'s ``\\s`` matches (Unicode
    whitespace), so this equals ``re.sub(r"\\s+", " ", text.lower()).strip()``, faster.
    """
    if not isinstance(text, str):
        return ""
    return " ".join(text.lower().split())


def shingles(text: str | None, ngram: int = 5, unit: str = "words") -> list[str]:
    """The shingles of one document (see the module docstring for short and empty texts)."""
    norm = normalize(text)
    if not norm:
        return []
    if unit == "words":
        words = norm.split(" ")
        if len(words) < ngram:
            return [norm]
        return [" ".join(words[i:i + ngram]) for i in range(len(words) - ngram + 1)]
    if unit == "chars":
        if len(norm) < ngram:
            return [norm]
        return [norm[i:i + ngram] for i in range(len(norm) - ngram + 1)]
    raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")


@lru_cache(maxsize=64)
def permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) as ``datasketch.MinHash(num_perm, seed, scheme=...).permutations``."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array([(gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64),
                        gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                      dtype=np.uint64).T
        return ab[0], ab[1]
    if scheme != "affine32":
        raise ValueError(f"scheme must be 'affine32' or 'legacy', got {scheme!r}")
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def sha1_hash32(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def hash_shingles(items: Sequence[str]) -> np.ndarray:
    """sha1_hash32 of each shingle's UTF-8 bytes (uint32)."""
    return np.fromiter((sha1_hash32(s.encode("utf8")) for s in items), dtype=np.uint32, count=len(items))


def signatures_from_hashes(hashes: np.ndarray, doc_index: np.ndarray, n_docs: int, num_perm: int,
                           seed: int = 1, scheme: str = "affine32") -> np.ndarray:
    """Min over each document's shingle hashes, permuted; ``doc_index`` must be non-decreasing."""
    a, b = permutations(num_perm, seed, scheme)
    out = np.full((n_docs, num_perm), EMPTY_VALUE, dtype=np.uint32)
    if len(hashes) == 0:
        return out
    if scheme == "affine32":
        mixed = _fmix32(hashes.astype(np.uint32))
    else:
        mixed = hashes.astype(np.uint64)
    step = max(1, _MAX_CELLS // max(num_perm, 1))
    work = np.empty((min(step, len(mixed)), num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for lo in range(0, len(mixed), step):
            hi = min(len(mixed), lo + step)
            h = mixed[lo:hi, None]
            if scheme == "affine32":
                phv = work[: hi - lo]
                np.multiply(h, a[None, :], out=phv)  # uint32 wraparound == mod 2**32
                phv += b[None, :]
            else:
                phv = ((h * a[None, :] + b[None, :]) % _MERSENNE_PRIME) & _MAX_HASH32
                phv = phv.astype(np.uint32)
            docs = doc_index[lo:hi]
            starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
            mins = np.minimum.reduceat(phv, starts, axis=0)
            ids = docs[starts]
            out[ids] = np.minimum(out[ids], mins)
    return out


def shingle_spans(norms: Sequence[str], ngram: int = 5, unit: str = "words"
                  ) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """Every shingle of a batch of normalised texts as a byte span of one buffer.

    Returns ``(buf, starts, ends, doc_index)``: shingle *k* is ``buf[starts[k]:ends[k]]``
    (exactly ``shingles(...)[j].encode('utf8')`` of document ``doc_index[k]``), with
    ``doc_index`` non-decreasing. Why: slicing one UTF-8 buffer at offsets found by numpy
    replaces a Python join + encode per shingle, the larger half of the per-shingle cost.
    Documents are joined by ``\\n``, which normalisation has removed from every text.
    """
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    n_docs = len(norms)
    buf = "\n".join(norms).encode("utf8")
    arr = np.frombuffer(buf, dtype=np.uint8)
    if unit == "words":
        sep = np.flatnonzero((arr == 32) | (arr == 10))  # UTF-8 continuation bytes are >= 0x80
        tok_start = np.empty(len(sep) + 1, dtype=np.int64)
        tok_start[0], tok_start[1:] = 0, sep + 1
        tok_end = np.empty(len(sep) + 1, dtype=np.int64)
        tok_end[:-1], tok_end[-1] = sep, len(buf)
        new_doc = np.zeros(len(sep) + 1, dtype=np.int64)
        new_doc[1:] = arr[sep] == 10
        tok_doc = np.cumsum(new_doc)
        real = tok_end > tok_start  # an empty document is one empty token
    else:
        char_start = np.flatnonzero((arr & 0xC0) != 0x80)
        tok_start = char_start
        tok_end = np.empty(len(char_start), dtype=np.int64)
        tok_end[:-1], tok_end[-1:] = char_start[1:], len(buf)
        is_sep = arr[char_start] == 10
        tok_doc = np.cumsum(is_sep)
        real = ~is_sep
    tok_start, tok_end, tok_doc = tok_start[real], tok_end[real], tok_doc[real]
    n_tok = np.bincount(tok_doc, minlength=n_docs)[:n_docs]
    first = np.zeros(n_docs, dtype=np.int64)
    first[1:] = np.cumsum(n_tok)[:-1]
    # n-grams of a long document; ONE shingle (the whole text) of a short non-empty one
    n_sh = np.where(n_tok >= ngram, n_tok - ngram + 1, np.minimum(n_tok, 1))
    doc_index = np.repeat(np.arange(n_docs), n_sh)
    offset = np.arange(len(doc_index)) - np.repeat(np.cumsum(n_sh) - n_sh, n_sh)
    start_tok = np.repeat(first, n_sh) + offset
    end_tok = np.where(np.repeat(n_tok, n_sh) >= ngram, start_tok + ngram - 1, np.repeat(first + n_tok - 1, n_sh))
    return buf, tok_start[start_tok], tok_end[end_tok], doc_index


def shingle_hashes(texts: Iterable[str | None], ngram: int = 5, unit: str = "words") -> tuple[np.ndarray, np.ndarray, int]:
    """``(hashes, doc_index, n_docs)``: ``sha1_hash32`` of every shingle, by document (non-decreasing)."""
    norms = [normalize(t) for t in texts]
    buf, starts, ends, doc_index = shingle_spans(norms, ngram, unit)
    view, sha1 = memoryview(buf), hashlib.sha1
    # One hashlib call per shingle is the floor of the signature cost (~60% of it).
    digests = b"".join([sha1(view[i:j]).digest()[:4] for i, j in zip(starts.tolist(), ends.tolist())])
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32), doc_index, len(norms)


def signatures(texts: Iterable[str | None], num_perm: int = 128, seed: int = 1, ngram: int = 5,
               unit: str = "words", scheme: str = "affine32") -> np.ndarray:
    """MinHash signatures of a batch of documents: ``(n_docs, num_perm)`` uint32."""
    hashes, doc_index, n_docs = shingle_hashes(texts, ngram, unit)
    return signatures_from_hashes(hashes, doc_index, n_docs, num_perm, seed, scheme)


def distinct_per_doc(hashes: np.ndarray, doc_index: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document's distinct hashes, sorted: ``(values, offsets)`` with doc *i* at
    ``values[offsets[i]:offsets[i + 1]]`` (the exact shingle sets that verification compares)."""
    order = np.lexsort((hashes, doc_index))
    h, d = hashes[order], doc_index[order]
    first = np.ones(len(h), dtype=bool)
    first[1:] = (h[1:] != h[:-1]) | (d[1:] != d[:-1])
    h, d = h[first], d[first]
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(d, minlength=n_docs)[:n_docs], out=offsets[1:])
    return h, offsets


def has_shingles(texts: Iterable[str | None]) -> np.ndarray:
    return np.array([bool(normalize(t)) for t in texts], dtype=bool)


# -- LSH banding -----------------------------------------------------------------------
def _false_positive(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _false_negative(threshold: float, b: int, r: int) -> float:
    from scipy.integrate import quad

    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@lru_cache(maxsize=256)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + negative areas
    (datasketch's ``_optimal_param``; equal weights = ``MinHashLSH(threshold, num_perm).b, .r``)."""
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = _false_positive(threshold, b, r) * fp_weight + _false_negative(threshold, b, r) * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def collision_probability(s, bands: int, rows: int):
    """Probability that two documents of Jaccard ``s`` share at least one band: 1 - (1 - s^r)^b."""
    s = np.asarray(s, dtype=np.float64)
    p = 1.0 - (1.0 - s ** rows) ** bands
    return float(p) if p.ndim == 0 else p


def print_curve(bands: int, rows: int, points: Iterable[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
                file=None) -> None:
    """Print the S-curve: Jaccard similarity -> probability of becoming a candidate pair."""
    import sys

    out = file or sys.stdout
    print(f"bands={bands} rows={rows} (threshold ~ {(1 / bands) ** (1 / rows):.3f})", file=out)
    for s in points:
        p = collision_probability(s, bands, rows)
        print(f"  J={s:.2f}  P(candidate)={p:.4f}  {'#' * int(round(p * 40))}", file=out)


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One int64 hash per (document, band): a 64-bit mix of the band's ``rows`` values."""
    n = sigs.shape[0]
    used = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.full((n, bands), np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ used[:, :, j]) * np.uint64(0x100000001B3)
            h = h ^ (h >> np.uint64(29))
            h = h * np.uint64(0xBF58476D1CE4E5B9)
            h = h ^ (h >> np.uint64(32))
    return h.view(np.int64)
