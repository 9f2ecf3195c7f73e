"""Tiny, randomly initialised models built locally from configs, for tests and offline demos.

Nothing is downloaded. Each builder writes an ordinary folder that the real loading code reads:

- ``build_tiny_qwen2(out)``: a Qwen2ForCausalLM (hidden 128, 2 layers, 2 heads of head_dim 64,
  vocab ~2k) that transformers (AutoModelForCausalLM) and vLLM load.
- ``build_tiny_qwen2vl(out)``: a Qwen2VLForConditionalGeneration with a 2-block vision tower,
  plus the processor files (image processor, video processor, chat template) so AutoProcessor
  and vLLM's multimodal path work. Images are resized to at most 112x112 px (16 image tokens).
- ``build_tiny_clip(out)``: an open_clip custom model (tiny ViT + tiny text transformer). The
  folder holds ``open_clip_config.json`` (load with ``"local-dir:<folder>"``), the bare model
  config ``sailcurate-tiny-clip.json`` (register it with :func:`register_tiny_clip`, then
  ``open_clip.create_model_and_transforms("sailcurate-tiny-clip", pretrained=<folder>/
  open_clip_model.safetensors)``) and the weights. The text tower uses open_clip's
  ``SimpleTokenizer``, whose BPE file ships inside the open_clip package (no download); that
  fixes the text vocabulary at 49408, so the token embedding is the biggest tensor (kept small by
  a text width of 32 and fp16 storage).

The two language models share one byte-level BPE tokenizer trained in-process with ``tokenizers``
on a small synthetic corpus (English words, digits, JSON), wrapped as a transformers
``PreTrainedTokenizerFast`` with Qwen's special tokens and the Qwen2-VL chat template.

``build_all(cache_dir)`` builds all three, deterministically (seeded), and is idempotent: a folder
counts as built only when its marker file, written last, names the current builder version;
builds go to a temporary folder that is renamed into place.

Command line: ``python -m judges.tiny_models CACHE_DIR`` prints the built paths as JSON.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

BUILDER_VERSION = 1
MARKER = ".sailcurate-tiny-model.json"
SEED = 0

TINY_QWEN2 = "tiny-qwen2"
TINY_QWEN2VL = "tiny-qwen2vl"
TINY_CLIP = "tiny-clip"
TINY_CLIP_MODEL_NAME = "sailcurate-tiny-clip"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
BPE_VOCAB_SIZE = 2048
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-VL's own chat template: string or OpenAI-style list content; an image part (type image,
# or an `image`/`image_url` key) becomes <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an of and to in is on for with as by at from that this it are be was or not image photo "
    "picture caption text describe description question answer score rating quality relevance "
    "informative aligned alignment visual content object objects scene person people man woman "
    "child dog cat car street building sky tree water table food red green blue white black small "
    "large left right top bottom front behind near holding wearing sitting standing walking "
    "rubric criteria output json only integer between reason reasons rationale category label "
    "true false null yes no video frame frames instruction response correct incorrect refuse "
    "system user assistant you your please rate following sample on scale from one five"
).split()
_JSON_KEYS = ("score", "reason", "rationale", "category", "answer", "label", "vir", "ita", "valid")


def _corpus(n_lines: int = 3000, seed: int = SEED) -> list[str]:
    """A small deterministic corpus: word salad, numbers, and JSON objects of the kind judges emit."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 3
        if kind == 0:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
            lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":"]))
        elif kind == 1:
            obj = {}
            for key in rng.sample(_JSON_KEYS, rng.randint(1, 3)):
                obj[key] = rng.choice([
                    rng.randint(-1, 10), rng.random(), rng.choice([True, False, None]),
                    " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5))),
                ])
            lines.append(json.dumps(obj, separators=(",", ":") if rng.random() < 0.5 else None))
        else:
            lines.append(f"{rng.randint(0, 99999)} {rng.random():.4f} [{rng.randint(0, 9)}, {{}}] (x) -> #{i}")
    return lines


def build_tokenizer(out_dir: str | Path | None = None, *, seed: int = SEED):
    """Train the shared byte-level BPE and wrap it as a PreTrainedTokenizerFast (saved when out_dir)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # The same normaliser and pre-tokeniser as transformers' Qwen2Tokenizer, which transformers
    # substitutes for the saved pipeline when a folder's model_type is qwen2: the tokenisation
    # must not depend on which class loads the folder.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def _vocab_size(tokenizer) -> int:
    n = len(tokenizer)
    return (n + 63) // 64 * 64


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _write_generation_config(out: Path, ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    ).save_pretrained(str(out))


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_qwen2(out_dir: str | Path, *, seed: int = SEED) -> Path:
    """A random Qwen2ForCausalLM: hidden 128, 2 layers, 2 heads of head_dim 64, tied embeddings."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, seed=seed)
    ids = _token_ids(tokenizer)
    config = Qwen2Config(
        vocab_size=_vocab_size(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="bfloat16",
    )
    _seed_all(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out))
    _write_generation_config(out, ids)
    return out


