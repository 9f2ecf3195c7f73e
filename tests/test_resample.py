"""Resampling: source caps/weights, n-gram down-weighting, length balancing.

Every stage runs on real Ray Data (the session's local Ray) over real text nobody here wrote (the
stdlib's pydoc topics), with LLM-style boilerplate planted in half of the paragraphs; one test runs
the shipped config through the runner and reads run.json and the manifests.
"""
from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest
from resample.keys import ALL_ONES, es_keys, float_from_sortable, row_hashes, sortable_floats
from resample.ngrams import doc_ngrams, spell, tokens

CONFIG = ROOT / "configs" / "resample_text.yaml"
OPENING = "As an AI language model, I would be happy to provide a comprehensive and detailed overview of this topic."
CLOSING = "In conclusion, I hope this helps you gain a deeper understanding and feel free to ask if you have any further questions."


def _paragraphs(min_words: int = 25) -> list[str]:
    from pydoc_data.topics import topics

    paras: list[str] = []
    for key in sorted(topics):
        for p in re.split(r"\n\s*\n", topics[key]):
            p = " ".join(p.split())
            if len(p.split()) >= min_words and p not in paras:
                paras.append(p)
    return paras


@pytest.fixture(scope="module")
def corpus() -> dict:
    """~770 real paragraphs; about half wrapped in the same LLM-ish opening and closing sentence."""
    rng = random.Random(0)
    texts, planted = [], []
    for p in _paragraphs():
        boiler = rng.random() < 0.5
        texts.append(f"{OPENING} {p} {CLOSING}" if boiler else p)
        planted.append(boiler)
    return {"texts": texts, "planted": np.array(planted)}


def _rows(texts, sources=None, extra=None, status=None) -> pa.Table:
    n = len(texts)
    cols = {
        "sample_id": [f"s{i:05d}" for i in range(n)], "source": sources or ["docs"] * n,
        "source_key": [str(i) for i in range(n)], "status": status or ["kept"] * n, "reason": pa.nulls(n, pa.string()),
        "text": texts, "_chunk": [f"c{i % 4}" for i in range(n)], "_decided_at": pa.nulls(n, pa.string()),
    }
    cols.update(extra or {})
    return pa.table(cols)


def _run(stage, table, blocks, seed=0):
    import ray.data as rd

    return stage.transform(rd.from_arrow(table).repartition(blocks), seed=seed, log=print).to_pandas().set_index("sample_id").sort_index()


# -- keys and n-grams (no Ray) -------------------------------------------------------------------
def test_ngram_hashes_do_not_depend_on_the_batch():
    a = ["The cat sat on the mat.", "A dog."]
    b = ["Something else entirely here", "the CAT, sat on -- the mat!"]
    da, ha, pa_, ta = doc_ngrams(a, 3)
    db, hb, pb, tb = doc_ngrams(b, 3)
    grams_a = {int(h): spell(ta, d, p, 3) for d, h, p in zip(da, ha, pa_) if d == 0}
    grams_b = {int(h): spell(tb, d, p, 3) for d, h, p in zip(db, hb, pb) if d == 1}
    assert grams_a == grams_b and sorted(grams_a.values()) == ["cat sat on", "on the mat", "sat on the", "the cat sat"]
    # "A dog." is shorter than n: one n-gram, its whole token sequence.
    assert [spell(ta, d, p, 3) for d, p in zip(da, pa_) if d == 1] == ["a dog"]
    d, h, _, _ = doc_ngrams(["", None, "   "], 3)
    assert len(d) == len(h) == 0


def test_keys_depend_only_on_seed_salt_and_id():
    ids = [f"id{i}" for i in range(1000)]
    h = row_hashes(ids, seed=0, salt="stage")
    assert np.array_equal(h[100:200], row_hashes(ids[100:200], seed=0, salt="stage"))
    assert not np.array_equal(h, row_hashes(ids, seed=1, salt="stage"))
    assert not np.array_equal(h, row_hashes(ids, seed=0, salt="other"))
    v = np.array([-1e9, -2.5, -0.0, 0.0, 1e-300, 0.5, 3.0, np.inf])
    k = sortable_floats(v)
    assert np.all(k[1:] >= k[:-1]) and [float_from_sortable(int(x)) for x in k] == list(v)


