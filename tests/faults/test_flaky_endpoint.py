"""A model endpoint that fails, hangs and talks nonsense: the run completes and every row says why.

The endpoint is a ``SchemaServer`` (tests/faults/schema_server.py), standing in for the model
server; the runner, the stages, the openai engine client and its retries, the manifests and the
shards are all real. Its plan, per request key (a hash of the request):

- 10% ``always_fail``: HTTP 503 on every attempt, so the engine's retries run out;
- 20% ``fail_once``: HTTP 500, then a good answer on the retry (30% of requests fail at first);
- 10% ``hang_once``: the first attempt hangs past the engine's timeout, the retry is answered;
- 10% ``garbage``: HTTP 200 whose content is not JSON;
- the rest: a schema-valid answer at once.

The test recomputes, from what the stage saw (its checkpoint and manifest), the key of every
request each row made, so it knows exactly which rows met which fault: a row with an
``always_fail`` request must be an ``error`` naming the HTTP failure after the last attempt, a
row with a ``garbage`` answer an ``error`` naming the parse failure with the raw answer kept,
and every other row a real verdict (kept or dropped by the quality rule, never an error). The
recomputed keys must be exactly the keys the server saw, so no request goes unaccounted for.
Both a scoring stage (``judge``, configs/demo_judge.yaml) and a writing stage
(``caption_qa``, a ``kind: generate`` rubric, configs/demo_caption_qa.yaml) are run.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_config
from pipeline import media
from faults.endpoint import config_on_server
from faults.schema_server import OUTCOMES, FaultPlan, SchemaServer, garbage_answer, request_key
from helpers import assert_conservation, manifest

PLAN = FaultPlan(always_fail=0.1, fail_once=0.2, hang_once=0.1, garbage=0.1, hang_s=20.0)
ATTEMPTS = 3       # engine max_retries: attempts per request in total
TIMEOUT_S = 2.0    # engine timeout: a hanging attempt is given up after this
FATAL = ("always_fail", "garbage")  # faults that no retry repairs


@pytest.fixture(scope="module")
def flaky_input(tmp_path_factory) -> Path:
    from pipeline.demo_data import build_demo

    return build_demo(tmp_path_factory.mktemp("flaky_input"), repeat=2)  # 40 rows, some broken on purpose


def run_on_flaky_server(config: str, tmp_path: Path, data: Path):
    """Run ``config`` with its model stages on a flaky server; returns (run dir, written config, server)."""
    run_dir = tmp_path / "run"
    with SchemaServer(PLAN) as server:
        written = config_on_server(ROOT / "configs" / config, tmp_path / config, server.url, inputs=[str(data)],
                                   timeout_s=TIMEOUT_S, max_retries=ATTEMPTS)
        record = run_config(written, run_dir)
    assert record["status"] == "succeeded"
    assert PLAN.hang_s > TIMEOUT_S
    return run_dir, written, server


def stage_params(config: Path, stage: str):
    from pipeline.config import load_config

    return next(s.params for s in load_config(config).stages if s.name == stage)


def stage_inputs(run_dir: Path, stage: str) -> pd.DataFrame:
    """Every row the stage was given, as committed in its segment's checkpoint, by sample_id."""
    record = json.loads((run_dir / "run.json").read_text())
    parts = run_dir / "checkpoints" / record["stages"][stage]["segment"] / "parts"
    rows = pd.read_parquet(parts).set_index("sample_id")
    # Checkpoints hold media references (pipeline/media.py): the bytes the stage was given.
    for ref in [c for c in rows.columns if c.endswith(media.REF_SUFFIX)]:
        rows[ref[: -len(media.REF_SUFFIX)]] = media.fetch(list(rows[ref].where(rows[ref].notna(), None)))
    return rows


def assert_server_saw(server: SchemaServer, keys: dict[str, list[str]]) -> dict[str, set[str]]:
    """The recomputed keys are exactly the requests the server got; every fault happened and was
    retried as planned. Returns the keys by outcome.

    Rows can send the same request (two copies of an image, asked a rubric that reads only the
    image), so a key is counted once per row that sent it (``sent``)."""
    sent = Counter(k for ks in keys.values() for k in ks)
    assert set(sent) == set(server.attempts), "requests the test cannot map to a row, or rows whose requests never came"
    by = {o: {k for k in sent if PLAN.outcome(k) == o} for o in OUTCOMES}
    assert all(by.values()), {o: len(v) for o, v in by.items()}  # each fault met at least one request
    assert all(server.attempts[k] == ATTEMPTS * sent[k] for k in by["always_fail"])  # retried to the end
    assert server.served["503"] == ATTEMPTS * sum(sent[k] for k in by["always_fail"])
    # fail_once / hang_once: the first attempt at a key fails or hangs, every later one is answered
    assert server.served["500"] == len(by["fail_once"]) and server.served["hang"] == len(by["hang_once"])
    assert all(server.attempts[k] >= sent[k] + 1 for k in by["fail_once"] | by["hang_once"])
    assert server.served["garbage"] == sum(sent[k] for k in by["garbage"])  # a 200 is not retried, whatever it holds
    return by


