"""What a manifest row holds. One Parquet file per stage: ``manifests/<stage>.parquet``."""
from __future__ import annotations

import pyarrow as pa

MANIFEST_BASE = ["sample_id", "source", "source_key", "status", "reason"]
MANIFEST_SCHEMA_BASE = pa.schema([(c, pa.string()) for c in MANIFEST_BASE])
