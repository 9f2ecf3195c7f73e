"""bench/synth_corpus.py and bench/scale_cpu.py: the million-row benchmark's corpus and configs.

The benchmark itself is never run here; these tests pin what its figures rest on: the corpus is a
pure function of its seed, it plants what its ground truth says, and configs/caption2_cpu.yaml is
caption2.yaml without the model stages."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from bench import synth_corpus as sc
from bench.scale_cpu import loop, shuffle_stats
from dedup.perceptual import hamming, image_phash_bytes
from pipeline.config import load_config
from pipeline.graph import build_plan
from stages.language import detect_language

ROOT = Path(__file__).resolve().parent.parent
ROWS, PER_TAR = 300, 100  # seed 0 plants every kind in its first 300 rows


def _members(shards: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    sc.build(out, ROWS, seed=0, samples_per_tar=PER_TAR, workers=1)
    return out


@pytest.fixture(scope="module")
def truth(corpus) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(corpus / "ground_truth.parquet").to_pylist()}


@pytest.fixture(scope="module")
def rows(corpus) -> dict[str, dict[str, bytes]]:
    return _members(corpus / "shards")


def _of(truth: dict, kind: str) -> list[dict]:
    found = [t for t in truth.values() if t["kind"] == kind]
    assert found, f"no {kind} row planted in {ROWS} rows"
    return found


def test_the_same_seed_writes_the_same_bytes_and_ground_truth_whatever_the_workers(corpus, tmp_path):
    again = sc.build(tmp_path / "again", ROWS, seed=0, samples_per_tar=PER_TAR, workers=2)
    for tar in sorted((corpus / "shards").glob("*.tar")):
        assert (tmp_path / "again" / "shards" / tar.name).read_bytes() == tar.read_bytes()
    assert pq.read_table(tmp_path / "again" / "ground_truth.parquet").equals(pq.read_table(corpus / "ground_truth.parquet"))
    assert again["tars"] == ROWS // PER_TAR


def test_a_smaller_corpus_is_a_prefix_of_a_larger_one_and_another_seed_differs(corpus, tmp_path):
    sc.build(tmp_path / "small", PER_TAR, seed=0, samples_per_tar=PER_TAR)
    sc.build(tmp_path / "other", PER_TAR, seed=1, samples_per_tar=PER_TAR)
    first = (corpus / "shards" / "00000.tar").read_bytes()
    assert (tmp_path / "small" / "shards" / "00000.tar").read_bytes() == first
    assert (tmp_path / "other" / "shards" / "00000.tar").read_bytes() != first


def test_a_build_with_the_same_parameters_is_reused(corpus):
    assert sc.build(corpus, ROWS, seed=0, samples_per_tar=PER_TAR).get("reused") is True


def test_rows_are_img2dataset_samples(rows, truth):
    assert sorted(rows) == sorted(truth) == [f"{i:09d}" for i in range(ROWS)]
    for key, m in rows.items():
        assert set(m) == {"jpg", "txt", "json"}
        meta = __import__("json").loads(m["json"])
        assert meta["key"] == key and meta["caption"] == m["txt"].decode() and meta["status"] == "success"


def test_unique_images_decode_with_realistic_sides_and_spread_phashes(rows, truth):
    hashes = []
    for t in _of(truth, "unique"):
        im = Image.open(io.BytesIO(rows[t["key"]]["jpg"]))
        im.load()
        assert im.format == "JPEG" and all(sc.SIDE_RANGE[0] <= s <= sc.SIDE_RANGE[1] for s in im.size)
        hashes.append(image_phash_bytes(rows[t["key"]]["jpg"]))
    nearest = min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert nearest > 8  # caption2's near-dup threshold: distinct rows are not near duplicates


def test_broken_images_fail_to_decode_and_tiny_images_are_tiny(rows, truth):
    for t in _of(truth, "broken"):
        with pytest.raises(Exception):
            Image.open(io.BytesIO(rows[t["key"]]["jpg"])).load()
    for t in _of(truth, "tiny"):
        im = Image.open(io.BytesIO(rows[t["key"]]["jpg"]))
        im.load()
        assert min(im.size) < 64 and (t["width"], t["height"]) == im.size


def test_image_duplicates_are_byte_equal_and_near_duplicates_differ_within_the_bound(rows, truth):
    for t in _of(truth, "image_exact_dup"):
        assert truth[t["dup_of"]]["kind"] == "unique" and t["dup_of"] < t["key"]
        assert rows[t["key"]]["jpg"] == rows[t["dup_of"]]["jpg"]
        assert rows[t["key"]]["txt"] != rows[t["dup_of"]]["txt"]
    for t in _of(truth, "image_near_dup"):
        a, b = rows[t["key"]]["jpg"], rows[t["dup_of"]]["jpg"]
        assert a != b
        assert hamming(image_phash_bytes(a), image_phash_bytes(b)) == t["phash_distance"] <= sc.NEAR_MAX_BITS


def test_caption_duplicates_short_and_foreign_captions(rows, truth):
    text = {k: m["txt"].decode() for k, m in rows.items()}
    for t in _of(truth, "caption_exact_dup"):
        assert text[t["key"]] == text[t["dup_of"]] and rows[t["key"]]["jpg"] != rows[t["dup_of"]]["jpg"]
    for t in _of(truth, "caption_near_dup"):
        assert text[t["key"]] != text[t["dup_of"]]
        assert sc.caption_jaccard(text[t["key"]], text[t["dup_of"]]) == pytest.approx(t["caption_jaccard"], abs=1e-4)
        assert t["caption_jaccard"] >= sc.CAPTION_NEAR_MIN
    assert all(len(text[t["key"]]) < 10 for t in _of(truth, "short_caption"))
    assert all(detect_language(text[t["key"]]) == "latin" for t in _of(truth, "foreign_caption"))
    uniques = [text[t["key"]] for t in _of(truth, "unique")]
    assert all(detect_language(c) == "en" and len(c) >= 20 for c in uniques)
    assert len(set(uniques)) == len(uniques)


def test_the_loop_baseline_errors_the_broken_rows_and_drops_what_demo_filters_drop(corpus, truth, tmp_path):
    res = loop(corpus / "shards", tmp_path / "out", per_tar=50)
    c = res["counts"]
    assert c["in"] == ROWS and c["error"] == len(_of(truth, "broken"))
    assert c["dropped"] >= len(_of(truth, "short_caption"))
    written = _members(tmp_path / "out")
    assert len(written) == c["kept"] and res["tars"] == -(-c["kept"] // 50)
    assert not {t["key"] for t in truth.values() if t["kind"] in ("broken", "short_caption")} & set(written)


def test_shuffle_figures_are_found_in_nested_stats():
    stats = {"rows": 5, "shuffle_bytes_per_row": 12.5, "phases": {"edges": {"shuffle_bytes": 100}}}
    assert shuffle_stats(stats) == {"shuffle_bytes_per_row": 12.5, "phases.edges.shuffle_bytes": 100}


def test_caption2_cpu_is_caption2_without_its_model_stages():
    plan = build_plan(load_config(ROOT / "configs" / "caption2_cpu.yaml"))
    assert list(plan.nodes) == ["ingest", "decode", "basic_filter", "language", "image_exact_dedup", "phash",
                                "image_near_dedup", "caption_dedup", "resample", "shard"]
    full = {s["name"]: s for s in yaml.safe_load((ROOT / "configs" / "caption2.yaml").read_text())["stages"]}
    for stage in yaml.safe_load((ROOT / "configs" / "caption2_cpu.yaml").read_text())["stages"]:
        expected = dict(full[stage["name"]])
        if stage["name"] == "caption_dedup":
            expected.pop("prefer")  # ita comes from the judge, which this config has not
        assert stage == expected
    assert all(n.spec.resources.num_gpus == 0 for n in plan.nodes.values())
