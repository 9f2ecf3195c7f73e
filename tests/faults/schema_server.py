"""A deterministic OpenAI-compatible chat server with planned faults, for runner-level tests.

Why: the fault and determinism tests drive whole pipelines (judge, recaption, caption-QA,
chart, CoT stages) through the real ``openai`` engine and the real runner. A real model
is neither fast nor batch-invariant on this CPU, so this server stands in for the model
*server* (not for any project code): each answer is a pure function of the request, so two
runs that send the same requests get the same answers whatever the batching.

- The answer to a request with ``response_format.json_schema`` is a JSON instance of that
  schema, drawn from a PRNG seeded by a hash of the request's messages and schema; strings
  reuse words of the prompt, so lexical checks downstream sometimes pass and sometimes fail.
- Faults are planned per request *key* (the same hash) from one uniform number, so a test
  knows which requests fail and how, whatever the order they arrive in:
  ``always_fail`` (HTTP 503 on every attempt: retries exhaust), ``garbage`` (HTTP 200 whose
  content is not JSON), ``hang_once`` (the first attempt sleeps past the client's timeout,
  the retry succeeds) and ``fail_once`` (the first attempt is a 500, the retry succeeds).

Run it alone with ``python -m tests.faults.schema_server --fail-once 0.2``: it prints its URL.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OUTCOMES = ("always_fail", "garbage", "hang_once", "fail_once", "ok")


@dataclass(frozen=True)
class FaultPlan:
    """Shares of request keys per fault; the rest are answered at once."""

    always_fail: float = 0.0
    garbage: float = 0.0
    hang_once: float = 0.0
    fail_once: float = 0.0
    hang_s: float = 30.0  # how long a hanging first attempt sleeps (released early at stop())
    delay_s: float = 0.0  # every attempt waits this long before answering (a slow model: a kill window)

    def outcome(self, key: str) -> str:
        u = int(key[:12], 16) / float(16 ** 12)
        edge = 0.0
        for name in OUTCOMES[:-1]:
            edge += getattr(self, name)
            if u < edge:
                return name
        return "ok"


def request_key(body: dict[str, Any]) -> str:
    """What identifies a request: its messages and answer schema (not model name or sampling)."""
    material = {"messages": body.get("messages"), "format": body.get("response_format")}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def prompt_words(body: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for m in body.get("messages") or []:
        content = m.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                words += re.findall(r"[A-Za-z]{3,}", part["text"])
    return words[-200:] or ["sample", "answer", "text"]


def instance(schema: dict[str, Any], rng: random.Random, words: list[str]) -> Any:
    """A value valid against the (small) JSON-schema subset the rubrics emit."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "anyOf"}
        return instance({**merged, **rng.choice(schema["anyOf"])}, rng, words)
    t = schema.get("type")
    if t == "integer":
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(lo, hi)
    if t == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 100))), 3)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "string":
        lo, hi = int(schema.get("minLength", 1)), int(schema.get("maxLength", 200))
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
        while len(text) < lo:
            text += " " + rng.choice(words)
        return text[:hi]
    if t == "array":
        lo = int(schema.get("minItems", 1))
        hi = int(schema.get("maxItems", max(lo, 3)))
        return [instance(schema.get("items", {"type": "string"}), rng, words) for _ in range(rng.randint(lo, hi))]
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: instance(v, rng, words) for k, v in props.items()}
    return None


def garbage_answer(key: str) -> str:
    """What a ``garbage`` key gets: HTTP 200 whose message content is not JSON."""
    return "not json {{{ " + key[:8]


def answer_for(body: dict[str, Any], key: str) -> str:
    rng = random.Random(key)
    words = prompt_words(body)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema is None:
        return " ".join(rng.choice(words) for _ in range(12))
    return json.dumps(instance(schema, rng, words), separators=(",", ":"), ensure_ascii=False)


class SchemaServer:
    """The server, on 127.0.0.1 in a daemon thread; ``url`` ends in ``/v1``."""

    def __init__(self, plan: FaultPlan | None = None, port: int = 0):
        self.plan = plan or FaultPlan()
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.outcomes: dict[str, str] = {}
        self.served: Counter[str] = Counter()  # what was sent back: ok, 503, 500, garbage, hang
        self.bodies: Counter[str] = Counter()  # every request received, by a hash of its whole body
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the client process died between requests (e.g. a killed worker)

            def do_POST(self):
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(length) or b"{}")
                    key = request_key(body)
                    whole = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
                    with server.lock:
                        server.bodies[whole] += 1
                    if server.plan.delay_s:
                        server.release.wait(server.plan.delay_s)
                    outcome = server.plan.outcome(key)
                    with server.lock:
                        server.attempts[key] += 1
                        attempt = server.attempts[key]
                        server.outcomes[key] = outcome
                    if outcome == "always_fail" or (outcome == "fail_once" and attempt == 1):
                        code = 503 if outcome == "always_fail" else 500
                        server._count(str(code))
                        return self._send(code, {"error": {"message": "planned failure"}})
                    if outcome == "hang_once" and attempt == 1:
                        server._count("hang")
                        server.release.wait(server.plan.hang_s)
                        return self._send(504, {"error": {"message": "hung"}})
                    text = garbage_answer(key) if outcome == "garbage" else answer_for(body, key)
                    server._count("garbage" if outcome == "garbage" else "ok")
                    self._send(200, {
                        "id": "cmpl-" + key[:8], "object": "chat.completion", "model": body.get("model", "m"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    })
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _count(self, what: str) -> None:
        with self.lock:
            self.served[what] += 1

    def keys_with(self, outcome: str) -> set[str]:
        with self.lock:
            return {k for k, o in self.outcomes.items() if o == outcome}

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "SchemaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    for name in OUTCOMES[:-1]:
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=0.0, help=f"share of keys: {name}")
    a = ap.parse_args()
    plan = FaultPlan(**{n: getattr(a, n) for n in OUTCOMES[:-1]})
    server = SchemaServer(plan, a.port)
    print(server.url, flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
