"""The CPU data path at 100k-1M rows: a plain loop, demo.yaml and caption2_cpu.yaml on one corpus.

What it measures (issue 16, section 3)
    For each ``--rows N``: a seeded img2dataset-style corpus (``bench/synth_corpus.py``: tars of
    256-448 px JPEGs with planted broken, tiny, duplicate and near-duplicate rows; built once and
    reused while its parameters match), then in the same invocation

    loop          the baseline: one Python process, no Ray. Reads the tars with ``tarfile`` and per
                  row does what demo.yaml's stages do: blake2b of the bytes, Pillow open + draft-mode
                  load (the decode stage's verify), min side >= 32, aspect ratio <= 3, caption
                  length >= 20; writes kept rows into 1000-sample tars (jpg, txt, json).
    demo          ``sailcurate run configs/demo.yaml --set sources.images.format=webdataset
                  --set shard.samples_per_shard=1000`` (ingest -> decode -> filter -> shard).
    caption2_cpu  ``sailcurate run configs/caption2_cpu.yaml``: caption2.yaml without its model
                  stages (decode, basic filter, language, exact and pHash image dedup, caption
                  MinHash dedup, n-gram resample, shard).

    Each runs as a subprocess whose whole process tree is sampled (``bench/scale.py``'s
    ``TreeSampler`` / ``run_one``). Printed per mode:
    - rows/s over the pipeline seconds (the sum of run.json's segment seconds: Ray start and
      process start excluded, as the issue's figures) and end to end (process wall), and the
      ratio of each to the loop's rows/s;
    - seconds per segment (run.json ``stages.<name>.seconds``);
    - bytes written per input byte: every file under the run directory (checkpoints, manifests,
      shards, run.json) over the corpus's tar bytes;
    - bytes shuffled per row for each global stage, where the stage records it in run.json
      (``stages.<name>.stats``, any key naming ``shuffle``), and the bytes per row it loaded
      (``stages.<name>.input_bytes_per_row``, from the Parquet footers of its input: its shuffles
      move a subset of those columns); otherwise ``n/a``;
    - peak RSS per process role (driver, gcs_server, raylet, Ray workers, actors);
    - what each planted kind became: rows that reached the shards, and the stage that dropped or
      errored the others (from the manifests), so a dedup stage that drops distinct rows or
      misses planted copies shows as a count.

    All figures go to OUT/scale_cpu.json. Nothing is asserted: timings on a shared machine are
    noisy (the load average seen is printed; above 2x the cores the seconds measure the other
    load too).

    python bench/scale_cpu.py --rows 10000 [--rows 100000] [--rows 1000000] [--out bench/out/scale_cpu]
                              [--only loop,demo,caption2_cpu] [--seed 0] [--samples-per-tar N] [--keep-runs]
                              [--kill-at 0.5]   # SIGKILL a second run half way, resume, compare shards
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("loop", "demo", "caption2_cpu")
MIB = 2**20
RESOLVED = "pairs resolved by a dedup stage"


# -- the baseline loop ----------------------------------------------------------------------------

def _samples(path: Path):
    """(key, {ext: bytes}) per sample of one tar, members grouped by key as they come."""
    key, members = None, {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isfile() or "." not in m.name:
                continue
            k, ext = m.name.split(".", 1)
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext.lower()] = tf.extractfile(m).read()
    if members:
        yield key, members


def _check(data: bytes | None, text: str, min_side: int, max_aspect: float, min_chars: int) -> str:
    """kept / dropped / error for one row, with demo.yaml's decode and filter rules."""
    from PIL import Image

    if not data:
        return "error"
    hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > 89_478_485:
                return "dropped"
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Exception:  # Pillow raises many types for bad data
        return "error"
    if min(w, h) < min_side or max(w, h) / min(w, h) > max_aspect or len(text) < min_chars:
        return "dropped"
    return "kept"


