"""Chart captions: a spec of each of the eight chart types renders in English and Chinese (real
CJK glyphs, no tofu); a malformed spec becomes an error row whose reason names the problem; the
derived caption and QA pairs state the spec's own values; a model's rewording is accepted only
when it agrees with them; and chart_render runs through the runner with every row accounted for.

The example specs are data/charts/specs.jsonl (one per chart type and language), which is also
the input of configs/charts_from_specs.yaml. The model stages (chart_spec, chart_rephrase) are
tested on the real vLLM engine in tests/judge_tests/test_chart_models.py."""
from __future__ import annotations

import copy
import io
import json
import os
import statistics
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from charts.check import check_answer, check_caption, reference
from charts.derive import derive, fmt
from charts.fonts import ChartFonts, chart_fonts, dejavu_path, font_coverage
from charts.render import RenderError, render_png
from charts.spec import CHART_TYPES, SpecError, is_han, parse_spec, request_schema
from conftest import ROOT, run_config
from helpers import assert_conservation, manifest
from stages.charts import ChartRenderParams, ChartRenderStage, choose_language

SPECS = ROOT / "data" / "charts" / "specs.jsonl"


@pytest.fixture(scope="module")
def examples() -> dict[str, dict]:
    """key ("bar-en", "box-zh", ...) -> spec as a dict."""
    out = {}
    for line in SPECS.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        out[rec["key"]] = rec["text"]
    assert set(out) == {f"{t}-{lang}" for t in CHART_TYPES for lang in ("en", "zh")}
    return out


def render_rows(specs: list[str | dict], **params) -> pd.DataFrame:
    """Run the chart_render stage on one batch of specs, as the runner would (kept rows in)."""
    texts = [s if isinstance(s, str) else json.dumps(s, ensure_ascii=False) for s in specs]
    batch = pd.DataFrame({"sample_id": [f"row{i}" for i in range(len(texts))], "status": "kept", "reason": None,
                          "chart_spec": texts})
    stage = ChartRenderStage(ChartRenderParams(**params), "chart_render")
    stage.setup()
    return stage.process(batch.copy())


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("chart_type", CHART_TYPES)
def test_every_chart_type_renders_from_a_spec(examples, chart_type, language):
    spec = parse_spec(examples[f"{chart_type}-{language}"])
    png = render_png(spec, chart_fonts(language))   # strict: any missing glyph raises
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (800, 600)
    pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 20, "blank image"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "no marks, text or colours drawn"
    caption = derive(spec).caption
    assert spec.title in caption
    assert any(is_han(ch) for ch in caption) == (language == "zh")


def test_chinese_text_is_drawn_with_cjk_glyphs_not_tofu(examples):
    spec = parse_spec(examples["bar-zh"])
    fonts = chart_fonts("zh")
    from fontTools.ttLib import TTFont

    with TTFont(fonts.paths[0], fontNumber=0) as font:   # the installed CJK font file itself
        cmap = font.getBestCmap()
    han = {ch for _, text in spec.texts() for ch in text if is_han(ch)}
    assert len(han) > 10 and all(ord(ch) in cmap for ch in han)

    good = render_png(spec, fonts)   # strict: a "Glyph ... missing from font(s)" warning would raise

    dejavu = ChartFonts(("DejaVu Sans",), (dejavu_path(),), font_coverage(dejavu_path()))
    with pytest.raises(RenderError, match=r"no glyph in DejaVu Sans for .* in title"):
        render_png(spec, dejavu)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tofu = render_png(spec, dejavu, strict=False)
    assert any("missing from font" in str(w.message) for w in caught)
    title_strip = lambda png: np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)[:30]  # noqa: E731
    assert np.abs(title_strip(good) - title_strip(tofu)).mean() > 1.0, "the CJK title looks like the tofu one"


