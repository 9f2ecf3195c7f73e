"""Fetches by reference from a cold disk: merged ranges read one at a time against several in flight.

Why: a shard writer fetches the images of ~1000 rows in shard order, which is a random order over
the source tars. Once the corpus is larger than the page cache (the 1M-row corpus here is 33 GiB,
the cache about 22 GiB) every fetch is a disk read, and a single reader waits on each one in turn.
``pipeline.media.fetch`` therefore keeps up to ``FETCH_THREADS`` merged ranges in flight.

What it does
    Walks the tar headers of a corpus (``--corpus``: a folder of img2dataset-style tars; default: a
    seeded ``bench/synth_corpus.py`` corpus of ``--rows`` rows built under ``--out``), makes a
    reference for every image member, and draws ``--sample`` of them at random (the order a shard
    sees). Before every trial it evicts the tars from the page cache (``posix_fadvise DONTNEED``,
    so the reads come from the disk, not from memory), then:

    1. times ``media.fetch`` over the sample in batches of ``--batch`` (a shard's rows) with
       ``FETCH_THREADS`` = 1 (the baseline: one read at a time, what the code did before),
       2, 4, 8 and 16; prints MiB/s, ms per row and the ratio to the baseline;
    2. times ``stages.shard.write_shard`` (fetch, hash check, tar write, index part) on the same
       rows, cold, at 1 and 8 threads.

    Every fetched byte is checked against its hash by ``fetch`` itself, so a wrong read cannot
    look fast. Nothing is asserted on time.

Run:  .venv/bin/python bench/fetch_cold.py --corpus bench/out/scale_cpu/corpus_1000000_seed0_tar10000/shards
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import media  # noqa: E402

MIB = 2 ** 20


def evict(paths: list[Path]) -> None:
    """Drop the files' clean pages from the page cache, so the next read goes to the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def image_refs(tars: list[Path]) -> list[tuple[str, str, str]]:
    """(sample key, reference, caption) for every image member, hashed from the tar as ingest does."""
    out = []
    for path in tars:
        uri = str(path.resolve())
        texts: dict[str, str] = {}
        imgs: list[tuple[str, int, bytes]] = []
        with tarfile.open(path) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                if ext in ("jpg", "jpeg", "png", "webp"):
                    imgs.append((key, m.offset_data, tf.extractfile(m).read()))
                elif ext == "txt":
                    texts[key] = tf.extractfile(m).read().decode("utf-8", "replace")
        out.extend((key, media.ref_for(uri, off, data), texts.get(key, "")) for key, off, data in imgs)
    return out


def time_fetch(refs: list[str], batch: int, threads: int, tars: list[Path]) -> tuple[float, int]:
    media.FETCH_THREADS = threads
    evict(tars)
    t0 = time.perf_counter()
    got_bytes = 0
    for i in range(0, len(refs), batch):
        for g in media.fetch(refs[i: i + batch]):
            if isinstance(g, media.MediaError):
                raise g
            got_bytes += len(g)
    return time.perf_counter() - t0, got_bytes


def time_write_shard(rows: list[tuple[str, str, str]], batch: int, threads: int, tars: list[Path], out_dir: str) -> float:
    from stages.shard import ShardParams, write_shard

    media.FETCH_THREADS = threads
    params = ShardParams(corpus="bench", samples_per_shard=batch).model_dump()
    evict(tars)
    t0 = time.perf_counter()
    for n, i in enumerate(range(0, len(rows), batch)):
        chunk = rows[i: i + batch]
        block = pa.table({"sample_id": [k for k, _, _ in chunk], "image_ref": [r for _, r, _ in chunk],
                          "image": pa.nulls(len(chunk), pa.binary()), "image_format": ["JPEG"] * len(chunk),
                          "text": [t for _, _, t in chunk], "width": [256] * len(chunk), "height": [256] * len(chunk)})
        write_shard(n, f"bench-{n:06d}.tar", out_dir, [(0, len(chunk))], params, block)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="folder of input tars (default: build one with bench/synth_corpus.py)")
    ap.add_argument("--rows", type=int, default=20_000, help="rows of the corpus built when --corpus is not given")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "fetch_cold"))
    ap.add_argument("--tars", type=int, default=8, help="tars of the corpus to draw from (spread over its files)")
    ap.add_argument("--sample", type=int, default=4000, help="references fetched per trial")
    ap.add_argument("--batch", type=int, default=1000, help="references per fetch call (a shard's rows)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.corpus:
        corpus = Path(args.corpus)
    else:
        from bench import synth_corpus

        build = synth_corpus.build(Path(args.out) / f"corpus_{args.rows}", args.rows, args.seed, 1000, os.cpu_count() or 1)
        corpus = Path(build["shards"])
    all_tars = sorted(corpus.glob("*.tar"))
    if not all_tars:
        ap.error(f"--corpus {corpus}: no .tar files there")
    tars = [all_tars[i] for i in np.linspace(0, len(all_tars) - 1, min(args.tars, len(all_tars))).round().astype(int)]
    tars = sorted(set(tars))
    t0 = time.perf_counter()
    rows = image_refs(tars)
    rng = np.random.default_rng(args.seed)
    rows = [rows[i] for i in rng.permutation(len(rows))[: args.sample]]
    refs = [r for _, r, _ in rows]
    size = sum(p.stat().st_size for p in tars)
    print(f"{len(tars)} tars ({size / MIB:.0f} MiB) of {corpus}; {len(rows)} image references drawn at random "
          f"in {time.perf_counter() - t0:.1f} s; batches of {args.batch}; pages evicted before every trial")
    print(f"cores {os.cpu_count()}, load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))

    print("\n1. media.fetch, cold")
    base = None
    for threads in (1, 2, 4, 8, 16):
        s, got = time_fetch(refs, args.batch, threads, tars)
        rate = got / MIB / s
        base = base or rate
        label = "the baseline (one read at a time)" if threads == 1 else f"{rate / base:.2f}x the baseline"
        print(f"   {threads:>2} in flight: {s:6.2f} s, {rate:6.0f} MiB/s, {1000 * s / len(refs):.3f} ms a row; {label}")

    print("\n2. write_shard (fetch, hash check, tar, index part), cold")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as out_dir:
        one = time_write_shard(rows, args.batch, 1, tars, out_dir)
        eight = time_write_shard(rows, args.batch, 8, tars, out_dir)
    print(f"    1 in flight: {1000 * one / len(rows):.3f} ms a row (the baseline)")
    print(f"    8 in flight: {1000 * eight / len(rows):.3f} ms a row; {one / eight:.2f}x the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
