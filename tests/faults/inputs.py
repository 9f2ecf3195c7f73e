"""The inputs the fault tests feed the pipelines, built once here for every fault test.

Each builder writes into a scratch folder and returns the ``--input`` values for the pipeline.
They are small on purpose (a run must take seconds on two cores) but real: real photographs,
real prose, videos encoded with PyAV, and planted copies, so every dedup and resample stage
has decisions to make.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ROOT

TOPICS = ROOT / "data" / "charts" / "topics.jsonl"
SPECS = ROOT / "data" / "charts" / "specs.jsonl"


def demo_with_copies(demo: Path, root: Path) -> Path:
    """The demo images plus a byte copy of one and a smaller re-encoded copy of another (as in
    tests/judge_tests/test_caption2_pipeline.py), each with a caption of its own."""
    from PIL import Image

    shutil.copytree(demo, root)
    shutil.copy(root / "images" / "astronaut.png", root / "images" / "astronaut_copy.png")
    buf = io.BytesIO()
    Image.open(root / "images" / "coffee.png").convert("RGB").resize((300, 200)).save(buf, "JPEG", quality=70)
    (root / "images" / "coffee_small.jpg").write_bytes(buf.getvalue())
    with (root / "captions.jsonl").open("a") as f:
        f.write("\n" + json.dumps({"id": "astronaut_copy", "image": "images/astronaut_copy.png",
                                   "caption": "The same portrait of an astronaut, copied byte for byte."}))
        f.write("\n" + json.dumps({"id": "coffee_small", "image": "images/coffee_small.jpg",
                                   "caption": "A smaller re-encoded picture of the cup of coffee on its saucer."}) + "\n")
    return root


def prose(root: Path) -> dict[str, Path]:
    """Real prose (the Python reference topics shipped with the stdlib, as in tests/test_dedup.py)
    with exact and near copies planted; ``all`` holds every document, ``human`` and ``synthetic``
    split them in two sources for the resampling pipeline."""
    from helpers import pydoc_paragraphs

    base = pydoc_paragraphs(40)[:40]
    rows = [(f"doc{i:03d}", t) for i, t in enumerate(base)]
    rows += [(f"exact{i}", "  " + base[i].upper() + " ") for i in range(0, 20, 5)]        # equal once normalised
    rows += [(f"near{i}", base[i].replace(" the ", " a ", 2)) for i in range(1, 40, 7)]  # a word or two changed
    random.Random(3).shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, part in (("all", rows), ("human", rows[::2]), ("synthetic", rows[1::2])):
        out[name] = root / f"{name}.parquet"
        pq.write_table(pa.table({"id": [r[0] for r in part], "text": [r[1] for r in part]}), out[name],
                       row_group_size=16)
    return out


def video_qa(tmp: Path) -> list[str]:
    from pipeline.video_data import build_video_qa

    return [str(build_video_qa(tmp / "video_qa", opencv=False))]


def instruction_sources(tmp: Path) -> list[str]:
    from instruction_data import build_instruction_sources

    sources, _ = build_instruction_sources(tmp / "instruction_sources")
    return [f"{k}={v}" for k, v in sources.items()]


def cot_sources(tmp: Path) -> list[str]:
    from instruction_data import build_cot_sources

    return [f"{k}={v}" for k, v in build_cot_sources(tmp / "cot_sources").items()]
