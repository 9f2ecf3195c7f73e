"""SAIL-Caption2 end to end on the CPU with tiny models: samples/s and where the time goes.

What it measures
    ``configs/caption2.yaml --smoke`` (tiny random CLIP, Qwen2-VL judge and Qwen2 language model
    on vLLM-CPU) over the demo corpus repeated ``--repeat`` times (``build_demo``: 20 captioned
    real images per copy, a few broken on purpose; copies are byte-identical, so exact dedup
    removes them and the model stages see one copy). Ray start-up is timed apart. For every
    checkpointed segment it prints rows in, seconds and share of the run, then samples/s end to
    end (input rows over the run's seconds).

The baseline, in the same run
    ``configs/demo.yaml`` on the same input (ingest -> decode -> filter -> shard: the same I/O,
    no models, no dedup, no global stages), so the difference is what the curation stages cost.

For every model stage it also prints its actors' setup time, busy time and the share of
their time after setup spent waiting for input (pipeline/actor_timing.py): is the model fed?
On a GPU the model stages' own figures (clip and judge against bare model calls, real-size
random-weight models, through the runner with the same waiting share) come from
``bench/judges.py``; BENCHMARKS.md has them. Timings are printed, never asserted.

    python bench/caption2.py [--repeat N] [--keep]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.demo_data import build_demo  # noqa: E402
from pipeline.runner import RunOptions, ensure_ray, run_pipeline  # noqa: E402


def _run(config: str, data: Path, out: Path, smoke: bool) -> tuple[float, dict]:
    cfg = load_config(ROOT / "configs" / config, inputs=[f"images={data}"] if "caption2" in config else [str(data)],
                      smoke=smoke)
    t0 = time.perf_counter()
    record = run_pipeline(cfg, RunOptions(run_dir=str(out), log=lambda m: None))
    return time.perf_counter() - t0, record


def _segments(record: dict) -> list[tuple[str, list[str], int, float]]:
    """(segment, its stages, rows into its first stage, seconds), in run order."""
    seen: dict[str, tuple[list[str], int, float]] = {}
    for name in record["order"]:
        st = record["stages"][name]
        seg = st["segment"]
        if seg not in seen:
            seen[seg] = ([], int((st.get("counts") or {}).get("in", 0)), float(st.get("seconds") or 0.0))
        seen[seg][0].append(name)
    return [(seg, stages, rows, secs) for seg, (stages, rows, secs) in seen.items()]


def _table(record: dict, total: float) -> None:
    print(f"  {'segment':<18} {'stages':<44} {'rows in':>8} {'seconds':>8} {'share':>6}")
    for seg, stages, rows, secs in _segments(record):
        print(f"  {seg:<18} {','.join(stages)[:44]:<44} {rows:>8} {secs:>8.1f} {secs / total:>6.1%}")


def _actor_table(record: dict) -> None:
    """Model stages: how long their actors took to set up, and how much of the time after setup
    they computed vs waited for input (run.json ``stages.<name>.actors``)."""
    rows = [(n, record["stages"][n]["actors"]) for n in record["order"] if record["stages"][n].get("actors")]
    if not rows:
        return
    print(f"\n  {'model stage':<14} {'actors':>6} {'rows':>6} {'setup s':>8} {'busy s':>8} {'span s':>8} {'waiting':>8}")
    for name, a in rows:
        print(f"  {name:<14} {a['actors']:>6} {a['rows']:>6} {a['setup_s_max']:>8.1f} {a['busy_s']:>8.1f} "
              f"{a['span_s']:>8.1f} {a['waiting_share']:>8.0%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="copies of the 20-row demo corpus")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directories")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sailcurate-bench-caption2-"))
    os.environ.setdefault("SAILCURATE_CACHE", str(Path.home() / ".cache" / "sailcurate"))
    try:
        data = build_demo(work / "data", repeat=args.repeat)
        rows = sum(1 for line in (data / "captions.jsonl").read_text().splitlines() if line.strip())
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"input: {rows} rows (demo corpus x{args.repeat})")
        t0 = time.perf_counter()
        ensure_ray()
        print(f"ray start-up: {time.perf_counter() - t0:.1f} s (not counted below)\n")

        base_s, base = _run("demo.yaml", data, work / "baseline", smoke=False)
        print(f"baseline configs/demo.yaml (no models, no dedup): {base_s:.1f} s, {rows / base_s:.2f} samples/s")
        _table(base, base_s)

        cap_s, cap = _run("caption2.yaml", data, work / "caption2", smoke=True)
        shard = cap["stages"]["shard"]["counts"]
        print(f"\ncaption2 --smoke: {cap_s:.1f} s, {rows / cap_s:.2f} samples/s in, "
              f"{shard['kept']} caption samples sharded")
        _table(cap, cap_s)
        model = sum(secs for _, stages, _, secs in _segments(cap)
                    if any(cap["stages"][s]["kind"] in ("clip_score", "judge", "caption_qa", "chart_spec", "recaption")
                           for s in stages))
        print(f"\nsegments with a model: {model:.1f} s ({model / cap_s:.0%}); "
              f"caption2 / baseline: {cap_s / base_s:.1f}x the wall time of plain ingest-decode-shard")
        _actor_table(cap)
    finally:
        if args.keep:
            print(f"\nkept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
