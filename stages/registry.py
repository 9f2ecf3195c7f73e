"""Stage kinds by name, so configs can say ``kind: decode``."""
from __future__ import annotations

from stages.base import Stage


def stage_kinds() -> dict[str, type[Stage]]:
    """All built-in stage kinds. Imported lazily so workers load only what they run."""
    from stages.clip import ClipFilterStage, ClipScoreStage
    from stages.decode import DecodeStage
    from stages.dedup import ExactDedupStage, MinHashDedupStage
    from stages.filter import FilterStage
    from stages.ingest import IngestStage
    from stages.judge import JudgeStage
    from stages.perceptual_dedup import PHashDedupStage, PHashStage
    from stages.shard import ShardStage
    from stages.resample import LengthResampleStage, NgramResampleStage, SourceResampleStage
    from stages.recaption import RecaptionStage
    from stages.language import LanguageStage
    from stages.caption_qa import CaptionQAStage
    from stages.instruction_export import InstructionExportStage
    from stages.charts import ChartLanguageStage, ChartRenderStage, ChartRephraseStage, ChartSpecStage
    from stages.video_ingest import VideoIngestStage
    from stages.video_shard import VideoShardStage
    from stages.instruction_ingest import InstructionIngestStage
    from stages.instruction_validate import InstructionValidateStage, VerdictGateStage
    from stages.category import CategoryBalanceStage, CategoryPhraseStage
    from stages.cot import CotCleanStage, CotGenerateStage, CotRouteStage, DifficultyStage
    from stages.instruction_shard import InstructionShardStage

    kinds = [IngestStage, DecodeStage, FilterStage, ClipScoreStage, ClipFilterStage, JudgeStage, ShardStage,
             ExactDedupStage, MinHashDedupStage]
    kinds += [RecaptionStage, CaptionQAStage, InstructionExportStage, LanguageStage]
    kinds += [PHashStage, PHashDedupStage]
    kinds += [SourceResampleStage, NgramResampleStage, LengthResampleStage]
    kinds += [ChartSpecStage, ChartRenderStage, ChartRephraseStage, ChartLanguageStage]
    kinds += [VideoIngestStage, VideoShardStage]
    kinds += [InstructionIngestStage, InstructionValidateStage, VerdictGateStage, CategoryPhraseStage,
              CategoryBalanceStage, CotCleanStage, CotGenerateStage, DifficultyStage, CotRouteStage,
              InstructionShardStage]
    return {k.kind: k for k in kinds}


def get_stage_kind(kind: str) -> type[Stage]:
    kinds = stage_kinds()
    if kind not in kinds:
        raise KeyError(kind)
    return kinds[kind]
