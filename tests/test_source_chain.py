"""A source read fused with the task stages behind it (``SourceChain``) hands on what the
two-step path (read into Arrow, then ``StageChain``) did, without the media bytes it sheds."""
from __future__ import annotations

import io
import json
import re
import tarfile

import pyarrow as pa
from PIL import Image

from conftest import ROOT
from pipeline import media
from pipeline.config import load_config
from pipeline.execution import SourceChain, read_units, run_stage_chain
from pipeline.graph import Segment
from pipeline.runner import RunOptions, Runner, _media_last_needed


def _tar(path, n: int) -> None:
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            members = {"txt": f"a caption long enough to pass, number {i}".encode()}
            if i % 7 == 3:
                members["jpg"] = b"not a jpeg"  # a corrupt image: an error row
            else:
                buf = io.BytesIO()
                Image.new("RGB", (40 + i, 36), (i * 9 % 255, 80, 160)).save(buf, format="JPEG")
                members["jpg"] = buf.getvalue()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_the_fused_read_hands_on_the_two_step_result_without_the_shed_bytes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _tar(src / "00000.tar", 600)  # more rows than decode's batch: the frame is cut into slices
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides=["sources.images.format=webdataset"], inputs=[str(src)])
    runner = Runner(cfg, RunOptions(run_dir=str(tmp_path / "run")))
    seg = runner.plan.segments[0]
    first, rest = seg.nodes[0], seg.nodes[1:]
    assert [n.name for n in seg.nodes] == ["ingest", "decode"]
    read_args = (first.spec.kind, first.spec.params.model_dump(mode="json"), first.name, runner._context(first.name),
                 runner.run_dir, seg.name, runner._flight_schema(Segment([first], [])))
    shed = _media_last_needed(rest, media.referenced_columns(seg.end.columns))
    steps = [(runner._call_args(n), n.spec.resources.batch_size, shed.get(k, [])) for k, n in enumerate(rest)]
    unit = first.make_stage(runner._context(first.name)).list_units(cfg.sources)[0]
    units = pa.table({"chunk": ["ingest-000000"], "unit": [json.dumps(unit)]})

    two_step = run_stage_chain(read_units(units, *read_args), steps, shed.get(-1, []))
    fused = SourceChain(read_args, steps, shed.get(-1, []), runner._flight_schema(seg))(units)

    assert fused.num_rows == two_step.num_rows == 600
    def values(table, col):  # Pillow names the BytesIO it could not read by its address
        return [re.sub(r"0x[0-9a-f]+", "0x..", v) if isinstance(v, str) else v
                for v in table.column(col).cast(fused.schema.field(col).type).to_pylist()]

    for col in fused.column_names:
        assert values(fused, col) == values(two_step, col), col
    assert fused.column("image").null_count == 600  # decode was the last reader: every referenced image shed
    assert set(fused.column("status").to_pylist()) == {"kept", "error"}