def test_es_keys_sample_in_proportion_to_weight():
    """Efraimidis-Spirakis: the first item drawn is item i with probability w_i / sum(w)."""
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    firsts = np.zeros(4)
    trials = 20000
    hashes = row_hashes([f"{t}:{i}" for t in range(trials) for i in range(4)], seed=0, salt="es").reshape(trials, 4)
    keys = es_keys(hashes.reshape(-1), np.tile(weights, trials)).reshape(trials, 4)
    np.add.at(firsts, keys.argmin(axis=1), 1)
    np.testing.assert_allclose(firsts / trials, weights / weights.sum(), atol=0.015)


# -- the distributed k-th key -------------------------------------------------------------------
def test_kth_smallest_is_exact(ray_local):
    """Radix select over 5 blocks equals numpy's sort (exact, hence the same for any block layout)."""
    import ray.data as rd

    from resample.select import group_sizes, kth_smallest

    rng = np.random.default_rng(1)
    uniform = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2)
    narrow = np.uint64(1 << 40) + rng.integers(0, 5000, 2000, dtype=np.uint64)  # shares its top 24 bits: several passes
    ties = rng.integers(0, 4, 500, dtype=np.uint64)
    keys = np.concatenate([uniform, narrow, ties])
    groups = ["u"] * 3000 + ["n"] * 2000 + ["t"] * 500
    null_group = [None] * 100  # rows outside every group take no part
    table = pa.table({"g": groups + null_group, "k": pa.array(np.concatenate([keys, np.zeros(100, np.uint64)]), pa.uint64())})
    ds = rd.from_arrow(table).repartition(5).materialize()
    sizes = group_sizes(ds, "g", "k")
    assert sizes == {"u": 3000, "n": 2000, "t": 500}
    targets = [("u", 1), ("u", 1500), ("u", 2999), ("n", 7), ("n", 1000), ("t", 130), ("t", 0), ("t", 500)]
    got = kth_smallest(ds, targets, sizes, "g", "k", collect_limit=16)  # tiny limit: the histogram passes run
    by_group = {"u": np.sort(uniform), "n": np.sort(narrow), "t": np.sort(ties)}
    for g, k in targets:
        if k == 0:
            assert got[(g, k)] is None
        elif k >= sizes[g]:
            assert got[(g, k)] == ALL_ONES
        else:
            assert got[(g, k)] == int(by_group[g][k - 1]), (g, k)


# -- n-gram resampling ---------------------------------------------------------------------------
def _ngram_stage(alpha: float, name: str = "ngram"):
    from stages.resample import NgramResampleStage

    return NgramResampleStage(NgramResampleStage.Params(keep_fraction=0.7, alpha=alpha, overused_share=0.01), name)


@pytest.fixture(scope="module")
def ngram_runs(ray_local, corpus) -> dict:
    table = _rows(corpus["texts"])
    out = {}
    for alpha, blocks in ((1.0, 1), (1.0, 6), (0.0, 3)):
        stage = _ngram_stage(alpha)
        out[(alpha, blocks)] = (_run(stage, table, blocks), stage.run_stats)
    return out


