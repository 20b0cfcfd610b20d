"""The HTTP judge against a REAL OpenAI-compatible server: llama-cpp-python serving the demo GGUF on 127.0.0.1.

Includes a server killed mid-run: the items after the kill are recorded as errors and the run finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from helpers import free_port, start_judge_server

from alignslm.judge import LLMScoreJudge, PerplexityJudge
from alignslm.judge.http import OpenAIBackend

pytestmark = [pytest.mark.server, pytest.mark.integration]

P = "Anna the cook washed the dirty pan in the kitchen."
TRUE, SHUF = "Now the pan is clean.", "Clean pan the now is."


@pytest.fixture()
def server(tmp_path):
    proc, url = start_judge_server(tmp_path)
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
    cache = tmp_path / "cache.jsonl"
    be = OpenAIBackend(url, "smollm2", concurrency=1, timeout_s=60, retries=2, backoff_s=0.05, cache_path=cache)
    conts = [TRUE, SHUF, "The farmer feeds the pig.", "Now the cup is clean.", "The ship sails.", "Anna smiles."]
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("res", PerplexityJudge(be).score([P] * 6, conts)))
    th.start()
    t0 = time.time()
    while not (cache.exists() and cache.stat().st_size) and time.time() - t0 < 120:  # the first reply is in
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    th.join(120)
    assert not th.is_alive(), "the judge hung after the server died"
    res = out["res"]
    assert res[0].perplexity is not None and res[0].error is None
    assert all(r.perplexity is None and "endpoint error" in r.error for r in res[2:])
    assert be.stats["failures"] >= 4


def _judge_run(root, url):
    """A run directory whose round-1 transcribe stage is finished, and the judge step of that round."""
    from alignslm.config import load_config
    from alignslm.pipeline import STAGES, Step
    from alignslm.rundir import Manifest, write_jsonl

    run = root / "run"
    conts = [TRUE, SHUF, "The farmer feeds the pig.", "Now the cup is clean."]
    write_jsonl(run / "round-1" / "transcribe" / "transcripts.jsonl",
                [{"prompt_id": f"p{i // 2}", "k": i % 2, "prompt_text": P, "text": t, "error": None}
                 for i, t in enumerate(conts)])
    Manifest(run).mark_done("round-1/transcribe", "h0", {}, 0.0)
    cfg = load_config(overrides=["judge.mode=perplexity", "judge.backend=openai", f"judge.url={url}",
                                 "judge.model_name=smollm2", "judge.concurrency=1", "judge.timeout_s=300",
                                 "judge.retries=1", "judge.shard_size=2", f"run.run_dir={run}", "curriculum.rounds=1"])
    return run, cfg, Step(STAGES["judge"], 1)


def test_judge_stage_with_the_server_down_fails_loudly_then_resumes_to_the_same_artifacts(tmp_path):
    from alignslm.judge.http import JudgeEndpointError
    from alignslm.pipeline import run_step
    from alignslm.rundir import Manifest

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    run, cfg, step = _judge_run(tmp_path / "a", url)
    with pytest.raises(JudgeEndpointError, match=f"judge endpoint {url} is not reachable"):
        run_step(step, cfg, run, Manifest(run), progress=False)  # before any item is asked
    out = run / "round-1" / "judge"
    assert not Manifest(run).entry("round-1/judge")["finished"] and not (out / "judgments.jsonl").exists()
    proc, _ = start_judge_server(tmp_path, port)  # the server is up: the same step runs and is recorded
    try:
        ran, summary = run_step(step, cfg, run, Manifest(run), progress=False)
        assert ran and summary["judged"] == 4 and summary["items_failed"] == 0
        assert Manifest(run).entry("round-1/judge")["finished"]
        run_b, cfg_b, _ = _judge_run(tmp_path / "b", url)  # a run whose server was up all along
        run_step(step, cfg_b, run_b, Manifest(run_b), progress=False)
    finally:
        proc.terminate()
        proc.wait(30)
    assert (out / "judgments.jsonl").read_text() == (run_b / "round-1/judge/judgments.jsonl").read_text()


def test_demo_run_whose_judge_server_dies_fails_loudly_and_resumes_to_the_same_judgments(tmp_path):
    """The whole method (smoke demo) judged by a real llama.cpp server that dies once transcription is done:
    the run stops with one line and the judge stage unrecorded; with the server back the same command
    finishes, and its judgments equal a fresh re-judging of the same transcripts."""
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "alignslm.run", "--smoke", "--quiet", f"run.run_dir={run}", "curriculum.rounds=1",
           "judge.backend=openai", f"judge.url=http://127.0.0.1:{port}/v1", "judge.model_name=smollm2",
           "judge.concurrency=1", "judge.timeout_s=300", "judge.retries=1", "judge.backoff_s=0.1"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    manifest = run / "manifest.json"

    def finished(key: str) -> bool:
        try:
            return bool(json.loads(manifest.read_text())["stages"].get(key, {}).get("finished"))
        except (OSError, ValueError):
            return False

    proc, _ = start_judge_server(tmp_path, port)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    while job.poll() is None and not finished("round-1/transcribe"):
        time.sleep(0.2)
    proc.kill()  # the judge server dies just before the judge stage
    proc.wait()
    _, err = job.communicate(timeout=1800)
    assert job.returncode == 1, err[-3000:]
    assert "error: stage round-1/judge" in err and "Traceback" not in err and not finished("round-1/judge")
    proc, _ = start_judge_server(tmp_path, port)  # back up: the same command resumes and finishes
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=root)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "[skip] round-1/transcribe" in out.stderr and "[ran ] round-1/judge" in out.stderr
        judged = json.loads(manifest.read_text())["stages"]["round-1/judge"]["summary"]
        assert judged["judged"] > 0 and judged["items_failed"] == 0
        resumed = (run / "round-1/judge/judgments.jsonl").read_text()
        for name in ("http_cache.jsonl", "judgments.jsonl"):  # every item judged again, every request asked
            (run / "round-1/judge" / name).unlink()
        shutil.rmtree(run / "round-1/judge/shards")
        again = subprocess.run([*cmd, "--stage", "judge", "--round", "1", "--force"], capture_output=True,
                               text=True, timeout=1800, env=env, cwd=root)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)
    assert (run / "round-1/judge/judgments.jsonl").read_text() == resumed
