"""``ingest`` (WebDataset tars, images + JSONL, Parquet) under hostile and broken input.

Properties, for every generated input:
- ``read_unit`` never raises: it returns one DataFrame, every row kept, dropped or error, and
  every non-kept row has a reason that names what was wrong (a keyword per flaw, below);
- conservation: every sample of a tar (a run of members sharing a key) and every non-blank
  JSONL line / Parquet row is exactly one row, in order, plus at most one ``corrupt_tar`` row;
- nothing is written anywhere: the arena holding the input, whose paths the malicious members
  name (absolute names, ``../``, link targets), is byte-for-byte the same afterwards.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import SourceConfig
from stages.base import DROPPED, ERROR, KEPT, STATUSES
from stages.ingest import IngestParams, IngestStage

from .hostile import (Member, arena, end_of_members, gzip_bomb_tar, json_bomb, member_spans, peak_rss_mb, real_jpeg,
                      reset_peak_rss, sparse_huge_tar, tar_bytes, tree)

MAX_MEMBER = 1 << 20  # a JSON bomb of 100000 levels (<= 600 KB) fits: its depth is what is tested
IMG = real_jpeg((32, 24))
assert len(IMG) < MAX_MEMBER


def read_source(path: Path, fmt: str = "auto", **params) -> tuple[pd.DataFrame, list[dict]]:
    """list_units on the driver, then read_unit on each unit after a JSON round trip, as the runner does."""
    stage = IngestStage(IngestParams(source="src", max_member_bytes=MAX_MEMBER, **params), "ingest")
    units = stage.list_units({"src": SourceConfig(path=str(path), format=fmt)})
    frames = [stage.read_unit(json.loads(json.dumps(u))) for u in units]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["status", "reason"])
    for r in df.to_dict("records"):
        assert r["status"] in STATUSES
        if r["status"] == KEPT:
            assert r["reason"] is None or r["reason"] != r["reason"]  # None or NaN
        else:
            assert isinstance(r["reason"], str) and r["reason"].strip(), r
        for c in ("source_key", "text", "reason", "meta", "image_name"):
            if isinstance(r.get(c), str):
                r[c].encode("utf-8")  # Arrow can store it (no lone surrogates)
    pa.Table.from_pandas(df, preserve_index=False)  # what the runner does next must not fail
    return df, units


# -- WebDataset tars -------------------------------------------------------------------------------------

# flaw -> words one of which the reason must contain
TAR_FLAWS = {
    None: (),
    "absolute_name": ("absolute",),
    "dotdot_name": ("'..'",),
    "symlink": ("symlink",),
    "hardlink": ("hard link",),
    "chardev": ("device",),
    "blockdev": ("device",),
    "fifo": ("fifo",),
    "directory": ("directory",),
    "huge_member": ("max_member_bytes",),
    "lying_size": ("max_member_bytes",),
    "caption_not_utf8": ("UTF-8",),
    "json_not_utf8": ("bad_json",),
    "json_garbage": ("bad_json",),
    "json_bomb": ("bad_json",),
    "json_surrogate": ("Unicode",),
    "name_not_utf8": ("Unicode",),
    "duplicate_member": ("duplicate",),
    "no_image": ("missing_image",),
    "repeated_key": (),  # a later sample under an earlier key: its own row (see test_ingest's duplicate tests)
}


@st.composite
def tar_samples(draw, root: str) -> list[tuple[str | None, list[Member]]]:
    """Samples (flaw, members) of one tar: KEY.jpg + KEY.txt + KEY.json, one flaw each at most."""
    samples = []
    for i in range(draw(st.integers(1, 6))):
        flaw = draw(st.sampled_from(list(TAR_FLAWS)))
        key = f"s{i:02d}"
        if flaw == "repeated_key":
            if i < 2:
                flaw = None
            else:
                key = f"s{draw(st.integers(0, i - 2)):02d}"  # never the sample just before
        if flaw == "absolute_name":
            key = f"{root}/escape_{i}"
        elif flaw == "dotdot_name":
            key = draw(st.sampled_from([f"../escape_{i}", f"a/../../escape_{i}", f"../../{os.path.basename(root)}/escape_{i}"]))
        elif flaw == "name_not_utf8":
            key = f"s{i:02d}\udcff\udcfe"  # bytes ff fe in the tar header
        caption = draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=20)).encode("utf-8")
        image = IMG + bytes([i])  # distinct content
        meta = json.dumps({"caption": "c"}).encode()
        link_target = draw(st.sampled_from([f"{root}/escape_link", "../escape_link", "/etc/passwd", f"s{i:02d}.txt"]))
        members = {
            "symlink": Member(f"{key}.jpg", "symlink", linkname=link_target),
            "hardlink": Member(f"{key}.jpg", "hardlink", linkname=link_target),
            "chardev": Member(f"{key}.jpg", "chardev"),
            "blockdev": Member(f"{key}.jpg", "blockdev"),
            "fifo": Member(f"{key}.jpg", "fifo"),
            "directory": Member(f"{key}.jpg", "dir"),
            "huge_member": Member(f"{key}.jpg", data=image + b"\0" * MAX_MEMBER),
        }
        first = members.get(flaw, Member(f"{key}.jpg", data=image))
        if flaw == "lying_size":
            first.declared_size = draw(st.sampled_from([2 ** 40, 8 ** 11 + 5]))  # runs past the end
        text = b"\xff\xfe" + caption if flaw == "caption_not_utf8" else caption
        ms = [first]
        if flaw == "no_image":
            ms = []
        if flaw == "json_surrogate":
            ms.append(Member(f"{key}.json", data=b'{"caption": "a \\ud800 b"}'))  # caption from the json
        else:
            ms.append(Member(f"{key}.txt", data=text))
            ms.append(Member(f"{key}.json", data={
                "json_not_utf8": b'{"caption": "\xff"}',
                "json_garbage": b"\0" + draw(st.binary(max_size=30)),
                "json_bomb": json_bomb(draw(st.sampled_from([201, 990, 100_000])), draw(st.sampled_from("[{"))),
            }.get(flaw, meta)))
        if flaw == "duplicate_member":
            ms.insert(draw(st.integers(1, len(ms))), Member(f"{key}.jpg", data=image[::-1]))
        ms = draw(st.permutations(ms))  # member order inside a sample is free
        samples.append((flaw, ms))
    return samples


@given(data=st.data())
def test_hostile_tar_members_are_error_rows_and_nothing_is_written(tmp_path_factory, data):
    with arena(tmp_path_factory.getbasetemp()) as root:
        samples = data.draw(tar_samples(str(root)))
        tar = root / "in" / "shard.tar"
        tar.parent.mkdir()
        tar.write_bytes(tar_bytes([m for _, ms in samples for m in ms]))
        before = tree(root)

        df, units = read_source(tar.parent)

        assert tree(root) == before  # nothing extracted, created or touched
        assert not any(p.exists() or p.is_symlink() for p in root.parent.glob("escape*"))
        cut = [r for r in df.to_dict("records") if r["source_key"].endswith("#unreadable")]
        rows = [r for r in df.to_dict("records") if not r["source_key"].endswith("#unreadable")]
        lying = [i for i, (f, _) in enumerate(samples) if f == "lying_size"]
        if lying:  # a size running past the end swallows the rest: the tar is cut after that sample
            assert len(cut) == 1 and cut[0]["reason"].startswith("corrupt_tar"), cut
            assert len(rows) == lying[0] + 1
        else:
            assert not cut and len(rows) == len(samples)  # one row per sample, in tar order
        for (flaw, _), r in zip(samples, rows):
            if TAR_FLAWS[flaw]:
                assert r["status"] == ERROR, (flaw, r)
                assert any(w in r["reason"] for w in TAR_FLAWS[flaw]), (flaw, r["reason"])
                if flaw in ("symlink", "hardlink", "chardev", "blockdev", "fifo", "directory", "huge_member", "lying_size"):
                    assert r["image"] is None  # no bytes were read through it
            else:
                assert r["status"] == KEPT, (flaw, r)
                assert r["image"].startswith(IMG)


@given(samples=st.integers(1, 4), where=st.floats(0.0, 1.0))
def test_a_tar_cut_at_any_byte_keeps_only_whole_samples_and_says_it_was_cut(tmp_path_factory, samples, where):
    members = []
    for i in range(samples):
        members += [Member(f"k{i}.jpg", data=IMG + bytes([i])), Member(f"k{i}.txt", data=b"caption %d" % i)]
    data = tar_bytes(members)
    at = int((end_of_members(data) + 511) * where)  # anywhere before the end-of-archive block is whole
    with arena(tmp_path_factory.getbasetemp()) as root:
        (root / "s.tar").write_bytes(data[:at])
        df, _ = read_source(root / "s.tar")
    spans = member_spans(data)
    records = df.to_dict("records")
    assert records[-1]["source_key"] == "s.tar#unreadable" and records[-1]["reason"].startswith("corrupt_tar")
    kept = {r["source_key"] for r in records if r["status"] == KEPT}
    assert kept <= {f"k{i}" for i in range(samples) if spans[f"k{i}.txt"][1] <= at}  # nothing cut is kept...
    # ...and a sample is kept once the next sample's header shows it is complete
    assert kept >= {f"k{i}" for i in range(samples - 1) if spans[f"k{i + 1}.jpg"][0] + 512 <= at}
    assert len(records) == len(kept) + sum(r["status"] == ERROR for r in records)  # one row per sample seen


def test_a_multi_gib_member_is_an_error_row_read_without_its_bytes(tmp_path):
    tar = sparse_huge_tar(tmp_path / "huge.tar", 3 << 30)  # 3 GiB member, a sparse file on disk
    measured = reset_peak_rss()
    before = peak_rss_mb()
    df, _ = read_source(tar)
    (r,) = df.to_dict("records")
    assert r["status"] == ERROR and "max_member_bytes" in r["reason"] and str(3 << 30) in r["reason"]
    if measured:
        assert peak_rss_mb() - before < 200, "the tar was read into memory"


# -- images + JSONL ---------------------------------------------------------------------------------------

LINE_FLAWS = {
    None: (),
    "not_json": ("bad_json",),
    "not_utf8": ("UTF-8",),
    "json_bomb": ("bad_json",),
    "not_an_object": ("bad_json",),
    "nested_150_levels": (),  # deep, but within the limit: an ordinary row
    "surrogate_caption": ("Unicode",),
    "image_missing": ("missing_image",),
    "image_nul_path": ("missing_image",),
    "image_surrogate_path": ("missing_image",),
    "image_fifo": ("not a regular file",),
    "image_is_dir": ("not a regular file",),
    "image_dev_zero_link": ("not a regular file",),
    "image_too_large": ("max_member_bytes",),
    "image_dotdot_missing": ("missing_image",),
}


@given(flaws=st.lists(st.sampled_from(list(LINE_FLAWS)), min_size=1, max_size=10), blank=st.booleans(),
       chunk_rows=st.integers(1, 4))
def test_hostile_jsonl_lines_are_error_rows_one_per_line(tmp_path_factory, flaws, blank, chunk_rows):
    with arena(tmp_path_factory.getbasetemp()) as root:
        src = root / "in"
        (src / "images").mkdir(parents=True)
        (src / "images" / "ok.jpg").write_bytes(IMG)
        (src / "images" / "big.jpg").write_bytes(IMG + b"\0" * MAX_MEMBER)
        os.mkfifo(src / "images" / "fifo.jpg")
        (src / "images" / "dir.jpg").mkdir()
        os.symlink("/dev/zero", src / "images" / "zero.jpg")
        image = {"image_missing": "images/nope.jpg", "image_nul_path": "images/a\0b.jpg",
                 "image_surrogate_path": "images/\udcff.jpg", "image_fifo": "images/fifo.jpg",
                 "image_is_dir": "images/dir.jpg", "image_dev_zero_link": "images/zero.jpg",
                 "image_too_large": "images/big.jpg", "image_dotdot_missing": "../../escape.jpg"}
        lines: list[bytes] = []
        for i, flaw in enumerate(flaws):
            rec = {"id": f"r{i}", "image": image.get(flaw, "images/ok.jpg"), "caption": f"caption {i}"}
            if flaw == "nested_150_levels":
                rec["extra"] = json.loads(json_bomb(150, "{"))
            line = json.dumps(rec).encode()
            line = {"not_json": b"{not json " + str(i).encode(), "not_utf8": line[:-1] + b', "x": "\xff"}',
                    "json_bomb": json_bomb(10 ** (i % 3 + 3)), "not_an_object": b"[1, 2]",
                    "surrogate_caption": line.replace(b'"caption %d"' % i, b'"cap \\udc80"')}.get(flaw, line)
            lines.append(line)
            if blank:
                lines.append(b"   ")
        (src / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        before = tree(root)

        df, _ = read_source(src, chunk_rows=chunk_rows)

        assert tree(root) == before
    assert len(df) == len(flaws)  # one row per non-blank line
    for flaw, r in zip(flaws, df.to_dict("records")):
        if LINE_FLAWS[flaw]:
            assert r["status"] == ERROR, (flaw, r)
            assert any(w in r["reason"] for w in LINE_FLAWS[flaw]), (flaw, r["reason"])
        else:
            assert r["status"] in (KEPT, DROPPED), (flaw, r)


# -- Parquet --------------------------------------------------------------------------------------------


@given(texts=st.lists(st.one_of(st.binary(max_size=12), st.none()), min_size=1, max_size=6),
       paths=st.lists(st.sampled_from(["ok.jpg", "nope.jpg", "a\0b.jpg", "../../escape.jpg", "/dev/zero", "big.jpg"]),
                      min_size=6, max_size=6))
def test_hostile_parquet_values_are_error_rows_one_per_row(tmp_path_factory, texts, paths):
    with arena(tmp_path_factory.getbasetemp()) as root:
        (root / "ok.jpg").write_bytes(IMG)
        (root / "big.jpg").write_bytes(IMG + b"\0" * MAX_MEMBER)
        n = len(texts)
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "text": pa.array(texts, pa.binary()),
                                 "image_path": paths[:n]}), root / "d.parquet", row_group_size=2)
        before = tree(root)
        df, _ = read_source(root / "d.parquet", chunk_rows=2)
        assert tree(root) == before
    assert len(df) == n
    for text, path, r in zip(texts, paths, df.to_dict("records")):
        bad_text = text is not None and not _utf8(text)
        if bad_text or path != "ok.jpg":
            assert r["status"] == ERROR, r
            assert ("UTF-8" in r["reason"]) if bad_text else ("image" in r["reason"]), r["reason"]


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@given(where=st.floats(0.0, 1.0), flips=st.lists(st.integers(0, 10 ** 6), max_size=6))
def test_a_parquet_file_cut_or_flipped_is_error_rows_not_a_crash(tmp_path_factory, where, flips):
    with arena(tmp_path_factory.getbasetemp()) as root:
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(20)], "text": [f"text {i}" for i in range(20)]}),
                       root / "d.parquet", row_group_size=5)
        data = bytearray((root / "d.parquet").read_bytes())
        for pos in flips:
            data[pos % len(data)] ^= 0x5A
        (root / "d.parquet").write_bytes(bytes(data[: max(1, int(len(data) * where))]))
        df, _ = read_source(root / "d.parquet")
    # Either the damage is invisible to Parquet (flips inside values), or every unreadable part
    # is an error row whose reason names the Parquet file.
    for r in df.to_dict("records"):
        if r["status"] == ERROR:
            assert "parquet" in r["reason"].lower() or "UTF-8" in r["reason"], r["reason"]


# -- compressed tars: gzip bombs -------------------------------------------------------------------------

COMPRESSORS = {"gzip": lambda b: gzip.compress(b, 6), "bzip2": bz2.compress, "xz": lzma.compress}


def test_a_gzip_bomb_tar_stops_at_its_expansion_budget_keeping_the_samples_before(tmp_path):
    # 200 MiB of members, each under max_member_bytes, in ~220 KB of gzip named .tar
    first = [m for i in range(3) for m in (Member(f"ok{i}.jpg", data=IMG + bytes([i])), Member(f"ok{i}.txt", data=b"c"))]
    tar = gzip_bomb_tar(tmp_path / "bomb.tar", first, members=400, member_bytes=512 << 10)
    size = tar.stat().st_size
    assert size < 300_000 and (512 << 10) < MAX_MEMBER
    t0 = time.monotonic()
    df, _ = read_source(tar)  # the default max_tar_expansion: 200
    seconds = time.monotonic() - t0
    rows = df.to_dict("records")
    assert [r["source_key"] for r in rows[:3]] == ["ok0", "ok1", "ok2"] and all(r["status"] == KEPT for r in rows[:3])
    bomb = rows[-1]
    assert bomb["source_key"] == "bomb.tar#unreadable" and bomb["status"] == ERROR
    assert bomb["reason"].startswith(f"tar_bomb: gzip-compressed tar expands past max_tar_expansion=200 x its {size} "
                                     "compressed bytes"), bomb["reason"]
    zeros = rows[3:-1]  # the members read within the budget: 200 x ~220 KB = ~42 MiB of the 200 MiB
    assert 40 < len(zeros) < 100 and all(r["source_key"].startswith("z") for r in zeros)
    assert seconds < 5  # reading all 200 MiB takes ~5x longer


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_a_compressed_tar_reads_like_the_plain_one_and_only_it_has_a_budget(tmp_path, compression):
    # bytes that do not compress, as JPEGs (ingest does not decode them); the zeros compress ~1000x
    samples = [m for i in range(20) for m in (Member(f"k{i}.jpg", data=random.Random(i).randbytes(2000)),
                                               Member(f"k{i}.txt", data=b"c %d" % i))]
    zeros = [Member(f"z{i}.jpg", data=bytes(512 << 10)) for i in range(2)]
    plain = tar_bytes(samples + zeros)
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "s.tar").write_bytes(plain)
    (tmp_path / "packed" / "s.tar").write_bytes(COMPRESSORS[compression](plain))
    as_plain, _ = read_source(tmp_path / "plain", max_tar_expansion=1.0)
    as_packed, _ = read_source(tmp_path / "packed")
    assert len(as_plain) == 22 and (as_plain["status"] == KEPT).all()  # a plain tar is never budgeted
    assert list(as_packed["sample_id"]) == list(as_plain["sample_id"])  # same rows, same ids (~27x: within 200x)
    low, _ = read_source(tmp_path / "packed", max_tar_expansion=1.0)  # budget: 1 MiB (the floor)
    assert low.iloc[-1]["reason"].startswith(f"tar_bomb: {compression}-compressed tar expands past"), low.iloc[-1]["reason"]
    assert list(low["sample_id"][:20]) == list(as_plain["sample_id"][:20])  # the samples before it are kept


@given(compression=st.sampled_from(list(COMPRESSORS)), where=st.floats(0.0, 1.0),
       flips=st.lists(st.integers(0, 10 ** 6), max_size=3))
def test_a_compressed_tar_cut_or_flipped_anywhere_is_rows_then_one_error_row(tmp_path_factory, compression, where, flips):
    members = [m for i in range(4) for m in (Member(f"k{i}.jpg", data=IMG + bytes([i])), Member(f"k{i}.txt", data=b"c"))]
    data = bytearray(COMPRESSORS[compression](tar_bytes(members)))
    for pos in flips:
        data[pos % len(data)] ^= 0x5A
    with arena(tmp_path_factory.getbasetemp()) as root:
        (root / "s.tar").write_bytes(bytes(data[: max(1, int(len(data) * where))]))
        df, _ = read_source(root / "s.tar")  # never raises
    records = df.to_dict("records")
    broken = [r for r in records if r["source_key"] == "s.tar#unreadable"]
    assert len(broken) <= 1 and all(r["reason"].startswith("corrupt_tar") for r in broken), broken
    for r in records:
        if r["status"] == KEPT:  # a flipped data byte goes unseen until the gzip/xz checksum at the end
            assert r["source_key"] in {f"k{i}" for i in range(4)} and len(r["image"]) == len(IMG) + 1
            assert r["image"].startswith(IMG) or (flips and broken), r["source_key"]