def test_ngram_resampling_down_weights_planted_phrasing(corpus, ngram_runs):
    df, stats = ngram_runs[(1.0, 1)]
    n = len(corpus["texts"])
    planted = corpus["planted"]
    assert len(df) == n  # row-preserving
    kept = (df["status"] == "kept").to_numpy()
    assert kept.sum() == round(0.7 * n) == stats["rows_out"] == stats["pool_kept"]
    assert set(df.loc[~kept, "reason"]) == {"resampled:ngram"} and set(df.loc[~kept, "_decided_at"]) == {"ngram"}
    assert stats["kept_fraction"] == pytest.approx(kept.sum() / n, abs=1e-6)
    # The boilerplate documents weigh less and are kept less often than the clean ones.
    w = df["ngram_weight"].to_numpy()
    assert w[planted].mean() < 0.5 * w[~planted].mean()
    assert kept[planted].mean() < 0.5 < 0.85 < kept[~planted].mean()
    # The measured effect: entropy up, top-100 share down; the planted n-grams lose most of their mass.
    before, after = stats["before"], stats["after"]
    assert after["entropy_bits"] > before["entropy_bits"] + 0.2
    assert after["top100_share"] < before["top100_share"] - 0.05
    top = {t["ngram"]: t for t in stats["top_ngrams"]}
    planted_words = set(tokens(f"{OPENING} {CLOSING}"))
    assert len(top) == 10 and all(set(g.split()) <= planted_words for g in top) and "ai language model" in top
    assert top["ai language model"]["docs"] == top["ai language model"]["count_before"] == planted.sum()
    assert top["ai language model"]["count_after"] == kept[planted].sum()
    assert stats["weight"]["mean_kept"] > stats["weight"]["mean"]
    json.dumps(stats)  # JSON-able, as run.json needs


def test_uniform_sampling_does_not_raise_entropy(ngram_runs):
    """The control (alpha 0): a plain 70% sample loses entropy (fewer tokens) and keeps the top share,
    so the rise above is the weighting's doing."""
    df, stats = ngram_runs[(0.0, 3)]
    assert stats["weight"] == {"mean": 1.0, "min": 1.0, "max": 1.0, "mean_kept": 1.0}
    assert stats["after"]["entropy_bits"] < stats["before"]["entropy_bits"]
    assert stats["after"]["top100_share"] == pytest.approx(stats["before"]["top100_share"], abs=0.02)
    weighted = ngram_runs[(1.0, 1)][1]
    assert weighted["after"]["entropy_bits"] > stats["after"]["entropy_bits"] + 0.4


def test_ngram_kept_set_is_independent_of_blocks(ngram_runs):
    a, sa = ngram_runs[(1.0, 1)]
    b, sb = ngram_runs[(1.0, 6)]
    assert a["status"].equals(b["status"]) and a["reason"].equals(b["reason"])
    np.testing.assert_array_equal(a["ngram_weight"].to_numpy(), b["ngram_weight"].to_numpy())
    assert sa == sb


# -- source caps and weights ---------------------------------------------------------------------
def _source_table(corpus) -> pa.Table:
    texts = corpus["texts"][:600]
    sources = ["web"] * 300 + ["synth"] * 200 + ["books"] * 100
    status = ["kept"] * 590 + ["dropped"] * 10  # not kept upstream: untouched and not counted
    return _rows(texts, sources=sources, status=status)


def test_source_caps_and_weights(ray_local, corpus):
    import ray.data as rd

    from stages.base import StageContext
    from stages.resample import SourceResampleStage

    table = _source_table(corpus)
    ctx = StageContext(run_dir="", stage_name="mix", sources={"web": {}, "synth": {}, "books": {}, "forum": {}})
    params = SourceResampleStage.Params(caps={"web": 100, "forum": 5}, weights={"synth": 0.25, "books": 0.5})
    logs: list[str] = []
    results = []
    for blocks in (1, 5):
        stage = SourceResampleStage(params, "mix", ctx)
        df = stage.transform(rd.from_arrow(table).repartition(blocks), seed=3,
                             log=logs.append).to_pandas().set_index("sample_id").sort_index()
        results.append((df, stage.run_stats))
    (df, stats), (df5, stats5) = results
    kept = df[df["status"] == "kept"].groupby("source").size().to_dict()
    assert kept == {"web": 100, "synth": 50, "books": 45}  # books: 90 kept upstream x 0.5
    reasons = df[(df["status"] == "dropped") & (df["_decided_at"] == "mix")].groupby(["source", "reason"]).size().to_dict()
    assert reasons == {("web", "resampled:source_cap"): 200, ("synth", "resampled:source_weight"): 150,
                       ("books", "resampled:source_weight"): 45}
    upstream = df.loc[[f"s{i:05d}" for i in range(590, 600)]]  # dropped before this stage: untouched
    assert (upstream["status"] == "dropped").all() and upstream["_decided_at"].isna().all()
    assert stats["sources"]["web"] == {"in": 300, "weight": 1.0, "cap": 100, "target": 100, "kept": 100}
    assert stats["sources"]["books"]["in"] == 90 and stats["rows_in"] == 590 and stats["rows_out"] == 195
    assert stats["absent_sources"] == ["forum"] and any("forum" in line and "WARNING" in line for line in logs)
    assert df["status"].equals(df5["status"]) and stats == stats5  # any block layout

    # A larger cap keeps a superset (keys are per row), another seed another sample.
    bigger = SourceResampleStage(SourceResampleStage.Params(caps={"web": 150}), "mix", ctx)
    dfb = _run(bigger, table, 3, seed=3)
    small = set(df.index[(df["source"] == "web") & (df["status"] == "kept")])
    large = set(dfb.index[(dfb["source"] == "web") & (dfb["status"] == "kept")])
    assert len(large) == 150 and small < large
    other = _run(SourceResampleStage(params, "mix", ctx), table, 3, seed=4)
    assert set(other.index[other["status"] == "kept"]) != set(df.index[df["status"] == "kept"])


