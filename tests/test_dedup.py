"""Dedup: MinHash equals datasketch's; exact and near-duplicate stages end to end on real text."""
from __future__ import annotations

import random

import datasketch
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_config
from dedup.minhash import collision_probability, optimal_bands, print_curve, shingles, signatures
from helpers import assert_conservation, manifest, pydoc_paragraphs

CONFIG = ROOT / "configs" / "dedup_text.yaml"


def _reference(text, num_perm, seed, ngram=5, unit="words", scheme=None):
    kw = {} if scheme is None else {"scheme": scheme}
    m = datasketch.MinHash(num_perm=num_perm, seed=seed, **kw)
    for s in shingles(text, ngram, unit):
        m.update(s.encode("utf8"))
    return m.hashvalues


def _paragraphs() -> list[str]:
    return pydoc_paragraphs(40)


TEXTS = ["The quick brown fox jumps over the lazy dog and runs away into the woods",
         "", "   ", None, "two words", "Exactly five words here now", "ÜNICODE   text with\ttabs\nand  newlines é ü ß 漢字 ok",
         # Unicode whitespace that normalisation collapses (NBSP, file separator, line separator,
         # ideographic space), 4-byte UTF-8, and a one-character document.
         "no\u00a0break\x1cfile\u2028line\u3000ideo  space", "😀 emoji 😀 text here now 😀", "x"]


@pytest.mark.parametrize("num_perm,seed", [(128, 1), (64, 42), (256, 7), (16, 0)])
@pytest.mark.parametrize("unit,ngram", [("words", 5), ("words", 1), ("chars", 4)])
def test_signatures_equal_datasketch(num_perm, seed, unit, ngram):
    texts = TEXTS + _paragraphs()[:20]
    sigs = signatures(texts, num_perm=num_perm, seed=seed, ngram=ngram, unit=unit)
    assert sigs.shape == (len(texts), num_perm)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(sigs[i], _reference(t, num_perm, seed, ngram, unit))


def test_legacy_scheme_equals_datasketch_legacy():
    texts = TEXTS + _paragraphs()[:5]
    sigs = signatures(texts, num_perm=32, seed=3, scheme="legacy")
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(sigs[i], _reference(t, 32, 3, scheme="legacy"))


def test_batches_of_only_empty_or_one_document():
    assert (signatures(["", None, "  "], 8) == np.uint32(0xFFFFFFFF)).all()
    assert signatures([], 8).shape == (0, 8)
    for t in TEXTS:  # alone in a batch == datasketch, whatever the batch around it
        np.testing.assert_array_equal(signatures([t], 16, seed=5, ngram=3)[0], _reference(t, 16, 5, 3))


def test_short_and_empty_documents():
    # Shorter than ngram: one shingle, the whole normalised text. Empty: no shingles (datasketch's empty MinHash).
    assert shingles("Two   Words", 5) == ["two words"]
    assert shingles("a b c d e f", 5) == ["a b c d e", "b c d e f"]
    assert shingles("", 5) == shingles("  \n", 5) == shingles(None, 5) == []
    assert (signatures([""], 8)[0] == np.uint32(0xFFFFFFFF)).all()


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 64), (0.9, 256), (0.7, 128)])
def test_optimal_bands_match_minhash_lsh(threshold, num_perm):
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_bands(threshold, num_perm) == (lsh.b, lsh.r)


def test_collision_curve(capsys):
    b, r = optimal_bands(0.8, 128)
    assert collision_probability(1.0, b, r) == 1.0
    assert collision_probability(0.5, b, r) < 0.01 < collision_probability(0.9, b, r)
    print_curve(b, r)
    assert f"bands={b} rows={r}" in capsys.readouterr().out


# -- end to end ----------------------------------------------------------------------------
def _jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


