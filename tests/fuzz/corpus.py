"""A fuzz corpus for every ingest format, and a pipeline file that reads all of it.

``build_corpus(root)`` writes clean items and hostile ones side by side, for the three ingest
kinds, and returns what each item must end as: ``expect[stage][source_key] = (status, words)``
(``words``: one of them must be in the reason). ``fuzz.yaml`` (written beside the inputs) runs

    ingest (tars, JSONL + images, Parquet) -> decode
    video_ingest (annotations + videos, mp4+json tars)
    instruction_ingest (JSONL + images, Parquet)

with no model stage and no sink (the shard writers only ever see kept rows, and each costs a
Ray Data execution), so the runner, Ray workers and the isolated video decoder see the hostile
input exactly as a real run would.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .hostile import (Member, gif_bomb, gzip_bomb_tar, json_bomb, mp4_variants, png_bomb, real_jpeg, real_png,
                      tar_bytes, tiny_mp4)

MAX_MEMBER = 1 << 20
KEPT, DROPPED, ERROR = "kept", "dropped", "error"


def build_corpus(root: Path) -> tuple[Path, dict[str, dict[str, tuple[str, tuple[str, ...]]]]]:
    """Inputs under root/in, the pipeline file root/fuzz.yaml; returns (config path, expectations)."""
    src = root / "in"
    expect: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {}
    jpg, png = real_jpeg((64, 48), 1), real_png((64, 48), 2)
    cut_jpg, cut_png = jpg[: len(jpg) // 2], png[: len(png) // 2]
    cut_png_tail = png[:-20]  # inside its last IDAT: Pillow decodes it, blank rows filled in
    bomb = png_bomb(60_000, 60_000)

    # -- ingest: WebDataset tar ----------------------------------------------------------------------
    def sample(key: str, image: bytes, ext: str = "jpg", caption: bytes = b"a clean caption of noise") -> list[Member]:
        return [Member(f"{key}.{ext}", data=image), Member(f"{key}.txt", data=caption)]

    members = (sample("ok1", jpg) + sample("ok2", png, "png")
               + sample(f"{root}/abs", jpg) + sample("../dotdot", jpg)
               + [Member("link.jpg", "symlink", linkname=f"{root}/escape"), Member("link.txt", data=b"x")]
               + [Member("hard.jpg", "hardlink", linkname="../../escape"), Member("hard.txt", data=b"x")]
               + [Member("dev.jpg", "chardev"), Member("dev.txt", data=b"x")]
               + [Member("fifo.jpg", "fifo"), Member("fifo.txt", data=b"x")]
               + sample("dup", jpg) + [Member("dup.jpg", data=png)]
               + sample("huge", jpg + b"\0" * MAX_MEMBER)
               + sample("badutf8", jpg, caption=b"\xff\xfe caption")
               + [Member("bomb_json.jpg", data=jpg), Member("bomb_json.json", data=json_bomb(100_000))]
               + [Member("surrogate.jpg", data=png), Member("surrogate.json", data=b'{"caption": "\\ud800"}')]
               + sample("pngbomb", bomb, "png") + sample("gifbomb", gif_bomb(65_535, 65_535), "gif")
               + sample("cutjpg", cut_jpg) + sample("cutpng", cut_png, "png") + sample("cutpngtail", cut_png_tail, "png"))
    (src / "tars").mkdir(parents=True)
    (src / "tars" / "shard-0.tar").write_bytes(tar_bytes(members))
    # a gzip bomb named .tar: 16 MiB of zero members in ~20 KB; its budget (200x) ends inside the first
    gzip_bomb_tar(src / "tars" / "shard-1.tar", sample("gz_ok", jpg), members=4, member_bytes=4 << 20)
    expect["ingest_tar"] = {
        "ok1": (KEPT, ()), "ok2": (KEPT, ()), f"{root}/abs": (ERROR, ("absolute",)), "../dotdot": (ERROR, ("'..'",)),
        "link": (ERROR, ("symlink",)), "hard": (ERROR, ("hard link",)), "dev": (ERROR, ("device",)),
        "fifo": (ERROR, ("fifo",)), "dup": (ERROR, ("duplicate",)), "huge": (ERROR, ("max_member_bytes",)),
        "badutf8": (ERROR, ("UTF-8",)), "bomb_json": (ERROR, ("bad_json",)), "surrogate": (ERROR, ("Unicode",)),
        "pngbomb": (KEPT, ()), "gifbomb": (KEPT, ()), "cutjpg": (KEPT, ()), "cutpng": (KEPT, ()),
        "cutpngtail": (KEPT, ()),
        "gz_ok": (KEPT, ()), "z00000": (ERROR, ("decompression budget",)), "shard-1.tar#unreadable": (ERROR, ("tar_bomb",)),
    }
    decode = {"ok1": (KEPT, ()), "ok2": (KEPT, ()), "pngbomb": (DROPPED, ("decompression_bomb",)),
              "gifbomb": (DROPPED, ("decompression_bomb",)), "cutjpg": (ERROR, ("corrupt_image",)),
              "cutpng": (ERROR, ("corrupt_image",)), "cutpngtail": (ERROR, ("corrupt_image: truncated PNG",)),
              "gz_ok": (KEPT, ())}

    # -- ingest: images + JSONL ---------------------------------------------------------------------------
    jl = src / "jsonl"
    (jl / "img").mkdir(parents=True)
    for name, data in {"ok.jpg": jpg, "bomb.png": bomb, "cut.jpg": cut_jpg, "big.jpg": jpg + b"\0" * MAX_MEMBER}.items():
        (jl / "img" / name).write_bytes(data)
    os.mkfifo(jl / "img" / "fifo.jpg")
    os.symlink("/dev/zero", jl / "img" / "zero.jpg")
    lines = [
        {"id": "j_ok", "image": "img/ok.jpg", "caption": "a clean caption of noise"},
        {"id": "j_bomb", "image": "img/bomb.png", "caption": "a bomb"},
        {"id": "j_cut", "image": "img/cut.jpg", "caption": "a cut jpeg"},
        {"id": "j_big", "image": "img/big.jpg", "caption": "too big"},
        {"id": "j_fifo", "image": "img/fifo.jpg", "caption": "a fifo"},
        {"id": "j_zero", "image": "img/zero.jpg", "caption": "a link to /dev/zero"},
        {"id": "j_nul", "image": "img/a\0b.jpg", "caption": "a NUL in the path"},
        {"id": "j_escape", "image": "../../../escape.jpg", "caption": "outside"},
    ]
    raw = [json.dumps(r).encode() for r in lines] + [json_bomb(100_000), b"{not json", b'{"id": "x", "caption": "\xff"}',
                                                    b'{"id": "j_sur", "image": "img/ok.jpg", "caption": "\\udc80"}']
    (jl / "captions.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    expect["ingest_jsonl"] = {
        "j_ok": (KEPT, ()), "j_bomb": (KEPT, ()), "j_cut": (KEPT, ()), "j_big": (ERROR, ("max_member_bytes",)),
        "j_fifo": (ERROR, ("not a regular file",)), "j_zero": (ERROR, ("not a regular file",)),
        "j_nul": (ERROR, ("not a usable path",)), "j_escape": (ERROR, ("missing_image",)),
        "captions.jsonl:9": (ERROR, ("bad_json",)), "captions.jsonl:10": (ERROR, ("bad_json",)),
        "captions.jsonl:11": (ERROR, ("UTF-8",)), "j_sur": (ERROR, ("Unicode",)),
    }
    decode.update({"j_ok": (KEPT, ()), "j_bomb": (DROPPED, ("decompression_bomb",)), "j_cut": (ERROR, ("corrupt_image",))})

    # -- ingest: Parquet (a good file with hostile values, and a file cut short) ---------------------------
    (src / "parquet").mkdir()
    pq.write_table(pa.table({"id": ["p_ok", "p_bomb", "p_text", "p_ok2"], "image": [jpg, bomb, jpg, jpg],
                             "text": pa.array([b"a clean caption of noise", b"bomb", b"\xff\xfe", b"ok"], pa.binary())}),
                   src / "parquet" / "a.parquet")
    whole = (src / "parquet" / "a.parquet").read_bytes()
    (src / "parquet" / "b.parquet").write_bytes(whole[: len(whole) // 2])
    expect["ingest_parquet"] = {"p_ok": (KEPT, ()), "p_bomb": (KEPT, ()), "p_text": (ERROR, ("UTF-8",)),
                                "p_ok2": (KEPT, ()), "b.parquet": (ERROR, ("corrupt_parquet",))}
    decode.update({"p_ok": (KEPT, ()), "p_bomb": (DROPPED, ("decompression_bomb",)), "p_ok2": (KEPT, ())})
    expect["decode"] = decode

    # -- video_ingest: annotations + a video folder ------------------------------------------------------
    vd = src / "video" / "videos"
    vd.mkdir(parents=True)
    good = tiny_mp4(vd / "good.mp4").read_bytes()
    for name, data in mp4_variants(good).items():
        if name in ("stts_frame_count_2^32-1", "stts_frame_duration_0", "stsz_frame_count_2^32-16"):
            (vd / f"{name}.mp4").write_bytes(data)
    (vd / "cut.mp4").write_bytes(good[: len(good) // 2])
    (vd / "photo.mp4").write_bytes(jpg)
    os.mkfifo(vd / "fifo.mp4")
    qa = lambda i, v, **kw: {"id": i, "video": v, "question": f"What is shown in {i}?", "answer": "Noise.", **kw}  # noqa: E731
    recs = [qa("v_good", "videos/good.mp4"), qa("v_crash", "videos/stts_frame_count_2^32-1.mp4"),
            qa("v_timing", "videos/stts_frame_duration_0.mp4"), qa("v_count", "videos/stsz_frame_count_2^32-16.mp4"),
            qa("v_cut", "videos/cut.mp4"), qa("v_photo", "videos/photo.mp4"), qa("v_fifo", "videos/fifo.mp4"),
            qa("v_zero", "/dev/zero"), qa("v_escape", "../../escape.mp4")]
    raw = [json.dumps(r).encode() for r in recs]
    raw += [json.dumps(qa("v_nul", "videos/a\0b.mp4")).encode(), json_bomb(100_000),
            json.dumps(qa("v_sur", "videos/good.mp4")).replace("What", "\\udfff What").encode()]
    (src / "video" / "qa.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    expect["video_ann"] = {
        "videos/good.mp4#v_good": (KEPT, ()), "videos/good.mp4#v_sur": (ERROR, ("Unicode",)),
        "videos/stts_frame_count_2^32-1.mp4#v_crash": (ERROR, ("video_",)),
        "videos/stts_frame_duration_0.mp4#v_timing": (ERROR, ("video_bad_timing",)),
        "videos/stsz_frame_count_2^32-16.mp4#v_count": (ERROR, ("video_corrupt",)),
        "videos/cut.mp4#v_cut": (ERROR, ("video_",)), "videos/photo.mp4#v_photo": (ERROR, ("video_not_video",)),
        "videos/fifo.mp4#v_fifo": (ERROR, ("not a regular file",)), "/dev/zero#v_zero": (ERROR, ("not a regular file",)),
        "../../escape.mp4#v_escape": (ERROR, ("video_missing",)),
        "qa.jsonl:line10": (ERROR, ("bad_video_path",)), "qa.jsonl:line11": (ERROR, ("bad_json",)),
    }

    # -- video_ingest: WebDataset mp4 + json ----------------------------------------------------------------
    meta = lambda k: json.dumps({"question": f"What is in {k}?", "answer": "Noise."}).encode()  # noqa: E731
    (src / "video_tars").mkdir()
    (src / "video_tars" / "clips.tar").write_bytes(tar_bytes([
        Member("t_good.mp4", data=good), Member("t_good.json", data=meta("t_good")),
        Member("t_link.mp4", "symlink", linkname="/dev/zero"), Member("t_link.json", data=meta("t_link")),
        Member(f"{root}/t_abs.mp4", data=good), Member(f"{root}/t_abs.json", data=meta("t_abs")),
        Member("t_dup.mp4", data=good), Member("t_dup.mp4", data=good), Member("t_dup.json", data=meta("t_dup")),
        Member("t_bomb.mp4", data=good), Member("t_bomb.json", data=json_bomb(100_000)),
    ]))
    expect["video_tar"] = {"t_good#qa": (KEPT, ()), "t_link#qa": (ERROR, ("symlink",)),
                           f"{root}/t_abs": (ERROR, ("absolute",)), "t_dup#qa": (ERROR, ("duplicate",)),
                           "t_bomb": (ERROR, ("bad_json",))}

    # -- instruction_ingest: JSONL + images, and Parquet cut short ---------------------------------------
    ins = src / "instructions"
    (ins / "img").mkdir(parents=True)
    (ins / "img" / "ok.jpg").write_bytes(jpg)
    os.mkfifo(ins / "img" / "fifo.jpg")
    conv = lambda i, img: {"id": i, "image": img, "conversations": [  # noqa: E731
        {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": f"Noise, {i}."}]}
    raw = [json.dumps(conv("i_ok", "img/ok.jpg")).encode(), json.dumps(conv("i_fifo", "img/fifo.jpg")).encode(),
           json.dumps(conv("i_zero", "/dev/zero")).encode(), json.dumps(conv("i_nul", "img/\0.jpg")).encode(),
           json_bomb(100_000), b"\xff\xfe", json.dumps(conv("i_sur", "img/ok.jpg")).replace("Noise", "\\udc00").encode(),
           json.dumps({"id": "i_weird", "conversations": [{"from": ["gpt"], "value": {"a": [1]}}]}).encode()]
    (ins / "data.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    expect["instr_jsonl"] = {
        "i_ok": (KEPT, ()), "i_fifo": (ERROR, ("not a regular file",)), "i_zero": (ERROR, ("not a regular file",)),
        "i_nul": (ERROR, ("not a usable path",)), "data.jsonl:5": (ERROR, ("bad_json",)),
        "data.jsonl:6": (ERROR, ("UTF-8",)), "i_sur": (ERROR, ("Unicode",)), "i_weird": (ERROR, ("unknown_role",)),
    }
    (src / "instr_parquet").mkdir()
    pq.write_table(pa.table({"id": ["q1"], "conversations": [json.dumps(conv("q1", None)["conversations"])]}),
                   src / "instr_parquet" / "c.parquet")
    whole = (src / "instr_parquet" / "c.parquet").read_bytes()
    (src / "instr_parquet" / "c.parquet").write_bytes(whole[:-9])  # footer cut
    expect["instr_parquet"] = {"c.parquet": (ERROR, ("corrupt_parquet",))}

    config = root / "fuzz.yaml"
    config.write_text(PIPELINE.format(src=src, max_member=MAX_MEMBER))
    return config, expect


PIPELINE = """\
name: fuzz
description: Every ingest format under hostile input; no model stage.
seed: 0
sources:
  tars: {{path: {src}/tars, format: webdataset}}
  jsonl: {{path: {src}/jsonl, format: jsonl_images}}
  parquet: {{path: {src}/parquet, format: parquet}}
  video: {{path: {src}/video/qa.jsonl}}
  video_tars: {{path: {src}/video_tars}}
  instr_jsonl: {{path: {src}/instructions}}
  instr_parquet: {{path: {src}/instr_parquet}}
stages:
  - {{name: ingest_tar, kind: ingest, source: tars, max_member_bytes: {max_member}}}
  - {{name: ingest_jsonl, kind: ingest, source: jsonl, max_member_bytes: {max_member}, chunk_rows: 5}}
  - {{name: ingest_parquet, kind: ingest, source: parquet, max_member_bytes: {max_member}}}
  - {{name: decode, kind: decode, after: [ingest_tar, ingest_jsonl, ingest_parquet]}}
  - name: video_ann
    kind: video_ingest
    source: video
    decode: {{num_frames: 4, timeout_s: 60}}
  - {{name: video_tar, kind: video_ingest, source: video_tars, decode: {{num_frames: 4, timeout_s: 60}}}}
  - {{name: instr_jsonl, kind: instruction_ingest, source: instr_jsonl}}
  - {{name: instr_parquet, kind: instruction_ingest, source: instr_parquet}}
"""