def test_unknown_source_is_an_error(ray_local, corpus):
    import ray.data as rd

    from stages.base import StageContext
    from stages.resample import SourceResampleStage

    stage = SourceResampleStage(SourceResampleStage.Params(weights={"webb": 0.5}), "mix",
                                StageContext(run_dir="", stage_name="mix", sources={"web": {}, "synth": {}}))
    with pytest.raises(ValueError, match=r"\['webb'\].*sources: \['synth', 'web'\]"):
        stage.transform(rd.from_arrow(_source_table(corpus)), seed=0, log=print)
    with pytest.raises(ValueError, match="keep fractions"):
        SourceResampleStage.Params(weights={"web": 1.5})


# -- length balancing ----------------------------------------------------------------------------
def _length_table(n: int = 1200) -> pa.Table:
    rng = np.random.default_rng(5)
    tokens = np.round(rng.lognormal(5.5, 0.9, n))  # reasoning lengths: many short, a long tail
    tokens[::97] = np.nan  # a few rows without a length
    return _rows([f"t{i}" for i in range(n)], extra={"cot_tokens": pa.array(tokens, pa.float64(), from_pandas=True)})


@pytest.mark.parametrize("blocks", [1, 4])
def test_length_buckets_are_balanced(ray_local, blocks):
    from stages.resample import LengthResampleStage

    table = _length_table()
    values = table.column("cot_tokens").to_numpy(zero_copy_only=False)
    stage = LengthResampleStage(LengthResampleStage.Params(column="cot_tokens", edges=[128, 256, 512, 1024], cap=100), "balance")
    df = _run(stage, table, blocks)
    stats = stage.run_stats
    edges = [-math.inf, 128, 256, 512, 1024, math.inf]
    for i, b in enumerate(stats["buckets"]):
        inside = (values >= edges[i]) & (values < edges[i + 1])
        assert b["before"] == inside.sum()
        assert b["after"] == min(100, inside.sum()) == (df["status"].to_numpy()[inside] == "kept").sum()
    assert [b["range"] for b in stats["buckets"]] == ["<128", "[128,256)", "[256,512)", "[512,1024)", ">=1024"]
    assert max(b["before"] for b in stats["buckets"]) > 3 * 100  # the input was unbalanced
    dropped = df[df["status"] == "dropped"]
    assert dropped["reason"].str.startswith("resampled:").all()
    assert (dropped["reason"] == "resampled:missing_cot_tokens").sum() == np.isnan(values).sum() == stats["missing"]
    assert dropped.loc[df.loc[dropped.index, "cot_tokens"] < 128, "reason"].eq("resampled:cot_tokens<128").all()
    assert stats["rows_out"] == (df["status"] == "kept").sum()
    if blocks == 4:  # same kept set as with one block
        again = _run(LengthResampleStage(stage.params, "balance"), table, 1)
        assert again["status"].equals(df["status"])


