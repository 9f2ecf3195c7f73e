"""Perceptual near-dup: the pHash of real photos survives re-encodes, rescales, small crops and
brightness changes while different photos stay far apart; video fingerprints of real H.264 clips
survive a re-encode at another size, bitrate and frame rate; phash_dedup finds both through Ray
Data, keeps one row per cluster by the documented rule, whatever the block layout."""
from __future__ import annotations

import io
import itertools
import json
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance

from conftest import ROOT, run_config
from dedup.perceptual import (chunk_masks, fingerprint_keys, fingerprints_match, frame_match_fraction, hamming,
                              image_phash_bytes, uniform_frame_indices, video_fingerprint)
from helpers import assert_conservation, manifest

CONFIG = ROOT / "configs" / "dedup_images.yaml"
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "clock",
          "hubble_deep_field", "immunohistochemistry", "page", "moon"]
THRESHOLD = 8  # the stage's default


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def encode(im: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def crop(im: Image.Image, left=0.0, top=0.0, right=0.0, bottom=0.0) -> Image.Image:
    w, h = im.size
    return im.crop((int(w * left), int(h * top), w - int(w * right), h - int(h * bottom)))


# The edits a crawl produces: each is a near duplicate of the original JPEG (quality 90).
EDITS = {
    "jpeg_q10": lambda im: encode(im, quality=10),
    "png": lambda im: encode(im, "PNG"),
    "half_size": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), quality=75),
    "x1.5": lambda im: encode(im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.BICUBIC)),
    "crop_1pct_all_sides": lambda im: encode(crop(im, 0.01, 0.01, 0.01, 0.01)),
    "crop_3pct_bottom": lambda im: encode(crop(im, bottom=0.03)),
    "brighter_20pct": lambda im: encode(ImageEnhance.Brightness(im).enhance(1.2)),
    "darker_20pct": lambda im: encode(ImageEnhance.Brightness(im).enhance(0.8)),
}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: photo(n) for n in PHOTOS}


# -- hashes and rules, no Ray ---------------------------------------------------------------
def test_phash_survives_edits_and_separates_different_photos(photos):
    base = {n: image_phash_bytes(encode(im)) for n, im in photos.items()}
    for name, im in photos.items():
        for edit, fn in EDITS.items():
            d = hamming(base[name], image_phash_bytes(fn(im)))
            assert d <= THRESHOLD, f"{name} {edit}: {d} bits"
    # A 10% crop is no longer the same picture for pHash: documented, not hidden.
    assert max(hamming(base[n], image_phash_bytes(encode(crop(photos[n], 0.1, 0.1, 0.1, 0.1)))) for n in PHOTOS) > THRESHOLD
    far = min(hamming(base[a], base[b]) for a, b in itertools.combinations(PHOTOS, 2))
    assert far >= 2 * THRESHOLD, f"two different photos only {far} bits apart"


@pytest.mark.parametrize("threshold", [0, 3, 8, 12])
def test_pigeonhole_keys_find_every_pair_within_the_threshold(threshold):
    masks = chunk_masks(threshold + 1)
    assert int(np.bitwise_or.reduce(masks)) == (1 << 64) - 1
    assert sum(int(m).bit_count() for m in masks) == 64  # disjoint and covering
    rng = random.Random(threshold)
    for _ in range(300):
        a = rng.getrandbits(64)
        b = a
        for bit in rng.sample(range(64), rng.randint(0, threshold)):
            b ^= 1 << bit
        signed = [x - (1 << 64) if x >= 1 << 63 else x for x in (a, b)]
        assert fingerprint_keys([signed[0]], threshold + 1, False) & fingerprint_keys([signed[1]], threshold + 1, False)


