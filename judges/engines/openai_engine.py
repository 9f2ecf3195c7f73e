"""Engine for any OpenAI-compatible chat server: `vllm serve`, SGLang, hosted APIs.

One POST to `{base_url}/chat/completions` per request. The messages keep the
order that prefix caching wants: the system (rubric) text, then a user message
whose content is the images (as `data:` URLs) followed by the sample's text.

Concurrency: a synchronous `httpx.Client` driven by a `ThreadPoolExecutor` with
`max_concurrency` workers, created in `setup()` and shared by every `generate()`
call on this engine. We chose threads over asyncio because `generate()` is
called synchronously from Ray Data actors: asyncio would need its own event loop
per call (and `asyncio.run` fails inside an actor that already runs a loop),
while a thread pool works from any calling context. The pool has exactly
`max_concurrency` workers and the connection pool is capped at the same number,
so no more than `max_concurrency` requests are ever in flight, even when several
threads call `generate()` at once. The work is network-bound, so the GIL is no
bottleneck. A worker keeps its slot while it sleeps between retries, so backoff
also slows the whole engine down, which is what a 429 asks for.

Failures never raise out of `generate()`: each request gets a `JudgeResult`
whose `error` says what went wrong:

- `judge_http: <status> after <n> attempts: <body snippet>`; 429 and 5xx are
  retried, other statuses (400, 401, 404, ...) are returned after one attempt;
- `judge_timeout: ...` / `judge_connection: ...` after the retries;
- `judge_bad_response: ...` for a 2xx that is not JSON or has no choices / content
  (not retried: a server that answers garbage tends to do so again);
- `judge_engine: ...` for anything unexpected, so one bad request cannot sink
  the batch.

`max_retries` is the number of attempts per request in total (the first one
included; 1 means no retry), so the default 5 gives `... after 5 attempts`.

The API key is read from the environment variable named by `api_key_env` in
`setup()` and is sent only as an `Authorization: Bearer` header. It is never
stored in a repr, and every error string and log line is scrubbed of it (a
server that echoes request headers in an error body cannot leak it either).
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from judges.engines.base import JudgeRequest, JudgeResult, chat_messages, image_data_url, image_mime  # noqa: F401

log = logging.getLogger(__name__)

_BODY_SNIPPET = 200  # characters of an error body kept in `error`


class _Retryable(Exception):
    """An attempt that failed in a way worth retrying; `error` is the final message stem."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after


