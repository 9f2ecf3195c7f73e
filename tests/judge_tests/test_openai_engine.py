"""OpenAIEngine against a scripted local HTTP server on 127.0.0.1 (no internet).

The server answers each POST by calling `script(n, body)` (n = 1-based call
number) which returns an action; it records every request and the most requests
it ever had in flight. Slow answers wait on an Event that teardown sets, so no
handler outlives its test for long, and the server is shut down in teardown.
"""
from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from judges.engines.base import JudgeRequest, Sampling
from judges.engines.openai_engine import OpenAIEngine, image_mime, parse_retry_after

SECRET = "sk-test-SECRET-0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 16


def ok(text="hello", prompt_tokens=11, completion_tokens=3):
    return ("json", 200, {}, {
        "id": "cmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def status(code, headers=None, body=b'{"error": "nope"}'):
    return ("raw", code, headers or {}, body)


def slow(seconds, then):
    return ("slow", seconds, then)


class ScriptedServer:
    def __init__(self, script):
        self.script = script
        self.lock = threading.Lock()
        self.calls = 0
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                with server.lock:
                    server.calls += 1
                    n = server.calls
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(length) or b"null")
                    with server.lock:
                        server.requests.append(
                            {"path": self.path, "headers": dict(self.headers), "body": body})
                    action = server.script(n, body)
                    while action[0] == "slow":
                        server.release.wait(action[1])  # bounded; teardown releases it early
                        action = action[2]
                    kind, code, headers, payload = action
                    data = json.dumps(payload).encode() if kind == "json" else payload
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(script):
        s = ScriptedServer(script)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def engines(monkeypatch):
    """Make engines with tiny backoff; all are closed in teardown."""
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    made: list[OpenAIEngine] = []

    def make(url, **kw):
        opts = dict(api_key_env="JUDGE_TEST_KEY", max_concurrency=4, timeout_s=2,
                    max_retries=5, backoff_s=0.001, max_backoff_s=0.01)
        opts.update(kw)
        e = OpenAIEngine("test-model", base_url=url, **opts)
        e.setup()
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def req(text="describe", **kw):
    return JudgeRequest(system=kw.pop("system", "You are a judge."), user_text=text, **kw)


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


# -- success and request shape ---------------------------------------------------------


def test_success_text_usage_latency_and_auth(serve, engines):
    srv = serve(lambda n, body: ok('{"score": 4}', prompt_tokens=42, completion_tokens=7))
    [r] = engines(srv.url).generate([req()])
    assert r.error is None
    assert r.text == '{"score": 4}'  # returned as-is, not parsed
    assert (r.prompt_tokens, r.completion_tokens) == (42, 7)
    assert r.latency_s > 0
    [seen] = srv.requests
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_request_body_order_images_schema_sampling(serve, engines):
    srv = serve(lambda n, body: ok())
    schema = {"type": "object", "properties": {"score": {"type": "integer"}},
              "required": ["score"], "additionalProperties": False}
    r = req("the caption", images=(JPEG, PNG), json_schema=schema,
            sampling=Sampling(max_tokens=64, temperature=0.2, top_p=0.9, seed=7))
    [res] = engines(srv.url).generate([r])
    assert res.error is None
    body = srv.requests[0]["body"]
    assert body["model"] == "test-model"
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == "You are a judge."
    content = msgs[1]["content"]
    assert [c["type"] for c in content] == ["image_url", "image_url", "text"]
    urls = [c["image_url"]["url"] for c in content[:2]]
    assert urls[0].startswith("data:image/jpeg;base64,")
    assert urls[1].startswith("data:image/png;base64,")
    assert base64.b64decode(urls[0].split(",", 1)[1]) == JPEG
    assert base64.b64decode(urls[1].split(",", 1)[1]) == PNG
    assert content[2]["text"] == "the caption"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.2, 0.9, 64, 7)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def test_no_schema_flag_no_seed_and_no_auth(serve, engines, monkeypatch):
    srv = serve(lambda n, body: ok())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    e = engines(srv.url, api_key_env=None, use_json_schema=False)
    [r] = e.generate([req(json_schema={"type": "object"}, sampling=Sampling(seed=None))])
    assert r.error is None
    body = srv.requests[0]["body"]
    assert "response_format" not in body and "seed" not in body
    assert "Authorization" not in srv.requests[0]["headers"]