def test_video_match_rule():
    rng = np.random.default_rng(0)
    clip = [int(x) for x in rng.integers(-2**63, 2**63 - 1, size=16, dtype=np.int64)]
    other = [int(x) for x in rng.integers(-2**63, 2**63 - 1, size=16, dtype=np.int64)]
    noisy = [h ^ (0b101 << (i % 60)) for i, h in enumerate(clip)]  # 2 bits per frame
    assert fingerprints_match(clip, noisy, THRESHOLD, 0.8, 1) and fingerprints_match(noisy, clip, THRESHOLD, 0.8, 1)
    assert not fingerprints_match(clip, other, THRESHOLD, 0.8, 1)
    # Two different frames in 16 still match at 0.8 (14/16), four do not (12/16).
    assert fingerprints_match(clip, other[:2] + clip[2:], THRESHOLD, 0.8, 0)
    assert not fingerprints_match(clip, other[:4] + clip[4:], THRESHOLD, 0.8, 0)
    # Sampling that starts one frame later: an offset of one frame is tolerated, when allowed.
    shifted = clip[1:] + [other[0]]
    assert frame_match_fraction(clip, shifted, THRESHOLD, 1) == 15 / 16
    assert fingerprints_match(clip, shifted, THRESHOLD, 0.8, 1) and not fingerprints_match(clip, shifted, THRESHOLD, 0.8, 0)
    # Unequal lengths: the longer one is resampled uniformly to the shorter length.
    sparse = [clip[i] for i in uniform_frame_indices(16, 8)]
    assert fingerprints_match(sparse, clip, 0, 1.0, 0) and fingerprints_match(clip, sparse, 0, 1.0, 0)
    assert not fingerprints_match([], clip, THRESHOLD, 0.8, 1)


def test_phash_stage_marks_undecodable_bytes_as_errors(photos):
    from stages.perceptual_dedup import PHashStage

    good = encode(photos["coffee"])
    batch = pd.DataFrame({"sample_id": list("abcd"), "status": ["kept"] * 4, "reason": [None] * 4,
                          "image": [good, good[:200], None, b"not an image"]})
    out = PHashStage(PHashStage.Params(), "phash").process(batch.copy())
    assert list(out["sample_id"]) == list("abcd")
    assert out.loc[0, "status"] == "kept" and out.loc[0, "phash"] == image_phash_bytes(good)
    assert list(out["status"][1:]) == ["error"] * 3
    assert out["reason"][1:].str.startswith("corrupt_image: ").all()
    assert out["phash"][1:].isna().all()


# -- videos: real H.264 clips made with PyAV, fingerprints from decord ------------------------
def pan_zoom(name: str, frames: int = 48, size=(160, 120)):
    """A slow pan and zoom across a photo: the kind of motion real footage has."""
    im = photo(name)
    w0, h0 = im.size
    for i in range(frames):
        t = i / (frames - 1)
        s = 0.7 - 0.2 * t
        w, h = w0 * s, h0 * s
        x, y = (w0 - w) * t, (h0 - h) * (0.3 + 0.4 * t)
        yield np.asarray(im.resize(size, Image.BILINEAR, box=(x, y, x + w, y + h)))


def h264(frames, fps: int = 24, size=None, bitrate=None, crf=None) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            if i == 0:
                stream.height, stream.width = (size[1], size[0]) if size else f.shape[:2]
                if bitrate:
                    stream.bit_rate = bitrate
                if crf:
                    stream.options = {"crf": str(crf)}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if size:
                frame = frame.reformat(width=size[0], height=size[1])
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decoded(data: bytes) -> list[np.ndarray]:
    import av

    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def fingerprint(data: bytes, frames: int = 8) -> list[int]:
    import decord

    vr = decord.VideoReader(io.BytesIO(data))
    return video_fingerprint(vr.get_batch(uniform_frame_indices(len(vr), frames)).asnumpy())


@pytest.fixture(scope="module")
def clips() -> dict[str, dict]:
    """Originals (160x120, 24 fps, 2 s), re-encodes of two of them, and the same pan played backwards."""
    out = {name: {"data": h264(pan_zoom(name)), "height": 120} for name in ("astronaut", "coffee", "chelsea", "rocket")}
    out["astronaut_224p_12fps_60k"] = {"data": h264(decoded(out["astronaut"]["data"])[::2], fps=12, size=(224, 168),
                                                    bitrate=60_000), "height": 168}
    out["coffee_96p_crf40"] = {"data": h264(decoded(out["coffee"]["data"]), size=(96, 72), crf=40), "height": 72}
    out["astronaut_reversed"] = {"data": h264(list(pan_zoom("astronaut"))[::-1]), "height": 120}
    for c in out.values():
        c["fp"] = fingerprint(c["data"])
    return out


