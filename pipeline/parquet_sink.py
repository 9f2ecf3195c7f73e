"""One Parquet file that the driver assembles from many small parts (manifests, shard indexes).

Why a buffer: a ParquetWriter keeps every row group's metadata, column statistics included, until
it closes. Writing each small part as its own row group made the driver grow with the number of
parts: the shard manifest of a 24,000-row demo run had 3,200 five-row parts and held 43 MiB of
footer metadata at the end. Coalescing parts into row groups of at least ``row_group_rows`` rows
bounds that to one row group's metadata per ``row_group_rows`` rows, and the buffer itself to one
row group. Tiny parts cost more as Arrow objects than as data (a 5-row table of 8 columns holds a
few KB of array headers), so every ``COMPACT_PARTS`` buffered parts are merged into one table.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage

ROW_GROUP_ROWS = 16 * 1024
ROW_GROUP_BYTES = 4 * 1024 * 1024
COMPACT_PARTS = 256


class ParquetSink:
    """Write tables of one schema to ``uri`` atomically, in row groups of at least ``row_group_rows``
    rows (or ``row_group_bytes`` bytes). The file is published on a clean exit only: on an error its
    temporary is removed. The schema is the first table's; nothing written means no file."""

    def __init__(self, uri: str, row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES):
        if row_group_rows < 1 or row_group_bytes < 1:
            raise ValueError("row_group_rows and row_group_bytes must be positive")
        self.uri = uri
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.rows = 0  # rows written or buffered
        self.row_groups = 0
        self._buffer: list[pa.Table] = []  # merged tables, then at most COMPACT_PARTS parts
        self._parts = 0  # parts at the end of the buffer not merged yet
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._schema: pa.Schema | None = None
        self._output = None
        self._writer: pq.ParquetWriter | None = None

    @property
    def used(self) -> bool:
        """Whether any table (even an empty one) was written, i.e. whether closing makes a file."""
        return self._schema is not None

    @property
    def buffered_tables(self) -> int:
        """Arrow tables held for the next row group (bounded: parts are merged as they come)."""
        return len(self._buffer)

    def write(self, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema):
            raise ValueError(f"{self.uri}: a part has schema {table.schema}, the file has {self._schema}")
        self._buffer.append(table)
        self._parts += 1
        if self._parts >= COMPACT_PARTS:
            merged = pa.concat_tables(self._buffer[-self._parts:]).combine_chunks()
            self._buffer[-self._parts:] = [merged]
            self._parts = 0
        self.rows += table.num_rows
        self._buffered_rows += table.num_rows
        self._buffered_bytes += table.nbytes
        if self._buffered_rows >= self.row_group_rows or self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            self._output = storage.open_output_atomic(self.uri)
            self._writer = pq.ParquetWriter(self._output.__enter__(), self._schema)
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._parts, self._buffered_rows, self._buffered_bytes = [], 0, 0, 0
        # One row group for the whole buffer (pyarrow would otherwise cut at its own default).
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.row_groups += 1

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        mine = None  # an error raised here rather than by the caller's block
        if exc is None and self._schema is not None:
            try:
                self._flush()
            except BaseException as e:  # the last row group failed (disk full)
                if self._output is None:
                    raise
                mine = e
        if self._output is None:
            return False
        output, writer = self._output, self._writer
        self._output = self._writer = None
        try:
            writer.close()  # on an error too, so no footer is written later from a destructor
        except BaseException as e:
            if exc is None and mine is None:
                mine = e
        if mine is not None:
            output.__exit__(None, mine, mine.__traceback__)  # drops the temporary, raises mine
            raise mine
        output.__exit__(exc_type, exc, tb)  # publishes on a clean exit, else drops the temporary
        return False
