"""Judge backend for any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, TGI, a hosted API).

- ``/chat/completions`` for free-generation scores; ``/completions`` with ``logprobs`` after a forced
  "Score:" for the expected score, and with ``echo`` + ``logprobs`` for perplexity (where supported).
- Requests run concurrently (a thread pool), each with a timeout and retries with exponential backoff on
  connection errors, timeouts, HTTP 429/5xx and invalid JSON.  A request that still fails becomes a
  per-item error (the caller records it); the run goes on.
- A per-run cache of successful replies keyed by (model, endpoint, request), stored as JSONL (e.g. in the
  judge stage directory): a resumed run does not pay twice.
- The API key is read from the environment variable named in the config, sent only as the
  ``Authorization`` header, and never logged, cached or written: errors are scrubbed of it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignslm import logger
from alignslm.judge.rubric import DIGITS, SCORE_PREFIX


class HTTPJudgeError(RuntimeError):
    """A request that failed for good (after its retries)."""


class JudgeEndpointError(RuntimeError):
    """The endpoint cannot serve the run at all (down, wrong URL, refused key): found before any work."""


def probe_endpoint(url: str, api_key_env: str = "ALIGNSLM_API_KEY", timeout_s: float = 10.0) -> list[str]:
    """``GET <url>/models``: the model names the endpoint serves; JudgeEndpointError when it cannot be used.

    Any HTTP answer but 401/403 counts as reachable (a server without ``/models`` answers 404: the requests
    themselves will tell); no answer at all (refused, unknown host, timeout) and a refused key are errors.
    """
    base = url.rstrip("/")
    key = os.environ.get(api_key_env) or None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(base + "/models", headers=headers, method="GET")
    start = ("start the server (e.g. `vllm serve <model dir> --port 8000`, or `python -m llama_cpp.server "
             "--model <file.gguf> --port 8000`) or fix judge.url")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - user-given URL
            body = resp.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise JudgeEndpointError(f"judge endpoint {base} refused the request (HTTP {e.code}): set the API key "
                                     f"in ${api_key_env} (judge.api_key_env)") from None
        return []
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise JudgeEndpointError(f"judge endpoint {base} is not reachable ({reason}); {start}") from None
    try:
        return [str(m.get("id")) for m in json.loads(body).get("data", []) if isinstance(m, dict)]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []


class OpenAIBackend:
    """Chat/completions client with concurrency, timeouts, retries with backoff and a reply cache."""

    def __init__(self, url: str, model: str, *, api_key_env: str = "ALIGNSLM_API_KEY", concurrency: int = 8,
                 timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
                 cache_path: str | Path | None = None, top_logprobs: int = 10):
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"{self.url}#{model}"
        self._key = os.environ.get(api_key_env) or None
        self._key_env = api_key_env
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.top_logprobs = top_logprobs
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failures": 0}
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line from a killed run: that reply is simply asked again
        logger.info("judge backend: %s (%d cached replies, key from $%s: %s)", self.name, len(self._cache),
                    api_key_env, "set" if self._key else "not set")

    def check_endpoint(self) -> None:
        """Fail before any work when the endpoint cannot be used (see :func:`probe_endpoint`)."""
        served = probe_endpoint(self.url, self._key_env, min(self.timeout_s, 10.0))
        if served and self.model not in served:
            logger.warning("judge endpoint %s serves %s, not judge.model_name=%r; requests name %r anyway",
                           self.url, ", ".join(served[:5]), self.model, self.model)

    # ----------------------------------------------------------------------------------------------
    # Transport

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _request_once(self, path: str, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - user-given URL
            body = resp.read()
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"invalid JSON from the endpoint ({e}): {body[:120]!r}") from e

    def post(self, path: str, payload: dict) -> dict:
        """POST with cache, retries and backoff; raises HTTPJudgeError (key-free message) when it gives up."""
        key = hashlib.sha256(json.dumps({"model": self.model, "url": self.url, "path": path, "payload": payload},
                                        sort_keys=True).encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.stats["requests"] += 1
            try:
                reply = self._request_once(path, payload)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code < 500 and e.code != 429:
                    break  # a client error does not get better by asking again
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"timeout after {self.timeout_s}s" if isinstance(reason, TimeoutError) \
                    else f"connection failed ({reason})"
            except ValueError as e:
                last = str(e)
            else:
                self._remember(key, reply)
                return reply
            logger.warning("judge HTTP %s: attempt %d/%d failed: %s", path, attempt + 1, self.retries + 1,
                           self._scrub(last))
        with self._lock:
            self.stats["failures"] += 1
        raise HTTPJudgeError(self._scrub(f"endpoint error: {last} at {path} (after {self.retries + 1} attempts)"))

    def _remember(self, key: str, reply: dict) -> None:
        with self._lock:
            self._cache[key] = reply
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "reply": reply}) + "\n")

    def _map(self, fn: Any, items: list) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    # ----------------------------------------------------------------------------------------------
    # The backend API (see alignslm.judge.rubric.ChatBackend)

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[tuple[str | None, str | None]]:
        def one(conv: list[dict]) -> tuple[str | None, str | None]:
            payload = {"model": self.model, "messages": conv, "max_tokens": max_new_tokens, "temperature": 0.0}
            try:
                reply = self.post("/chat/completions", payload)
                content = reply["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("content is not a string")
                return content, None
            except HTTPJudgeError as e:
                return None, str(e)
            except (KeyError, IndexError, TypeError) as e:
                return None, f"malformed chat reply (no choices[0].message.content: {type(e).__name__})"
        return self._map(one, conversations)

    def digit_probs(self, conversations: list[list[dict]]) -> list[tuple[list[float] | None, str | None]]:
        """P(1..5) of the token after a forced "Score:" through ``/completions`` (chat cannot force a prefix)."""
        def one(conv: list[dict]) -> tuple[list[float] | None, str | None]:
            prompt = "\n\n".join(m["content"] for m in conv) + "\n\n" + SCORE_PREFIX.rstrip()
            payload = {"model": self.model, "prompt": prompt, "max_tokens": 2, "temperature": 0.0,
                       "logprobs": self.top_logprobs}
            try:
                reply = self.post("/completions", payload)
            except HTTPJudgeError as e:
                return None, str(e)
            return _digit_probs_from_logprobs(reply)
        return self._map(one, conversations)

    def perplexity(self, prompts: list[str], continuations: list[str]) -> list[tuple[float | None, str | None]]:
        def one(pc: tuple[str, str]) -> tuple[float | None, str | None]:
            prompt, cont = pc[0].strip(), " " + pc[1].strip()
            payload = {"model": self.model, "prompt": prompt + cont, "max_tokens": 1, "echo": True,
                       "logprobs": 1, "temperature": 0.0}
            try:
                reply = self.post("/completions", payload)
            except HTTPJudgeError as e:
                return None, str(e)
            return _ppl_from_echo(reply, len(prompt), len(prompt + cont))
        return self._map(one, list(zip(prompts, continuations)))


def _digit_probs_from_logprobs(reply: dict) -> tuple[list[float] | None, str | None]:
    """P(1..5), renormalised, at the first generated position whose top logprobs hold a digit 1-5."""
    try:
        tops = reply["choices"][0]["logprobs"]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        tops = None
    if not tops:
        return None, "the endpoint returned no top logprobs on /completions; set judge.expected_score=false"
    for top in tops:
        probs = [0.0] * 5
        for tok, lp in (top or {}).items():
            d = tok.strip()
            if d in DIGITS and lp is not None:
                probs[int(d) - 1] = max(probs[int(d) - 1], math.exp(lp))
        if sum(probs) > 0:
            return [p / sum(probs) for p in probs], None
    return None, f"no digit 1-5 among the top logprobs after {SCORE_PREFIX.strip()!r}"


def _ppl_from_echo(reply: dict, start: int, end: int) -> tuple[float | None, str | None]:
    """Perplexity of the characters [start, end) from an echoed prompt's token logprobs."""
    try:
        lp = reply["choices"][0]["logprobs"]
        toks, offs = lp["token_logprobs"], lp["text_offset"]
    except (KeyError, IndexError, TypeError):
        return None, "the endpoint returned no echoed logprobs (/completions with echo); use judge.mode=score"
    vals = [v for v, o in zip(toks, offs) if start <= o < end and v is not None]
    if not vals:
        return None, "no continuation tokens in the echoed logprobs"
    return math.exp(-sum(vals) / len(vals)), None