def test_video_fingerprints_survive_reencodes_and_separate_clips(clips):
    fp = {k: v["fp"] for k, v in clips.items()}
    assert all(len(f) == 8 for f in fp.values())
    assert fingerprints_match(fp["astronaut"], fp["astronaut_224p_12fps_60k"], THRESHOLD, 0.8, 1)
    assert fingerprints_match(fp["coffee"], fp["coffee_96p_crf40"], THRESHOLD, 0.8, 1)
    same = {frozenset(p) for p in [("astronaut", "astronaut_224p_12fps_60k"), ("coffee", "coffee_96p_crf40")]}
    for a, b in itertools.combinations(fp, 2):
        if frozenset((a, b)) not in same:
            assert frame_match_fraction(fp[a], fp[b], THRESHOLD, 1) <= 0.5, (a, b)


# -- phash_dedup through Ray Data -------------------------------------------------------------
def _rows(ids, column, values, heights, value_type):
    n = len(ids)
    return pa.table({"sample_id": ids, "source": ["t"] * n, "source_key": ids, "status": ["kept"] * n,
                     "reason": pa.nulls(n, pa.string()), column: pa.array(values, value_type),
                     "height": pa.array(heights, pa.int32()), "_chunk": [f"c{i % 3}" for i in range(n)],
                     "_decided_at": pa.nulls(n, pa.string())})


def test_video_near_duplicates_through_ray(ray_local, clips):
    import ray.data as rd

    from stages.perceptual_dedup import PHashDedupStage

    names = sorted(clips)
    table = _rows(names, "video_fp", [clips[n]["fp"] for n in names], [clips[n]["height"] for n in names],
                  pa.list_(pa.int64()))
    table = pa.concat_tables([table, _rows(["no_frames"], "video_fp", [[]], [0], pa.list_(pa.int64()))])
    stage = PHashDedupStage(PHashDedupStage.Params(column="video_fp", prefer="height", partitions=4), "vdedup")
    out = stage.transform(rd.from_arrow(table).repartition(3), seed=0, log=print).to_pandas().set_index("sample_id")
    assert sorted(out.index) == sorted(table.column("sample_id").to_pylist())  # conservation
    dropped = out[out["status"] == "dropped"]
    # The taller re-encode of astronaut wins (prefer=height); coffee's original beats its 96p copy.
    assert dict(dropped["reason"]) == {"astronaut": "near_dup_of:astronaut_224p_12fps_60k",
                                       "coffee_96p_crf40": "near_dup_of:coffee"}
    assert set(dropped["_decided_at"]) == {"vdedup"}
    s = stage.run_stats
    assert s["mode"] == "video" and s["chunks"] == 4
    assert s["clusters"] == 2 and s["cluster_sizes"] == {"2": 2} and s["rows_dropped"] == 2
    assert s["candidate_pairs"] >= s["verified_pairs"] == 2


def _write_image_input(root, photos) -> dict[str, str]:
    """images/ + captions.jsonl: every photo, each with its edits, plus a broken JPEG. Returns key -> photo."""
    (root / "images").mkdir(parents=True)
    lines, origin = [], {}
    for name, im in photos.items():
        for edit, data in [("orig", encode(im))] + [(e, fn(im)) for e, fn in EDITS.items()]:
            key = f"{name}.{edit}"
            ext = "png" if edit == "png" else "jpg"
            (root / "images" / f"{key}.{ext}").write_bytes(data)
            lines.append({"id": key, "image": f"images/{key}.{ext}", "caption": f"{name} ({edit})"})
            origin[key] = name
    (root / "images" / "broken.jpg").write_bytes(encode(photos["rocket"])[:300])
    lines.append({"id": "broken", "image": "images/broken.jpg", "caption": "truncated"})
    random.Random(5).shuffle(lines)
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return origin


