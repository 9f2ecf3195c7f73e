"""ParquetSink: the driver's many-small-parts Parquet writer (manifests, shard indexes).

Its point is memory: a Parquet writer holds every row group's metadata until it closes, so the
sink must turn thousands of tiny parts into a few large row groups. It must also never publish a
half-written file."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.parquet_sink import COMPACT_PARTS, ParquetSink


def _part(start: int, n: int) -> pa.Table:
    return pa.table({"sample_id": [f"s{i:06d}" for i in range(start, start + n)],
                     "reason": [None if i % 3 else f"too_short: {i}" for i in range(start, start + n)]})


def test_thousands_of_small_parts_become_few_row_groups_in_order(tmp_path):
    out = str(tmp_path / "m.parquet")
    with ParquetSink(out, row_group_rows=4096) as sink:
        for k in range(3200):  # the shard manifest of 16,000 kept rows at 5 samples per shard
            sink.write(_part(5 * k, 5))
    f = pq.ParquetFile(out)
    assert f.metadata.num_rows == 16000
    assert f.metadata.num_row_groups == 4  # 4096-row groups (the last holds 3,712), not 3,200
    assert sink.rows == 16000 and sink.row_groups == 4
    assert f.read().column("sample_id").to_pylist() == [f"s{i:06d}" for i in range(16000)]
    # The footer the writer held in memory: a few KB, where 3,200 row groups took megabytes.
    assert f.metadata.serialized_size < 10_000


def test_tiny_parts_are_merged_while_buffered(tmp_path):
    """A 5-row part costs more as Arrow objects than as data: the buffer must not hold thousands."""
    with ParquetSink(str(tmp_path / "m.parquet"), row_group_rows=10**9) as sink:
        for k in range(3000):
            sink.write(_part(5 * k, 5))
            assert sink.buffered_tables <= COMPACT_PARTS + 3000 // COMPACT_PARTS
    assert pq.read_table(tmp_path / "m.parquet").column("sample_id").to_pylist() == [f"s{i:06d}" for i in range(15000)]


def test_a_large_part_is_one_row_group_and_bytes_also_bound_the_buffer(tmp_path):
    out = str(tmp_path / "m.parquet")
    with ParquetSink(out, row_group_rows=10**9, row_group_bytes=1) as sink:
        sink.write(_part(0, 1000))
        sink.write(_part(1000, 10))
    f = pq.ParquetFile(out)
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [1000, 10]


def test_an_error_inside_the_block_leaves_no_file_and_no_temporary(tmp_path):
    out = tmp_path / "m.parquet"
    with pytest.raises(RuntimeError, match="reader failed"):
        with ParquetSink(str(out), row_group_rows=10) as sink:
            sink.write(_part(0, 25))  # two row groups already on disk in the temporary
            raise RuntimeError("reader failed")
    assert os.listdir(tmp_path) == []


def test_nothing_written_makes_no_file_and_an_empty_table_makes_an_empty_file(tmp_path):
    with ParquetSink(str(tmp_path / "none.parquet")) as sink:
        pass
    assert not sink.used and not (tmp_path / "none.parquet").exists()
    with ParquetSink(str(tmp_path / "empty.parquet")) as sink:
        sink.write(_part(0, 0))
    t = pq.read_table(tmp_path / "empty.parquet")
    assert t.num_rows == 0 and t.column_names == ["sample_id", "reason"]


def test_a_part_with_another_schema_is_refused_by_name(tmp_path):
    out = str(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="m.parquet: a part has schema"):
        with ParquetSink(out) as sink:
            sink.write(_part(0, 3))
            sink.write(pa.table({"sample_id": [1, 2]}))
    assert os.listdir(tmp_path) == []
