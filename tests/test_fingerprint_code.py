"""A stage's fingerprint covers the code that shapes its output: its module, every project base
class it inherits from, and the packages or modules it names in code_deps. Editing any of them
reruns the stage on resume instead of silently reusing a checkpoint made by older code."""
from pathlib import Path

from pipeline import graph


def _files_read(monkeypatch, stage_cls) -> set[str]:
    read: list[str] = []
    original = Path.read_bytes

    def spy(self):
        read.append(self.name)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    graph._code_version(stage_cls)
    monkeypatch.setattr(Path, "read_bytes", original)
    return set(read)


def test_base_classes_are_part_of_the_fingerprint(monkeypatch):
    from stages.recaption import RecaptionStage
    from stages.video_shard import VideoShardStage

    assert {"recaption.py", "generation.py", "base.py"} <= _files_read(monkeypatch, RecaptionStage)
    assert {"video_shard.py", "shard.py", "base.py"} <= _files_read(monkeypatch, VideoShardStage)


def test_single_module_dependencies_are_part_of_the_fingerprint(monkeypatch):
    from stages.video_ingest import VideoIngestStage

    files = _files_read(monkeypatch, VideoIngestStage)
    assert {"video_ingest.py", "video.py", "perceptual.py"} <= files
