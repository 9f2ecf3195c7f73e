"""Determinism: the same config, seed and inputs give byte-identical outputs, whatever the blocks
and the worker counts.

Each shipped pipeline runs twice in-process on the same small inputs:

- run A with the config's own chunking, batch sizes and pools, and Ray Data's default block size;
- run B with everything that decides how rows are cut into units and blocks, and how many
  workers handle them, changed: source chunks of 4 rows (2 videos), map-stage batches of 2 rows,
  map tasks at half a CPU (twice as many at once), actor pools of exactly 3 actors (at a quarter
  CPU each: a pool holding every CPU would starve the source reads and never finish), Ray Data
  blocks capped at 8 KiB (``DataContext.target_max_block_size``: about one image or a few
  documents per block), 3 shuffle partitions where a stage takes ``partitions``, category_balance
  embedding 2 rows a call in 2 actors (not 256 in 1), and 2 engine client threads instead of 4.

Then the two run directories must hold the same files, byte for byte, outside ``checkpoints/``,
``media/`` (intermediate bytes packed per written block, so packed differently when the blocks
differ; what they hold reaches the shards, which are compared) and ``manifests/`` (shards, shard indexes, shard lists, instruction exports with their images), every
manifest must hold the same rows (see ``manifest_table`` for why rows are compared sorted),
run.json must record the same counts, reasons and stage statistics (see ``RESULT_FIELDS``), and
the model server must have received the same requests (whole bodies: messages, answer schema,
sampling parameters, seeds) the same number of times.

Model stages talk to one ``SchemaServer`` (tests/faults/schema_server.py): it stands in for the
model server, answering each request as a pure function of the request, so a difference in the
outputs comes from this project's code. The runner, the stages, the openai engine client, its
retries, the manifests and the shards are all real; CLIP is the tiny local one of ``--smoke``.

Configs that run the same stages with the same parameters on the same input share one case:
- ``demo`` runs within ``demo_caption_qa``: its four stages (ingest, decode, filter, shard) have
  the same parameters there and read the same input; only the checkpoint after decode and the
  corpus name differ, and the caption_qa branch comes on top;
- ``charts`` is caption2's chart branch (topics ingest, chart_spec, chart_render, shard) stage for
  stage with the same parameters and the same topics file;
- ``demo_judge`` runs within ``caption2``: its seven stages (ingest, decode, clip_score,
  clip_filter, judge, filter, shard) have the same parameters there (bar ingest.chunk_rows, which
  run B changes anyway) and read the same demo images (plus two planted copies).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, run_config
from faults import inputs
from faults.endpoint import config_on_server
from faults.schema_server import SchemaServer
from helpers import assert_conservation
from stages.registry import stage_kinds

# Manifest columns that measure time, not content: dropped before comparing.
TIMING_COLUMNS = {"decode_s"}  # video_ingest: seconds the decoder took for the video

# The run.json fields per stage that are results. Not compared: ``seconds`` and ``actors`` (timing),
# ``fingerprint`` (a hash of the stage's parameters: run B changes chunk_rows on purpose), and at
# the top level started_at / finished_at / seconds (timing), history (earlier runs), run_dir and
# config_path (where), config (run B's resources and chunk sizes differ by design).
RESULT_FIELDS = ("kind", "parents", "checkpoint", "segment", "counts", "stats", "ran")

B_CHUNK_ROWS, B_CHUNK_VIDEOS, B_BATCH, B_PARTITIONS = 4, 2, 2, 3
B_TASK_CPUS = 0.5                 # stateless map tasks: twice as many at once
B_POOL, B_ACTOR_CPUS = 3, 0.25    # actor pools: 3 actors, 0.75 CPU in all, so the source reads still get a CPU
B_BLOCK_BYTES = 8 * 1024
A_CLIENT_THREADS, B_CLIENT_THREADS = 4, 2


# -- the pipelines and their inputs --------------------------------------------------------------
@dataclass
class Case:
    inputs: Callable[[Path, dict], list[str]]  # (scratch folder, shared inputs) -> --input values
    overrides: list[str] = field(default_factory=list)


def _demo(tmp: Path, shared: dict) -> list[str]:
    return [str(shared["demo"])]


def _demo_with_copies(tmp: Path, shared: dict) -> list[str]:
    return [str(shared["copies"])]


def _caption2(tmp: Path, shared: dict) -> list[str]:
    return [f"images={shared['copies']}", f"topics={inputs.TOPICS}"]


def _docs(tmp: Path, shared: dict) -> list[str]:
    return [str(shared["docs"]["all"])]


def _two_sources(tmp: Path, shared: dict) -> list[str]:
    return [f"human={shared['docs']['human']}", f"synthetic={shared['docs']['synthetic']}"]


def _specs(tmp: Path, shared: dict) -> list[str]:
    return [str(inputs.SPECS)]


def _video(tmp: Path, shared: dict) -> list[str]:
    return inputs.video_qa(tmp)


def _instructions(tmp: Path, shared: dict) -> list[str]:
    return inputs.instruction_sources(tmp)


def _cot(tmp: Path, shared: dict) -> list[str]:
    return inputs.cot_sources(tmp)


# The server's answers reuse prompt words at random: few would pass the default lexical support.
LOOSE_SUPPORT = "caption_qa.min_support=0.1"
# The server's scores are noise: the video filter keeps every row judged, so the later stages get rows.
VIDEO_KEEP_JUDGED = ("filter.rules=[{column: qa_align, refusal: -1, min: 0}, "
                     "{column: content_richness, refusal: -1, min: 0}, {column: qa_difficulty, refusal: -1, min: 0}]")

CASES = {   # config name -> case; see the module docstring for the configs covered by another case
    "demo_caption_qa": Case(_demo, [LOOSE_SUPPORT]),
    "caption2": Case(_caption2, [LOOSE_SUPPORT]),
    "charts_from_specs": Case(_specs),
    "charts_recaption": Case(_demo),
    "dedup_text": Case(_docs),
    "dedup_images": Case(_demo_with_copies),
    "resample_text": Case(_two_sources, ["ngram.overused_share=0.01"]),
    "video": Case(_video, [VIDEO_KEEP_JUDGED]),
    "instruction2": Case(_instructions, ["gate.min_source_rows=1", "gate.min_source_pass_rate=0.34",
                                         "balance.buckets_per_source=2", "balance.per_bucket_cap=2"]),
    "cot": Case(_cot),
}
# caption2_cpu: caption2 without its model stages; every stage it has runs in the caption2 case.
COVERED_BY = {"demo": "demo_caption_qa", "charts": "caption2", "demo_judge": "caption2", "caption2_cpu": "caption2"}



def test_every_shipped_config_has_a_case():
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert shipped == set(CASES) | set(COVERED_BY)


@pytest.fixture(scope="module")
def server():
    with SchemaServer() as s:
        yield s


@pytest.fixture(scope="module")
def shared(demo_input, tmp_path_factory) -> dict:
    """Inputs several pipelines read: the demo images, the same with copies planted, and a small
    corpus of real prose with exact and near copies planted (tests/faults/inputs.py)."""
    return {"demo": demo_input,
            "copies": inputs.demo_with_copies(demo_input, tmp_path_factory.mktemp("copies") / "data"),
            "docs": inputs.prose(tmp_path_factory.mktemp("docs"))}


# -- run A and run B -----------------------------------------------------------------------------
def reshape(config_yaml: Path) -> None:
    """Rewrite a config in place into run B: other units, batches, blocks and worker counts."""
    raw = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    kinds = stage_kinds()
    for stage in raw["stages"]:
        cls = kinds[stage["kind"]]
        fields = cls.Params.model_fields
        if cls.mode == "source":
            if "chunk_rows" in fields:
                stage["chunk_rows"] = B_CHUNK_ROWS
            if "chunk_videos" in fields:
                stage["chunk_videos"] = B_CHUNK_VIDEOS
        if cls.mode == "map":
            res = dict(stage.get("resources") or {})
            res.update(batch_size=B_BATCH, num_cpus=B_TASK_CPUS)
            if cls.stateful:
                res.update(concurrency=B_POOL, num_cpus=B_ACTOR_CPUS)
            stage["resources"] = res
        if "partitions" in fields:
            stage["partitions"] = B_PARTITIONS
        if "embed_batch_size" in fields:  # category_balance: its own pool of embedding actors
            stage.update(embed_batch_size=B_BATCH, concurrency=2)
        if isinstance(stage.get("engine"), dict):
            stage["engine"]["max_concurrency"] = B_CLIENT_THREADS
    config_yaml.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def run_variant(config: str, case: Case, variant: str, tmp: Path, inputs: list[str], server: SchemaServer):
    """Run one variant; returns its run directory and the requests it sent (hashes of whole bodies:
    messages, answer schema, sampling parameters and seeds, model)."""
    from collections import Counter

    from ray.data import DataContext

    path = config_on_server(ROOT / "configs" / f"{config}.yaml", tmp / f"{variant}.yaml", server.url,
                            inputs=inputs, overrides=case.overrides, max_concurrency=A_CLIENT_THREADS)
    ctx = DataContext.get_current()  # what datasets created from now on copy
    saved = ctx.target_max_block_size
    if variant == "B":
        reshape(path)
        ctx.target_max_block_size = B_BLOCK_BYTES
    before = Counter(server.bodies)
    try:
        run_config(path, tmp / variant)
    finally:
        ctx.target_max_block_size = saved
    return tmp / variant, Counter(server.bodies) - before


# -- what must be equal --------------------------------------------------------------------------
def output_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file the run wrote outside its checkpoints, media store, manifests and run record."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not rel.startswith(("checkpoints/", "media/", "manifests/")) and rel != "run.json":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def manifest_table(path: Path) -> pa.Table:
    """A manifest without its timing columns, rows sorted by sample_id. The order is not part of a
    manifest's contract: a map segment's manifest lists its checkpoint fragments one after another
    (each sorted by sample_id), and the fragments are the blocks that wrote them."""
    t = pq.read_table(path)
    return t.drop_columns([c for c in t.column_names if c in TIMING_COLUMNS]).sort_by("sample_id")


def first_difference(a: pa.Table, b: pa.Table) -> str:
    if a.schema != b.schema:
        return f"schemas differ:\n{a.schema}\n---\n{b.schema}"
    if a.num_rows != b.num_rows:
        return f"{a.num_rows} rows != {b.num_rows} rows"
    for name in a.column_names:
        for i, (u, v) in enumerate(zip(a.column(name).to_pylist(), b.column(name).to_pylist())):
            if u != v and not (u != u and v != v):  # NaN equals NaN here
                return f"column {name!r}, sample {a.column('sample_id')[i]}: {u!r} != {v!r}"
    return "equal"


def record_differences(run_a: Path, run_b: Path) -> list[str]:
    a, b = (json.loads((r / "run.json").read_text()) for r in (run_a, run_b))
    out = [f"{k}: {a[k]!r} != {b[k]!r}" for k in ("status", "order") if a[k] != b[k]]
    for stage in a["stages"]:
        for k in RESULT_FIELDS:
            x, y = a["stages"][stage].get(k), b["stages"].get(stage, {}).get(k)
            if x != y:
                out.append(f"stages.{stage}.{k}:\n  A {json.dumps(x)[:800]}\n  B {json.dumps(y)[:800]}")
    return out


@pytest.mark.filterwarnings("ignore:The minimum number of concurrent actors:UserWarning")  # run B's pools of 3
@pytest.mark.parametrize("config", list(CASES))
def test_two_runs_with_other_blocks_and_workers_are_identical(config, ray_local, server, shared, tmp_path):
    case = CASES[config]
    inputs = case.inputs(tmp_path, shared)
    run_a, sent_a = run_variant(config, case, "A", tmp_path, inputs, server)
    run_b, sent_b = run_variant(config, case, "B", tmp_path, inputs, server)
    # The model stages asked the same questions, with the same sampling and seeds, as often.
    assert sent_a == sent_b, f"{config}: the runs sent different requests to the model server"
    assert_conservation(run_a)
    assert_conservation(run_b)
    record = json.loads((run_a / "run.json").read_text())
    idle = [s for s, info in record["stages"].items() if not info["counts"]["in"]]
    assert not idle, f"{config}: no row reached {idle}: the comparison would prove nothing there"

    files_a, files_b = output_digests(run_a), output_digests(run_b)
    if any(stage_kinds()[s["kind"]].sink for s in record["stages"].values()):
        assert files_a, f"{config}: run A wrote no output files"   # else the manifests are the output
    assert sorted(files_a) == sorted(files_b), f"{config}: the runs wrote different files"
    differ = [f for f in files_a if files_a[f] != files_b[f]]
    assert not differ, f"{config}: files with different bytes: {differ}"

    manifests = sorted(p.name for p in (run_a / "manifests").glob("*.parquet"))
    assert manifests == sorted(p.name for p in (run_b / "manifests").glob("*.parquet"))
    for m in manifests:
        ta, tb = manifest_table(run_a / "manifests" / m), manifest_table(run_b / "manifests" / m)
        assert ta.equals(tb), f"{config}: manifests/{m}: {first_difference(ta, tb)}"

    differences = record_differences(run_a, run_b)
    assert not differences, f"{config}: run.json differs:\n" + "\n".join(differences)


# -- the causes found, each pinned where it lives ------------------------------------------------
def test_clip_scores_do_not_depend_on_the_batch_a_row_comes_in(demo_input):
    """Matrix kernels pick their blocking by shape: unpadded, a row's cosine moved in the last bits
    (~6e-8 on this CPU) with its batch's size, and clip_filter's percentile cut with it."""
    from judges.engines.clip_engine import ClipEngine
    from judges.tiny_models import TINY_CLIP, TINY_CLIP_MODEL_NAME, build_all
    from pipeline.smoke import tiny_model_cache

    tiny = build_all(tiny_model_cache())[TINY_CLIP]
    engine = ClipEngine(TINY_CLIP_MODEL_NAME, str(tiny / "open_clip_model.safetensors"), config_dir=str(tiny),
                        batch_size=16, decode_threads=1)
    engine.setup()
    images = [p.read_bytes() for p in sorted((demo_input / "images").glob("*"))][:16]
    texts = [f"caption {i}: a picture of something" for i in range(len(images))]
    together = engine.similarity(images, texts).similarity
    assert np.isfinite(together).sum() >= 10
    for size in (1, 2, 3, 5):
        apart = np.concatenate([engine.similarity(images[i:i + size], texts[i:i + size]).similarity
                                for i in range(0, len(images), size)])
        np.testing.assert_array_equal(apart, together, err_msg=f"batches of {size}")


def test_most_frequent_ngrams_do_not_depend_on_the_blocks():
    """ngram_resample reports its most frequent n-grams: each block proposes its own top ones, and a
    tie broken by position in the block made the list depend on the blocks."""
    from resample.ngrams import most_frequent, partial_stats

    rng = np.random.default_rng(0)
    h = rng.permutation(np.arange(1, 61, dtype=np.uint64) * np.uint64(7919))
    tf = np.array([1] * 45 + [2] * 10 + [5] * 5)
    counts = pa.table({"h": pa.array(h, pa.uint64()), "df": tf, "tf": tf})

    def top(blocks):
        return most_frequent([partial_stats(b, 5, 12).to_pylist()[0] for b in blocks], 12)

    whole = top([counts])
    assert [t for _, _, t in whole] == [5] * 5 + [2] * 7
    for size in (7, 13):
        assert top([counts.slice(i, size) for i in range(0, 60, size)]) == whole


PHRASES = ["bar chart value comparison", "counting objects", "ocr of a receipt", "math word problem",
           "document question answering", "scene description", "color recognition", "table lookup",
           "chart trend reading", "object counting in a photo", "reading text in an image", "geometry angle"]


def test_category_phrase_vectors_do_not_depend_on_the_phrases_beside_them():
    """Padded into one batch, a phrase's embedding moved (~2e-7) with the other phrases of the batch,
    and with it the bucket of a row near a tie between two centroids."""
    from stages.category import DEFAULT_EMBEDDER, _Embed

    together = _Embed(DEFAULT_EMBEDDER, "cpu", 256, "category").embed(PHRASES)
    for size in (1, 5):
        embed = _Embed(DEFAULT_EMBEDDER, "cpu", 256, "category").embed  # a fresh actor: an empty cache
        apart = [v for i in range(0, len(PHRASES), size) for v in embed(PHRASES[i:i + size])]
        for phrase, x, y in zip(PHRASES, together, apart):
            np.testing.assert_array_equal(x, y, err_msg=f"{phrase!r} in groups of {size}")


def test_category_buckets_do_not_depend_on_the_order_rows_arrive_in():
    """k-means is fit on a sample gathered from blocks as they finish: fit in that order, its seeded
    start, and so the bucket each phrase lands in, changed from run to run."""
    import pandas as pd

    from stages.category import fit_buckets

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16))
    sample = pd.DataFrame({"sample_id": [f"s{i:03d}" for i in range(120)],
                           "phrase": [PHRASES[i % len(PHRASES)] for i in range(120)]})
    sample["vec"] = [(centres[i % 6] + 0.3 * rng.normal(size=16)).astype(np.float32) for i in range(120)]
    centroids, top = fit_buckets(sample, 4, seed=0)
    for order in (sample[::-1], sample.sample(frac=1, random_state=2)):
        other_centroids, other_top = fit_buckets(order, 4, seed=0)
        np.testing.assert_array_equal(other_centroids, centroids)
        assert other_top == top