def test_a_chinese_chart_without_a_cjk_font_is_an_error_row_not_tofu(examples, tmp_path):
    rows = render_rows([examples["pie-zh"], examples["pie-en"]], cjk_font=str(tmp_path / "missing.ttc"))
    assert list(rows["status"]) == ["error", "kept"]
    assert rows["reason"][0].startswith("chart_render: cjk_font") and "fonts-wqy-microhei" in rows["reason"][0]


def test_model_text_is_drawn_as_plain_text_never_run(examples):
    spec = copy.deepcopy(examples["bar-en"])
    spec["title"] = "$\\frac{1}{$ __import__('os').system('reboot')"   # broken mathtext and code: both just text
    spec["x_label"] = "{{7*7}} ${x}"
    rows = render_rows([spec])
    assert rows["status"][0] == "kept", rows["reason"][0]   # mathtext would fail on "$\frac{1}{$" if it were parsed
    assert spec["title"] in rows["text"][0]


# --------------------------------------------------------------------------------------------------
# Malformed specs
# --------------------------------------------------------------------------------------------------

def _bar(**changes) -> dict:
    spec = {"chart_type": "bar", "language": "en", "title": "Sales", "x_label": "Quarter", "y_label": "Units",
            "categories": ["Q1", "Q2", "Q3", "Q4"], "series": [{"name": "2024", "values": [1, 2, 3, 4]}]}
    spec.update(changes)
    return spec


def _without(key: str) -> dict:
    spec = _bar()
    del spec[key]
    return spec


MALFORMED = {
    "wrong type (a number as text)": (_bar(series=[{"name": "2024", "values": ["1", 2, 3, 4]}]),
                                      "series[0].values[0]: Input should be a valid number"),
    "wrong type (title)": (_bar(title=42), "title: Input should be a valid string"),
    "mismatched series lengths": (_bar(series=[{"name": "2024", "values": [1, 2, 3]}]),
                                  "series[0].values: 3 values but 4 categories"),
    "NaN": ('{"chart_type":"bar","language":"en","title":"Sales","categories":["Q1","Q2"],'
            '"series":[{"name":"a","values":[1,NaN]}]}', "NaN is not a finite number"),
    "infinity": ('{"chart_type":"bar","language":"en","title":"Sales","categories":["Q1","Q2"],'
                 '"series":[{"name":"a","values":[1,1e999]}]}', "series[0].values[1]: Input should be a finite number"),
    "10^6 points": ({"chart_type": "histogram", "language": "en", "title": "Big", "bins": 10,
                     "series": [{"name": "a", "values": [1.5] * 10**6}]}, "too many points: 1000000 > max_points 2000"),
    "unknown chart type": (_bar(chart_type="radar"), "chart_type: unknown chart type 'radar'"),
    "missing series": (_without("series"), "series: missing field"),
    "missing title": (_without("title"), "title: missing field"),
    "unknown field": (_bar(colour="red"), "colour: unknown field"),
    "not JSON": ("{chart_type: bar}", "invalid JSON"),
    "truncated": ('{"chart_type":"bar","language":"en","title":"Sal', "truncated JSON"),
    "not an object": ("[1, 2, 3]", "a spec is a JSON object, got list"),
    "duplicate key": ('{"chart_type":"bar","chart_type":"pie"}', "duplicate field 'chart_type'"),
    "scatter without x": ({"chart_type": "scatter", "language": "en", "title": "S",
                           "series": [{"name": "a", "values": [1, 2, 3]}]}, "series[0].x: a scatter series needs x values"),
    "negative pie slice": ({"chart_type": "pie", "language": "en", "title": "P", "categories": ["a", "b"],
                            "series": [{"name": "s", "values": [3, -1]}]}, "a pie chart takes no negative values"),
    "pie with two series": ({"chart_type": "pie", "language": "en", "title": "P", "categories": ["a", "b"],
                             "series": [{"name": "s", "values": [3, 1]}, {"name": "t", "values": [1, 1]}]},
                            "a pie chart has exactly one series"),
    "histogram without bins": ({"chart_type": "histogram", "language": "en", "title": "H",
                                "series": [{"name": "a", "values": [1, 2, 3, 4, 5]}]}, "bins: a histogram needs bins"),
    "Chinese chart without Chinese": (_bar(language="zh"), "'zh' but the title has no Chinese characters"),
    "English chart with Chinese": (_bar(categories=["一", "Q2", "Q3", "Q4"]), "'en' but categories[0] has Chinese"),
    "control character": (_bar(title="Sales\nQ1"), "title: control or unassigned character U+000A"),
    "duplicate categories": (_bar(categories=["Q1", "Q1", "Q3", "Q4"]), "duplicate label(s) ['Q1']"),
    "huge value": (_bar(series=[{"name": "2024", "values": [1, 2, 3, 1e15]}]), "> max_abs_value"),
}