def test_image_mime_sniffing_and_retry_after_parsing():
    assert image_mime(PNG) == "image/png"
    assert image_mime(JPEG) == "image/jpeg"
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_mime(b"GIF89a...") == "image/gif"
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_results_in_order_one_per_request(serve, engines):
    def script(n, body):
        text = body["messages"][1]["content"][-1]["text"]
        if text == "bad":
            return status(400, body=b'{"error": "bad request"}')
        return ok(f"echo {text}")

    srv = serve(script)
    texts = [f"t{i}" for i in range(10)]
    texts[4] = "bad"
    results = engines(srv.url, max_concurrency=5).generate([req(t) for t in texts])
    assert len(results) == 10
    for t, r in zip(texts, results):
        if t == "bad":
            assert r.text is None and r.error.startswith("judge_http: 400")
        else:
            assert (r.text, r.error) == (f"echo {t}", None)
    assert engines(srv.url).generate([]) == []


# -- retries ---------------------------------------------------------------------------


def test_429_honours_retry_after_capped(serve, engines):
    srv = serve(lambda n, body: status(429, {"Retry-After": "5"}) if n == 1 else ok("after 429"))
    e = engines(srv.url, backoff_s=0.001, max_backoff_s=0.3)
    t0 = time.monotonic()
    [r] = e.generate([req()])
    elapsed = time.monotonic() - t0
    assert r.text == "after 429" and r.error is None
    assert srv.calls == 2
    assert 0.28 <= elapsed < 2.0  # waited Retry-After, capped at max_backoff_s (not 5s, not ~0s)


@pytest.mark.parametrize("codes", [[500], [503, 503], [500, 502, 503, 504]])
def test_5xx_retried_then_success(serve, engines, codes):
    srv = serve(lambda n, body: status(codes[n - 1]) if n <= len(codes) else ok("finally"))
    [r] = engines(srv.url, max_retries=5).generate([req()])
    assert (r.text, r.error) == ("finally", None)
    assert srv.calls == len(codes) + 1


def test_5xx_exhausted(serve, engines):
    srv = serve(lambda n, body: status(503, body=b"overloaded"))
    [r] = engines(srv.url, max_retries=3).generate([req()])
    assert r.text is None
    assert r.error.startswith("judge_http: 503 after 3 attempts")
    assert srv.calls == 3


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_other_4xx_not_retried(serve, engines, code):
    srv = serve(lambda n, body: status(code, body=b'{"error": "model not found"}'))
    [r] = engines(srv.url, max_retries=5).generate([req()])
    assert r.text is None
    assert r.error.startswith(f"judge_http: {code} after 1 attempt")
    assert "model not found" in r.error
    assert srv.calls == 1


def test_timeout_then_success(serve, engines):
    srv = serve(lambda n, body: slow(3, ok("too late")) if n == 1 else ok("in time"))
    t0 = time.monotonic()
    [r] = engines(srv.url, timeout_s=0.3).generate([req()])
    assert (r.text, r.error) == ("in time", None)
    assert srv.calls == 2
    assert time.monotonic() - t0 < 2.5


def test_always_slow_is_timeout_error(serve, engines):
    srv = serve(lambda n, body: slow(3, ok("too late")))
    [r] = engines(srv.url, timeout_s=0.2, max_retries=2).generate([req()])
    assert r.text is None
    assert r.error.startswith("judge_timeout:") and "after 2 attempts" in r.error
    assert srv.calls == 2