def test_judge_on_a_flaky_endpoint_scores_or_errors_every_row(ray_local, flaky_input, tmp_path):
    from judges.config import make_engine
    from judges.engines.base import Sampling
    from stages.judge import load_rubrics, shrink_image

    run_dir, config, server = run_on_flaky_server("demo_judge.yaml", tmp_path, flaky_input)
    counts = assert_conservation(run_dir)  # nothing silently dropped, every non-kept row has a reason

    # The requests each judged row made, rebuilt the way the judge builds them.
    p = stage_params(config, "judge")
    rubrics, engine = load_rubrics(p), make_engine(p.engine)
    seen = stage_inputs(run_dir, "judge")
    keys = {}
    for sid, row in seen.iterrows():
        sample = {field: str(row[col]) for field, col in p.fields.items()}
        image = (shrink_image(bytes(row[p.image_column]), p.image_max_side),)
        keys[sid] = [request_key(engine.build_payload(r.build_request(
            sample, images=image, sampling=Sampling(max_tokens=p.max_tokens or r.max_tokens, temperature=p.temperature))))
            for r in rubrics]
    by = assert_server_saw(server, keys)

    judge = manifest(run_dir, "judge").set_index("sample_id")
    verdict = manifest(run_dir, "filter").set_index("sample_id")
    assert set(judge.index) == set(keys) and counts["judge"]["in"] == len(keys)
    for sid, row in judge.iterrows():
        outcomes = [PLAN.outcome(k) for k in keys[sid]]
        raw = json.loads(row["judge_raw"]) if row["judge_raw"] else {}
        for r, k, o in zip(rubrics, keys[sid], outcomes):
            if o == "garbage":
                assert raw[r.name] == garbage_answer(k), "the raw answer of an unparseable reply is kept"
        fatal = next((o for o in outcomes if o in FATAL), None)  # the first failing rubric names the reason
        if fatal == "always_fail":
            assert row["status"] == "error" and row["reason"].startswith(f"judge_http: 503 after {ATTEMPTS} attempts"), row
        elif fatal == "garbage":
            assert row["status"] == "error" and row["reason"].startswith("judge_parse: "), row
        else:  # only ok / fail_once / hang_once requests: scored, then kept or dropped by the quality rule
            assert row["status"] == "kept" and pd.notna(row["vir"]) and pd.notna(row["ita"]), row
            rule = "kept" if row["vir"] >= 3 and row["ita"] >= 3 else "dropped"
            assert verdict.loc[sid, "status"] == rule, (sid, row["vir"], row["ita"])
    fatal_rows = {sid for sid, ks in keys.items() if set(ks) & (by["always_fail"] | by["garbage"])}
    assert counts["judge"]["error"] == len(fatal_rows) > 0
    assert counts["judge"]["kept"] == len(keys) - len(fatal_rows) > 0


def test_caption_qa_on_a_flaky_endpoint_writes_or_errors_every_row(ray_local, flaky_input, tmp_path):
    from judges.config import make_engine
    from judges.engines.base import Sampling
    from judges.rubric import load_rubric

    run_dir, config, server = run_on_flaky_server("demo_caption_qa.yaml", tmp_path, flaky_input)
    counts = assert_conservation(run_dir)

    p = stage_params(config, "caption_qa")
    rubric, engine = load_rubric(p.rubric, extra_dirs=tuple(p.rubric_dirs)), make_engine(p.engine)
    sampling = Sampling(max_tokens=p.max_tokens or rubric.max_tokens,
                        temperature=rubric.temperature if p.temperature is None else p.temperature)
    qa = manifest(run_dir, "caption_qa").set_index("sample_id")
    keys = {sid: [request_key(engine.build_payload(rubric.build_request(
        {"caption": row["qa_caption"], "count": p.count}, sampling=sampling)))] for sid, row in qa.iterrows()}
    assert_server_saw(server, keys)

    for sid, row in qa.iterrows():
        (key,) = keys[sid]
        outcome = PLAN.outcome(key)
        if outcome == "always_fail":
            assert row["status"] == "error", row
            assert row["reason"].startswith(f"qa_engine: judge_http: 503 after {ATTEMPTS} attempts"), row
        elif outcome == "garbage":
            assert row["status"] == "error" and row["reason"].startswith("qa_parse: "), row
            assert row["qa_raw"] == garbage_answer(key), "the raw answer of an unparseable reply is kept"
        else:  # answered (perhaps on a retry): pairs checked, kept or dropped for lack of support
            assert row["status"] == "kept" or row["reason"].startswith("qa_unsupported: "), row
            assert pd.notna(row["qa_pairs_kept"]), row
    fatal = sum(PLAN.outcome(ks[0]) in FATAL for ks in keys.values())
    assert counts["caption_qa"]["error"] == fatal > 0
    assert counts["instructions"]["in"] == counts["caption_qa"]["kept"]
