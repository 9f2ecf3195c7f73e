"""Per-stage funnel counts, top drop reasons and per-source counts of a run."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from manifests.reader import manifest_batches, read_run_record
from manifests.writer import reason_key


def summarize(run_dir: str, top: int = 5, batch_rows: int = 65_536) -> dict:
    """Computed from the manifests themselves (not the run record), so it is what the files say.
    Each manifest is read a batch at a time, three columns only: the summary ``sailcurate run``
    prints at the end costs the same memory for a thousand rows or a billion."""
    record = read_run_record(run_dir)
    out = {"run_dir": run_dir, "pipeline": record.get("pipeline"), "status": record.get("status"), "stages": []}
    for stage in record["order"]:
        try:
            counts, reasons, by_source = _count(run_dir, stage, batch_rows)
        except FileNotFoundError:
            out["stages"].append({"stage": stage, "kind": record["stages"][stage]["kind"], "missing": True})
            continue
        out["stages"].append({
            "stage": stage, "kind": record["stages"][stage]["kind"], "in": sum(counts.values()),
            "kept": counts.get("kept", 0), "dropped": counts.get("dropped", 0),
            "error": counts.get("error", 0), "top_reasons": reasons.most_common(top), "sources": by_source,
        })
    return out


def _count(run_dir: str, stage: str, batch_rows: int) -> tuple[Counter, Counter, dict]:
    """(rows per status, rows per reason key of the rows not kept, per source rows per status)."""
    counts: Counter = Counter()
    reasons: Counter = Counter()
    pairs: Counter = Counter()
    for batch in manifest_batches(run_dir, stage, ["source", "status", "reason"], batch_rows):
        t = pa.Table.from_batches([batch])
        for row in t.group_by(["source", "status"]).aggregate([([], "count_all")]).to_pylist():
            pairs[(row["source"], row["status"])] += row["count_all"]
            counts[row["status"]] += row["count_all"]
        not_kept = t.filter(pc.and_(pc.not_equal(t["status"], "kept"), pc.is_valid(t["reason"])))
        for row in not_kept.group_by("reason").aggregate([([], "count_all")]).to_pylist():
            reasons[reason_key(row["reason"])] += row["count_all"]
    by_source: dict = {}
    for (src, st), n in sorted(pairs.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        by_source.setdefault(src, {"kept": 0, "dropped": 0, "error": 0})[st] = n
    return counts, reasons, by_source


def format_table(summary: dict, show_reasons: bool = True, show_sources: bool = False) -> str:
    rows = [("stage", "kind", "in", "kept", "dropped", "error", "top drop reasons")]
    for s in summary["stages"]:
        if s.get("missing"):
            rows.append((s["stage"], s["kind"], "-", "-", "-", "-", "(not run)"))
            continue
        reasons = ", ".join(f"{r} ({n})" for r, n in s["top_reasons"]) if show_reasons else ""
        rows.append((s["stage"], s["kind"], str(s["in"]), str(s["kept"]), str(s["dropped"]), str(s["error"]), reasons))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in range(6)) + "  " + r[6])
        if k == 0:
            lines.append("-" * (sum(widths) + 2 * 6 + 16))
    if show_sources:
        lines.append("")
        lines.append("per source (kept / dropped / error):")
        for s in summary["stages"]:
            if s.get("missing"):
                continue
            parts = [f"{src}: {c['kept']}/{c['dropped']}/{c['error']}" for src, c in sorted(s["sources"].items())]
            lines.append(f"  {s['stage']}: " + "; ".join(parts))
    return "\n".join(lines)
