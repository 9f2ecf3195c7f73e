"""clip_score and clip_filter: the cheap image-text cut before the VLM judge.

``clip_score`` stores the cosine similarity of open_clip image and text
embeddings in ``clip_sim``. ``clip_filter`` applies the cut: by default it
keeps a top percentile computed over the whole dataset (DataComp/LAION
practice: a fixed cosine does not carry across CLIP models), or a fixed
threshold when one is given.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, model_validator

from stages.base import ERROR, Params, Resources, Stage, format_number, mark_arrow


class ClipModelConfig(Params):
    model: str = Field("ViT-L-14", description="open_clip model name (a config it knows, or one in config_dir)")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag or a local weights file")
    config_dir: str | None = Field(None, description="folder of custom open_clip model configs (JSON)")
    device: str = "auto"
    precision: str = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    decode_threads: int = Field(8, ge=1, description="threads decoding JPEGs per actor (PIL releases the GIL)")
    gpu_decode: bool = Field(True, description="on a GPU, decode JPEGs with nvJPEG (torchvision) instead of PIL; ignored on CPU")


class ClipScoreParams(Params):
    clip: ClipModelConfig = Field(default_factory=ClipModelConfig)
    text_column: str = "text"
    image_column: str = "image"


class ClipScoreStage(Stage):
    kind = "clip_score"
    stateful = True
    code_deps = ("judges.engines",)
    Params = ClipScoreParams
    description = "open_clip cosine similarity of image and caption -> clip_sim (GPU when given one)."
    produces = {"clip_sim": pa.float32()}
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=256)

    def input_columns(self):
        return {self.params.text_column: pa.string(), self.params.image_column: pa.binary()}

    def setup(self) -> None:
        from judges.engines.clip_engine import ClipEngine

        c = self.params.clip
        self.engine = ClipEngine(c.model, c.pretrained, config_dir=c.config_dir, device=c.device,
                                 precision=c.precision, batch_size=self.default_resources.batch_size,
                                 decode_threads=c.decode_threads, gpu_decode=c.gpu_decode)
        self.engine.setup()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.engine.similarity([bytes(b) if b is not None else b"" for b in batch[self.params.image_column]],
                                     [t if isinstance(t, str) else "" for t in batch[self.params.text_column]])
        batch["clip_sim"] = [None if np.isnan(v) else float(v) for v in out.similarity]
        for i, err in enumerate(out.errors):
            if err:
                batch.iloc[i, batch.columns.get_loc("status")] = ERROR
                batch.iloc[i, batch.columns.get_loc("reason")] = err
        return batch


class ClipFilterParams(Params):
    column: str = "clip_sim"
    top_percent: float | None = Field(30.0, gt=0, le=100, description="keep this top share of rows (over the whole dataset)")
    threshold: float | None = Field(None, description="fixed cut instead of a percentile: keep value >= threshold")

    @model_validator(mode="after")
    def _one_rule(self):
        if self.top_percent is not None and self.threshold is not None:
            raise ValueError("give either top_percent or threshold, not both")
        if self.top_percent is None and self.threshold is None:
            raise ValueError("give top_percent or threshold")
        return self


def _exact_quantile(q: float, *tables: pa.Table) -> float | None:
    values = np.concatenate([t.column(0).to_numpy(zero_copy_only=False).astype(np.float64) for t in tables] or [np.array([])])
    values = values[~np.isnan(values)]
    return float(np.quantile(values, q, method="lower")) if len(values) else None


def _apply_cut(table: pa.Table, column: str, cut: float, reason: str, stage: str) -> pa.Table:
    """Kept rows below the cut, or without a value, are dropped; others are untouched."""
    import pyarrow.compute as pc

    vals = table.column(column).cast(pa.float64())
    missing = pc.or_(pc.is_null(vals), pc.is_nan(pc.fill_null(vals, 0.0)))
    low = pc.and_(pc.invert(missing), pc.less(pc.fill_null(vals, 0.0), cut))
    reasons = pc.if_else(missing, pa.scalar(f"{column}:missing"), pa.scalar(reason))
    return mark_arrow(table, pc.or_(missing, low), reasons, stage)


class ClipFilterStage(Stage):
    kind = "clip_filter"
    mode = "global"
    Params = ClipFilterParams
    description = "Keep the top percentile of clip_sim over the whole dataset (or a fixed threshold)."
    default_resources = Resources(num_cpus=1, batch_size=4096)

    def input_columns(self):
        return {self.params.column: pa.float32()}

    def transform(self, ds, seed: int, log: Callable[[str], None]):
        p = self.params
        if p.threshold is not None:
            cut, reason = p.threshold, f"{p.column}<{format_number(p.threshold)}"
        else:
            # Exact and deterministic: one task sees the one column (4 bytes a row) of every kept row.
            refs = ds.select_columns([p.column]).to_arrow_refs()
            q = 1.0 - p.top_percent / 100.0
            from pipeline.remote_call import off_driver

            cut = off_driver(_exact_quantile, q, *refs, num_cpus=1)
            if cut is None:
                cut = float("-inf")
            reason = f"{p.column}<p{format_number(100 - p.top_percent)}({cut:.4f})"
            log(f"{self.name}: keeping the top {format_number(p.top_percent)}% of {p.column}: cut at {cut:.4f}")
        return ds.map_batches(_apply_cut, fn_args=(p.column, cut, reason, self.name), batch_format="pyarrow",
                              batch_size=self.default_resources.batch_size)
