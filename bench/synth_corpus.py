"""A seeded synthetic img2dataset-style corpus of N image-caption rows, with planted ground truth.

Why
    The scale benchmark (``bench/scale_cpu.py``) needs a million rows that look like what
    img2dataset writes (uncompressed ``%05d.tar`` shards of ``%09d``-keyed ``.jpg`` + ``.txt`` +
    ``.json`` members, 256-448 px JPEGs), that every filter and dedup stage has real work on, and
    whose right answer is known: so a stage that drops unrelated rows, or misses planted copies,
    shows up as a count, not as a guess. The corpus scripts in ``bench/scale.py`` search for
    distinct variants of 20 real photographs; that does not reach a million rows.

What a row is
    Every row ``i`` is a pure function of ``(seed, i)``: its kind, image and caption come from
    ``numpy.random.default_rng([seed, i])`` and the kinds of all rows from one stream whose prefix
    does not depend on N (so the 10k corpus is the first 10k rows of the 1M one, whatever the
    rows per tar). A duplicate therefore regenerates its original instead of looking it up, and
    shards build in parallel processes with the same bytes as one process.

    Unique images: a fresh low-frequency colour field (a random k x k x 3 grid, k in 2..6,
    bicubic-upscaled), blended with a crop of one of a few dozen pooled high-frequency noise
    textures, plus 1-4 random shapes, encoded as JPEG at quality 85-95 with sides 256-448 px.
    The pHash (8x8 low DCT frequencies) is set by the field and the shapes, both fresh per row,
    so hashes of distinct rows spread like random 64-bit strings (mean distance ~32 bits).

    Captions: a seeded template grammar (slots: adjectives, views, subjects, places, light,
    two extras, a number) with at most two fixed words between slots, so two unrelated captions
    share almost no 5-word shingle.

Planted kinds (``SHARES``, one kind per row; ``ground_truth.parquet``: key -> kind, dup_of):
    broken             JPEG cut to 30-70 % of its bytes (decode error)
    tiny               shorter side 16-63 px (below caption2's 64 px; below 32 px also decode's)
    image_exact_dup    the same bytes as an earlier unique row (any shard), a new caption
    image_near_dup     an earlier unique row's image re-encoded, slightly cropped or rescaled
                       (different bytes; pHash distance recorded, at most NEAR_MAX_BITS)
    caption_exact_dup  a new image, the caption of an earlier unique row
    caption_near_dup   a new image, an earlier unique row's caption with its number changed or a
                       word appended (5-word-shingle Jaccard recorded, >= 0.8)
    short_caption      a caption under 10 characters (both pipelines' length filters)
    foreign_caption    a French caption (``language`` calls it ``latin``, caption2 drops it)
    unique             everything else

    python bench/synth_corpus.py --rows 10000 --out /tmp/corpus [--seed 0] [--samples-per-tar 10000] [--workers 2]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARES: dict[str, float] = {
    "broken": 0.01, "tiny": 0.01, "image_exact_dup": 0.02, "image_near_dup": 0.02,
    "caption_exact_dup": 0.01, "caption_near_dup": 0.01, "short_caption": 0.005, "foreign_caption": 0.005,
}
KINDS = ("unique",) + tuple(SHARES)
DUP_KINDS = ("image_exact_dup", "image_near_dup", "caption_exact_dup", "caption_near_dup")
NEAR_MAX_BITS = 6           # planted image near duplicates: pHash distance at most this
CAPTION_NEAR_MIN = 0.8      # planted caption near duplicates: 5-word-shingle Jaccard at least this
SIDE_RANGE = (256, 448)
TINY_RANGE = (16, 63)
N_BACKGROUNDS = 256
TAR_MTIME = 1_700_000_000   # fixed member times: the same seed gives the same tar bytes

_ADJ = ("bright", "dim", "weathered", "colourful", "quiet", "crowded", "distant", "detailed", "blurry", "sunlit",
        "shadowy", "narrow", "wide", "old", "modern", "wet", "dusty", "glossy", "faded", "sharp", "tiny", "huge",
        "rustic", "elegant", "tilted", "framed", "painted", "rusty", "frozen", "polished", "wooden", "striped",
        "golden", "pale", "dark", "noisy", "empty", "busy", "fresh", "broken")
_VIEW = ("close-up", "wide shot", "top-down view", "side view", "cropped photo", "snapshot", "aerial view",
         "low-angle shot", "studio photo", "candid picture", "grainy scan", "zoomed view", "portrait",
         "panorama", "still frame", "macro shot")
_SUBJECT = ("astronaut", "tabby cat", "coffee cup", "row of coins", "patch of grass", "gravel path", "rocket",
            "red motorcycle", "printed page", "brick wall", "wall clock", "temple roof", "pink flower", "bridge",
            "lighthouse", "fishing boat", "mountain hut", "city bus", "violin", "chess board", "bakery window",
            "garden gate", "tram stop", "water tower", "paper kite", "wind turbine", "market stall", "old tractor",
            "stone fountain", "street lamp", "bookshelf", "sailing yacht", "teapot", "bicycle wheel", "scarecrow",
            "railway signal", "camping tent", "harbour crane", "snow plough", "desk lamp", "goldfish bowl",
            "parrot", "radio mast", "sand dune", "glass vase", "typewriter", "fire engine", "hot air balloon",
            "picnic table", "barn owl", "pine cone", "river otter", "ice cream cart", "wooden canoe", "microscope",
            "chimney", "copper kettle", "stained window", "bus shelter", "weather vane")
_ACTION = ("shown", "photographed", "captured", "seen", "pictured", "displayed", "framed", "recorded")
_PLACE = ("on a wooden table", "in a museum hall", "near a river bank", "under a cloudy sky", "inside a garage",
          "next to an open window", "in a busy market", "on a stone floor", "against a white wall",
          "in a small laboratory", "beside a parking lot", "at the edge of a forest", "in a school classroom",
          "on a rooftop terrace", "behind a glass counter", "in a dark corridor", "on a sandy beach",
          "in an empty library", "near a train platform", "inside a greenhouse", "on a snowy hill",
          "by a quiet canal", "in a crowded station", "outside a village church", "along a coastal road",
          "in a hotel lobby", "under a railway bridge", "next to a bakery", "in an old factory", "on a farm track")
_LIGHT = ("morning light", "harsh noon sun", "soft evening glow", "flickering lamps", "neon signs",
          "overcast daylight", "candle light", "a camera flash", "moonlight", "fluorescent tubes", "golden hour",
          "blue twilight", "street lights", "window light")
_EXTRA = ("a coffee mug sits nearby", "two people talk in the distance", "a bicycle leans on the wall",
          "the corners are slightly out of focus", "a red label is visible at the bottom",
          "some text is printed on the left", "a shadow falls across the middle", "leaves cover the ground",
          "a green door is half open", "an old map hangs behind it", "rain drops cover the lens",
          "a dog sleeps in the corner", "the colours look washed out", "a blue car passes by",
          "stacked boxes fill the background", "a small plant grows from a crack", "birds circle overhead",
          "a ladder rests against a fence", "steam rises from a vent", "a flag moves in the wind",
          "the floor is covered in tiles", "a clock shows half past three", "snow lies on the ledge",
          "a child points at something", "a poster peels off the wall", "puddles reflect the sky")
_FR_ADJ = ("ancienne", "lumineuse", "floue", "nette", "sombre", "colorée", "petite", "grande")
_FR_SUBJ = ("d'une maison", "d'un bateau", "d'une rue étroite", "d'un jardin", "d'une église", "d'un marché")
_FR_PLACE = ("près de la rivière", "sous la pluie", "dans le village", "au bord de la mer", "devant la gare")
_SHORT = ("photo", "image", "img", "pic", "scan", "dsc")  # + " NNN": at most 9 characters


def key_of(i: int) -> str:
    return f"{i:09d}"


# -- kinds and ground truth ---------------------------------------------------------------------

def kinds_upto(seed: int, n: int) -> np.ndarray:
    """Kind index (into KINDS) of rows 0..n-1; a prefix of the same for any larger n."""
    u = np.random.default_rng([seed, 0x5EED]).random(n)
    edges = np.cumsum(list(SHARES.values()))
    k = np.searchsorted(edges, u, side="right") + 1  # 1.. = a planted kind
    k[u >= edges[-1]] = 0                            # the rest: unique
    k[0] = 0
    return k.astype(np.int8)


def _earlier_unique(i: int, kinds: np.ndarray, rng: np.random.Generator) -> int | None:
    """A uniformly drawn earlier row, walked back to the nearest unique one (None before any)."""
    if i == 0:
        return None
    j = int(rng.integers(0, i))
    while j >= 0 and kinds[j] != 0:
        j -= 1
    return j if j >= 0 else None


# -- images ---------------------------------------------------------------------------------

def _backgrounds(seed: int) -> list[Image.Image]:
    """Pooled 448 px backgrounds: a bicubic-upscaled random colour grid plus multi-scale noise."""
    rng = np.random.default_rng([seed, 0x7E47])
    side = SIDE_RANGE[1]
    out = []
    for _ in range(N_BACKGROUNDS):
        k = int(rng.integers(3, 9))
        field = np.asarray(Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8), "RGB")
                           .resize((side, side), Image.BICUBIC), np.float32)
        acc = np.zeros((side, side), np.float32)
        for cell, amp in ((4, 1.0), (8, 0.7), (2, 0.5)):
            small = Image.fromarray(rng.integers(0, 256, (side // cell, side // cell), dtype=np.uint8))
            acc += amp * (np.asarray(small.resize((side, side), Image.BILINEAR), np.float32) - 127.5)
        amp = float(rng.uniform(0.25, 0.6))
        out.append(Image.fromarray(np.clip(field + amp * acc[..., None], 0, 255).astype(np.uint8), "RGB"))
    return out


_DIHEDRAL = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
             Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
             Image.Transpose.TRANSVERSE)
_SWAPS_AXES = (3, 5, 6, 7)


@dataclass
class Painter:
    """Draws row images from a seeded pool of backgrounds (built once per process).

    Per row: a random window of a random background, one of the 8 flips/rotations, then large
    random shapes; the shapes and the window set the low DCT frequencies the pHash reads, so
    hashes spread although the backgrounds repeat."""
    seed: int
    backgrounds: list[Image.Image]

    @classmethod
    def for_seed(cls, seed: int) -> "Painter":
        return cls(seed, _backgrounds(seed))

    def picture(self, rng: np.random.Generator, w: int, h: int) -> Image.Image:
        bg = self.backgrounds[int(rng.integers(0, len(self.backgrounds)))]
        t = int(rng.integers(0, len(_DIHEDRAL)))
        cw, ch = (h, w) if t in _SWAPS_AXES else (w, h)  # crop so the flipped/rotated window is w x h
        side = bg.size[0]
        x, y = int(rng.integers(0, side - cw + 1)), int(rng.integers(0, side - ch + 1))
        im = bg.crop((x, y, x + cw, y + ch))
        if _DIHEDRAL[t] is not None:
            im = im.transpose(_DIHEDRAL[t])
        draw = ImageDraw.Draw(im)
        sizes = [(3, 2)] * int(rng.integers(3, 6)) + [(12, 6)] * int(rng.integers(0, 4))  # side / (max, min)
        for big, small in sizes:
            sw, sh = int(rng.integers(w // big, w // small + 1)), int(rng.integers(h // big, h // small + 1))
            x0, y0 = int(rng.integers(-sw // 3, w - sw // 2)), int(rng.integers(-sh // 3, h - sh // 2))
            x1, y1 = x0 + sw, y0 + sh
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
        return im

    def unique_image(self, i: int) -> tuple[Image.Image, bytes]:
        """Row i's picture and JPEG bytes as a unique row draws them (duplicates call this for their original)."""
        rng = np.random.default_rng([self.seed, i, 1])
        w, h = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2))
        im = self.picture(rng, w, h)
        return im, jpeg(im, int(rng.integers(85, 96)))


def jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def phash_distance(a: bytes, b: bytes) -> int:
    from dedup.perceptual import hamming, image_phash_bytes

    return hamming(image_phash_bytes(a), image_phash_bytes(b))


def near_copy(im: Image.Image, original: bytes, rng: np.random.Generator) -> tuple[bytes, str, int]:
    """A copy with other bytes and a pHash within NEAR_MAX_BITS: (bytes, how, distance)."""
    w, h = im.size
    tries = []
    order = rng.permutation(3)
    for t in order:
        if t == 0:
            c = [int(v) for v in rng.integers(1, max(2, min(w, h) // 40) + 1, 4)]
            tries.append(("crop", im.crop((c[0], c[1], w - c[2], h - c[3]))))
        elif t == 1:
            f = float(rng.uniform(0.85, 0.97))
            tries.append(("rescale", im.resize((round(w * f), round(h * f)), Image.BILINEAR)))
        else:
            tries.append(("reencode", im))
    last = None
    for how, cand in tries:
        for q in (int(rng.integers(60, 85)), 92):
            data = jpeg(cand, q)
            if data == original:
                continue
            d = phash_distance(original, data)
            last = (data, how, d)
            if d <= NEAR_MAX_BITS:
                return last
    if last is None:
        raise RuntimeError("no near copy with different bytes")
    return last


# -- captions -------------------------------------------------------------------------------

def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def unique_caption(seed: int, i: int) -> str:
    """Row i's caption as a unique row draws it (caption duplicates call this for their original)."""
    rng = np.random.default_rng([seed, i, 2])

    def pick(xs):
        return xs[int(rng.integers(0, len(xs)))]

    e1, e2 = (int(v) for v in rng.choice(len(_EXTRA), 2, replace=False))
    return (f"{_a(pick(_ADJ)).capitalize()} {pick(_VIEW)} of {_a(pick(_ADJ))} {pick(_SUBJECT)} {pick(_ACTION)} "
            f"{pick(_PLACE)} in {pick(_LIGHT)}, while {_EXTRA[e1]} and {_EXTRA[e2]}; number {int(rng.integers(1, 100000))}.")


def caption_jaccard(a: str, b: str) -> float:
    from dedup.minhash import shingles

    sa, sb = set(shingles(a, 5, "words")), set(shingles(b, 5, "words"))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def near_caption(text: str, rng: np.random.Generator) -> str:
    """One small edit at the end: the number changes, or a word is appended."""
    head, _, tail = text.rpartition(" ")
    if rng.random() < 0.5:
        return f"{head} {int(rng.integers(1, 100000))}."
    return f"{text[:-1]} {('again', 'today', 'too', 'here')[int(rng.integers(0, 4))]}."


def foreign_caption(rng: np.random.Generator) -> str:
    def pick(xs):
        return xs[int(rng.integers(0, len(xs)))]

    return (f"Une photo {pick(_FR_ADJ)} {pick(_FR_SUBJ)} {pick(_FR_PLACE)}, avec {int(rng.integers(2, 99))} chaises "
            f"et une lumière {pick(_FR_ADJ)} qui vient de la fenêtre numéro {int(rng.integers(1, 100000))}.")


# -- rows and shards --------------------------------------------------------------------------

def make_row(painter: Painter, i: int, kinds: np.ndarray) -> tuple[bytes, str, dict]:
    """(jpeg bytes, caption, ground-truth record) of row i."""
    seed = painter.seed
    kind = KINDS[int(kinds[i])]
    rng = np.random.default_rng([seed, i, 3])
    truth: dict = {"key": key_of(i), "kind": kind, "dup_of": None, "phash_distance": None,
                   "caption_jaccard": None, "near_how": None}
    if kind in DUP_KINDS:
        j = _earlier_unique(i, kinds, rng)
        if j is None:
            kind = truth["kind"] = "unique"
        else:
            truth["dup_of"] = key_of(j)
    caption = unique_caption(seed, i)
    if kind == "tiny":
        side = int(rng.integers(TINY_RANGE[0], TINY_RANGE[1] + 1))
        other = int(rng.integers(side, side * 4 + 1))  # aspect ratio up to 4
        w, h = (side, other) if rng.random() < 0.5 else (other, side)
        data = jpeg(painter.picture(rng, w, h), int(rng.integers(85, 96)))
    elif kind == "broken":
        _, full = painter.unique_image(i)
        data = full[: int(len(full) * float(rng.uniform(0.3, 0.7)))]
    elif kind == "image_exact_dup":
        _, data = painter.unique_image(j)
    elif kind == "image_near_dup":
        im, original = painter.unique_image(j)
        data, truth["near_how"], truth["phash_distance"] = near_copy(im, original, rng)
    else:
        _, data = painter.unique_image(i)
    if kind == "caption_exact_dup":
        caption = unique_caption(seed, j)
    elif kind == "caption_near_dup":
        original = unique_caption(seed, j)
        caption = near_caption(original, rng)
        truth["caption_jaccard"] = round(caption_jaccard(original, caption), 4)
    elif kind == "short_caption":
        caption = f"{_SHORT[int(rng.integers(0, len(_SHORT)))]} {int(rng.integers(0, 1000))}"
    elif kind == "foreign_caption":
        caption = foreign_caption(rng)
    truth["image_bytes"] = len(data)
    return data, caption, truth


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # a broken row's header may be cut too
        return None, None


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    tf.addfile(info, io.BytesIO(data))


def write_shard(painter: Painter, path: Path, start: int, stop: int, kinds: np.ndarray) -> list[dict]:
    """Rows start..stop-1 as one uncompressed tar, members in img2dataset's order; returns their truth."""
    truths = []
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(start, stop):
            data, caption, truth = make_row(painter, i, kinds)
            key = truth["key"]
            w, h = _jpeg_size(data)
            meta = {"url": f"https://example.invalid/img/{key}.jpg", "key": key, "status": "success",
                    "error_message": None, "width": w, "height": h, "original_width": w, "original_height": h,
                    "exif": "{}", "sha256": hashlib.sha256(data).hexdigest(), "caption": caption}
            _add(tf, f"{key}.jpg", data)
            _add(tf, f"{key}.txt", caption.encode("utf-8"))
            _add(tf, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            truth.update(shard=path.name, width=w, height=h)
            truths.append(truth)
    os.replace(tmp, path)
    return truths


_PAINTER: Painter | None = None


def truth_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("kind", pa.string()), ("dup_of", pa.string()),
                      ("phash_distance", pa.int32()), ("caption_jaccard", pa.float64()), ("near_how", pa.string()),
                      ("image_bytes", pa.int64()), ("shard", pa.string()), ("width", pa.int32()), ("height", pa.int32())])


def _shard_job(job: tuple[int, str, int, int, int]):
    """One tar; its ground truth as an Arrow table (columnar: a million rows stay ~100 MB in the parent)."""
    import pyarrow as pa

    global _PAINTER  # one background pool per worker process, built on its first job
    seed, path, start, stop, n = job
    if _PAINTER is None or _PAINTER.seed != seed:
        _PAINTER = Painter.for_seed(seed)
    return pa.Table.from_pylist(write_shard(_PAINTER, Path(path), start, stop, kinds_upto(seed, n)), schema=truth_schema())


def build(out: Path, rows: int, seed: int = 0, samples_per_tar: int = 10_000, workers: int = 1) -> dict:
    """Write OUT/shards/%05d.tar, OUT/ground_truth.parquet and OUT/build.json; reuse a matching build."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    params = {"rows": rows, "seed": seed, "samples_per_tar": samples_per_tar, "shares": SHARES, "version": 1}
    record_path = out / "build.json"
    if record_path.exists():
        old = json.loads(record_path.read_text())
        if old.get("params") == params and (out / "ground_truth.parquet").exists():
            return {**old, "reused": True}
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)
    for f in shards.glob("*.tar*"):
        f.unlink()
    jobs = [(seed, str(shards / f"{s:05d}.tar"), start, min(rows, start + samples_per_tar), min(rows, start + samples_per_tar))
            for s, start in enumerate(range(0, rows, samples_per_tar))]
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_shard_job, jobs, chunksize=1)
    else:
        parts = [_shard_job(j) for j in jobs]
    seconds = time.perf_counter() - t0
    truth = pa.concat_tables(parts)
    pq.write_table(truth, out / "ground_truth.parquet")
    tar_bytes = sum(f.stat().st_size for f in shards.glob("*.tar"))
    vc = pc.value_counts(truth.column("kind"))
    found = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    counts = {k: int(found.get(k, 0)) for k in KINDS}
    record = {"params": params, "seconds": round(seconds, 2), "workers": workers, "tars": len(jobs),
              "tar_bytes": tar_bytes, "image_bytes": int(pc.sum(truth.column("image_bytes")).as_py()), "counts": counts,
              "shards": str(shards)}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-tar", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    rec = build(Path(args.out), args.rows, args.seed, args.samples_per_tar, args.workers)
    print(f"built {args.rows} rows in {rec['tars']} tars in {rec['seconds']:.1f} s with {rec['workers']} workers "
          f"({args.rows / max(rec['seconds'], 1e-9):.0f} rows/s); {rec['tar_bytes'] / 2**20:.1f} MiB of tars; "
          f"kinds {rec['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
