"""filter: apply thresholds to columns earlier stages computed.

Statistics are computed and stored by the stage that owns them (decode,
clip_score, judge); thresholds live here. So a changed threshold reruns only
this stage and what follows (Data-Juicer's lesson), and the manifest shows
the value each row was judged on. The reason names the rule: ``vir<3``.
"""
from __future__ import annotations

import math

import pandas as pd
from pydantic import Field, model_validator

from stages.base import DROPPED, Params, Resources, Stage, format_number, mark


class Rule(Params):
    column: str = Field(..., description="a column an upstream stage produced, or len(COLUMN) for text length")
    min: float | None = Field(None, description="drop rows whose value is below this")
    max: float | None = Field(None, description="drop rows whose value is above this")
    equals: str | int | float | bool | None = Field(None, description="drop rows whose value differs")
    missing: str = Field("drop", pattern="^(drop|keep)$", description="what to do when the value is null or NaN")
    refusal: float | None = Field(None, description="the judge's 'cannot judge' value (e.g. -1): such rows are dropped "
                                                    "with reason COLUMN:refused, before min/max are tested")

    @model_validator(mode="after")
    def _has_test(self):
        if self.min is None and self.max is None and self.equals is None and self.refusal is None:
            raise ValueError(f"rule on {self.column!r} needs at least one of min, max, equals, refusal")
        return self


class FilterParams(Params):
    rules: list[Rule] = Field(default_factory=list, description="all must pass; the first failing rule is the reason")


class FilterStage(Stage):
    kind = "filter"
    Params = FilterParams
    description = "Drop rows by thresholds on existing columns (min/max/equals); reason names the rule, e.g. 'vir<3'."
    default_resources = Resources(num_cpus=0.5, batch_size=1024)

    def input_columns(self):
        import pyarrow as pa

        cols = {}
        for r in self.params.rules:
            cols[_base_column(r.column)] = pa.null()  # any type
        return cols

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        for rule in self.params.rules:
            values = _values(batch, rule.column)
            missing = values.isna()
            if rule.missing == "drop":
                mark(batch, missing, DROPPED, f"{rule.column}:missing")
            ok = ~missing
            if rule.refusal is not None:
                mark(batch, ok & (pd.to_numeric(values, errors="coerce") == rule.refusal), DROPPED, f"{rule.column}:refused")
            if rule.min is not None:
                mark(batch, ok & (pd.to_numeric(values, errors="coerce") < rule.min), DROPPED, f"{rule.column}<{format_number(rule.min)}")
            if rule.max is not None:
                mark(batch, ok & (pd.to_numeric(values, errors="coerce") > rule.max), DROPPED, f"{rule.column}>{format_number(rule.max)}")
            if rule.equals is not None:
                mark(batch, ok & (values != rule.equals), DROPPED, f"{rule.column}!={rule.equals}")
        return batch


def _base_column(expr: str) -> str:
    return expr[4:-1] if expr.startswith("len(") and expr.endswith(")") else expr


def _values(batch: pd.DataFrame, expr: str) -> pd.Series:
    col = _base_column(expr)
    if expr.startswith("len("):
        return batch[col].map(lambda v: len(v) if isinstance(v, (str, bytes, list)) else math.nan)
    return batch[col]
