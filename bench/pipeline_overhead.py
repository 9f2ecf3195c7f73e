"""Pipeline overhead: the Ray Data runner against a plain Python loop doing the same per-image work.

What it measures
    A demo corpus (``pipeline.demo_data.build_demo(tmp, repeat=N)``: 20 rows per
    copy, about 4 of them broken on purpose: a 16 px thumbnail, a truncated JPEG,
    a missing file, a line that is not JSON) goes through a two-stage pipeline
    ``ingest`` (jsonl_images, ``--chunk-rows`` lines per commit unit) ->
    ``decode`` (checkpointed), run by ``pipeline.runner.run_pipeline`` on a local
    in-process Ray using every core. Ray start-up (``ensure_ray()``) is timed
    separately and is not part of the runner figure; the runner figure is
    everything else: planning, Ray Data scheduling, ingest, decode, writing the
    Parquet checkpoint fragments, manifests and the conservation checks.

The baseline
    One process, no Ray: read the same captions.jsonl, parse each line, read the
    image file, compute the same sample id as ingest (``sample_id_for``) and call
    the decode stage's own per-image code, ``DecodeStage(DecodeParams(),
    "decode")._one(bytes)`` (Pillow open + draft-mode verify + the blake2b content
    hash), so the per-image work is identical. It writes nothing.

The ratio runner/baseline is seconds over seconds: below 1 means the runner's
parallelism beats its overhead on this machine, above 1 the reverse. Timings
are printed, never asserted; the script exits 0 whatever they are.

    python bench/pipeline_overhead.py [--repeat N] [--chunk-rows N] [--batch-size N] [--keep]
"""
from __future__ import annotations

import argparse
import json
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
from stages.base import DROPPED, ERROR, KEPT  # noqa: E402
from stages.decode import DecodeParams, DecodeStage  # noqa: E402
from stages.ingest import sample_id_for  # noqa: E402

SOURCE = "images"

PIPELINE_YAML = """\
# Written by bench/pipeline_overhead.py: ingest -> decode (checkpointed leaf).
name: pipeline_overhead
seed: 0
sources:
  {source}:
    path: {path}
    format: jsonl_images
stages:
  - name: ingest
    kind: ingest
    source: {source}
    chunk_rows: {chunk_rows}
  - name: decode
    kind: decode
    checkpoint: true
    resources: {{batch_size: {batch_size}}}
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def baseline(corpus: Path) -> dict:
    """Single-process loop over captions.jsonl doing ingest's and decode's per-row work."""
    stage = DecodeStage(DecodeParams(), "decode")
    counts = {"in": 0, KEPT: 0, DROPPED: 0, ERROR: 0}
    t0 = time.perf_counter()
    with open(corpus / "captions.jsonl", "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            counts["in"] += 1
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError("line is not a JSON object")
            except ValueError:
                counts[ERROR] += 1
                continue
            try:
                data = (corpus / rec["image"]).read_bytes()
            except OSError:
                counts[ERROR] += 1
                continue
            sample_id_for(SOURCE, str(rec["id"]), data, rec.get("caption"))
            r = stage._one(data)
            counts[r.get("status", KEPT)] += 1
    return {"seconds": time.perf_counter() - t0, "counts": counts}


def runner(corpus: Path, work: Path, chunk_rows: int, batch_size: int) -> dict:
    cfg_path = work / "pipeline.yaml"
    cfg_path.write_text(PIPELINE_YAML.format(source=SOURCE, path=json.dumps(str(corpus)),
                                             chunk_rows=chunk_rows, batch_size=batch_size), encoding="utf-8")
    config = load_config(cfg_path)
    run_dir = work / "run"
    log_lines: list[str] = []
    t0 = time.perf_counter()
    record = run_pipeline(config, RunOptions(run_dir=str(run_dir), log=log_lines.append))
    seconds = time.perf_counter() - t0
    ingest = record["stages"]["ingest"]["counts"]
    decode = record["stages"]["decode"]["counts"]
    # Rows the baseline counts as decided before decode are ingest's error/dropped rows.
    counts = {"in": ingest["in"], KEPT: decode[KEPT], DROPPED: ingest[DROPPED] + decode[DROPPED],
              ERROR: ingest[ERROR] + decode[ERROR]}
    return {"seconds": seconds, "counts": counts, "log": log_lines}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=250, help="copies of the 20-row demo corpus (default 250 = 5000 rows)")
    ap.add_argument("--chunk-rows", type=int, default=64, help="ingest rows per commit unit (default 64)")
    ap.add_argument("--batch-size", type=int, default=DecodeStage.default_resources.batch_size,
                    help=f"decode batch size (default {DecodeStage.default_resources.batch_size}, the stage's own)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (corpus, config, run dir) and print its path")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sailcurate-bench-"))
    try:
        corpus = build_demo(tmp / "corpus", repeat=args.repeat)

        base = baseline(corpus)

        import ray

        t0 = time.perf_counter()
        ensure_ray()
        ray_start = time.perf_counter() - t0
        cores = ray.cluster_resources().get("CPU", 0)

        run = runner(corpus, tmp, args.chunk_rows, args.batch_size)
        ray.shutdown()

        n = base["counts"]["in"]
        same = run["counts"] == base["counts"]
        rows = [("runner", run["seconds"]), ("baseline", base["seconds"])]
        print()
        print(f"machine : {platform.platform()} | {cpu_model()} | {os.cpu_count()} logical CPUs")
        print(f"ray     : local in-process, {cores:g} CPUs; start-up {ray_start:.2f} s (not in the runner time)")
        print(f"work    : {n} rows (repeat={args.repeat}), ingest chunk_rows={args.chunk_rows}, "
              f"decode batch_size={args.batch_size}")
        print(f"outcome : runner {run['counts']} | baseline {base['counts']} | {'same' if same else 'DIFFERENT'}")
        print()
        print(f"{'':10}{'images':>8}{'seconds':>10}{'images/s':>10}")
        for name, s in rows:
            print(f"{name:10}{n:>8}{s:>10.2f}{n / s:>10.1f}")
        ratio = run["seconds"] / base["seconds"]
        print(f"{'ratio':10}{'':>8}{ratio:>10.2f}   (runner seconds / baseline seconds)")
        print()
        figures = {
            "bench": "pipeline_overhead", "images": n, "repeat": args.repeat,
            "chunk_rows": args.chunk_rows, "batch_size": args.batch_size,
            "runner_s": round(run["seconds"], 3), "runner_img_s": round(n / run["seconds"], 1),
            "baseline_s": round(base["seconds"], 3), "baseline_img_s": round(n / base["seconds"], 1),
            "ratio_runner_over_baseline": round(ratio, 3), "ray_start_s": round(ray_start, 3),
            "ray_cpus": cores, "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
            "platform": platform.platform(), "python": platform.python_version(), "ray": ray.__version__,
            "counts_match": same,
        }
        print(json.dumps(figures))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