def test_malformed_specs_become_error_rows_with_the_reason():
    cases = list(MALFORMED.items())
    rows = render_rows([spec for _, (spec, _) in cases] + [_bar()])
    for (name, (_, expected)), status, reason in zip(cases, rows["status"], rows["reason"]):
        assert status == "error", name
        assert reason.startswith("chart_spec: ") and expected in reason, f"{name}: {reason}"
    assert rows["status"].iloc[-1] == "kept"   # the valid spec beside them is unaffected
    assert rows["image"].iloc[:-1].isna().all()


def test_the_answer_schema_compiles_for_xgrammar_and_admits_valid_specs(examples):
    import jsonschema
    import xgrammar

    for key, raw in examples.items():
        lengths = {len(s["values"]) for s in raw["series"]}
        schema = request_schema(raw["chart_type"], raw["language"], max(lengths))
        xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)   # what vLLM compiles
        if len(lengths) == 1 and len(raw["series"]) <= 4:   # the schema gives every series the same length
            jsonschema.validate({"x_label": "", "y_label": "", "unit": "", **raw}, schema)   # the optional texts, given
    bar = request_schema("bar", "zh", 4)
    with pytest.raises(jsonschema.ValidationError):   # type and language are pinned
        jsonschema.validate({**_bar(), "unit": ""}, bar)
    with pytest.raises(jsonschema.ValidationError):   # category count is fixed
        jsonschema.validate(_bar(language="zh", unit="", categories=["a", "b", "c"]), bar)


def test_nan_given_as_a_number_is_rejected_too():
    with pytest.raises(SpecError, match=r"series\[0\]\.values\[1\]: Input should be a finite number"):
        parse_spec(_bar(series=[{"name": "a", "values": [1, float("nan"), 2, 3]}]))


# --------------------------------------------------------------------------------------------------
# Derived captions and QA pairs
# --------------------------------------------------------------------------------------------------

def _pair(qa, kind, contains=""):
    return next(q for q in qa if q.kind == kind and contains in q.question)


def test_derived_answers_equal_the_spec_values(examples):
    bar = parse_spec(examples["bar-en"])
    hardware = [12, 15.5, 9, 20]
    qa = derive(bar).qa
    assert _pair(qa, "max_label", "Hardware").value == "Q4"
    assert _pair(qa, "min_label", "Hardware").value == "Q3"
    assert _pair(qa, "total", "Hardware").value == sum(hardware) == 56.5
    assert _pair(qa, "max_series").value == "Software"          # 63 > 56.5

    pie = parse_spec(examples["pie-zh"])
    values = dict(zip(pie.categories, pie.series[0].values))
    share = _pair(derive(pie).qa, "share")
    slice_ = next(c for c in pie.categories if c in share.question)
    assert share.value == round(100 * values[slice_] / sum(values.values()), 1)
    assert _pair(derive(pie).qa, "max_label").value == "服装"

    box = parse_spec(examples["box-en"])
    median = _pair(derive(box).qa, "median")
    group = next(s for s in box.series if s.name in median.question)
    assert median.value == statistics.median(group.values)

    hist = parse_spec(examples["histogram-zh"])
    counts, _ = np.histogram(hist.series[0].values, bins=hist.bins)
    assert _pair(derive(hist).qa, "max_count").value == counts.max()
    assert _pair(derive(hist).qa, "mean").value == round(statistics.mean(hist.series[0].values), 2)

    heat = derive(parse_spec(examples["heatmap-en"])).qa
    assert (_pair(heat, "max_value").value, _pair(heat, "min_value").value, _pair(heat, "max_row").value) == (50, 6, "Afternoon")

    scatter = derive(parse_spec(examples["scatter-en"])).qa
    assert (_pair(scatter, "count").value, _pair(scatter, "max_value").value, _pair(scatter, "correlation").value) == \
        (8, 88, "positive")
    assert _pair(derive(parse_spec(examples["line-en"])).qa, "trend").value == "increase"
    assert [q.value for q in derive(parse_spec(examples["line-zh"])).qa if q.kind == "trend"] == ["decrease", "increase"]


