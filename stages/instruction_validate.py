"""instruction_validate and verdict_gate: SAIL-Instruction2's dual validation.

``instruction_validate`` (a model stage) records two independent verdicts for every sample:

1. ``rule_ok`` / ``rule_reasons``: the rule checks of ``instructions/rules.py`` (format, language,
   length, images, answer present, duplicated turns);
2. ``instruction_valid`` / ``instruction_rationale``: a VLM (or LLM) judging the sample with the
   ``instruction_validity`` rubric through the judge machinery (engines, strict rubric parsing).
   Multi-turn samples are judged on their final answer with the earlier turns as context. When
   ``category_rubric`` is set, the same answer also names the sample's task category (the two
   rubrics are combined into one JSON answer, so each image is prefilled once), for
   ``category_balance`` later.

Samples failing the rules are not sent to the model unless ``judge_rule_failures`` (their model
verdict stays null). It decides nothing itself: a model answer that does not parse is an ``error``
row (``judge_parse: ...``), everything else stays kept with its verdicts, so that ``verdict_gate``
can count pass rates per source over every validated sample.

``verdict_gate`` (global) keeps a sample only when every verdict column is true (reasons
``rules: <first failing rule>``, ``instruction_valid=no``, ``instruction_valid:missing``), and
rejects every sample of a source whose pass rate (samples passing all verdicts / samples
validated) is below ``min_source_pass_rate`` (reason ``source_rejected: <source> pass rate 0.31 <
0.5``). Per-source counts and pass rates go to the run record (``stages.<name>.stats``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from instructions.rules import RuleConfig, check_rules
from instructions.schema import IMAGES_TYPE, Conversation, SchemaError
from judges.config import EngineConfig
from stages.base import ERROR, Params, Resources, Stage, format_number, mark_arrow


def sample_images(value: Any) -> list[bytes]:
    """A row's ``images`` cell (list, numpy array or null) as a list of bytes."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [bytes(b) for b in value if b is not None]


