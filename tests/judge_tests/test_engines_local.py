"""Real engines on tiny local models: transformers/open_clip loading, vLLM offline (text and image,
structured JSON), transformers generate, and ModelNotFound. Nothing is downloaded.

vLLM engines are shared through the session fixture `vllm_engines` (one live engine at a time);
the tests below are grouped by model so each engine starts once."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from judges.engines.base import JudgeRequest, JudgeResult, ModelNotFound, Sampling

SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["score"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    import skimage

    return (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    import io

    import skimage
    from PIL import Image

    buf = io.BytesIO()
    Image.open(Path(skimage.__file__).parent / "data" / "camera.png").convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def score_request(text: str, images: tuple[bytes, ...] = (), **sampling) -> JudgeRequest:
    return JudgeRequest(
        system="You rate how well the caption matches. Answer with JSON: {\"score\": 1-5}.",
        user_text=f"<caption>{text}</caption>",
        images=images,
        json_schema=SCORE_SCHEMA,
        sampling=Sampling(**{"max_tokens": 24, **sampling}),
    )


def assert_valid_score(res: JudgeResult) -> dict:
    assert res.error is None, res.error
    assert res.text is not None
    answer = json.loads(res.text)
    jsonschema.validate(answer, SCORE_SCHEMA)
    assert res.prompt_tokens > 0 and res.completion_tokens > 0
    assert res.latency_s > 0
    return answer


# -- the tiny models themselves ----------------------------------------------------------------

def test_tiny_text_model_loads_with_transformers(tiny_models):
    from transformers import AutoConfig, AutoTokenizer

    path = tiny_models["tiny-qwen2"]
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "qwen2" and cfg.head_dim == 64 and cfg.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) <= cfg.vocab_size
    assert tok.convert_tokens_to_ids("<|im_end|>") == cfg.eos_token_id
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hello {\"score\": 3}"}],
        tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>system\nS<|im_end|>" in prompt
    ids = tok("caption 12 {\"score\":3}")["input_ids"]
    assert tok.decode(ids) == "caption 12 {\"score\":3}"
    # the same tokenizer in both folders, whichever transformers class loads it
    tok_vl = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2vl"])
    assert tok_vl(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert sum(f.stat().st_size for f in path.iterdir()) < 8 * 2**20


def test_tiny_vl_model_loads_with_transformers(tiny_models, astronaut):
    import io

    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    path = tiny_models["tiny-qwen2vl"]
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "qwen2_vl"
    proc = AutoProcessor.from_pretrained(path)
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>describe" in text
    enc = proc(text=[text], images=[Image.open(io.BytesIO(astronaut)).convert("RGB")], return_tensors="pt")
    n_image_tokens = int((enc["input_ids"] == cfg.image_token_id).sum())
    assert 1 <= n_image_tokens <= 16  # max_pixels 112x112: at most 8x8 patches, merged 2x2
    assert sum(f.stat().st_size for f in path.iterdir()) < 8 * 2**20


def test_tiny_clip_loads_with_open_clip(tiny_models, astronaut):
    import io

    import open_clip
    import torch
    from PIL import Image

    from judges.tiny_models import register_tiny_clip

    path = tiny_models["tiny-clip"]
    name = register_tiny_clip(path)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(path / "open_clip_model.safetensors"))
    same, _, _ = open_clip.create_model_and_transforms(f"local-dir:{path}")
    tokenizer = open_clip.get_tokenizer(name)  # SimpleTokenizer: its BPE file ships with open_clip
    image = preprocess(Image.open(io.BytesIO(astronaut)).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        img = model.encode_image(image)
        txt = model.encode_text(tokenizer(["an astronaut", "a cat"]))
        assert torch.allclose(img, same.encode_image(image))
    assert img.shape == (1, 32) and txt.shape == (2, 32)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_build_all_is_idempotent_and_deterministic(tiny_models, tmp_path):
    from judges.tiny_models import MARKER, build_all, build_tiny_qwen2

    cache = tiny_models["tiny-qwen2"].parent
    marker = tiny_models["tiny-qwen2"] / MARKER
    before = marker.stat().st_mtime_ns
    assert build_all(cache) == tiny_models
    assert marker.stat().st_mtime_ns == before  # skipped, not rebuilt

    def digest(folder: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(folder.iterdir()) if f.name != MARKER}

    assert digest(build_tiny_qwen2(tmp_path / "again")) == digest(tiny_models["tiny-qwen2"])


# -- vLLM, text model --------------------------------------------------------------------------

def test_vllm_text_request_gives_schema_valid_json(vllm_engines, tiny_models):
    engine = vllm_engines.get(tiny_models["tiny-qwen2"])
    [res] = engine.generate([score_request("a dog on a red car")])
    assert_valid_score(res)


def test_vllm_batch_keeps_order(vllm_engines, tiny_models):
    engine = vllm_engines.get(tiny_models["tiny-qwen2"])
    # each request's schema admits exactly one answer, so the answer says which request it was
    reqs = [
        JudgeRequest(
            system="Rubric text shared by every request of this batch.",
            user_text=f"sample {i}: " + "words " * i,
            json_schema={"type": "object", "properties": {"id": {"enum": [i]}},
                         "required": ["id"], "additionalProperties": False},
            sampling=Sampling(max_tokens=16, temperature=0.0 if i % 2 else 0.8, seed=i),
        )
        for i in range(6)
    ]
    reqs.insert(3, JudgeRequest(system="free text", user_text="no schema", sampling=Sampling(max_tokens=5)))
    results = engine.generate(reqs)
    assert len(results) == len(reqs)
    ids = [json.loads(r.text)["id"] for k, r in enumerate(results) if k != 3]
    assert ids == list(range(6))
    free = results[3]
    assert free.error is None and isinstance(free.text, str) and free.completion_tokens == 5
    assert [r.prompt_tokens for k, r in enumerate(results) if k != 3] == sorted(
        r.prompt_tokens for k, r in enumerate(results) if k != 3)  # longer text, more tokens
    assert engine.generate([]) == []


def test_vllm_text_model_rejects_images_per_request(vllm_engines, tiny_models, astronaut):
    engine = vllm_engines.get(tiny_models["tiny-qwen2"])
    bad, good = engine.generate([score_request("x", images=(astronaut,)), score_request("y")])
    assert bad.text is None and "does not take images" in bad.error
    assert_valid_score(good)


def test_vllm_isolates_a_request_that_fails(vllm_engines, tiny_models):
    engine = vllm_engines.get(tiny_models["tiny-qwen2"])
    too_long = score_request("word " * 5000)  # longer than max_model_len=2048
    first, bad, last = engine.generate([score_request("first"), too_long, score_request("last")])
    assert_valid_score(first)
    assert_valid_score(last)
    assert bad.text is None and bad.error
    with pytest.raises(Exception):  # a batch in which every request fails raises
        engine.generate([too_long, too_long])


# -- vLLM, vision-language model ---------------------------------------------------------------

def test_vllm_image_requests_give_schema_valid_json(vllm_engines, tiny_models, astronaut, camera_jpeg):
    engine = vllm_engines.get(tiny_models["tiny-qwen2vl"])
    reqs = [
        score_request("an astronaut in a white suit", images=(astronaut,)),
        score_request("a photographer with a camera", images=(camera_jpeg,)),
        score_request("two pictures", images=(astronaut, camera_jpeg)),
        score_request("text only, no picture"),
    ]
    results = engine.generate(reqs)
    assert len(results) == 4
    for res in results:
        assert_valid_score(res)
    one, _, two, text_only = results
    assert one.prompt_tokens > text_only.prompt_tokens  # image tokens are part of the prompt
    assert two.prompt_tokens > one.prompt_tokens

    # an image that does not decode fails its own request, not the batch
    broken = astronaut[: len(astronaut) // 50]
    ok, bad = engine.generate([score_request("fine", images=(astronaut,)),
                               score_request("broken", images=(broken,))])
    assert_valid_score(ok)
    assert bad.text is None and bad.error


def test_vllm_chat_messages_put_images_before_text(astronaut, camera_jpeg):
    from judges.engines.vllm_engine import chat_messages

    msgs = chat_messages(JudgeRequest(system="rubric", user_text="sample", images=(astronaut, camera_jpeg)))
    assert msgs[0] == {"role": "system", "content": "rubric"}
    parts = msgs[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1]) == astronaut
    assert parts[2] == {"type": "text", "text": "sample"}


# -- transformers engine -----------------------------------------------------------------------

def test_hf_engine_vl_model(tiny_models, astronaut, camera_jpeg):
    from judges.engines.hf_engine import HFEngine

    engine = HFEngine(str(tiny_models["tiny-qwen2vl"]), device="cpu", batch_size=2)
    engine.setup()
    try:
        assert engine.is_vision_language
        reqs = [
            score_request("an astronaut", images=(astronaut,), max_tokens=6),
            score_request("text only", max_tokens=6),
            score_request("two images", images=(camera_jpeg, astronaut), max_tokens=6),
            score_request("sampled", images=(astronaut,), max_tokens=4, temperature=0.9, seed=1),
        ]
        results = engine.generate(reqs)
        assert len(results) == 4
        for res, req in zip(results, reqs):
            assert res.error is None and isinstance(res.text, str)
            assert res.prompt_tokens > 0 and 0 < res.completion_tokens <= req.sampling.max_tokens
        assert results[0].prompt_tokens > results[1].prompt_tokens
        assert results[2].prompt_tokens > results[0].prompt_tokens
        # greedy is deterministic
        assert [r.text for r in engine.generate(reqs[:2])] == [r.text for r in results[:2]]
    finally:
        engine.close()


def test_hf_engine_text_model(tiny_models, astronaut):
    from judges.engines.hf_engine import HFEngine

    with HFEngine(str(tiny_models["tiny-qwen2"]), device="auto", batch_size=3) as engine:
        assert not engine.is_vision_language
        reqs = [score_request(f"caption {'long ' * i}", max_tokens=5) for i in range(5)]
        reqs.append(score_request("has an image", images=(astronaut,)))
        results = engine.generate(reqs)
        assert len(results) == 6
        for res in results[:5]:
            assert res.error is None and isinstance(res.text, str)
            assert res.prompt_tokens > 0 and 0 < res.completion_tokens <= 5
        assert [r.prompt_tokens for r in results[:5]] == sorted(r.prompt_tokens for r in results[:5])
        assert results[5].text is None and "does not take images" in results[5].error


# -- missing models ----------------------------------------------------------------------------

@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_missing_local_model_raises_model_not_found(engine_name, tmp_path):
    from judges.engines.hf_engine import HFEngine
    from judges.engines.vllm_engine import VLLMEngine

    missing = str(tmp_path / "no-such-model")
    engine = VLLMEngine(missing) if engine_name == "vllm" else HFEngine(missing)
    with pytest.raises(ModelNotFound) as info:
        engine.setup()
    msg = str(info.value)
    assert missing in msg and "tiny-models" in msg and "hub id" in msg


def test_uncached_hub_id_offline_raises_model_not_found(monkeypatch):
    from judges.engines.vllm_engine import VLLMEngine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="sailcurate-test/no-such-model.*HF_HUB_OFFLINE"):
        VLLMEngine("sailcurate-test/no-such-model").setup()


def test_folder_without_config_raises_model_not_found(tiny_models):
    from judges.engines.vllm_engine import resolve_model

    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tiny_models["tiny-clip"]))
    assert resolve_model(str(tiny_models["tiny-qwen2"])) == str(tiny_models["tiny-qwen2"].resolve())
