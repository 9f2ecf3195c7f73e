"""--smoke gives every tiny vLLM engine a KV cache sized in bytes, so a smoke run needs no
VLLM_CPU_KVCACHE_SPACE: without one, vLLM-CPU takes gpu_memory_utilization (0.3) as a share of
host RAM per engine (7 GiB of 24) and refuses to start when that much is not free."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import ROOT
from judges.config import EngineConfig, make_engine
from judges.tiny_models import TINY_QWEN2, TINY_QWEN2VL
from pipeline.config import load_config
from pipeline.smoke import SMOKE_KV_CACHE_BYTES, apply_smoke, tiny_model_cache


def engine_configs(config) -> list[tuple[str, EngineConfig]]:
    return [(f"{s.name}.{field}", value) for s in config.stages for field, value in s.params
            if isinstance(value, EngineConfig)]


def kv_bytes_per_token(model_dir: Path) -> int:
    """K and V of every layer for one token, in bf16 (what the tiny models are saved in)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2


def test_every_engine_of_every_shipped_config_gets_the_smoke_kv_cache_bytes():
    seen = 0
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for where, engine in engine_configs(load_config(path, smoke=True)):
            assert engine.kind == "vllm", where  # openai engines run locally in smoke runs
            assert engine.kv_cache_memory_bytes == SMOKE_KV_CACHE_BYTES, (path.name, where)
            # ... and reaches vllm.LLM through the engine's keyword arguments
            assert make_engine(engine).engine_kwargs()["kv_cache_memory_bytes"] == SMOKE_KV_CACHE_BYTES
            seen += 1
    assert seen >= 10


def test_the_smoke_kv_cache_replaces_a_size_meant_for_the_real_model(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "demo_judge.yaml").read_text())
    judge = next(s for s in raw["stages"] if s["name"] == "judge")
    judge["engine"]["kv_cache_memory_bytes"] = 40 * 2**30  # sized for Qwen2.5-VL-7B on a GPU
    apply_smoke(raw, limit=None)
    assert judge["engine"]["kv_cache_memory_bytes"] == SMOKE_KV_CACHE_BYTES


def test_the_smoke_kv_cache_holds_many_sequences_of_the_smoke_max_model_len():
    # vLLM refuses to start when one max_model_len sequence does not fit in the KV cache.
    cache = tiny_model_cache()
    apply_smoke({"stages": []}, limit=None, cache=cache)  # builds the tiny models when missing
    for name in (TINY_QWEN2, TINY_QWEN2VL):
        tokens = SMOKE_KV_CACHE_BYTES // kv_bytes_per_token(cache / name)
        assert tokens >= 16 * 4096, (name, tokens)  # 4096: the longest max_model_len --smoke leaves
