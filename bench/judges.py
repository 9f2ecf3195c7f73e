"""Judge stages vs the bare model on the same inputs: how much does the stage cost?

Two measurements, each printed with its baseline from the same run:

* clip: ``ClipScoreStage`` (JPEG bytes -> PIL draft decode -> preprocess -> image and text
  towers -> cosine) against the bare image tower ``model.encode_image`` on tensors that were
  decoded and preprocessed before the clock started (the number a model card quotes).
* judge: ``JudgeStage`` with the transformers engine (image downscale, rubric prompts for VIR
  and ITA, generation, strict parsing) against ``HFEngine.generate`` on the very same requests,
  built before the clock started.

Both stages run through ``StageCall``, the wrapper the runner's Ray actors execute, so the
figure is the per-actor overhead of our code; Ray Data's pipelining around it is measured by
bench/pipeline_overhead.py. On a GPU machine the defaults are real-size random-weight models
(open_clip ViT-L-14; a Qwen2-VL-2B-shaped model built locally, no download); on a CPU the tiny
models. Never asserts on time.

    python bench/judges.py [--images N] [--clip-batch B] [--judge-batch B] [--size tiny|2b]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _jpegs(n: int, size=(640, 480)) -> list[bytes]:
    """Real photos shipped with scikit-image, resized to a typical web size and JPEG-encoded."""
    import skimage
    from PIL import Image

    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
    base = []
    for name in names:
        im = Image.open(data / name).convert("RGB").resize(size)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        base.append(buf.getvalue())
    return [base[i % len(base)] for i in range(n)]


def _captions(n: int) -> list[str]:
    lines = [json.loads(x)["caption"] for x in (ROOT / "data" / "demo" / "captions.jsonl").read_text().splitlines()[:-1]]
    return [lines[i % len(lines)] for i in range(n)]


def _frame(images, captions):
    import pandas as pd

    n = len(images)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "source": "bench", "source_key": [str(i) for i in range(n)],
                         "status": "kept", "reason": None, "_chunk": "bench-000000", "_decided_at": None,
                         "text": captions, "image": images})


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_clip(args, device, tiny):
    import open_clip
    import torch
    from PIL import Image

    from pipeline.execution import StageCall
    from stages.clip import ClipScoreStage

    if args.size == "tiny":
        from judges.tiny_models import TINY_CLIP, TINY_CLIP_MODEL_NAME

        clip = {"model": TINY_CLIP_MODEL_NAME, "config_dir": str(tiny[TINY_CLIP]),
                "pretrained": str(tiny[TINY_CLIP] / "open_clip_model.safetensors")}
    else:
        clip = {"model": args.clip_model, "pretrained": None}
    clip.update(device=device, precision="bf16" if device == "cuda" else "fp32")
    images, captions = _jpegs(args.images), _captions(args.images)

    # bare image tower on pre-decoded tensors
    if clip.get("config_dir"):
        open_clip.add_model_config(clip["config_dir"])
    model, _, preprocess = open_clip.create_model_and_transforms(clip["model"], pretrained=clip["pretrained"],
                                                                 device=device, precision=clip["precision"])
    model.eval()
    tensors = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    b = args.clip_batch
    with torch.no_grad(), torch.autocast(device, enabled=device == "cuda"):
        model.encode_image(tensors[:b].to(device))
        _sync(device)
        t0 = time.perf_counter()
        for s in range(0, len(tensors), b):
            model.encode_image(tensors[s:s + b].to(device, non_blocking=True))
        _sync(device)
        bare_s = time.perf_counter() - t0
    del model
    # the stage, from JPEG bytes, with each decode path
    n = len(images)
    variants = {"pil_1_thread": {"decode_threads": 1}, f"pil_{os.cpu_count()}_threads": {"decode_threads": os.cpu_count()}}
    if device == "cuda":
        variants["nvjpeg_gpu"] = {"gpu_decode": True}
    df = _frame(images, captions)
    result = {"model": clip["model"], "images": n, "batch": b, "bare_img_s": n / bare_s, "stage": {}}
    for label, extra in variants.items():
        stage = ClipScoreStage(ClipScoreStage.Params(clip={**clip, **extra}), "clip_score")
        call = StageCall("clip_score", stage.params.model_dump(mode="json"), "clip_score", None, stage.output_columns())
        call.stage.engine.batch_size = b
        call(df.iloc[:b].copy())
        t0 = time.perf_counter()
        kept = 0
        for s in range(0, len(df), b):
            kept += call(df.iloc[s:s + b].copy()).column("status").to_pylist().count("kept")
        _sync(device)
        stage_s = time.perf_counter() - t0
        result["stage"][label] = {"img_s": n / stage_s, "stage_over_bare": bare_s / stage_s, "rows_kept": kept}
        call.stage.engine.close()
    return result


def bench_judge(args, device, tiny, workdir: Path):
    from judges.engines.base import Sampling
    from judges.engines.hf_engine import HFEngine
    from judges.rubric import load_rubric
    from pipeline.execution import StageCall
    from stages.judge import JudgeStage, shrink_image

    if args.size == "tiny":
        from judges.tiny_models import TINY_QWEN2VL

        model_path = str(tiny[TINY_QWEN2VL])
    else:
        from judges.tiny_models import QWEN2VL_2B_PIXELS, QWEN2VL_2B_TEXT, QWEN2VL_2B_VISION, build_tiny_qwen2vl

        t0 = time.perf_counter()
        model_path = str(build_tiny_qwen2vl(workdir / "qwen2vl-2b", text=QWEN2VL_2B_TEXT, vision=QWEN2VL_2B_VISION,
                                            pixels=QWEN2VL_2B_PIXELS, init_device=device if device == "cuda" else None))
        print(f"built a random Qwen2-VL-2B-shaped model in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    n = args.judge_images
    images, captions = _jpegs(n), _captions(n)
    rubrics = [load_rubric("vir_score"), load_rubric("ita_score")]
    engine_cfg = {"kind": "hf", "model": model_path, "device": device, "batch_size": args.judge_batch}
    # bare engine on the same requests the stage sends (built before the clock)
    requests = []
    for img, cap in zip(images, captions):
        small = (shrink_image(img, 448),)
        for r in rubrics:
            requests.append(r.build_request({"caption": cap}, images=small, sampling=Sampling(max_tokens=r.max_tokens)))
    engine = HFEngine(model_path, device=device, batch_size=args.judge_batch)
    engine.setup()
    engine.generate(requests[: args.judge_batch])
    _sync(device)
    t0 = time.perf_counter()
    results = engine.generate(requests)
    _sync(device)
    bare_s = time.perf_counter() - t0
    prompt_tokens = sum(r.prompt_tokens for r in results) / max(1, len(results))
    engine.close()
    del engine
    stage = JudgeStage(JudgeStage.Params(engine=engine_cfg, rubrics=["vir_score", "ita_score"]), "judge")
    call = StageCall("judge", stage.params.model_dump(mode="json"), "judge", None, stage.output_columns())
    df = _frame(images, captions)
    b = args.judge_batch // 2 or 1  # two rubric requests per row
    call(df.iloc[:b].copy())
    t0 = time.perf_counter()
    for s in range(0, len(df), b):
        call(df.iloc[s:s + b].copy())
    _sync(device)
    stage_s = time.perf_counter() - t0
    return {"model": "qwen2vl-" + args.size, "samples": n, "requests": len(requests), "batch_requests": args.judge_batch,
            "mean_prompt_tokens": round(prompt_tokens, 1), "bare_samples_s": n / bare_s, "stage_samples_s": n / stage_s,
            "stage_over_bare": (n / stage_s) / (n / bare_s)}


def bench_runner(args, device, workdir: Path, stage_yaml: str, n: int, label: str) -> dict | None:
    """The same stage through the whole runner (Ray Data, checkpoints, manifests): ingest from a
    Parquet of JPEG bytes and captions, then the stage. Ray start-up is excluded."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import load_config
    from pipeline.runner import RunOptions, ensure_ray, run_pipeline

    src = workdir / f"{label}.parquet"
    pq.write_table(pa.table({"key": [str(i) for i in range(n)], "text": _captions(n), "image": _jpegs(n)}), src,
                   row_group_size=max(1, n // 8))
    cfg = workdir / f"{label}.yaml"
    cfg.write_text(f"""
name: bench_{label}
sources:
  b: {{path: {src}, format: parquet, image_column: image, text_column: text, key_column: key}}
stages:
  - {{name: ingest, kind: ingest, source: b, chunk_rows: {max(1, n // 8)}}}
{stage_yaml}
""")
    ensure_ray()
    t0 = time.perf_counter()
    record = run_pipeline(load_config(cfg), RunOptions(run_dir=str(workdir / f"run_{label}"), log=lambda m: None))
    seconds = time.perf_counter() - t0
    last = record["stages"][list(record["stages"])[-1]]
    counts = last["counts"]
    # the stage's actors: setup (model load), busy inside the stage, and the share of their time
    # after setup spent waiting for input (is the GPU fed?); pipeline/actor_timing.py
    return {"rows_s": n / seconds, "seconds": seconds, "kept": counts["kept"], "error": counts["error"],
            "actors": last.get("actors")}


def _actors_line(r: dict) -> str:
    a = r.get("actors") or {}
    if not a:
        return ""
    return (f"\n      its actors: {a['actors']} | setup {a['setup_s_max']:.1f} s | busy {a['busy_s']:.1f} s of "
            f"{a['span_s']:.1f} s after setup | waiting for input {a['waiting_share']:.0%} "
            f"(first batch after {a['first_batch_wait_s_max']:.1f} s)")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="images for the clip bench")
    ap.add_argument("--judge-images", type=int, default=None, help="samples for the judge bench (2 rubric requests each)")
    ap.add_argument("--clip-batch", type=int, default=None)
    ap.add_argument("--judge-batch", type=int, default=None, help="requests per generate call")
    ap.add_argument("--size", choices=["tiny", "2b"], default=None, help="default: 2b on GPU, tiny on CPU")
    ap.add_argument("--clip-model", default="ViT-L-14")
    ap.add_argument("--skip-judge", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    args.size = args.size or ("2b" if gpu else "tiny")
    args.images = args.images or (4096 if gpu else 256)
    args.judge_images = args.judge_images or (256 if gpu else 16)
    args.clip_batch = args.clip_batch or (256 if gpu else 64)
    args.judge_batch = args.judge_batch or (32 if gpu else 8)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine()
    tiny = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.size == "tiny":
            from judges.tiny_models import build_all

            tiny = build_all(Path(tmp) / "tiny")
        out = {"bench": "judges", "device": device, "machine": machine, "torch": torch.__version__, "size": args.size,
               "clip": bench_clip(args, device, tiny)}
        c = out["clip"]
        clip_cfg = json.dumps({"model": c["model"], **({"config_dir": str(tiny["tiny-clip"]), "pretrained":
                               str(tiny["tiny-clip"] / "open_clip_model.safetensors")} if args.size == "tiny" else {"pretrained": None})})
        c["runner"] = bench_runner(args, device, Path(tmp), f"""  - name: clip_score
    kind: clip_score
    clip: {clip_cfg}
    resources: {{batch_size: {args.clip_batch}, num_gpus: {1 if gpu else 0}}}
    checkpoint: true""", args.images, "clip")
        print(f"clip  {c['model']}: bare image tower {c['bare_img_s']:.1f} img/s (pre-decoded tensors, batch {c['batch']})")
        if c["runner"]:
            r = c["runner"]
            print(f"      ingest + clip_score through the runner: {r['rows_s']:9.1f} img/s | runner/bare "
                  f"{r['rows_s'] / c['bare_img_s']:.2f}{_actors_line(r)}")
        for label, v in c["stage"].items():
            print(f"      clip_score stage from JPEG, {label:>16}: {v['img_s']:9.1f} img/s | stage/bare {v['stage_over_bare']:.2f}")
        if not args.skip_judge:
            out["judge"] = bench_judge(args, device, tiny, Path(tmp))
            j = out["judge"]
            model = str(tiny["tiny-qwen2vl"]) if args.size == "tiny" else str(Path(tmp) / "qwen2vl-2b")
            j["runner"] = bench_runner(args, device, Path(tmp), f"""  - name: judge
    kind: judge
    rubrics: [vir_score, ita_score]
    engine: {{kind: hf, model: {model}, device: {device}, batch_size: {args.judge_batch}}}
    resources: {{batch_size: {max(1, args.judge_batch // 2)}, num_gpus: {1 if gpu else 0}}}
    checkpoint: true""", args.judge_images, "judge")
            print(f"judge {j['model']:>22}  bare hf engine {j['bare_samples_s']:9.2f} samples/s | judge stage (VIR+ITA) "
                  f"{j['stage_samples_s']:9.2f} samples/s | stage/bare {j['stage_over_bare']:.2f} "
                  f"({j['mean_prompt_tokens']} prompt tokens/request)")
            if j["runner"]:
                print(f"      ingest + judge through the runner: {j['runner']['rows_s']:9.2f} samples/s | runner/bare "
                      f"{j['runner']['rows_s'] / j['bare_samples_s']:.2f} (includes loading the model in the actor)"
                      f"{_actors_line(j['runner'])}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