def test_connection_refused_is_connection_error(engines):
    [r] = engines(closed_port_url(), max_retries=3).generate([req()])
    assert r.text is None
    assert r.error.startswith("judge_connection:") and "after 3 attempts" in r.error


@pytest.mark.parametrize("body,what", [
    (b"this is not json", "not JSON"),
    (b'{"object": "chat.completion"}', "no choices"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": [{"message": {"role": "assistant", "content": null}, "finish_reason": "length"}]}',
     "no message content"),
])
def test_malformed_response_is_bad_response(serve, engines, body, what):
    srv = serve(lambda n, b: status(200, body=body))
    [r] = engines(srv.url).generate([req()])
    assert r.text is None
    assert r.error.startswith("judge_bad_response:") and what in r.error
    assert srv.calls == 1


# -- concurrency -----------------------------------------------------------------------


def test_concurrency_bound(serve, engines):
    srv = serve(lambda n, body: slow(0.1, ok(body["messages"][1]["content"][-1]["text"])))
    results = engines(srv.url, max_concurrency=3).generate([req(f"r{i}") for i in range(12)])
    assert [r.text for r in results] == [f"r{i}" for i in range(12)]
    assert srv.calls == 12
    assert 2 <= srv.max_in_flight <= 3


def test_concurrency_bound_across_threads(serve, engines):
    """Two threads calling generate() at once still share one bound."""
    srv = serve(lambda n, body: slow(0.05, ok()))
    e = engines(srv.url, max_concurrency=3)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(e.generate([req()] * 6))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(out) == 2 and all(len(o) == 6 and all(r.error is None for r in o) for o in out)
    assert srv.max_in_flight <= 3


# -- lifecycle and secrets --------------------------------------------------------------


def test_missing_key_env_raises_naming_variable(monkeypatch):
    monkeypatch.delenv("JUDGE_MISSING_KEY", raising=False)
    e = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", api_key_env="JUDGE_MISSING_KEY")
    with pytest.raises(RuntimeError, match="JUDGE_MISSING_KEY"):
        e.setup()
    e.close()


def test_generate_before_setup_raises_and_close_is_idempotent():
    e = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", api_key_env=None)
    with pytest.raises(RuntimeError, match="setup"):
        e.generate([req()])
    e.setup()
    e.close()
    e.close()
    with pytest.raises(RuntimeError, match="setup"):
        e.generate([req()])


def test_key_never_leaks(serve, engines, caplog, monkeypatch):
    def script(n, body):
        text = body["messages"][1]["content"][-1]["text"]
        if text == "echo400":  # a server that echoes the request's headers in its error body
            return status(400, body=json.dumps({"error": f"bad auth Bearer {SECRET}"}).encode())
        if text == "echo503":
            return status(503, body=f"upstream rejected {SECRET}".encode())
        if text == "slow":
            return slow(3, ok())
        return ok("fine")

    srv = serve(script)
    caplog.set_level(logging.DEBUG)
    e = engines(srv.url, timeout_s=0.2, max_retries=2)
    results = e.generate([req("echo400"), req("echo503"), req("slow"), req("ok")])
    refused = engines(closed_port_url(), max_retries=2).generate([req()])
    assert all(r.error for r in results[:3]) and results[3].error is None
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # it was sent
    errors = [r.error or "" for r in results + refused]
    assert "retrying" in caplog.text  # the retry log lines were produced and checked too
    for text in errors + [repr(e), str(e), repr(e.__dict__.get("_client")), caplog.text,
                          repr(results), repr(refused)]:
        assert SECRET not in text
    # the missing-key error names the variable, not any value
    monkeypatch.setenv("OTHER_KEY", SECRET)
    bad = OpenAIEngine("m", base_url=srv.url, api_key_env="JUDGE_UNSET_VAR")
    with pytest.raises(RuntimeError) as info:
        bad.setup()
    assert "JUDGE_UNSET_VAR" in str(info.value) and SECRET not in str(info.value)