class _Final(Exception):
    """An attempt that failed in a way that retrying will not fix."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - time.time()
    if secs != secs:  # NaN
        return None
    return max(0.0, secs)


class OpenAIEngine:
    """Judge engine over an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30,
        use_json_schema: bool = True,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = max(1, int(max_retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.max_backoff_s = max(0.0, float(max_backoff_s))
        self.use_json_schema = use_json_schema
        self._api_key: str | None = None
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency}, "
            f"timeout_s={self.timeout_s}, max_retries={self.max_retries})"
        )

    # -- lifecycle -----------------------------------------------------------------

    def setup(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            headers = {"Content-Type": "application/json"}
            if self.api_key_env is not None:
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise RuntimeError(
                        f"OpenAIEngine: environment variable {self.api_key_env} is not set "
                        f"(it should hold the API key for {self.base_url}); export it, or set "
                        "api_key_env to null for a server without auth such as a local `vllm serve`"
                    )
                self._api_key = key
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency,
                    max_keepalive_connections=self.max_concurrency,
                ),
                follow_redirects=False,
            )
            self._pool = ThreadPoolExecutor(
                max_workers=self.max_concurrency, thread_name_prefix="openai-engine"
            )

    def close(self) -> None:
        with self._lock:
            pool, client = self._pool, self._client
            self._pool = self._client = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAIEngine:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generation ----------------------------------------------------------------

    def generate(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        pool = self._pool
        if pool is None or self._client is None:
            raise RuntimeError("OpenAIEngine.generate() called before setup() (or after close())")
        if not requests:
            return []
        futures = [pool.submit(self._run_one, req) for req in requests]
        return [f.result() for f in futures]

    def build_payload(self, req: JudgeRequest) -> dict[str, Any]:
        """The JSON body for one request (public so that callers and tests can inspect it)."""
        messages = chat_messages(req)
        s = req.sampling
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            payload["seed"] = s.seed
        if req.json_schema is not None and self.use_json_schema:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": req.json_schema, "strict": True},
            }
        return payload

    def _run_one(self, req: JudgeRequest) -> JudgeResult:
        t0 = time.monotonic()
        try:
            result = self._with_retries(self.build_payload(req))
        except Exception as e:  # never let one request sink the batch
            result = JudgeResult(text=None, error=self._scrub(f"judge_engine: {type(e).__name__}: {e}"))
        result.latency_s = time.monotonic() - t0
        return result

    def _with_retries(self, payload: dict[str, Any]) -> JudgeResult:
        body = json.dumps(payload).encode("utf-8")
        last: _Retryable | None = None
        for attempt in range(1, self.max_retries + 1):
            try:
                return self._attempt(body)
            except _Final as e:
                return JudgeResult(text=None, error=self._scrub(str(e)))
            except _Retryable as e:
                last = e
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, e.retry_after)
                log.info(
                    "%s", self._scrub(f"openai engine: {e} (attempt {attempt}/{self.max_retries}, "
                                      f"retrying in {delay:.2f}s)")
                )
                if delay > 0:
                    time.sleep(delay)
        assert last is not None
        n = self.max_retries
        plural = "attempt" if n == 1 else "attempts"
        if last.kind == "judge_http":
            status, _, rest = last.detail.partition(" ")
            msg = f"judge_http: {status} after {n} {plural}" + (f": {rest}" if rest else "")
        else:
            msg = f"{last.kind}: {last.detail} after {n} {plural}"
        return JudgeResult(text=None, error=self._scrub(msg))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return base * random.uniform(0.5, 1.0)  # "equal jitter": spread retries, keep a floor

    def _attempt(self, body: bytes) -> JudgeResult:
        client = self._client
        if client is None:
            raise _Final("judge_engine: engine closed")
        deadline = time.monotonic() + self.timeout_s
        try:
            with client.stream("POST", f"{self.base_url}/chat/completions", content=body) as resp:
                # httpx timeouts are per phase (connect / each read); also bound the whole body.
                chunks = []
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("response body took longer than timeout_s")
                raw = b"".join(chunks)
                status = resp.status_code
                headers = resp.headers
        except httpx.TimeoutException as e:
            raise _Retryable("judge_timeout", f"{type(e).__name__} (timeout_s={self.timeout_s:g})") from None
        except (httpx.TransportError, OSError) as e:
            # ConnectError, ReadError, RemoteProtocolError, ... (timeouts are caught above)
            raise _Retryable("judge_connection", f"{type(e).__name__}: {e}") from None

        if status == 429 or status >= 500:
            raise _Retryable(
                "judge_http",
                f"{status} {_snippet(raw)}".rstrip(),
                retry_after=parse_retry_after(headers.get("retry-after")) if status == 429 else None,
            )
        if not 200 <= status < 300:
            raise _Final(f"judge_http: {status} after 1 attempt" + (f": {_snippet(raw)}" if raw else ""))
        return _parse_completion(raw)

    def _scrub(self, text: str) -> str:
        key = self._api_key
        if key and key in text:
            text = text.replace(key, "***")
        return text


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")


def _parse_completion(raw: bytes) -> JudgeResult:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Final(f"judge_bad_response: body is not JSON: {_snippet(raw)!r}") from None
    if not isinstance(data, dict):
        raise _Final(f"judge_bad_response: body is not a JSON object: {_snippet(raw)!r}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Final(f"judge_bad_response: no choices in {_snippet(raw)!r}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if not isinstance(content, str):
        reason = choices[0].get("finish_reason")
        refusal = message.get("refusal") if isinstance(message, dict) else None
        extra = f", refusal={refusal!r}" if refusal else ""
        raise _Final(f"judge_bad_response: no message content (finish_reason={reason!r}{extra})")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return JudgeResult(
        text=content,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
