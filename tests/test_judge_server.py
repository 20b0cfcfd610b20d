"""The HTTP judge against a REAL OpenAI-compatible server: llama-cpp-python serving the demo GGUF on 127.0.0.1.

Includes a server killed mid-run: the items after the kill are recorded as errors and the run finishes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from alignslm.judge import LLMScoreJudge, PerplexityJudge, default_judge_model
from alignslm.judge_http import OpenAIBackend

pytestmark = [pytest.mark.server, pytest.mark.integration]

P = "Anna the cook washed the dirty pan in the kitchen."
TRUE, SHUF = "Now the pan is clean.", "Clean pan the now is."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed (pip install alignslm[server])")
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python was installed without [server]")
    port = _free_port()
    # one thread: llama.cpp threads spin at barriers, and on a loaded 2-core machine two spinning threads
    # made a 48-token reply take > 300 s (one thread: ~3 s)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_judge_model()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                             "--logits_all", "true", "--model_alias", "smollm2"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.time()
    while time.time() - t0 < 180:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if json.loads(r.read())["data"]:
                    return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    pytest.fail("llama_cpp.server did not answer within 180 s")


@pytest.fixture()
def server(tmp_path):
    proc, url = _start(tmp_path)
    yield proc, url
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_real_server_scores_logprobs_and_perplexity(server, tmp_path):
    _, url = server
    be = OpenAIBackend(url, "smollm2", concurrency=2, timeout_s=300, retries=1, backoff_s=0.1,
                       cache_path=tmp_path / "cache.jsonl")
    res = LLMScoreJudge(be, max_new_tokens=48).score([P, P], [TRUE, SHUF])
    for r in res:  # a 135M model may not follow the format; then the score is missing, never 0
        assert r.raw and (r.score in (1.0, 2.0, 3.0, 4.0, 5.0) or (r.score is None and "unparseable" in r.error))
    exp = LLMScoreJudge(be, expected=True).score([P], [TRUE])[0]
    assert exp.error is None, exp.error
    assert 1.0 <= exp.score <= 5.0 and sum(exp.probs) == pytest.approx(1.0)
    ppl = PerplexityJudge(be).score([P, P], [TRUE, SHUF])
    assert all(r.error is None and r.perplexity > 1.0 for r in ppl), [r.error for r in ppl]
    # no ordering check: llama-cpp-python 0.3.36's echoed token logprobs look shifted by one position
    # (the top alternatives at i predict token i+1), so use the in-process backend for perplexity there
    n = be.stats["requests"]
    LLMScoreJudge(be, max_new_tokens=48).score([P, P], [TRUE, SHUF])  # cached: no new request
    assert be.stats["requests"] == n


def test_server_killed_mid_run(server, tmp_path):
    proc, url = server
    be = OpenAIBackend(url, "smollm2", concurrency=1, timeout_s=60, retries=2, backoff_s=0.05)
    conts = [TRUE, SHUF, "The farmer feeds the pig.", "Now the cup is clean.", "The ship sails.", "Anna smiles."]
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("res", PerplexityJudge(be).score([P] * 6, conts)))
    th.start()
    t0 = time.time()
    while not be._cache and time.time() - t0 < 120:  # kill once the first reply has arrived
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    th.join(120)
    assert not th.is_alive(), "the judge hung after the server died"
    res = out["res"]
    assert res[0].perplexity is not None and res[0].error is None
    assert all(r.perplexity is None and "endpoint error" in r.error for r in res[2:])
    assert be.stats["failures"] >= 4
