"""transformers engine: CPU-capable, batched `generate`, no server and no vLLM.

A vision-language model (a config with a `vision_config`, or a model type that
AutoModelForImageTextToText knows) loads with AutoModelForImageTextToText and AutoProcessor; any other
model with AutoModelForCausalLM and AutoTokenizer. Prompts go through the model's chat template
(images first, then the text, like the vLLM engine), padding is on the left, and requests are run
`batch_size` at a time, grouped by their sampling settings (greedy when temperature is 0).

**JSON schemas are not enforced here**: `JudgeRequest.json_schema` is ignored, so a weak model may
answer with text that is not JSON or does not match; the rubric parser rejects such answers, as it
does for every engine. Use the vLLM engine when constrained decoding matters.
"""
from __future__ import annotations

import io
import time
from typing import Any

from judges.engines.base import JudgeRequest, JudgeResult, Sampling, release_accelerator_memory
from judges.engines.vllm_engine import resolve_model


def _decode_image(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


class HFEngine:
    """transformers `generate` behind the Engine interface (see module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        batch_size: int = 8,
    ) -> None:
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.resolved_model: str | None = None
        self.is_vision_language = False
        self._model = None
        self._processor = None      # AutoProcessor (VL) or None
        self._tokenizer = None
        self._device = None
        self._eos_ids: set[int] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    def _torch_dtype(self, device: str):
        """'auto': the checkpoint's dtype on GPU, float32 on CPU (fast and exact on any CPU)."""
        import torch

        if self.dtype == "auto":
            return "auto" if device.startswith("cuda") else torch.float32
        dt = getattr(torch, str(self.dtype), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        return dt

    def setup(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        self.resolved_model = resolve_model(self.model)
        path, trc = self.resolved_model, self.trust_remote_code
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trc)
        self.is_vision_language = (
            getattr(config, "vision_config", None) is not None
            or config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        )
        dtype = self._torch_dtype(device)
        if self.is_vision_language:
            self._processor = AutoProcessor.from_pretrained(path, trust_remote_code=trc)
            self._tokenizer = self._processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, trust_remote_code=trc)
        else:
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trc)
        tok = self._tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._model = model.to(self._device).eval()
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos.append(tok.eos_token_id)
        self._eos_ids = set(eos)

    def close(self) -> None:
        model, self._model = self._model, None
        self._processor = self._tokenizer = None
        if model is None:
            return
        del model
        release_accelerator_memory()

    def __enter__(self) -> "HFEngine":
        self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- prompts -------------------------------------------------------------------------------
    def _prompt(self, req: JudgeRequest) -> str:
        messages: list[dict[str, Any]] = []
        if req.system:
            messages.append({"role": "system", "content": req.system})
        if self.is_vision_language:
            content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.user_text}]
            messages.append({"role": "user", "content": content})
            return self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "user", "content": req.user_text})
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _generation_kwargs(self, s: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if s.temperature and s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:  # greedy; clear sampling knobs a checkpoint's generation_config may set
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    # -- inference -----------------------------------------------------------------------------
    def _run(self, reqs: list[JudgeRequest]) -> list[JudgeResult]:
        import torch

        prompts = [self._prompt(r) for r in reqs]
        if self.is_vision_language:
            images = [_decode_image(b) for r in reqs for b in r.images]
            enc = self._processor(text=prompts, images=images or None, return_tensors="pt", padding=True)
        else:
            enc = self._tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc.pop("token_type_ids", None)
        if self.is_vision_language:  # pixel values in the model's dtype (ids stay integer)
            enc = enc.to(self._device, dtype=self._model.dtype)
        else:
            enc = enc.to(self._device)
        s = reqs[0].sampling
        if s.seed is not None and s.temperature and s.temperature > 0:
            torch.manual_seed(s.seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self._model.generate(**enc, **self._generation_kwargs(s))
        latency = time.perf_counter() - t0
        prompt_len = enc["input_ids"].shape[1]
        prompt_counts = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(out[:, prompt_len:].tolist(), prompt_counts):
            n = len(row)
            for j, tok in enumerate(row):
                if tok in self._eos_ids:
                    n = j + 1
                    break
            text = self._tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(JudgeResult(text=text, prompt_tokens=int(n_prompt), completion_tokens=n,
                                       latency_s=latency))
        return results

    def generate(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        if self._model is None:
            raise RuntimeError("HFEngine.generate called before setup()")
        results: list[JudgeResult | None] = [None] * len(requests)
        groups: dict[Sampling, list[int]] = {}
        for i, req in enumerate(requests):
            if req.images and not self.is_vision_language:
                results[i] = JudgeResult(text=None, error=f"model {self.model!r} does not take images")
            else:
                groups.setdefault(req.sampling, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, res in zip(chunk, self._run([requests[i] for i in chunk])):
                    results[i] = res
        return [r for r in results if r is not None]
