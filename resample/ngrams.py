"""Word n-grams as 64-bit hashes, their per-document counts, and corpus n-gram statistics.

Tokens are ``\\w+`` runs of the lowercased text (punctuation and spacing do
not make two phrasings differ). Each distinct token is hashed once per batch
(BLAKE2b-64); an n-gram's hash is ``fmix64(sum_k t[i+k] * M_k + n * M_len)``
over its token hashes with fixed odd multipliers, computed for every window of
the batch at once in numpy. A non-empty document shorter than ``n`` tokens has
one n-gram: its whole token sequence (as ``dedup.minhash.shingles`` does).
Hash collisions merge two n-grams' counts: with D distinct n-grams about
D**2 / 2**65 pairs collide (0.03 for a billion).
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Sequence

import numpy as np
import pyarrow as pa

_WORD = re.compile(r"\w+")
MAX_N = 16


def _multipliers(count: int) -> np.ndarray:
    raw = [int.from_bytes(hashlib.blake2b(f"sailcurate-ngram-mult-{i}".encode(), digest_size=8).digest(), "little") | 1
           for i in range(count)]
    return np.array(raw, dtype=np.uint64)


_MULT = _multipliers(MAX_N + 1)  # last one tags the gram length


def tokens(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if isinstance(text, str) else []


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _token_hashes(vocab: Sequence[str]) -> np.ndarray:
    digests = b"".join(hashlib.blake2b(w.encode("utf-8", "surrogateescape"), digest_size=8).digest() for w in vocab)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64) if digests else np.zeros(0, np.uint64)


def doc_ngrams(texts: Sequence[str | None], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
    """Every n-gram occurrence of a batch: (doc index, hash, start token), ordered by doc then start;
    and the token lists (to spell a gram out)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n-gram length must be 1..{MAX_N}, got {n}")
    toks = [tokens(t) for t in texts]
    lens = np.array([len(t) for t in toks], dtype=np.int64)
    vocab: dict[str, int] = {}
    flat = [vocab.setdefault(w, len(vocab)) for t in toks for w in t]
    th = _token_hashes(list(vocab))[np.array(flat, dtype=np.int64)]
    ends = np.cumsum(lens)
    starts = ends - lens
    total = len(flat)
    docs, hashes, pos = [], [], []
    with np.errstate(over="ignore"):
        if total >= n:
            m = total - n + 1
            acc = np.full(m, np.uint64(n) * _MULT[MAX_N], dtype=np.uint64)
            for k in range(n):
                acc += th[k:k + m] * _MULT[k]
            doc_of = np.repeat(np.arange(len(toks), dtype=np.int64), lens)[:m]
            at = np.arange(m, dtype=np.int64)
            ok = at + n <= ends[doc_of]
            docs.append(doc_of[ok])
            hashes.append(_fmix64(acc[ok]))
            pos.append(at[ok] - starts[doc_of[ok]])
        short = np.flatnonzero((lens > 0) & (lens < n))
        if len(short):
            acc = lens[short].astype(np.uint64) * _MULT[MAX_N]
            for k in range(int(lens[short].max())):
                has = lens[short] > k
                acc[has] += th[starts[short][has] + k] * _MULT[k]
            docs.append(short)
            hashes.append(_fmix64(acc))
            pos.append(np.zeros(len(short), np.int64))
    if not docs:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64), toks
    d, h, p = np.concatenate(docs), np.concatenate(hashes), np.concatenate(pos)
    order = np.lexsort((p, d))
    return d[order], h[order], p[order], toks


def distinct_per_doc(doc: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc, hash, occurrences in the doc, index of a first occurrence) for each distinct pair."""
    if len(doc) == 0:
        z = np.zeros(0, np.int64)
        return z, np.zeros(0, np.uint64), z, z
    order = np.lexsort((h, doc))
    d, hh = doc[order], h[order]
    new = np.ones(len(d), dtype=bool)
    new[1:] = (d[1:] != d[:-1]) | (hh[1:] != hh[:-1])
    first = np.flatnonzero(new)
    tf = np.diff(np.append(first, len(d)))
    return d[first], hh[first], tf.astype(np.int64), order[first]


def spell(toks: list[list[str]], doc: int, start: int, n: int) -> str:
    return " ".join(toks[doc][start:start + n])


# -- corpus statistics from a table of n-gram counts (one row per distinct n-gram) ------------
def partial_stats(table: pa.Table, top_k: int, report: int = 0, wanted: Sequence[int] = ()) -> pa.Table:
    """One row per block of a count table (h, df, tf): total occurrences, sum of tf*ln(tf), distinct
    n-grams, the block's top-k counts; its ``report`` most frequent (h, df, tf); the tf of ``wanted`` hashes."""
    tf = table.column("tf").to_numpy(zero_copy_only=False).astype(np.int64)
    h = table.column("h").to_numpy(zero_copy_only=False).astype(np.uint64)
    df = table.column("df").to_numpy(zero_copy_only=False).astype(np.int64)
    ok = tf > 0
    tf, h, df = tf[ok], h[ok], df[ok]
    c = tf.astype(np.float64)
    # Ties broken by hash, as most_frequent does: the block's top candidates (and so the overall
    # most frequent list) must not depend on where a row sits in its block.
    order = np.lexsort((h, -tf))
    rep = order[:report]
    hit = np.isin(h, np.array(list(wanted), dtype=np.uint64)) if len(wanted) else np.zeros(len(h), bool)
    lst = pa.list_(pa.int64())
    return pa.table({
        "total": [float(c.sum())], "clogc": [float((c * np.log(c)).sum())], "distinct": [int(len(c))],
        "top": pa.array([tf[order[:top_k]].tolist()], lst),
        "rep_h": pa.array([h[rep].tolist()], pa.list_(pa.uint64())), "rep_df": pa.array([df[rep].tolist()], lst),
        "rep_tf": pa.array([tf[rep].tolist()], lst),
        "want_h": pa.array([h[hit].tolist()], pa.list_(pa.uint64())), "want_tf": pa.array([tf[hit].tolist()], lst),
    })


def combine_stats(rows: list[dict], top_k: int) -> dict[str, float | int]:
    """Entropy in bits of the n-gram distribution p = tf / N, and the share of the top-k n-grams:
    H = log2 N - sum(tf log2 tf) / N."""
    total = sum(r["total"] for r in rows)
    distinct = sum(r["distinct"] for r in rows)
    if total <= 0:
        return {"ngrams": 0, "distinct_ngrams": 0, "entropy_bits": 0.0, f"top{top_k}_share": 0.0}
    clogc = sum(r["clogc"] for r in rows)
    top = sorted((int(x) for r in rows for x in r["top"]), reverse=True)[:top_k]
    entropy = (math.log(total) - clogc / total) / math.log(2)
    return {"ngrams": int(total), "distinct_ngrams": int(distinct), "entropy_bits": round(entropy, 6),
            f"top{top_k}_share": round(sum(top) / total, 6)}


def most_frequent(rows: list[dict], report: int) -> list[tuple[int, int, int]]:
    """The ``report`` most frequent (h, df, tf) over all blocks (ties: smaller hash first)."""
    allrows = [(int(h), int(d), int(t)) for r in rows for h, d, t in zip(r["rep_h"], r["rep_df"], r["rep_tf"])]
    return sorted(allrows, key=lambda x: (-x[2], x[0]))[:report]


def wanted_counts(rows: list[dict]) -> dict[int, int]:
    return {int(h): int(t) for r in rows for h, t in zip(r["want_h"], r["want_tf"])}