def _near_copy(text: str, rng: random.Random) -> str:
    """One small random edit (swap two adjacent words, or delete one) whose Jaccard stays >= 0.9."""
    for _ in range(200):
        words = text.split()
        i = rng.randrange(0, len(words) - 1)
        if rng.random() < 0.5:
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            del words[i]
        out = " ".join(words)
        if 0.9 <= _jaccard(out, text) < 1.0:
            return out
    raise AssertionError("no edit keeps Jaccard >= 0.9")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(7)
    base = _paragraphs()
    rows = [(f"doc{i:05d}", t) for i, t in enumerate(base)]
    exact, near = {}, {}
    for j, i in enumerate(rng.sample(range(len(base)), 20)):   # exact copies (case/whitespace changed on some)
        t = base[i]
        if j % 2:
            t = "  " + t.upper().replace(" ", "   ") + "\n"
        exact[f"exact{j:03d}"] = f"doc{i:05d}"
        rows.append((f"exact{j:03d}", t))
    long_enough = [i for i, t in enumerate(base) if len(t.split()) >= 60]
    for j, i in enumerate(rng.sample(long_enough, 40)):   # near copies at Jaccard >= 0.9
        t = _near_copy(base[i], rng)
        assert 0.9 <= _jaccard(t, base[i]) < 1.0
        near[f"near{j:03d}"] = f"doc{i:05d}"
        rows.append((f"near{j:03d}", t))
    rng.shuffle(rows)
    path = tmp_path_factory.mktemp("dedup_input") / "docs.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), path, row_group_size=50)
    # Unrelated originals must not be near-duplicates of each other at this threshold.
    return {"path": path, "exact": exact, "near": near, "n": len(rows), "n_base": len(base)}