class InstructionValidateParams(Params):
    rules: RuleConfig = Field(default_factory=RuleConfig)
    engine: EngineConfig | None = Field(None, description="the model check's engine; None records rule verdicts only")
    rubric: str = Field("instruction_validity", description="a yes/no rubric with inputs question and answer")
    category_rubric: str | None = Field(None, description="also name the task category in the same answer (e.g. category_phrase)")
    rubric_dirs: list[str] = Field(default_factory=list)
    judge_rule_failures: bool = Field(False, description="also send samples that failed the rules to the model")
    image_max_side: int | None = Field(448, ge=32, description="downscale images to this side before judging")
    max_images: int = Field(8, ge=0, description="images of a sample shown to the model (the first ones)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0)


class InstructionValidateStage(Stage):
    kind = "instruction_validate"
    stateful = True
    code_deps = ("judges", "instructions", "stages.png_chunks")  # png_chunks: the rules' image check
    Params = InstructionValidateParams
    description = "Dual validation of instruction samples: rule checks and an instruction_validity model verdict (both recorded)."
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def input_columns(self) -> dict[str, pa.DataType]:
        return {"messages": pa.string(), "images": IMAGES_TYPE}

    def output_columns(self) -> dict[str, pa.DataType]:
        out = {"rule_ok": pa.bool_(), "rule_reasons": pa.string(), "instruction_valid": pa.bool_(),
               "instruction_rationale": pa.string()}
        if self.params.category_rubric:
            out["category"] = pa.string()
        out["validate_raw"] = pa.string()
        out["validate_model"] = pa.string()
        return out

    def manifest_columns(self) -> list[str]:
        return [c for c in self.output_columns() if c != "validate_raw"] + ["validate_raw"]

    def setup(self) -> None:
        from judges.config import make_engine
        from judges.rubric import combine_rubrics, load_rubric

        p = self.params
        rubric = load_rubric(p.rubric, extra_dirs=tuple(p.rubric_dirs))
        if p.category_rubric:
            rubric = combine_rubrics([rubric, load_rubric(p.category_rubric, extra_dirs=tuple(p.rubric_dirs))],
                                     name=f"{rubric.name}+{p.category_rubric}")
        self.rubric = rubric
        self.engine = None
        if p.engine is not None:
            self.engine = make_engine(p.engine)
            self.engine.setup()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from judges.engines.base import Sampling
        from stages.judge import shrink_image

        p = self.params
        n = len(batch)
        cols: dict[str, list] = {c: [None] * n for c in self.output_columns()}
        status, reason = list(batch["status"]), list(batch["reason"])
        requests, where, samples = [], [], {}
        for i, (msgs, imgs) in enumerate(zip(batch["messages"], batch["images"])):
            try:
                conv = Conversation.from_messages(msgs)
            except SchemaError as e:
                status[i], reason[i] = ERROR, f"bad_messages: {e}"
                continue
            images = sample_images(imgs)
            problems = check_rules(conv, images, p.rules)
            cols["rule_ok"][i] = not problems
            cols["rule_reasons"][i] = "; ".join(problems) if problems else None
            if self.engine is None or (problems and not p.judge_rule_failures):
                continue
            question, answer = conv.context_and_answer()
            try:
                shown = tuple(shrink_image(b, p.image_max_side) for b in images[:p.max_images])
            except Exception as e:  # an image the rules did not decode (decode_images off)
                status[i], reason[i] = ERROR, f"judge_image: {type(e).__name__}: {e}"
                continue
            samples[i] = {"question": question, "answer": answer}
            sampling = Sampling(max_tokens=p.max_tokens or self.rubric.max_tokens, temperature=p.temperature)
            requests.append(self.rubric.build_request(samples[i], images=shown, sampling=sampling))
            where.append(i)
        results = self.engine.generate(requests) if requests else []
        for i, res in zip(where, results):
            cols["validate_raw"][i] = res.text
            if res.error:
                status[i], reason[i] = ERROR, f"judge_engine: {res.error}"[:500]
                continue
            parsed = self.rubric.parse(res.text, samples[i])
            if parsed.error:
                status[i], reason[i] = ERROR, parsed.error
                continue
            v = parsed.values
            cols["instruction_valid"][i] = v.get("instruction_valid")
            cols["instruction_rationale"][i] = v.get("instruction_rationale")
            if "category" in cols:
                cols["category"][i] = v.get("category")
        for c, vals in cols.items():
            batch[c] = vals
        batch["validate_model"] = p.engine.model if p.engine is not None else None
        batch["status"], batch["reason"] = status, reason
        return batch

    def teardown(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()


# -- the gate ----------------------------------------------------------------------------------

class VerdictGateParams(Params):
    verdicts: list[str] = Field(default_factory=lambda: ["rule_ok", "instruction_valid"], min_length=1,
                                description="boolean columns that must all be true for a sample to pass")
    details: dict[str, str] = Field(default_factory=lambda: {"rule_ok": "rule_reasons"},
                                    description="verdict column -> column whose text explains a failure")
    group_by: str = Field("source", description="pass rates are computed per value of this column")
    min_source_pass_rate: float = Field(0.0, ge=0, le=1, description="reject every sample of a source passing less often than this (0: off)")
    min_source_rows: int = Field(1, ge=1, description="sources with fewer validated samples are never rejected as a whole")


def _verdict_counts(table: pa.Table, verdicts: list[str], group_by: str) -> pa.Table:
    df = pd.DataFrame({"group": table.column(group_by).to_pylist()})
    ok_all = np.ones(len(df), dtype=bool)
    for v in verdicts:
        col = np.array([x is True for x in table.column(v).to_pylist()], dtype=bool)
        df[f"pass:{v}"] = col.astype(np.int64)
        ok_all &= col
    df["pass:all"] = ok_all.astype(np.int64)
    df["rows"] = 1
    out = df.groupby("group", dropna=False).sum().reset_index()
    out["group"] = out["group"].astype(object).where(out["group"].notna(), None)
    return pa.Table.from_pandas(out, preserve_index=False)


def _apply_gate(table: pa.Table, verdicts: list[str], details: dict[str, str], group_by: str,
                rejected: dict[str, float], threshold: float, stage: str) -> pa.Table:
    n = table.num_rows
    reasons: list[str | None] = [None] * n
    for v in verdicts:
        vals = table.column(v).to_pylist()
        info = table.column(details[v]).to_pylist() if v in details and details[v] in table.column_names else [None] * n
        for i, x in enumerate(vals):
            if reasons[i] is not None or x is True:
                continue
            if x is None:
                reasons[i] = f"{v}:missing"
            elif info[i]:
                reasons[i] = f"{'rules' if v == 'rule_ok' else v}: {str(info[i]).split('; ')[0]}"
            else:
                reasons[i] = f"{v}=no"
    groups = table.column(group_by).to_pylist()
    for i, g in enumerate(groups):
        if reasons[i] is None and g in rejected:
            reasons[i] = f"source_rejected: {g} pass rate {rejected[g]:.3f} < {format_number(threshold)}"
    hit = [r is not None for r in reasons]
    return mark_arrow(table, hit, [r or "" for r in reasons], stage)


class VerdictGateStage(Stage):
    kind = "verdict_gate"
    mode = "global"
    Params = VerdictGateParams
    description = "Keep samples whose verdict columns are all true; reject whole sources below a pass rate; per-source pass rates."
    default_resources = Resources(num_cpus=1, batch_size=4096)

    def input_columns(self) -> dict[str, pa.DataType]:
        cols = {v: pa.bool_() for v in self.params.verdicts}
        cols[self.params.group_by] = pa.string()
        return cols

    def manifest_columns(self) -> list[str]:
        return []

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        p = self.params
        counts = ds.map_batches(_verdict_counts, fn_args=(list(p.verdicts), p.group_by),
                                batch_format="pyarrow", batch_size=None).to_pandas()
        stats: dict[str, Any] = {"verdicts": list(p.verdicts), "min_source_pass_rate": p.min_source_pass_rate,
                                 "sources": {}}
        rejected: dict[str, float] = {}
        if len(counts):
            totals = counts.groupby("group", dropna=False).sum()
            for group, row in totals.iterrows():
                rows = int(row["rows"])
                rate = float(row["pass:all"]) / rows if rows else 0.0
                reject = bool(p.min_source_pass_rate and rows >= p.min_source_rows and rate < p.min_source_pass_rate)
                stats["sources"][str(group)] = {
                    "validated": rows, "passed": int(row["pass:all"]), "pass_rate": round(rate, 4),
                    **{f"pass_rate:{v}": round(float(row[f"pass:{v}"]) / rows, 4) if rows else 0.0 for v in p.verdicts},
                    "rejected": reject,
                }
                if reject:
                    rejected[str(group)] = rate
        self.run_stats = stats
        for g, rate in sorted(rejected.items()):
            log(f"{self.name}: source {g!r} rejected: pass rate {rate:.3f} < {format_number(p.min_source_pass_rate)}")
        return ds.map_batches(_apply_gate, fn_args=(list(p.verdicts), dict(p.details), p.group_by, rejected,
                                                    p.min_source_pass_rate, self.name),
                              batch_format="pyarrow", batch_size=self.default_resources.batch_size)
