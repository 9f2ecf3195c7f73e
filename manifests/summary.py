"""Per-stage funnel counts, top drop reasons and per-source counts of a run."""
from __future__ import annotations

from collections import Counter

from manifests.reader import read_manifest, read_run_record
from manifests.writer import reason_key


def summarize(run_dir: str, top: int = 5) -> dict:
    """Computed from the manifests themselves (not the run record), so it is what the files say."""
    record = read_run_record(run_dir)
    out = {"run_dir": run_dir, "pipeline": record.get("pipeline"), "status": record.get("status"), "stages": []}
    for stage in record["order"]:
        try:
            df = read_manifest(run_dir, stage)
        except FileNotFoundError:
            out["stages"].append({"stage": stage, "kind": record["stages"][stage]["kind"], "missing": True})
            continue
        counts = Counter(df["status"])
        reasons = Counter(reason_key(r) for r in df.loc[df["status"] != "kept", "reason"].dropna())
        by_source = {}
        for (src, st), n in df.groupby(["source", "status"]).size().items():
            by_source.setdefault(src, {"kept": 0, "dropped": 0, "error": 0})[st] = int(n)
        out["stages"].append({
            "stage": stage, "kind": record["stages"][stage]["kind"], "in": int(len(df)),
            "kept": int(counts.get("kept", 0)), "dropped": int(counts.get("dropped", 0)),
            "error": int(counts.get("error", 0)), "top_reasons": reasons.most_common(top), "sources": by_source,
        })
    return out


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