@pytest.fixture(scope="module")
def dedup_run(ray_local, corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dedup_run") / "run"
    run_config(CONFIG, run_dir, inputs=[str(corpus["path"])], overrides=["ingest.chunk_rows=100"])
    return run_dir


def test_exact_and_near_duplicates_end_to_end(dedup_run, corpus):
    counts = assert_conservation(dedup_run)
    assert counts["ingest"]["kept"] == corpus["n"]
    ex = manifest(dedup_run, "exact_dedup").set_index("source_key")
    ids = manifest(dedup_run, "ingest").set_index("source_key")["sample_id"]
    for dup, orig in corpus["exact"].items():
        # Either copy may be the representative (smallest sample_id); exactly one of the pair is kept.
        pair = ex.loc[[dup, orig]]
        assert (pair["status"] == "kept").sum() == 1, (dup, orig)
        dropped = pair[pair["status"] == "dropped"].iloc[0]
        assert dropped["reason"] == f"exact_dup_of:{pair[pair['status'] == 'kept'].index.map(ids)[0]}"
    assert counts["exact_dedup"]["dropped"] == len(corpus["exact"])

    mh = manifest(dedup_run, "minhash_dedup").set_index("source_key")
    dropped = mh[mh["status"] == "dropped"]
    assert dropped["reason"].str.startswith("near_dup_of:").all()
    found = 0
    for dup, orig in corpus["near"].items():
        pair = mh.loc[[dup, orig]]
        if (pair["status"] == "dropped").sum() == 1:
            found += 1
            rep_id = pair.loc[pair["status"] == "kept"].index.map(ids)[0]
            assert pair.loc[pair["status"] == "dropped", "reason"].iloc[0] == f"near_dup_of:{rep_id}"
    assert found / len(corpus["near"]) >= 0.9, f"recall {found}/{len(corpus['near'])}"
    # Nothing unrelated is dropped: every dropped row is one of a planted pair.
    planted = set(corpus["near"]) | set(corpus["near"].values())
    assert set(dropped.index) <= planted, sorted(set(dropped.index) - planted)[:5]
    assert len(dropped) == found
    assert counts["minhash_dedup"]["kept"] == corpus["n"] - len(corpus["exact"]) - found
    for col in ("_chunk",):
        frag = pd.read_parquet(dedup_run / "checkpoints" / "minhash_dedup")
        assert frag[col].notna().all() and frag["text"].notna().all()
        assert set(frag.loc[frag["status"] == "dropped", "_decided_at"]) == {"minhash_dedup"}


def test_same_kept_set_with_other_chunking_and_partitions(ray_local, dedup_run, corpus, tmp_path):
    run_dir = tmp_path / "run"
    run_config(CONFIG, run_dir, inputs=[str(corpus["path"])],
               overrides=["ingest.chunk_rows=37", "exact_dedup.partitions=3", "minhash_dedup.partitions=5"])
    assert_conservation(run_dir)
    for stage in ("exact_dedup", "minhash_dedup"):
        a, b = manifest(dedup_run, stage), manifest(run_dir, stage)
        assert set(a.loc[a["status"] == "kept", "sample_id"]) == set(b.loc[b["status"] == "kept", "sample_id"])
        ra = dict(zip(a["sample_id"], a["reason"]))
        rb = dict(zip(b["sample_id"], b["reason"]))
        assert ra == rb


# -- the stages on a Ray Dataset directly: prefer, block layout, untouched columns -------------
def _rows_table(texts, scores):
    n = len(texts)
    return pa.table({
        "sample_id": [f"s{i:03d}" for i in range(n)], "source": ["t"] * n, "source_key": [str(i) for i in range(n)],
        "status": ["kept"] * n, "reason": pa.nulls(n, pa.string()), "text": texts,
        "score": pa.array(scores, pa.float64()), "image": pa.array([bytes([i]) for i in range(n)], pa.binary()),
        "_chunk": [f"c{i % 3}" for i in range(n)], "_decided_at": pa.nulls(n, pa.string()),
    })


@pytest.mark.parametrize("blocks", [1, 5])
def test_prefer_keeps_the_highest_score_whatever_the_blocks(ray_local, blocks):
    import ray.data as rd

    from stages.dedup import ExactDedupStage, MinHashDedupStage

    paras = [p for p in _paragraphs() if len(p.split()) >= 60][:6]
    rng = random.Random(3)
    texts = paras + [paras[0].upper(), paras[0], _near_copy(paras[1], rng), _near_copy(paras[1], rng), None, None]
    scores = [0.1, 0.5, 0.3, 0.3, 0.3, 0.3, 0.9, 0.2, 0.7, float("nan"), 0.0, 0.0]
    table = _rows_table(texts, scores)
    ds = rd.from_arrow(table).repartition(blocks)
    ex = ExactDedupStage(ExactDedupStage.Params(prefer="score"), "exact")
    out = ex.transform(ds, seed=0, log=print).to_pandas().set_index("sample_id").sort_index()
    assert len(out) == len(texts)
    assert set(out.columns) == set(table.column_names) - {"sample_id"}
    dropped = out[out["status"] == "dropped"]
    # s006 (uppercase copy, score 0.9) wins over s000 (0.1) and s007 (0.2); the two empty texts are never grouped.
    assert dict(dropped["reason"]) == {"s000": "exact_dup_of:s006", "s007": "exact_dup_of:s006"}
    assert set(dropped["_decided_at"]) == {"exact"}
    assert out.loc["s000", "image"] == bytes([0]) and out.loc["s000", "_chunk"] == "c0"

    kept = rd.from_pandas(out.reset_index()[table.column_names]).filter(lambda r: r["status"] == "kept").repartition(blocks)
    mh = MinHashDedupStage(MinHashDedupStage.Params(prefer="score"), "near")
    near = mh.transform(kept, seed=0, log=print).to_pandas().set_index("sample_id").sort_index()
    assert len(near) == len(texts) - 2
    nd = near[near["status"] == "dropped"]
    # s001 (0.5), s008 (0.7), s009 (NaN: ranks last): s008 is kept.
    assert dict(nd["reason"]) == {"s001": "near_dup_of:s008", "s009": "near_dup_of:s008"}
    assert set(nd["_decided_at"]) == {"near"}