def test_length_quantile_bins_and_keep_fraction(ray_local):
    from stages.resample import LengthResampleStage

    table = _length_table()
    q = LengthResampleStage(LengthResampleStage.Params(column="cot_tokens", binning="quantile", bins=4, cap=10_000), "q")
    _run(q, table, 3)
    sizes = [b["before"] for b in q.run_stats["buckets"]]
    assert len(sizes) == 4 and max(sizes) - min(sizes) <= 0.05 * sum(sizes) / 4  # equal-count bins
    lg = LengthResampleStage(LengthResampleStage.Params(column="cot_tokens", binning="log", bins=6, keep_fraction=0.5), "lg")
    df = _run(lg, table, 2)
    s = lg.run_stats
    pool = len(table) - s["missing"]
    assert s["rows_out"] <= round(0.5 * pool) and s["rows_out"] > 0.4 * pool  # water-filled cap
    assert all(b["after"] == min(b["before"], s["cap"]) for b in s["buckets"])
    with pytest.raises(ValueError, match="either cap"):
        LengthResampleStage.Params(column="x")


# -- through the runner --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_inputs(corpus, tmp_path_factory) -> dict:
    rng = random.Random(1)
    d = tmp_path_factory.mktemp("resample_input")
    paths, ids = {}, {"human": [], "synthetic": []}
    rows = {"human": [], "synthetic": []}
    for i, t in enumerate(corpus["texts"]):
        src = "synthetic" if rng.random() < 0.4 else "human"
        rows[src].append((f"doc{i:05d}", t))
    for src, rs in rows.items():
        paths[src] = d / f"{src}.parquet"
        pq.write_table(pa.table({"id": [r[0] for r in rs], "text": [r[1] for r in rs]}), paths[src], row_group_size=40)
        ids[src] = [r[0] for r in rs]
    return {"paths": paths, "ids": ids}


OVERRIDES = ["mix.caps={synthetic: 200}", "mix.weights={synthetic: 0.9}", "ngram.keep_fraction=0.7",
             "ngram.overused_share=0.01", "length.keep_fraction=0.8"]


def _run_mixed(run_dir, mixed_inputs, chunk_rows):
    """The shipped config on the two sources (block independence is tested on the stages above)."""
    inputs = [f"{k}={v}" for k, v in mixed_inputs["paths"].items()]
    return run_config(CONFIG, run_dir, inputs=inputs,
                      overrides=OVERRIDES + [f"ingest_human.chunk_rows={chunk_rows}", f"ingest_synthetic.chunk_rows={chunk_rows}"])


def test_runner_records_the_resampling(ray_local, mixed_inputs, tmp_path):
    run_dir = tmp_path / "run"
    _run_mixed(run_dir, mixed_inputs, chunk_rows=300)
    counts = assert_conservation(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    n_synth = len(mixed_inputs["ids"]["synthetic"])
    mix = record["stages"]["mix"]["stats"]
    assert mix["sources"]["synthetic"] == {"in": n_synth, "weight": 0.9, "cap": 200, "target": min(200, round(0.9 * n_synth)),
                                           "kept": min(200, round(0.9 * n_synth))}
    assert mix["sources"]["human"]["kept"] == mix["sources"]["human"]["in"] == len(mixed_inputs["ids"]["human"])
    ngram = record["stages"]["ngram"]["stats"]
    assert ngram["rows_in"] == counts["ngram"]["in"] and ngram["rows_out"] == counts["ngram"]["kept"]
    assert ngram["after"]["entropy_bits"] > ngram["before"]["entropy_bits"]
    assert ngram["after"]["top100_share"] < ngram["before"]["top100_share"]
    length = record["stages"]["length"]["stats"]
    assert sum(b["after"] for b in length["buckets"]) == counts["length"]["kept"]
    for stage in ("mix", "ngram", "length"):
        m = manifest(run_dir, stage)
        assert m.loc[m["status"] == "dropped", "reason"].str.startswith("resampled").all(), stage
    assert "ngram_weight" in manifest(run_dir, "ngram").columns
