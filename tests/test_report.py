"""The run report: a static page that opens offline in a real browser, shows the manifests'
numbers, and treats every string from the data as text.

One demo run over the demo images plus hostile rows (a caption holding a <script>, a sample
key and an image path holding an attribute-breaking <img onerror>), rendered once and
opened in headless Chromium over the DevTools protocol (tests/chromium_cdp.py).
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, run_config
from helpers import assert_conservation, manifest

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(2)>'
MISSING_EXTRA = 3  # extra rows whose image file does not exist: missing_image has 5 rows in all


@pytest.fixture(scope="module")
def hostile_input(tmp_path_factory) -> Path:
    from pipeline.demo_data import build_demo

    out = build_demo(tmp_path_factory.mktemp("report_input"))
    lines = [
        # dropped by decode (16 px image): its caption is a script
        {"id": "xss_caption", "image": "images/chelsea_thumb_16.png",
         "caption": f"{SCRIPT} a tiny cat whose caption tries to run a script"},
        # error at ingest (no such file): hostile key, caption and image path (so also the reason)
        {"id": ATTR, "image": f"images/{ATTR}.jpg", "caption": f"caption {ATTR} pointing at a missing file"},
    ] + [{"id": f"gone_{i}", "image": f"images/gone_{i}.jpg", "caption": f"The image of row {i} was never downloaded."}
         for i in range(MISSING_EXTRA)] + [
        # the same image bytes under other captions: exact duplicates of the astronaut for the dedup stage
        {"id": f"astronaut_again_{i}", "image": "images/astronaut.png",
         "caption": f"The astronaut portrait once more, posted a {'second third'.split()[i]} time."} for i in range(2)]
    with open(out / "captions.jsonl", "a", encoding="utf-8") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")
    return out


@pytest.fixture(scope="module")
def report_run(ray_local, hostile_input, tmp_path_factory) -> Path:
    """configs/demo.yaml plus an exact dedup of the image bytes before the shards."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    at = [s["name"] for s in cfg["stages"]].index("shard")
    cfg["stages"].insert(at, {"name": "image_dedup", "kind": "exact_dedup", "columns": ["image_hash"]})
    work = tmp_path_factory.mktemp("report_run")
    (work / "demo_dedup.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_config(work / "demo_dedup.yaml", work / "run", inputs=[str(hostile_input)])
    return work / "run"


@pytest.fixture(scope="module")
def report_html(report_run, tmp_path_factory) -> Path:
    from report import build_report

    return Path(build_report(str(report_run), str(tmp_path_factory.mktemp("report") / "out")))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from chromium_cdp import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.fail("chromium is not installed: run `bash tools/system_deps.sh` (make test does)")
    b = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")  # a fresh profile every session
    yield b
    b.close()


def _reason_counts(run_dir: Path) -> dict[tuple[str, str, str], int]:
    from manifests.writer import reason_key

    record = json.loads((run_dir / "run.json").read_text())
    out = {}
    for stage in record["order"]:
        df = manifest(run_dir, stage)
        bad = df[df["status"] != "kept"]
        for (status, key), n in Counter(zip(bad["status"], bad["reason"].map(reason_key))).items():
            out[(stage, status, key)] = n
    return out


def test_report_in_headless_chromium(report_run, report_html, browser, tmp_path):
    page = browser.open_page(report_html.as_uri())
    try:
        log = page.log
        # healthy page: nothing logged as an error, nothing failed, nothing left the file
        assert log.errors() == []
        assert log.failed == []
        assert log.dialogs == [], "a dialog opened: markup from the data ran"
        assert all(u == report_html.as_uri() or u.startswith("data:image/jpeg;base64,") for u in log.requests), \
            [u[:80] for u in log.requests if not u.startswith("data:")]
        assert page.eval("document.documentElement.getAttribute('data-report-ready')") == "1"  # our script ran under the CSP

        # the funnel on the page is the manifests' funnel, per stage and per source
        shown = page.eval("""Array.from(document.querySelectorAll('#funnel-table tbody tr')).map(tr => [tr.dataset.stage,
            Object.fromEntries(Array.from(tr.querySelectorAll('td[data-col]')).map(td => [td.dataset.col, Number(td.textContent)]))])""")
        counts = assert_conservation(report_run)
        assert dict(shown) == counts
        assert counts["ingest"]["error"] == 2 + 1 + MISSING_EXTRA  # bad_json + missing images
        per_source = page.eval("""Array.from(document.querySelectorAll('table.source-table tbody tr')).map(tr => [tr.dataset.stage,
            tr.dataset.source, Object.fromEntries(Array.from(tr.querySelectorAll('td[data-col]')).map(td => [td.dataset.col, Number(td.textContent)]))])""")
        for stage, source, c in per_source:
            df = manifest(report_run, stage)
            df = df[df["source"] == source]
            assert c == {"in": len(df), **{k: int((df["status"] == k).sum()) for k in ("kept", "dropped", "error")}}
        assert {s for s, _, _ in per_source} == set(counts)

        # every ranked reason is the manifests' count and links to a gallery on the page
        rows = page.eval("""Array.from(document.querySelectorAll('#reasons-table tbody tr')).map(tr =>
            [tr.cells[1].textContent, tr.cells[2].textContent, tr.cells[3].textContent, Number(tr.cells[4].textContent),
             (tr.querySelector('a') || {}).hash || null])""")
        assert {(s, st, k): n for s, st, k, n, _ in rows} == _reason_counts(report_run)
        for *_, anchor in rows:
            assert anchor and page.eval(f"!!document.getElementById({json.dumps(anchor[1:])})")

        # hostile strings are visible as text, and nothing they say became markup
        text = page.eval("document.body.innerText")
        assert SCRIPT in text
        assert ATTR in text
        assert page.eval("document.querySelectorAll('script').length") == 1
        assert page.eval("document.querySelectorAll('[onerror]').length") == 0
        assert page.eval("Array.from(document.images).filter(i => !i.src.startsWith('data:image/jpeg;base64,')).length") == 0
        # every thumbnail decoded
        sizes = page.eval("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert sizes and all(ok and w > 0 for ok, w in sizes)

        shot = page.screenshot(tmp_path / "report.png")
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copyfile(shot, artifacts / "report.png")
        from PIL import Image

        with Image.open(shot) as im:
            assert im.width >= 1000 and im.height > 900
    finally:
        page.close()


def test_the_browser_checks_can_fail(browser, tmp_path):
    """The same checks on a page that is broken on purpose: each detector fires."""
    bad = tmp_path / "bad.html"
    bad.write_text(f"<html><body><p>{ATTR}</p><script>console.error('boom')</script>"
                   "<img src='no-such-file.png'><script>alert(1)</script></body></html>")
    page = browser.open_page(bad.as_uri())
    try:
        assert any("boom" in e for e in page.log.errors())
        assert page.log.failed, "the missing image was not reported as a failed request"
        assert page.log.dialogs and page.log.dialogs[0]["message"] == "1"
        assert page.eval("document.querySelectorAll('[onerror]').length") == 1  # unescaped markup is detectable
    finally:
        page.close()


def test_report_content_thresholds_galleries_and_size(report_run, report_html):
    html = report_html.read_text(encoding="utf-8")
    # thresholds from the config are drawn on the histograms of the columns they test
    assert re.search(r'data-column="len\(text\)" data-stage="filter".*?min 20 \(filter\)', html, re.S)
    assert re.search(r'data-column="aspect_ratio" data-stage="filter".*?max 3 \(filter\)', html, re.S)
    assert re.search(r'data-column="min_side" data-stage="decode".*?min_side 32 \(decode\)', html, re.S)
    # the row the decode threshold cut is counted as cut in that histogram
    decode = manifest(report_run, "decode")
    cut = int((decode["min_side"] < 32).sum())
    assert cut == 2 and f"cut by threshold = {cut}" in html
    # escaped in the file itself (not only in the DOM)
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert ATTR not in html and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    # the run record: versions, timings per segment, the config
    assert 'id="timings-table"' in html and "pyarrow" in html and "samples_per_shard" in html
    # thumbnails are small JPEGs made at report time
    from PIL import Image

    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)
    assert uris
    for b64 in uris:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "JPEG" and max(im.size) <= 160
    assert len(html) < 1_000_000


def test_dedup_clusters_side_by_side(report_run, report_html):
    html = report_html.read_text(encoding="utf-8")
    df = manifest(report_run, "image_dedup")
    dups = df[df["status"] == "dropped"]
    reps = dups["reason"].str.split(":").str[1]
    assert len(dups) == 2 and reps.nunique() == 1  # the two astronaut copies, one kept representative
    rep = reps.iloc[0]
    assert df.set_index("sample_id").loc[rep, "status"] == "kept"
    section = html.split('<section id="dedup">', 1)[1].split("</section>", 1)[0]
    assert "image_dedup: exact_dup_of" in section and "size 3" in section
    cluster = section.split('<div class="cluster">', 1)[1]
    cards = re.findall(r'<div class="card(?: rep)?" data-sample="([0-9a-f]+)">', cluster)
    assert cards[0] == rep and set(cards[1:3]) == set(dups["sample_id"])
    assert cluster.count("data:image/jpeg;base64,") >= 3  # every member with its thumbnail


def test_report_cli_caps_examples_per_reason(report_run, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["report", str(report_run), "--out", str(tmp_path / "r"), "--examples-per-reason", "2"]) == 0
    assert "index.html" in capsys.readouterr().out
    html = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    n_missing = int((manifest(report_run, "ingest")["reason"].fillna("").str.startswith("missing_image")).sum())
    assert n_missing == 2 + MISSING_EXTRA
    assert f"{n_missing} row(s), showing 2" in html
    gallery = html.split('data-reason="missing_image" data-stage="ingest">', 1)[1].split("<h3", 1)[0]
    assert gallery.count('<div class="card" data-sample=') == 2


def test_stage_statistics_views():
    """run.json stats as global stages write them (n-gram resampling, dedup clusters, length buckets)."""
    from report.build import _stats_block

    stats = {
        "rows_in": 1000, "rows_out": 700, "kept_fraction": 0.7,
        "before": {"ngrams": 50000, "distinct_ngrams": 21000, "entropy_bits": 12.5, "top100_share": 0.21},
        "after": {"ngrams": 33000, "distinct_ngrams": 19000, "entropy_bits": 13.25, "top100_share": 0.12},
        "weight": {"mean": 0.8, "min": 0.1, "max": 1.0},
        "top_ngrams": [{"ngram": "a photo of", "docs": 300, "count_before": 320, "count_after": 90},
                       {"ngram": SCRIPT, "docs": 10, "count_before": 12, "count_after": 12}],
        "cluster_sizes": {"2": 40, "3": 7, "5-8": 2},
        "buckets": [{"bucket": 0, "range": "[0, 100)", "before": 500, "after": 300}],
    }
    html = str(_stats_block("resample", "ngram_resample", stats))
    ba = re.search(r'<table class="before-after">(.*?)</table>', html, re.S).group(1)
    assert re.search(r"entropy_bits</td><td class=\"n\">12.5</td><td class=\"n\">13.25</td><td class=\"n delta-up\">\+0.75", ba)
    assert "top100_share" in ba and "distinct_ngrams" in ba
    assert 'data-stat="top_ngrams"' in html and "320 → 90" in html  # paired bars, before -> after
    assert 'data-stat="buckets"' in html and "500 → 300" in html
    assert 'data-stat="cluster_sizes"' in html and "5-8" in html
    assert "kept_fraction" in html and "0.7" in html
    assert SCRIPT not in html and "&lt;script&gt;" in html


def test_frame_strips_and_video_previews():
    """Media by type: a list of frames becomes a strip, video bytes are sampled with PyAV."""
    import av
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from report.media import media_thumbs

    frames = []
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 60, 3), i * 20, np.uint8)).save(buf, format="JPEG")
        frames.append(buf.getvalue())
    strip = media_thumbs(frames, pa.list_(pa.binary()), "frames", 160)
    assert len(strip) == 8 and all(t.uri for t in strip)
    assert strip[0].note == "frame 1/12" and strip[-1].note == "frame 12/12"

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    thumbs = media_thumbs(buf.getvalue(), pa.binary(), "video", 160)
    assert 2 <= len(thumbs) <= 6 and all(t.uri for t in thumbs)
    broken = media_thumbs(b"\x00\x00\x00\x18ftypmp42 truncated", pa.binary(), "video", 160)
    assert broken[0].uri is None and "cannot decode video" in broken[0].note


def test_html_builder_escapes_by_construction():
    from report.html import el

    assert str(el("td", SCRIPT)) == "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"
    assert str(el("div", "x", title=ATTR)) == '<div title="&quot;&gt;&lt;img src=x onerror=alert(2)&gt;">x</div>'
    for bad in (lambda: el("a", "x", href="javascript:alert(1)"), lambda: el("img", src="http://example.com/a.png"),
                lambda: el("div", onclick="alert(1)"), lambda: el("script", "alert(1)")):
        with pytest.raises(ValueError):
            bad()
