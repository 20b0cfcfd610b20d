"""The OpenAI-compatible backend and the LLM score judge against a real local HTTP server (http.server).

The server's reply depends on the continuation text, so one batch exercises every failure at once:
HTTP 500, a timeout, invalid JSON, two different scores, an unparseable reply, a flaky endpoint.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignslm.judge import LLMScoreJudge, PerplexityJudge
from alignslm.judge.http import OpenAIBackend
from alignslm.judge.rubric import parse_score

SECRET = "sk-test-SECRET-0123456789"


class Scripted(BaseHTTPRequestHandler):
    log: list = []
    seen: dict = {}
    broken = False  # every request fails with HTTP 500 (a server up but unable to serve)

    def log_message(self, *a):  # silence http.server
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Scripted.broken:
            return self._send(500, b'{"error": "model not loaded"}')
        Scripted.log.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path.endswith("/completions") and "messages" not in body:
            return self._completion(body)
        msgs = body["messages"]
        user = msgs[-1]["content"] if msgs[-1]["role"] == "user" else ""
        first = msgs[1]["content"]
        cont = re.search(r'Continuation: "(.*)"', first).group(1)
        retry = len(msgs) > 2 and "did not end" in user
        n = Scripted.seen[cont] = Scripted.seen.get(cont, 0) + 1
        if "FAIL500" in cont:
            return self._send(500, b'{"error": "boom"}')
        if "SLOW" in cont:
            time.sleep(1.5)
        if "BADJSON" in cont:
            return self._send(200, b"{not json")
        if "FLAKY" in cont and n == 1:
            return self._send(503, b"busy")
        if "TWO" in cont:
            text = "Score: 3" if retry else "Maybe Score: 2, or rather Score: 5."
        elif "GARBLE" in cont:
            text = "I cannot decide."
        else:
            text = "The continuation follows the prompt well.\nScore: 4"
        return self._json({"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _completion(self, body):
        text = body["prompt"]
        if not body.get("echo"):  # expected score: top logprobs of the tokens after "Score:"
            return self._json({"choices": [{"text": " 4", "logprobs": {"tokens": [" ", "4"], "top_logprobs": [
                {" ": -0.1, "\n": -3.0},
                {"4": -0.2, " 5": -2.0, "3": -2.5, "x": -3.0}]}}]})
        toks, offs, lps, pos = [], [], [], 0
        for w in text.split(" "):
            toks.append(w)
            offs.append(pos)
            lps.append(None if pos == 0 else -1.0)
            pos += len(w) + 1
        return self._json({"choices": [{"text": "", "logprobs": {"tokens": toks, "text_offset": offs,
                                                                  "token_logprobs": lps}}]})

    def _json(self, obj):
        self._send(200, json.dumps(obj).encode())

    def _send(self, code, data):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _serve(port: int = 0) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", port), Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture()
def server():
    Scripted.log, Scripted.seen, Scripted.broken = [], {}, False
    srv = _serve()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def backend(url, tmp_path, **kw):
    args = {"concurrency": 4, "timeout_s": 0.5, "retries": 1, "backoff_s": 0.01,
            "cache_path": tmp_path / "cache.jsonl"}
    args.update(kw)
    return OpenAIBackend(url, "judge-model", api_key_env="ALIGNSLM_TEST_KEY", **args)


def test_parse_score():
    assert parse_score("Good.\nScore: 4") == 4
    assert parse_score("**Score:** 5") == 5
    assert parse_score("Score: 3/5") == 3
    assert parse_score("score is 2") == 2
    assert parse_score("Score: 4. Final answer, Score: 4") == 4
    assert parse_score("Score: 2 ... no, Score: 5") is None  # two different scores
    assert parse_score("Score: 7") is None and parse_score("Score: 3.5") is None
    assert parse_score("It is fine.") is None and parse_score("") is None
    assert parse_score(" 4 ") == 4


def test_every_failure_is_recorded_and_the_run_goes_on(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ALIGNSLM_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="alignslm")
    be = backend(server, tmp_path)
    judge = LLMScoreJudge(be)
    conts = ["the pan is clean", "FAIL500 x", "SLOW x", "BADJSON x", "TWO scores", "GARBLE x", "FLAKY x"]
    res = judge.score(["Anna washed the pan."] * len(conts), conts)
    by = dict(zip(conts, res))
    assert by["the pan is clean"].score == 4.0 and by["the pan is clean"].error is None
    assert by["FAIL500 x"].score is None and "HTTP 500" in by["FAIL500 x"].error
    assert by["SLOW x"].score is None and "timeout" in by["SLOW x"].error
    assert by["BADJSON x"].score is None and "invalid JSON" in by["BADJSON x"].error
    assert by["TWO scores"].score == 3.0 and by["TWO scores"].retried  # retried once, then parsed
    assert by["GARBLE x"].score is None and by["GARBLE x"].retried and "unparseable" in by["GARBLE x"].error
    assert by["FLAKY x"].score == 4.0  # 503 then success: retry with backoff
    assert all(r.score != 0 for r in res)
    assert Scripted.seen["FAIL500 x"] == 2  # 1 + retries=1
    # the key is sent, and never logged nor written
    assert all(e["auth"] == f"Bearer {SECRET}" for e in Scripted.log)
    assert SECRET not in caplog.text and "HTTP 500" in caplog.text
    assert SECRET not in (tmp_path / "cache.jsonl").read_text()


def test_cache_avoids_second_request(server, tmp_path):
    be = backend(server, tmp_path)
    LLMScoreJudge(be).score(["p", "p"], ["a", "b"])
    n = len(Scripted.log)
    be2 = backend(server, tmp_path)  # a resumed run reads the same cache file
    res = LLMScoreJudge(be2).score(["p", "p"], ["a", "b"])
    assert [r.score for r in res] == [4.0, 4.0]
    assert len(Scripted.log) == n and be2.stats["cache_hits"] == 2
    other = OpenAIBackend(server, "another-model", cache_path=tmp_path / "cache.jsonl", retries=0)
    LLMScoreJudge(other).score(["p"], ["a"])  # keyed by model: asked again
    assert len(Scripted.log) == n + 1


def test_client_error_is_not_retried(tmp_path):
    class NotFound(BaseHTTPRequestHandler):
        calls = 0

        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            NotFound.calls += 1
            self.send_response(404)
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        be = OpenAIBackend(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", retries=3, backoff_s=0.01)
        (text, err), = be.chat([[{"role": "user", "content": "hi"}]], 4)
        assert text is None and "HTTP 404" in err and NotFound.calls == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_dead_endpoint_gives_errors_not_exceptions(tmp_path):
    be = OpenAIBackend("http://127.0.0.1:9/v1", "m", retries=1, backoff_s=0.01, timeout_s=0.5)
    res = LLMScoreJudge(be).score(["p", "q"], ["a", "b"])
    assert all(r.score is None and "connection failed" in r.error for r in res)


def test_expected_score_from_logprobs(server, tmp_path):
    res = LLMScoreJudge(backend(server, tmp_path), expected=True).score(["p"], ["fine"])
    probs = res[0].probs
    assert probs[0] == 0 and probs[1] == 0 and abs(sum(probs) - 1) < 1e-9
    # P(5)/P(4) = exp(-2.0 + 0.2), P(3)/P(4) = exp(-2.5 + 0.2); "x" is not a digit and is ignored
    assert probs[4] / probs[3] == pytest.approx(0.16530, rel=1e-3)
    assert probs[2] / probs[3] == pytest.approx(0.10026, rel=1e-3)
    assert res[0].score == pytest.approx(sum((i + 1) * p for i, p in enumerate(probs)))
    assert 3.9 < res[0].score < 4.1


def test_perplexity_from_echo(server, tmp_path):
    res = PerplexityJudge(backend(server, tmp_path)).score(["one two"], ["three four"])
    assert res[0].perplexity == pytest.approx(2.718281828, rel=1e-6)  # every echoed token at log-prob -1


def test_judge_stage_records_every_bad_item(server, tmp_path, monkeypatch, caplog):
    from alignslm.config import load_config
    from alignslm.rundir import StageContext, read_jsonl, write_jsonl
    from alignslm.stages import judge as judge_stage

    monkeypatch.setenv("ALIGNSLM_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="alignslm")
    tdir = tmp_path / "round-1" / "transcribe"
    texts = ["the pan is clean", "", "   \t", "#### 1234 !!! ..", "x", "FAIL500 x", "TWO scores", "GARBLE x",
             "go to the farm go to the farm"]
    # k=4: a clip the ASR could not read; the transcribe stage writes its text as "" beside the error
    rows = [{"prompt_id": "p0", "k": k, "prompt_text": "Anna washed the pan.", "text": "" if t == "x" else t,
             "error": "bad audio: corrupt" if t == "x" else None} for k, t in enumerate(texts)]
    write_jsonl(tdir / "transcripts.jsonl", rows)
    cfg = load_config(overrides=["judge.mode=score", "judge.backend=openai", f"judge.url={server}", "judge.retries=1",
                                 "judge.backoff_s=0.01", "judge.timeout_s=0.5", "judge.shard_size=4",
                                 "judge.expected_score=false", "judge.api_key_env=ALIGNSLM_TEST_KEY"])
    assert judge_stage.check(cfg) == []
    ctx = StageContext(name="judge", cfg=cfg, run_dir=tmp_path, out=tmp_path / "round-1" / "judge", round=1,
                       inputs={"transcribe": tdir}, progress=False)
    s = judge_stage.run(ctx)
    out = read_jsonl(ctx.out / "judgments.jsonl")
    assert [r["k"] for r in out] == list(range(len(texts)))
    scores = [r["score"] for r in out]
    assert scores == [4.0, None, None, None, None, None, 3.0, None, None]  # the loop is screened, not asked
    assert out[0]["autobleu"] == 0.0 and out[8]["autobleu"] == pytest.approx(6 / 7)
    assert out[1]["error"] == "empty transcript" and out[2]["error"] == "empty transcript"
    assert out[3]["error"].startswith("garbage") and out[4]["error"].startswith("transcription failed")
    assert "HTTP 500" in out[5]["error"] and "unparseable" in out[7]["error"]
    assert out[8]["error"].startswith("repetition") and out[8]["screened"]
    assert s["items"] == 9 and s["judged"] == 2 and s["missing"] == 7
    assert s["missing_by_reason"] == {"empty transcript": 2, "garbage transcript": 1, "transcription failed": 1,
                                      "endpoint error": 1, "unparseable judge reply": 1, "repetition": 1}
    assert s["score_histogram"]["4"] == 1 and s["score_histogram"]["3"] == 1 and s["retried"] == 2
    assert len(read_jsonl(ctx.out / "rejects.jsonl")) == 7
    # the key appears nowhere in the run directory, nor in the logs
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="ignore"), f
    assert SECRET not in caplog.text


# ---------------------------------------------------------------------------------------------- no silent failure


def _judge_step(tmp_path, url, texts):
    """A run directory whose round-1 transcribe stage is finished, and the judge step of that round."""
    from alignslm.config import load_config
    from alignslm.pipeline import STAGES, Step
    from alignslm.rundir import Manifest, write_jsonl

    run = tmp_path / "run"
    rows = [{"prompt_id": f"p{k // 2}", "k": k % 2, "prompt_text": "Anna washed the pan.", "text": t, "error": None}
            for k, t in enumerate(texts)]
    write_jsonl(run / "round-1" / "transcribe" / "transcripts.jsonl", rows)
    Manifest(run).mark_done("round-1/transcribe", "h0", {}, 0.0)
    cfg = load_config(overrides=["judge.mode=score", "judge.backend=openai", f"judge.url={url}", "judge.retries=0",
                                 "judge.timeout_s=5", "judge.shard_size=2", "judge.expected_score=false",
                                 f"run.run_dir={run}", "curriculum.rounds=1"])
    return run, cfg, Step(STAGES["judge"], 1)


TEXTS = ["the pan is clean", "the pan is shiny", "she dried the pan", "TWO scores", "the pan is on the shelf",
         "anna smiled"]


def test_judge_down_fails_before_any_work_and_the_same_step_resumes(tmp_path):
    from alignslm.judge.http import JudgeEndpointError
    from alignslm.pipeline import run_step
    from alignslm.rundir import Manifest, read_jsonl

    Scripted.log, Scripted.seen, Scripted.broken = [], {}, False
    srv = _serve()
    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()  # the server is down
    run, cfg, step = _judge_step(tmp_path, f"http://127.0.0.1:{port}/v1", TEXTS)
    with pytest.raises(JudgeEndpointError, match=f"judge endpoint http://127.0.0.1:{port}/v1 is not reachable"):
        run_step(step, cfg, run, Manifest(run), progress=False)
    out = run / "round-1" / "judge"
    assert not (out / "judgments.jsonl").exists() and not (out / "shards").exists()
    assert not Manifest(run).entry("round-1/judge")["finished"]
    srv = _serve(port)  # the server is up: the same step runs and is recorded
    try:
        ran, summary = run_step(step, cfg, run, Manifest(run), progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
    assert ran and summary["judged"] == summary["items_tried"] == len(TEXTS) and summary["items_failed"] == 0
    assert Manifest(run).entry("round-1/judge")["finished"]
    assert [r["score"] for r in read_jsonl(out / "judgments.jsonl")] == [4.0, 4.0, 4.0, 3.0, 4.0, 4.0]


def test_stage_where_most_items_fail_is_not_finished_and_resumes_to_the_same_artifacts(tmp_path):
    from alignslm.pipeline import StageFailed, run_step
    from alignslm.rundir import Manifest, read_jsonl

    Scripted.log, Scripted.seen, Scripted.broken = [], {}, True
    srv = _serve()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        run, cfg, step = _judge_step(tmp_path / "a", url, TEXTS)
        with pytest.raises(StageFailed, match=r"round-1/judge: 6 of 6 items failed \(rejects by reason: judge: 6\)"):
            run_step(step, cfg, run, Manifest(run), progress=False)
        out = run / "round-1" / "judge"
        assert not Manifest(run).entry("round-1/judge")["finished"]
        assert len(read_jsonl(out / "failed-attempt" / "rejects.jsonl")) == 6  # kept for inspection
        assert not (out / "shards").exists() and not (out / "rejects.jsonl").exists()
        Scripted.broken = False  # the cause is fixed: the same command redoes the failed items
        ran, summary = run_step(step, cfg, run, Manifest(run), progress=False)
        assert ran and summary["items_failed"] == 0 and summary["rejects"] == 0
        assert Manifest(run).entry("round-1/judge")["finished"]
        run_b, cfg_b, _ = _judge_step(tmp_path / "b", url, TEXTS)  # a run where the server never broke
        run_step(step, cfg_b, run_b, Manifest(run_b), progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
    assert (out / "judgments.jsonl").read_text() == (run_b / "round-1" / "judge" / "judgments.jsonl").read_text()


def test_failure_share_rule():
    from alignslm.pipeline import failure_problem

    ok = {"items_tried": 6, "items_failed": 3, "reject_reasons": {"judge": 3}}
    assert failure_problem("round-1/judge", ok, 0.5) is None
    bad = {**ok, "items_failed": 4, "reject_reasons": {"judge": 4}}
    assert "4 of 6 items failed (rejects by reason: judge: 4)" in failure_problem("round-1/judge", bad, 0.5)
    assert failure_problem("k", {"items_tried": 2, "items_failed": 2}, 1.0)  # every item failed: whatever the share
    assert failure_problem("k", {"items_tried": 0, "items_failed": 0}, 0.5) is None
    assert failure_problem("k", {"items": 5}, 0.5) is None  # a stage that does not count items


def test_cli_refuses_a_dead_judge_endpoint_with_one_line(tmp_path, capsys):
    from alignslm import run

    srv = _serve()
    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    code = run.main(["--stage", "judge", "--quiet", "judge.backend=openai", f"judge.url=http://127.0.0.1:{port}/v1",
                     f"run.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "is not reachable" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_expected_errors_are_one_message_bugs_and_debug_show_the_traceback(capsys, caplog):
    from alignslm.run import report_failure

    caplog.set_level(logging.ERROR, logger="alignslm")
    report_failure("round-1/train", ValueError("train: 18 pairs ... lower train.warmup_steps"))
    err = capsys.readouterr().err
    assert "error: stage round-1/train failed: train: 18 pairs" in err and "--debug" in err
    assert not caplog.records
    report_failure("round-1/train", ValueError("x"), debug=True)
    assert caplog.records[-1].exc_info is not None
    report_failure("round-1/train", KeyError("prompt"))
    assert "KeyError: 'prompt'" in capsys.readouterr().err and caplog.records[-1].exc_info is not None
