"""The run report: a static, self-contained HTML page of what a run kept and dropped, and why.

``build_report(run_dir, out_dir)`` writes ``out_dir/index.html`` (default ``RUN_DIR/report``).
``report.data`` computes the figures with DuckDB over the manifests and reads example rows
back from the checkpoints; ``report.build`` lays out the page; ``report.html`` escapes
everything; ``report.charts`` draws inline SVG; ``report.media`` makes the thumbnails.
"""
from __future__ import annotations

import os

from pipeline import storage


def build_report(run_dir: str, out_dir: str | None = None, examples_per_reason: int = 12, thumb_px: int = 160,
                 clusters_shown: int = 4) -> str:
    """Write the report and return the path of its ``index.html``."""
    from report.build import render
    from report.data import collect

    if examples_per_reason < 0:
        raise ValueError("examples_per_reason must be >= 0")
    if not 32 <= thumb_px <= 1024:
        raise ValueError("thumb_px must be between 32 and 1024")
    data = collect(run_dir, examples_per_reason=examples_per_reason, clusters_shown=clusters_shown)
    page = render(data, thumb_px=thumb_px)
    out_dir = out_dir or storage.join(run_dir, "report")
    storage.makedirs(out_dir)
    uri = storage.join(out_dir, "index.html")
    storage.write_bytes(uri, page.encode("utf-8"))
    return os.path.abspath(uri) if storage.is_local(uri) else uri