def test_every_answer_states_its_value(examples):
    for key, raw in examples.items():
        spec = parse_spec(raw)
        for q in derive(spec).qa:
            if isinstance(q.value, bool):
                assert q.answer.startswith({("en", True): "Yes", ("en", False): "No", ("zh", True): "是",
                                            ("zh", False): "否"}[(spec.language, q.value)]), (key, q)
            elif isinstance(q.value, str) and q.kind not in ("trend", "correlation"):
                assert q.value in q.answer, (key, q)
            elif not isinstance(q.value, str):
                assert fmt(q.value) in q.answer, (key, q)
            assert check_answer(q.answer, q.to_dict(), reference(spec, derive(spec).known_numbers)) is None


def test_ties_are_stated_not_broken_arbitrarily(examples):
    box = parse_spec(examples["box-zh"])   # 青年 and 老年 share the highest median, 5
    d = derive(box)
    assert "青年、老年的中位数最高" in d.caption
    assert not [q for q in d.qa if q.kind == "max_label"], "no question whose answer would be one of two"


def test_language_ratio_is_configurable_and_fixed_per_row():
    ids = [f"sample-{i}" for i in range(4000)]
    even = [choose_language(0, s, {"en": 1, "zh": 1}) for s in ids]
    assert 0.46 < even.count("zh") / len(ids) < 0.54
    skewed = [choose_language(0, s, {"en": 3, "zh": 1}) for s in ids]
    assert 0.22 < skewed.count("zh") / len(ids) < 0.28
    assert even == [choose_language(0, s, {"en": 1, "zh": 1}) for s in ids]    # same seed, same choice
    assert even != [choose_language(1, s, {"en": 1, "zh": 1}) for s in ids]    # another seed reshuffles
    assert {choose_language(0, s, {"en": 0, "zh": 1}) for s in ids[:100]} == {"zh"}


# --------------------------------------------------------------------------------------------------
# Checking a model's rewording against the spec
# --------------------------------------------------------------------------------------------------

