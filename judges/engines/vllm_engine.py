"""Offline vLLM engine: one `vllm.LLM` per actor, one batched `LLM.chat` call per batch.

Each JudgeRequest becomes an OpenAI-style conversation: the system (rubric) text, then one user
message whose content lists the images first (as `image_url` data URLs) and the sample's text last,
so requests on the same rubric share a prefix and vLLM's prefix cache reuses it. A request with a
`json_schema` gets structured output (`StructuredOutputsParams(json=...)`); the engine is built with
the xgrammar backend and `disable_any_whitespace=True`, so answers are compact JSON (a weak or
random model otherwise pads JSON with whitespace until it runs out of tokens).

Scripts that create this engine must guard their entry point with `if __name__ == "__main__":`
(vLLM starts worker processes). On CPU export `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from judges.engines.base import (  # noqa: F401 - chat_messages/image_data_url re-exported for callers
    JudgeRequest, JudgeResult, ModelNotFound, chat_messages, image_data_url, release_accelerator_memory,
)

_TINY_HINT = "`sailcurate tiny-models` (or `python -m judges.tiny_models DIR`) builds small local test models"


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(model: str) -> bool:
    """True when `model` can only be a filesystem path (a hub id is `name` or `org/name`)."""
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or os.path.isabs(model)
    )


def resolve_model(model: str) -> str:
    """A local folder (returned absolute) or a hub id that can be loaded now; else ModelNotFound.

    A hub id is checked by fetching its `config.json` through huggingface_hub: from the local cache
    first, then (unless HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set) from the hub, which also fills
    the cache. Without network the hub id must already be cached.
    """
    if not model or not str(model).strip():
        raise ModelNotFound("no model given: pass a local model folder or a hub id such as 'Qwen/Qwen2-VL-2B-Instruct'")
    model = str(model)
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFound(f"model {model!r} is a file, not a model folder (config.json, weights, tokenizer)")
        if not (local / "config.json").is_file():
            raise ModelNotFound(
                f"model folder {model!r} has no config.json: point to a folder saved with "
                f"`save_pretrained` (config, weights, tokenizer), or use a hub id; {_TINY_HINT}")
        return str(local.resolve())
    how = (f"give a local model folder that exists, or a hub id reachable with network "
           f"(or already in the Hugging Face cache when HF_HUB_OFFLINE=1); {_TINY_HINT}")
    if _looks_like_path(model):
        raise ModelNotFound(f"model {model!r} not found: no such local folder; {how}")
    offline = _hub_offline()
    from huggingface_hub import hf_hub_download

    try:  # cached already: no network round trip (and no retries when there is no network)
        hf_hub_download(model, "config.json", local_files_only=True)
        return model
    except Exception:
        pass
    try:
        if offline:
            raise LookupError("not in the local cache")
        hf_hub_download(model, "config.json")
    except Exception as e:  # not cached offline, no network, unknown or gated repo, bad id
        state = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
            f"the hub did not serve it ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        raise ModelNotFound(f"model {model!r} not found: it is not a local folder and {state}; {how}") from e
    return model


class VLLMEngine:
    """vLLM offline inference behind the Engine interface (see module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        max_images: int = 8,
        seed: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.enable_prefix_caching = enable_prefix_caching
        self.max_images = max_images
        self.seed = seed
        self.extra = dict(extra or {})
        self._llm = None
        self._multimodal = False
        self.resolved_model: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments given to `vllm.LLM` (after `extra`, which overrides them)."""
        kwargs: dict[str, Any] = dict(
            model=self.resolved_model or self.model,
            max_model_len=self.max_model_len,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype,
            enable_prefix_caching=self.enable_prefix_caching,
            seed=self.seed,
            # Ignored by text-only models. Video frames arrive as images, so no video budget.
            limit_mm_per_prompt={"image": self.max_images, "video": 0},
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        kwargs.update(self.extra)
        return kwargs

    def setup(self) -> None:
        if self._llm is not None:
            return
        self.resolved_model = resolve_model(self.model)
        from vllm import LLM

        self._llm = LLM(**self.engine_kwargs())
        self._multimodal = bool(self._llm.model_config.is_multimodal_model)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        try:
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm, engine, core
            release_accelerator_memory()

    def __enter__(self) -> "VLLMEngine":
        self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inference -----------------------------------------------------------------------------
    def sampling_params(self, req: JudgeRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = req.sampling
        structured = StructuredOutputsParams(json=req.json_schema) if req.json_schema is not None else None
        # vLLM's CPU backend crashes the engine on a per-request seed when sampling ("CPU Generator
        # does not use offset"); there the engine-level seed (set in setup) keeps runs reproducible.
        seed = s.seed if (s.temperature == 0 or not _on_cpu()) else None
        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=seed,
            structured_outputs=structured,
        )

    def _chat(self, reqs: list[JudgeRequest]) -> list[JudgeResult]:
        """One batched `LLM.chat` call; latency_s is the call's wall time, shared by its requests."""
        conversations = [chat_messages(r) for r in reqs]
        params = [self.sampling_params(r) for r in reqs]
        t0 = time.perf_counter()
        outputs = self._llm.chat(conversations, sampling_params=params, use_tqdm=False)
        latency = time.perf_counter() - t0
        if len(outputs) != len(reqs):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(reqs)} requests")
        results = []
        for out in outputs:
            comp = out.outputs[0] if out.outputs else None
            results.append(JudgeResult(
                text=comp.text if comp is not None else None,
                error=None if comp is not None else "no completion",
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(comp.token_ids) if comp is not None else 0,
                latency_s=latency,
            ))
        return results

    def generate(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        """One result per request, in order, from one batched `LLM.chat` call.

        Requests the model cannot take (images for a text-only model, more than max_images) get an
        error result without reaching vLLM. Raises only when the whole batch fails."""
        if self._llm is None:
            raise RuntimeError("VLLMEngine.generate called before setup()")
        results: list[JudgeResult | None] = [None] * len(requests)
        batch_idx: list[int] = []
        for i, req in enumerate(requests):
            if req.images and not self._multimodal:
                results[i] = JudgeResult(text=None, error=f"model {self.model!r} does not take images")
            elif len(req.images) > self.max_images:
                results[i] = JudgeResult(
                    text=None, error=f"{len(req.images)} images > max_images={self.max_images}")
            else:
                batch_idx.append(i)
        if batch_idx:
            try:
                done = self._chat([requests[i] for i in batch_idx])
            except Exception as batch_error:
                if len(batch_idx) == 1:
                    raise
                # One bad request (an undecodable image, a prompt longer than max_model_len) fails
                # the whole `LLM.chat` call; vLLM aborts what it had queued. Run the requests one
                # by one to isolate it; if every one fails, the batch as a whole failed: raise.
                done = []
                for i in batch_idx:
                    try:
                        done.extend(self._chat([requests[i]]))
                    except Exception as e:
                        done.append(JudgeResult(text=None, error=f"{type(e).__name__}: {e}"[:2000]))
                if all(r.error is not None for r in done):
                    raise batch_error
            for i, res in zip(batch_idx, done):
                results[i] = res
        return [r for r in results if r is not None]


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