def loop(shards: Path, out: Path, per_tar: int = 1000) -> dict:
    """The single-process baseline; returns counts and seconds (interpreter start excluded)."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {"in": 0, "kept": 0, "dropped": 0, "error": 0}
    writer, n_out, n_tars = None, 0, 0
    t0 = time.perf_counter()
    for tar in sorted(shards.glob("*.tar")):
        for key, members in _samples(tar):
            counts["in"] += 1
            text = members.get("txt", b"").decode("utf-8", "replace")
            status = _check(members.get("jpg"), text, 32, 3.0, 20)
            counts[status] += 1
            if status != "kept":
                continue
            if writer is None or n_out == per_tar:
                if writer is not None:
                    writer.close()
                writer, n_out = tarfile.open(out / f"{n_tars:06d}.tar", "w"), 0
                n_tars += 1
            for ext in ("jpg", "txt", "json"):
                if ext in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(members[ext])
                    writer.addfile(info, io.BytesIO(members[ext]))
            n_out += 1
    if writer is not None:
        writer.close()
    return {"seconds": time.perf_counter() - t0, "counts": counts, "tars": n_tars}


# -- helpers ------------------------------------------------------------------------------------

def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def shuffle_stats(stats: dict, prefix: str = "") -> dict:
    """Every entry of a stage's run_stats whose key names a shuffle (nested dicts flattened)."""
    found = {}
    for k, v in (stats or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            found.update(shuffle_stats(v, name + "."))
        elif "shuffle" in k.lower():
            found[name] = v
    return found


def planted_outcome(run_dir: Path, truth_path: Path, order: list[str]) -> dict:
    """Per planted kind: rows that reached the end, and per stage the rows it dropped or errored.

    ``unique_original`` is a unique row with a planted copy: a dedup keeps one row of a group by
    sample_id, so either the original or its copy may be the dropped one. ``unique`` rows have no
    planted copy: a dedup stage dropping them is a false positive (or an unplanned collision)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from manifests.reader import manifest_batches

    truth = pq.read_table(truth_path, columns=["key", "kind", "dup_of"]).to_pandas()
    originals = set(truth["dup_of"].dropna())
    kind = truth["kind"].where(~(truth["kind"].eq("unique") & truth["key"].isin(originals)), "unique_original")
    kind_of = dict(zip(truth["key"], kind))
    where: dict[str, str] = {}
    for stage in order:
        try:
            for batch in manifest_batches(str(run_dir), stage, columns=["source_key", "status"]):
                df = batch.to_pandas()
                df = df[df["status"] != "kept"]
                for key, status in zip(df["source_key"], df["status"]):
                    where.setdefault(key, f"{stage}:{status}")
        except (FileNotFoundError, OSError, ValueError):
            continue
    table: dict[str, dict[str, int]] = {}
    for key, k in kind_of.items():
        row = table.setdefault(k, {})
        fate = where.get(key, "kept to the end")
        row[fate] = row.get(fate, 0) + 1
    unknown = [k for k in where if k not in kind_of]
    if unknown:
        table["(not in ground truth)"] = {"rows": len(unknown)}
    # A planted pair is resolved when its copy or its original was dropped by a dedup stage.
    dedup = tuple(s for s in order if "dedup" in s)
    for k in ("image_exact_dup", "image_near_dup", "caption_exact_dup", "caption_near_dup"):
        pairs = truth[truth["kind"] == k]
        if len(pairs) and dedup:
            hit = sum(where.get(a, "").startswith(dedup) or where.get(b, "").startswith(dedup)
                      for a, b in zip(pairs["key"], pairs["dup_of"]))
            table[k][RESOLVED] = int(hit)
    return table


def _sampled(cmd: list[str], log_path: Path, interval: float) -> tuple[int, float, dict, str]:
    """Run ``cmd``, sampling its process tree; (rc, wall s, peak RSS MiB of the process, stdout)."""
    from bench.scale import TreeSampler

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid, t0, interval)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    log_path.write_text(out)
    peak = max((i.peak_rss for i in sampler.procs.values() if i.pid == proc.pid), default=0) / MIB
    return proc.returncode, wall, {"driver (loop process)": {"procs": 1, "peak_rss_mib": round(peak, 1)}}, out


# -- one mode ---------------------------------------------------------------------------------

def run_loop(shards: Path, work: Path, rows: int, input_bytes: int, interval: float) -> dict:
    out = work / "loop_out"
    shutil.rmtree(out, ignore_errors=True)
    rc, wall, roles, text = _sampled([sys.executable, str(Path(__file__).resolve()), "--_loop", str(shards), str(out)],
                                     work / "loop.log", interval)
    if rc != 0:
        raise RuntimeError(f"loop exited {rc}:\n{text[-2000:]}")
    res = json.loads(text.strip().splitlines()[-1])
    return {"rows": rows, "pipeline_s": res["seconds"], "wall_s": wall, "counts": res["counts"],
            "segments": {"loop": res["seconds"]}, "bytes_written": tree_bytes(out),
            "written_per_input_byte": tree_bytes(out) / input_bytes, "shuffle_bytes_per_row": {},
            "roles": roles, "out_dir": out}


CONFIGS = {"demo": "configs/demo.yaml", "caption2_cpu": "configs/caption2_cpu.yaml"}


def run_pipeline_mode(mode: str, shards: Path, work: Path, rows: int, input_bytes: int, interval: float,
                      truth: Path) -> dict:
    from bench.scale import _segments, run_one

    args = {"demo": [CONFIGS["demo"], "--input", str(shards), "--set", "sources.images.format=webdataset",
                     "--set", "shard.samples_per_shard=1000"],
            "caption2_cpu": [CONFIGS["caption2_cpu"], "--input", str(shards)]}[mode]
    global_stages = set(_global_stages(CONFIGS[mode]))
    run_dir = work / f"run_{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = run_one(mode, args, run_dir, rows, interval, work / f"{mode}.log")
    rec = r.record
    segs = {seg: secs for seg, (_, secs) in _segments(rec).items()}
    shuffles = {}
    for name in rec["order"]:
        st = rec["stages"][name]
        found = shuffle_stats(st.get("stats") or {})
        if "input_bytes_per_row" in st:  # what the global stage loads per row (Parquet footers): an upper bound
            found["loaded_bytes_per_row"] = st["input_bytes_per_row"]
        if name in global_stages or found:
            shuffles[name] = found or "n/a"
    written = tree_bytes(run_dir)
    shard = rec["stages"].get("shard", {}).get("counts") or {}
    return {"rows": rows, "pipeline_s": sum(segs.values()), "record_s": rec.get("seconds"), "wall_s": r.wall_s,
            "counts": {"in": (rec["stages"]["ingest"].get("counts") or {}).get("in"), "kept": shard.get("kept")},
            "segments": segs, "bytes_written": written, "written_per_input_byte": written / input_bytes,
            "shuffle_bytes_per_row": shuffles, "roles": r.roles, "driver_peak_mib": r.driver_peak_mib,
            "max_load": r.max_load, "planted": planted_outcome(run_dir, truth, rec["order"]), "out_dir": run_dir}


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kill_and_resume(mode: str, shards: Path, work: Path, reference: Path, wall_s: float, fraction: float,
                    drop_reference: bool = False) -> dict:
    """SIGKILL a run of ``mode`` (the driver and the local Ray it started) after ``fraction`` of the
    undisturbed run's wall time, rerun the same command to the end, and compare its shards (every
    file under ``shards/``, index and list included) with the undisturbed run's, byte for byte.
    ``drop_reference``: digest the undisturbed run's shards, then delete its run directory before
    the second run starts, so that a 1M-row corpus and one run's output are all the disk holds."""
    import signal

    from bench.scale import _sailcurate

    args = {"demo": [CONFIGS["demo"], "--input", str(shards), "--set", "sources.images.format=webdataset",
                     "--set", "shard.samples_per_shard=1000"],
            "caption2_cpu": [CONFIGS["caption2_cpu"], "--input", str(shards)]}[mode]
    run_dir = work / f"run_{mode}_killed"
    shutil.rmtree(run_dir, ignore_errors=True)
    a = _digests(reference / "shards")
    if drop_reference:
        shutil.rmtree(reference, ignore_errors=True)
    cmd = _sailcurate() + ["run"] + args + ["--out", str(run_dir)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    with open(work / f"{mode}_killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=wall_s * fraction)
            ended_early = True
        except subprocess.TimeoutExpired:
            ended_early = False
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = time.perf_counter() - t0
    segments_done = sorted(p.parent.name for p in (run_dir / "checkpoints").glob("*/_SUCCESS.json"))
    t1 = time.perf_counter()
    with open(work / f"{mode}_resumed.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True).returncode
    resumed_s = time.perf_counter() - t1
    if rc != 0:
        return {"error": f"resumed run exited {rc}; log {work / f'{mode}_resumed.log'}"}
    b = _digests(run_dir / "shards")
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    out = {"killed_after_s": round(killed_at, 1), "ended_before_the_kill": ended_early,
           "segments_complete_at_kill": segments_done, "resumed_s": round(resumed_s, 1),
           "shard_files": len(a), "identical": not differ, "differ": differ[:10]}
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


# -- report -----------------------------------------------------------------------------------

def _global_stages(config: str) -> list[str]:
    from pipeline.config import load_config
    from pipeline.graph import build_plan

    plan = build_plan(load_config(ROOT / config), {})
    return [n.name for seg in plan.segments if seg.mode == "global" for n in seg.nodes]


def print_mode(mode: str, res: dict, loop_rate: float | None) -> None:
    from bench.scale import _role_rank

    rate, e2e = res["rows"] / res["pipeline_s"], res["rows"] / res["wall_s"]
    if mode == "loop":
        vs, vs_e2e = "the baseline", "with interpreter start"
    elif loop_rate:
        vs, vs_e2e = f"{rate / loop_rate:.2f}x the loop", f"{e2e / loop_rate:.2f}x the loop"
    else:
        vs = vs_e2e = "no loop in this run"
    print(f"\n  {mode}: {res['rows']} rows; {res['pipeline_s']:.1f} s pipeline, {res['wall_s']:.1f} s wall; "
          f"{rate:.0f} rows/s ({vs}), end to end {e2e:.0f} rows/s ({vs_e2e}); counts {res['counts']}")
    print("    seconds per segment: " + ", ".join(f"{s} {v:.1f}" for s, v in res["segments"].items()))
    print(f"    bytes written {res['bytes_written'] / MIB:.1f} MiB = {res['written_per_input_byte']:.2f} per input byte")
    if res["shuffle_bytes_per_row"]:
        for stage, v in res["shuffle_bytes_per_row"].items():
            print(f"    shuffle, {stage}: {v if v != 'n/a' else 'n/a (run.json stats record no shuffle bytes)'}")
    elif mode != "loop":
        print("    shuffle: no global stage recorded")
    print("    peak RSS per role: " + "; ".join(
        f"{role} {v['peak_rss_mib']:.0f} MiB ({v['procs']} proc)"
        for role, v in sorted(res["roles"].items(), key=lambda kv: (_role_rank(kv[0]), kv[0]))))
    if res.get("planted"):
        print("    planted kinds -> fate (stage:status, from the manifests):")
        for kind, fates in sorted(res["planted"].items()):
            fates = dict(fates)
            resolved = fates.pop(RESOLVED, None)
            print(f"      {kind:<18} " + ", ".join(f"{f} {n}" for f, n in sorted(fates.items(), key=lambda kv: -kv[1]))
                  + (f"; {RESOLVED}: {resolved}/{sum(fates.values())}" if resolved is not None else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="corpus rows (repeatable); default 100000")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scale_cpu"))
    ap.add_argument("--only", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-tar", type=int, default=None,
                    help="rows per input tar (default: 10000 as img2dataset from 100k rows, 1000 below, so "
                         "small corpora still have a tar per core)")
    ap.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--keep-runs", action="store_true", help="keep run directories (default: measured, then removed)")
    ap.add_argument("--kill-at", type=float, default=None, metavar="FRACTION",
                    help="also SIGKILL a second run of each pipeline mode after FRACTION of the first run's wall "
                         "time (e.g. 0.5), resume it, and compare its shards byte for byte with the first run's")
    ap.add_argument("--_loop", nargs=2, metavar=("SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._loop:
        res = loop(Path(args._loop[0]), Path(args._loop[1]))
        print(json.dumps(res))
        return 0

    import psutil

    from bench import synth_corpus

    modes = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--only: unknown mode(s) {bad}; choose from {MODES}")
    sizes = sorted(set(args.rows or [100_000]))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}; load average before: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    for config in CONFIGS.values():
        print(f"global stages of {config}: {', '.join(_global_stages(config)) or 'none'}")
    summary: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                 "mem_gib": round(psutil.virtual_memory().total / 2**30, 1)},
                     "modes": modes, "seed": args.seed, "sizes": {}}
    for n in sizes:
        per_tar = args.samples_per_tar or (10_000 if n >= 100_000 else 1000)
        work = out / f"n{n}"
        corpus_dir = out / f"corpus_{n}_seed{args.seed}_tar{per_tar}"
        print(f"\n== {n} rows ({per_tar} per tar)", flush=True)
        build = synth_corpus.build(corpus_dir, n, args.seed, per_tar, args.build_workers)
        reused = build.pop("reused", False)
        input_bytes = build["tar_bytes"]
        print(f"  corpus {corpus_dir}: {build['tars']} tars, {input_bytes / MIB:.1f} MiB "
              f"({input_bytes / n / 1024:.1f} KiB a row); built in {build['seconds']:.1f} s with {build['workers']} "
              f"workers ({n / build['seconds']:.0f} rows/s){' (reused)' if reused else ''}; kinds {build['counts']}")
        free = shutil.disk_usage(out).free
        if free < 1.5 * input_bytes:
            print(f"  WARNING: {free / 2**30:.1f} GiB free under {out}, under 1.5x the corpus: a run writes its shards "
                  f"(about the corpus's size) plus checkpoints and manifests, one run at a time")
        work.mkdir(parents=True, exist_ok=True)
        shards = Path(build["shards"])
        truth = corpus_dir / "ground_truth.parquet"
        results: dict = {"build": build}
        loop_rate = None
        for mode in modes:
            print(f"  -- {mode} ...", flush=True)
            try:
                if mode == "loop":
                    res = run_loop(shards, work, n, input_bytes, args.interval)
                    loop_rate = n / res["pipeline_s"]
                else:
                    res = run_pipeline_mode(mode, shards, work, n, input_bytes, args.interval, truth)
            except Exception as e:  # another mode may still run; the error is a figure too
                print(f"  {mode} FAILED: {type(e).__name__}: {str(e)[-3000:]}", flush=True)
                results[mode] = {"error": f"{type(e).__name__}: {e}"[-5000:]}
                continue
            print_mode(mode, res, loop_rate if mode != "loop" else None)
            if args.kill_at and mode != "loop":
                kr = kill_and_resume(mode, shards, work, Path(res["out_dir"]), res["wall_s"], args.kill_at,
                                     drop_reference=not args.keep_runs)
                res["kill_and_resume"] = kr
                print(f"    SIGKILL at {args.kill_at:g} of the wall time, then resumed: {kr}", flush=True)
            if not args.keep_runs:
                shutil.rmtree(res["out_dir"], ignore_errors=True)
            res["out_dir"] = str(res["out_dir"])
            results[mode] = res
        summary["sizes"][str(n)] = results
    if len(sizes) > 1:
        a, b = sizes[-2], sizes[-1]
        print(f"\n== marginal cost between {a} and {b} rows, and a linear estimate at 1,000,000 rows")
        for mode in modes:
            ra, rb = summary["sizes"][str(a)].get(mode, {}), summary["sizes"][str(b)].get(mode, {})
            if "pipeline_s" not in ra or "pipeline_s" not in rb:
                continue
            per_row = (rb["pipeline_s"] - ra["pipeline_s"]) / (b - a)
            est = rb["pipeline_s"] + per_row * (1_000_000 - b)
            print(f"  {mode}: {per_row * 1e3:.2f} ms a row marginal ({1 / per_row if per_row > 0 else float('inf'):.0f} rows/s); "
                  f"time per row {ra['pipeline_s'] / a * 1e3:.2f} -> {rb['pipeline_s'] / b * 1e3:.2f} ms; "
                  f"estimate at 1M: {est / 60:.0f} min pipeline time")
            summary.setdefault("estimate_1m_s", {})[mode] = round(est, 1)
    summary["load_after"] = os.getloadavg()
    (out / "scale_cpu.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nwritten: {out / 'scale_cpu.json'}; load average after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    if max(os.getloadavg()) > 2 * (os.cpu_count() or 1):
        print("WARNING: the load average is above twice the cores: the seconds measure the other load as much as "
              "the pipelines; counts, bytes and memory do not depend on it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