@pytest.fixture(scope="module")
def image_run(ray_local, photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("phash_input")
    origin = _write_image_input(root, photos)
    run_dir = tmp_path_factory.mktemp("phash_run") / "run"
    run_config(CONFIG, run_dir, inputs=[str(root)], overrides=["ingest.chunk_rows=17", "phash_dedup.partitions=8"])
    return run_dir, origin


def test_image_near_duplicates_end_to_end(image_run):
    run_dir, origin = image_run
    counts = assert_conservation(run_dir)
    assert counts["decode"]["error"] == 1  # the truncated JPEG stops at decode
    m = manifest(run_dir, "phash_dedup").set_index("source_key")
    sizes = manifest(run_dir, "decode").set_index("source_key")["min_side"]
    ids = manifest(run_dir, "ingest").set_index("source_key")["sample_id"]
    key_of = dict(zip(ids, ids.index))
    assert m["phash"].notna().all()
    kept = m[m["status"] == "kept"]
    # Exactly one row of each photo survives: the largest (prefer: min_side), ties -> smallest sample_id.
    assert sorted(origin[k] for k in kept.index) == sorted(PHOTOS)
    for name in PHOTOS:
        group = [k for k, o in origin.items() if o == name]
        best = max(sizes[k] for k in group)
        rep = min((ids[k] for k in group if sizes[k] == best))
        assert key_of[rep] in kept.index, name
        for k in group:
            if k != key_of[rep]:
                assert m.loc[k, "status"] == "dropped" and m.loc[k, "reason"] == f"near_dup_of:{rep}", k
    stats = json.loads((run_dir / "run.json").read_text())["stages"]["phash_dedup"]["stats"]
    n = len(EDITS) + 1
    assert stats["mode"] == "image" and stats["threshold"] == THRESHOLD and stats["scheme"] == "bit_sampling"
    assert stats["confirm"] == "dhash" and stats["candidate_recall_at_threshold"] >= 0.95
    assert stats["clusters"] == len(PHOTOS) and stats["rows_dropped"] == len(PHOTOS) * (n - 1)
    assert stats["cluster_sizes"] == {"9-16": len(PHOTOS)} and stats["largest_cluster"] == n
    assert stats["candidate_pairs"] >= stats["verified_pairs"] >= len(PHOTOS) * (n - 1)


def test_same_decisions_with_another_block_layout(ray_local, image_run):
    """The run above used chunks of 17 rows and 8 shuffle partitions; one block and Ray's default give the same."""
    import ray.data as rd

    from stages.perceptual_dedup import PHashDedupStage

    run_dir, _ = image_run
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "checkpoints" / "phash" / "parts")  # Arrow: int64 hashes stay exact
    rows = rows.filter(pc.equal(rows["status"], "kept"))
    rows = rows.drop_columns([c for c in rows.column_names if c == "image"])  # media may be by reference
    stage = PHashDedupStage(PHashDedupStage.Params(prefer="min_side"), "phash_dedup")
    out = stage.transform(rd.from_arrow(rows).repartition(1), seed=0, log=print).to_pandas()
    runner = manifest(run_dir, "phash_dedup")
    def reasons(df):
        return {sid: (r if isinstance(r, str) else None) for sid, r in zip(df["sample_id"], df["reason"])}

    assert reasons(out) == reasons(runner)
    assert (out["status"] == "dropped").sum() == len(PHOTOS) * len(EDITS)
    recorded = json.loads((run_dir / "run.json").read_text())["stages"]["phash_dedup"]["stats"]
    assert stage.run_stats == recorded


def test_wrong_column_type_is_a_clear_error(ray_local):
    import ray.data as rd

    from stages.perceptual_dedup import PHashDedupStage

    table = _rows(["a"], "phash", ["ff00"], [1], pa.string())
    with pytest.raises(ValueError, match="column 'phash' holds string"):
        PHashDedupStage(PHashDedupStage.Params(), "d").transform(rd.from_arrow(table), seed=0, log=print)


def test_distinct_photos_pass_untouched(ray_local, photos):
    import ray.data as rd

    from stages.perceptual_dedup import PHashDedupStage

    hashes = [image_phash_bytes(encode(photos[n])) for n in PHOTOS]
    table = _rows(PHOTOS + ["no_hash"], "phash", hashes + [None], [1] * (len(PHOTOS) + 1), pa.int64())
    stage = PHashDedupStage(PHashDedupStage.Params(partitions=4), "d")
    out = stage.transform(rd.from_arrow(table).repartition(2), seed=0, log=print).to_pandas()
    assert sorted(out["sample_id"]) == sorted(PHOTOS + ["no_hash"]) and (out["status"] == "kept").all()
    # Pairs of different photos that share an LSH key by chance are candidates, rejected by verification.
    masks, _ = stage.image_masks(len(PHOTOS) + 1)
    x = np.array([(a ^ b) & (2**64 - 1) for a, b in itertools.combinations(hashes, 2)], dtype=np.uint64)
    assert stage.run_stats["candidate_pairs"] == sum(int(((x & m) == 0).sum()) for m in masks)  # one per shared bucket
    assert stage.run_stats["verified_pairs"] == 0 and stage.run_stats["clusters"] == 0
