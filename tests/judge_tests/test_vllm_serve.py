"""OpenAIEngine against a real `vllm serve` (the OpenAI-compatible api_server) on 127.0.0.1.

One server per module serves the tiny random Qwen2-VL model from the `tiny_models` fixture (built
locally, nothing downloaded) under the name "tiny", with structured outputs on xgrammar and
`disable_any_whitespace` (as the offline VLLMEngine does), so `response_format: json_schema`
gives compact, schema-valid JSON even from random weights.

The server is a subprocess in its own session (process group): teardown always sends SIGTERM to
the whole group (the api_server and its EngineCore child), then SIGKILL after a grace period.
Its output goes to a log file whose tail is shown when it fails to start.

On CPU the server takes ~30-60 s to start; `--enforce-eager` skips torch.compile. Requests use
temperature 0: vLLM's CPU backend cannot take a per-request seed when sampling (and OpenAIEngine
sends `seed`), which would take the engine down for every later test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from judges.engines.base import JudgeRequest, Sampling
from judges.engines.openai_engine import OpenAIEngine
from judges.rubric import load_rubric

pytest.importorskip("vllm")

SERVED_NAME = "tiny"
MAX_MODEL_LEN = 2048
START_TIMEOUT_S = 180
STOP_GRACE_S = 20
REQUEST_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after STOP_GRACE_S; reaps the process."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the server's pid
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # Children (EngineCore) may outlive the api_server itself: always sweep the group.
    signal_group(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - nothing more we can do
        pass


def server_command(model: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
        "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 0}),
        "--seed", "0",
    ]


@pytest.fixture(scope="module")
def vllm_server(tiny_models, tmp_path_factory):
    """Base URL (`http://127.0.0.1:PORT/v1`) of a running `vllm serve` for tiny-qwen2vl."""
    import httpx

    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    cmd = server_command(tiny_models["tiny-qwen2vl"], port)
    base_url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        t0 = time.monotonic()
        deadline = t0 + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} before it was ready; "
                            f"log {log_path}:\n{_tail(log_path)}")
            try:
                r = httpx.get(f"{base_url}/models", timeout=5)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer GET /v1/models within {START_TIMEOUT_S} s; "
                            f"log {log_path}:\n{_tail(log_path)}")
            time.sleep(1)
        print(f"vllm serve ready in {time.monotonic() - t0:.1f} s on port {port}")
        yield base_url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def engine(vllm_server):
    with OpenAIEngine(SERVED_NAME, base_url=vllm_server, api_key_env=None, max_concurrency=4,
                      timeout_s=REQUEST_TIMEOUT_S, max_retries=2) as eng:
        yield eng


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return {name: (data / name).read_bytes() for name in ("astronaut.png", "rocket.jpg")}


def test_server_lists_the_served_model(vllm_server):
    import httpx

    data = httpx.get(f"{vllm_server}/models", timeout=10).json()
    [model] = data["data"]
    assert model["id"] == SERVED_NAME
    assert model.get("max_model_len", MAX_MODEL_LEN) == MAX_MODEL_LEN


def test_ita_score_batch_with_images_parses(engine, images):
    rubric = load_rubric("ita_score")
    samples = [
        ({"caption": "An astronaut in a white suit poses in front of the American flag."}, "astronaut.png"),
        ({"caption": "A rocket on the launch pad, white smoke around it."}, "rocket.jpg"),
        ({"caption": "stock photo <|im_end|> click to enlarge"}, "astronaut.png"),
        ({"caption": "A cat."}, "rocket.jpg"),
    ]
    reqs = [rubric.build_request(sample, (images[name],)) for sample, name in samples]
    results = engine.generate(reqs)
    assert len(results) == len(reqs)
    for (sample, _), res in zip(samples, results):
        assert res.error is None, res.error
        parsed = rubric.parse(res.text, sample)
        assert parsed.ok, (res.text, parsed.error)
        assert 1 <= parsed.values["ita"] <= 5
        assert res.prompt_tokens > 0 and res.completion_tokens > 0
        assert res.latency_s > 0
    # the system (rubric) text is the same, so the image tokens make the difference
    text_only = engine.generate([JudgeRequest(system=reqs[0].system, user_text=reqs[0].user_text,
                                              json_schema=reqs[0].json_schema,
                                              sampling=reqs[0].sampling)])[0]
    assert text_only.error is None, text_only.error
    assert results[0].prompt_tokens > text_only.prompt_tokens


def test_text_only_request_gives_schema_valid_json(engine):
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "label": {"enum": ["yes", "no"]},
            "valid": {"type": "boolean"},
        },
        "required": ["score", "label", "valid"],
        "additionalProperties": False,
    }
    req = JudgeRequest(system="Answer with JSON only.", user_text="Is the sky blue? Rate 1-5.",
                       json_schema=schema, sampling=Sampling(max_tokens=48))
    [res] = engine.generate([req])
    assert res.error is None, res.error
    answer = json.loads(res.text)
    jsonschema.validate(answer, schema)
    assert res.text == json.dumps(answer, separators=(",", ":"))  # disable_any_whitespace: compact
    assert res.prompt_tokens > 0 and res.completion_tokens > 0


def test_concurrent_requests_come_back_in_order(engine):
    # each request's schema admits exactly one answer, so the answer says which request it was
    reqs = [
        JudgeRequest(
            system="Rubric text shared by every request of this batch.",
            user_text=f"sample {i}: " + "words " * (i * 3),
            json_schema={"type": "object", "properties": {"id": {"enum": [i]}},
                         "required": ["id"], "additionalProperties": False},
            sampling=Sampling(max_tokens=16),
        )
        for i in range(8)
    ]
    assert engine.max_concurrency == 4
    results = engine.generate(reqs)
    assert [r.error for r in results] == [None] * 8
    assert [json.loads(r.text)["id"] for r in results] == list(range(8))
    tokens = [r.prompt_tokens for r in results]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1]  # longer text, more tokens


def test_too_long_prompt_is_a_400_and_the_server_lives_on(engine):
    too_long = JudgeRequest(system="s", user_text="word " * (MAX_MODEL_LEN * 2), sampling=Sampling(max_tokens=4))
    ok = JudgeRequest(system="s", user_text="short", sampling=Sampling(max_tokens=4))
    bad, good = engine.generate([too_long, ok])
    assert bad.text is None and bad.error.startswith("judge_http: 400 after 1 attempt"), bad.error
    assert good.error is None and isinstance(good.text, str) and good.completion_tokens > 0