# Qwen2-VL-2B's shape (text and vision towers), for benchmarks on random weights of real size.
QWEN2VL_2B_TEXT = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2,
                   "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1_000_000.0}}
QWEN2VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4}
QWEN2VL_2B_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 448 * 448}


def build_tiny_qwen2vl(out_dir: str | Path, *, seed: int = SEED, text: dict | None = None, vision: dict | None = None,
                       pixels: dict | None = None, init_device: str | None = None) -> Path:
    """A random Qwen2VLForConditionalGeneration with a tiny vision tower and its processor files.

    ``text``/``vision``/``pixels`` override the tiny shape (e.g. QWEN2VL_2B_* for a real-size
    random model in benchmarks); ``init_device="cuda"`` initialises the weights on a GPU (fast)."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(None, seed=seed)
    ids = _token_ids(tokenizer)
    hidden = 128
    head_dim = 64
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": _vocab_size(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            # M-RoPE splits head_dim/2 = 32 rotary pairs over (time, height, width).
            "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12],
                                "rope_theta": 1_000_000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
            "dtype": "bfloat16",
        },
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": hidden,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    if text or vision:
        cfg = config.to_dict()
        cfg["text_config"].pop("layer_types", None)  # derived from the layer count; rebuilt by the config
        cfg["text_config"].update(text or {})
        cfg["vision_config"].update(vision or {})
        config = Qwen2VLConfig(**cfg)
    else:
        assert hidden // config.text_config.num_attention_heads == head_dim
    _seed_all(seed)
    if init_device:
        with torch.device(init_device):
            model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
        model = model.to("cpu")
    else:
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(str(out))
    _write_generation_config(out, ids)

    pixels = pixels or {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels, patch_size=14, temporal_patch_size=2, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(**pixels, patch_size=14, temporal_patch_size=2, merge_size=2),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(out))
    return out


def tiny_clip_model_cfg() -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def build_tiny_clip(out_dir: str | Path, *, seed: int = SEED) -> Path:
    """A random open_clip CLIP (ViT 64 px, 2 layers; text 2 layers, width 32), fp16 weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_clip_model_cfg()
    preprocess_cfg = {
        "size": model_cfg["vision_cfg"]["image_size"],
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (out / f"{TINY_CLIP_MODEL_NAME}.json").write_text(json.dumps(model_cfg, indent=2))
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
    _seed_all(seed)
    model = open_clip.CLIP(**model_cfg)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out


def register_tiny_clip(path: str | Path) -> str:
    """Register the tiny CLIP's model config with open_clip; returns the model name to create it by."""
    import open_clip

    cfg = Path(path) / f"{TINY_CLIP_MODEL_NAME}.json"
    if TINY_CLIP_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(cfg)
    return TINY_CLIP_MODEL_NAME


_BUILDERS = {
    TINY_QWEN2: build_tiny_qwen2,
    TINY_QWEN2VL: build_tiny_qwen2vl,
    TINY_CLIP: build_tiny_clip,
}


def is_built(path: str | Path) -> bool:
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text()).get("version") == BUILDER_VERSION
    except (OSError, ValueError):
        return False


def build_all(cache_dir: str | Path, *, seed: int = SEED) -> dict[str, Path]:
    """Build the tiny models under cache_dir (skipping those already built); name -> folder."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, builder in _BUILDERS.items():
        final = cache / name
        if not is_built(final):
            tmp = cache / f".{name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            builder(tmp, seed=seed)
            (tmp / MARKER).write_text(json.dumps({"name": name, "version": BUILDER_VERSION, "seed": seed}))
            if final.exists():
                shutil.rmtree(final)
            try:
                os.replace(tmp, final)
            except OSError:  # another process won the race: keep its build if complete
                shutil.rmtree(tmp, ignore_errors=True)
                if not is_built(final):
                    raise
        paths[name] = final
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m judges.tiny_models CACHE_DIR", file=sys.stderr)
        return 2
    built = build_all(argv[0])
    print(json.dumps({k: str(v) for k, v in built.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
