"""Shards are what a training job reads: WebDataset in a torch DataLoader, every kept sample exactly once."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import manifest


def _loader(shard_dir: Path, num_workers: int = 2):
    import torch
    import webdataset as wds

    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    ds = (
        wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
        .to_tuple("__key__", "json", "txt", handler=wds.reraise_exception)
    )
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)


def test_dataloader_with_two_workers_reads_each_kept_sample_exactly_once(demo_run):
    seen = []
    for key, meta_bytes, txt in _loader(Path(demo_run) / "shards"):
        meta = json.loads(meta_bytes)
        assert meta["sample_id"] == key
        assert meta["caption"] == txt.decode("utf-8")
        seen.append(key)
    kept = manifest(demo_run, "filter").query("status == 'kept'")["sample_id"].tolist()
    assert sorted(seen) == sorted(kept) and len(seen) == len(set(seen))


def test_each_sample_carries_media_bytes_and_packing_counts(demo_run):
    from PIL import Image

    decode = manifest(demo_run, "decode").set_index("sample_id")
    with tarfile.open(Path(demo_run) / "shards" / "demo-000000.tar") as tf:
        names = tf.getnames()
        metas = [json.loads(tf.extractfile(n).read()) for n in names if n.endswith(".json")]
        for meta in metas:
            img = tf.extractfile(meta["image"]).read()
            w, h = Image.open(io.BytesIO(img)).size
            assert (w, h) == (decode.loc[meta["sample_id"], "width"], decode.loc[meta["sample_id"], "height"])
            tok = meta["tokens"]
            assert tok["images"] == 1 and tok["text"] > 5
            # dynamic 448 px tiles, +1 thumbnail when more than one, 256 tokens each (SPEC.md)
            tiles = min(12, -(-w // 448) * -(-h // 448))
            tiles += 1 if tiles > 1 else 0
            assert tok["tiles"] == tiles and tok["visual"] == 256 * tiles
            assert tok["total"] == tok["text"] + tok["visual"]
            assert meta["source"] == "images" and meta["scores"]["width"] == w
    for info in tarfile.open(Path(demo_run) / "shards" / "demo-000000.tar").getmembers():
        assert info.mtime == 0 and info.uname == ""  # normalised headers: reruns are byte-identical


def test_media_bytes_are_the_ingested_bytes(demo_run, demo_input):
    index = json.loads((Path(demo_run) / "shards" / "shards.json").read_text())
    assert index["total_samples"] == 15
    with tarfile.open(Path(demo_run) / "shards" / "demo-000001.tar") as tf:
        for n in tf.getnames():
            if n.endswith(".json"):
                meta = json.loads(tf.extractfile(n).read())
                data = tf.extractfile(meta["image"]).read()
                src = demo_input / "images"
                assert any(data == p.read_bytes() for p in src.iterdir())


@pytest.mark.parametrize("tokenizer", ["regex", "tokenizer.json"])
def test_text_token_counts_use_the_configured_tokenizer(tmp_path, tokenizer):
    from stages.shard import TokenCounter

    if tokenizer == "tokenizer.json":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(["a cat on a mat", "a dog"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
        tok.save(str(tmp_path / "tokenizer.json"))
        counter = TokenCounter(str(tmp_path / "tokenizer.json"))
    else:
        counter = TokenCounter("regex")
    assert counter("a cat on a mat.") == 6
    assert counter("") == 0


@given(counts=st.lists(st.integers(0, 12), max_size=30), per_file=st.integers(1, 9), data=st.data())
@settings(max_examples=300, deadline=None)
def test_files_take_consecutive_rows_of_the_ordered_blocks(counts, per_file, data):
    """write_files cuts the sorted blocks into files of per_file rows; a resumed run skips the
    files that were completed. Checked against the rows each file must hold, row by row."""
    from stages.shard import _file_pieces

    rows = [(b, r) for b, c in enumerate(counts) for r in range(c)]  # (block, row in block), in order
    n_files = -(-len(rows) // per_file)
    skip = data.draw(st.sets(st.integers(0, max(0, n_files - 1)), max_size=n_files))
    got = {}
    for i, pieces, blocks in _file_pieces(counts, per_file, skip):
        assert len(pieces) == len(blocks) and all(counts[b] > 0 for b in blocks)
        got[i] = [(b, r) for (lo, hi), b in zip(pieces, blocks) for r in range(lo, hi)]
    assert got == {i: rows[i * per_file:(i + 1) * per_file] for i in range(n_files) if i not in skip}


def test_the_shard_sort_has_few_partitions_and_one_order_whatever_the_blocks(ray_local, monkeypatch):
    """Ray's default sort makes blocks x blocks pieces; ours cuts the uniform keys at fixed
    boundaries into partitions of about PARTITION_BYTES, never more than one per file."""
    import numpy as np
    import pyarrow as pa
    import ray
    import ray.data as rd

    import stages.shard as shard

    keys = np.random.default_rng(3).integers(0, 2**63 - 1, size=2000)
    table = pa.table({"_order": keys, "sample_id": [f"s{i}" for i in range(2000)]})
    outs = []
    for blocks, partition_bytes in ((40, 1 << 30), (7, 4096)):
        monkeypatch.setattr(shard, "PARTITION_BYTES", partition_bytes)
        ds = rd.from_arrow([table.slice(i, 2000 // blocks) for i in range(0, 2000, 2000 // blocks)])
        refs = shard.sort_by_order(ds, rows_per_file=10)
        parts = [t for t in ray.get(refs) if t.num_rows]
        outs.append(pa.concat_tables(parts).column("_order").to_pylist())
        if partition_bytes == 1 << 30:
            assert len(parts) == 1  # 40 input blocks, one partition: not 40 x 40 pieces
        else:
            assert 2 <= len(parts) <= 200  # bounded by the bytes, and by one per 10-row file
    assert outs[0] == outs[1] == sorted(keys.tolist())