def test_a_rewording_must_agree_with_the_spec_values(examples):
    spec = parse_spec(examples["bar-en"])
    d = derive(spec)
    known = reference(spec, d.known_numbers)
    total = _pair(d.qa, "total", "Hardware").to_dict()          # 56.5
    top = _pair(d.qa, "max_label", "Hardware").to_dict()        # Q4 (20)
    compare = next(q.to_dict() for q in d.qa if q.kind == "compare")
    right, wrong = ("Yes, it is higher there.", "No.") if compare["value"] else ("No, it is lower there.", "Yes, clearly.")

    assert check_answer("Hardware brings in 56.5 million USD over the year.", total, known) is None
    assert "does not state 56.5" in check_answer("Roughly 57 million USD.", total, known)
    assert check_answer("Hardware peaks in Q4, at 20 million USD.", top, known) is None
    assert "does not name 'Q4'" in check_answer("It peaks in Q3.", top, known)
    assert "states 35" in check_answer("Q4, at 20 million USD, up 35% on Q3.", top, known)
    assert check_answer(right, compare, known) is None
    assert "does not say" in check_answer(wrong, compare, known)

    line = parse_spec(examples["line-en"])
    dl = derive(line)
    trend = _pair(dl.qa, "trend").to_dict()
    kl = reference(line, dl.known_numbers)
    assert check_answer("Temperatures rise from 11.5 °C to 22.1 °C.", trend, kl) is None
    assert "says decrease" in check_answer("It rises at first, then falls.", trend, kl)

    zh = parse_spec(examples["bar-zh"])
    dz = derive(zh)
    kz = reference(zh, dz.known_numbers)
    top_zh = _pair(dz.qa, "max_label", "2023年").to_dict()
    assert check_answer("四季度最高，达到321万辆。", top_zh, kz) is None
    assert "not in Chinese" in check_answer("Q4 is the highest.", top_zh, kz)

    assert check_caption("Software leads Hardware overall, 63 million USD in total, with both peaking in Q4 "
                         "(25 and 20 million USD).", known) is None
    assert "states 64" in check_caption("Software totals 64 million USD.", known)


# --------------------------------------------------------------------------------------------------
# Through the runner
# --------------------------------------------------------------------------------------------------

def test_chart_render_through_the_runner(ray_local, examples, tmp_path):
    import webdataset as wds

    bad = {
        "radar": _bar(chart_type="radar"),
        "short-series": _bar(series=[{"name": "2024", "values": [1, 2, 3]}]),
        "million-points": {"chart_type": "line", "language": "en", "title": "Big", "categories": ["a", "b"],
                           "series": [{"name": "a", "values": [1] * 10**6}]},
        "no-title": _without("title"),
    }
    src = tmp_path / "specs.jsonl"
    with src.open("w", encoding="utf-8") as f:
        for key, spec in [*examples.items(), *bad.items()]:
            f.write(json.dumps({"key": key, "text": spec}, ensure_ascii=False) + "\n")
        f.write('{"key": "nan", "text": {"chart_type": "bar", "language": "en", "title": "T", "categories": ["a"], '
                '"series": [{"name": "s", "values": [NaN]}]}}\n')   # ingest reads NaN; the spec check refuses it
    run_dir = tmp_path / "run"
    run_config(ROOT / "configs" / "charts_from_specs.yaml", run_dir, inputs=[str(src)])

    counts = assert_conservation(run_dir)
    assert counts["chart_render"] == {"in": 21, "kept": 16, "dropped": 0, "error": 5}
    m = manifest(run_dir, "chart_render").set_index("source_key")
    reasons = m.loc[m["status"] == "error", "reason"].to_dict()
    assert "unknown chart type 'radar'" in reasons["radar"]
    assert "3 values but 4 categories" in reasons["short-series"]
    assert "too many points: 1000000" in reasons["million-points"]
    assert "title: missing field" in reasons["no-title"]
    assert "finite number" in reasons["nan"]
    kept = m[m["status"] == "kept"]
    assert sorted(kept["chart_language"].value_counts().to_dict().items()) == [("en", 8), ("zh", 8)]

    tars = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == 16
    for s in samples:
        meta = json.loads(s["json"])
        key = meta["source_key"]
        im = Image.open(io.BytesIO(s["png"]))
        assert im.size == (800, 600)
        assert s["txt"].decode() == meta["caption"] == kept.loc[key, "text"]
        qa = meta["meta"]["chart"]["qa"]
        assert 1 <= len(qa) <= 5 and qa == json.loads(kept.loc[key, "qa"])
        assert meta["meta"]["chart"]["spec"]["chart_type"] == key.split("-")[0]
        assert meta["tokens"]["tiles"] >= 1   # width/height reach the packing counts
    assert os.path.getsize(run_dir / "manifests" / "chart_render.parquet") < 5_000_000
