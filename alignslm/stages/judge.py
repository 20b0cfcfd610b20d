"""Stage judge: transcripts.jsonl -> judgments.jsonl (score 1-5 or perplexity, auto-BLEU, the raw reply).

Items the judge cannot use are recorded (rejects.jsonl) and kept with ``score``/``perplexity`` null:
an ASR error upstream, an empty or whitespace transcript, garbage text (mostly non-letters), a judge
reply that stays unparseable after one retry, an endpoint error (HTTP 500, timeout, invalid JSON, a dead
server).  A missing score is never 0.  With the HTTP backend the replies are cached in
``judge/http_cache.jsonl`` (keyed by model and request; no API key inside), so a resumed run does not pay twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from alignslm.judge import AutoBleuJudge, default_judge_model, load_judge
from alignslm.rundir import StageContext, read_jsonl, run_sharded
from alignslm.textmetrics import words


def transcript_problem(text: str) -> str | None:
    """Why a transcript cannot be judged (None = fine): empty, or garbage (mostly non-letters)."""
    if not text or not text.strip():
        return "empty transcript"
    visible = [ch for ch in text if not ch.isspace()]
    letters = sum(ch.isalpha() for ch in visible)
    if letters / len(visible) < 0.5:
        return "garbage transcript (mostly non-letters)"
    ws = words(text)
    if not ws or not any(sum(ch.isalpha() for ch in w) >= 2 for w in ws):
        return "garbage transcript (no word)"
    if max(len(w) for w in ws) > 40:
        return "garbage transcript (a 40+ character word)"
    return None


def run(ctx: StageContext) -> dict:
    cfg = ctx.cfg.judge
    rows = read_jsonl(ctx.inputs["transcribe"] / "transcripts.jsonl")
    judge = load_judge(cfg, cache_path=ctx.out / "http_cache.jsonl", device=_device(ctx.cfg.run.device),
                       cache_dir=ctx.cfg.run.cache_dir)
    ab = AutoBleuJudge(2)

    def process(chunk: list[dict]) -> list[dict]:
        out, todo = [], []
        for r in chunk:
            item = f"{r['prompt_id']}/{r['k']}"
            problem = _upstream_problem(r)
            row = {"prompt_id": r["prompt_id"], "k": r["k"], "score": None, "perplexity": None,
                   "autobleu": ab.score([""], [r["text"]])[0].score if r["text"].strip() else None,
                   "raw": "", "error": problem, "prompt_text": r["prompt_text"], "text": r["text"],
                   "asked": problem is None}
            if problem:
                ctx.rejects.add(item, problem)
            else:
                todo.append(len(out))
            out.append(row)
        results = judge.score([out[i]["prompt_text"] for i in todo], [out[i]["text"] for i in todo])
        for i, res in zip(todo, results):
            out[i].update(score=res.score, perplexity=res.perplexity, raw=res.raw, error=res.error,
                          probs=res.probs, retried=res.retried)
            if res.score is None and res.perplexity is None:
                ctx.rejects.add(f"{out[i]['prompt_id']}/{out[i]['k']}", f"judge: {res.error}")
        return out

    done = run_sharded(ctx, rows, cfg.shard_size, process, "judgments.jsonl")
    return _summary(done, cfg.mode, getattr(judge.backend, "stats", None))


def _upstream_problem(r: dict) -> str | None:
    """Why a transcript row cannot be put to the judge (failed upstream or unjudgeable text), or None."""
    if r.get("error"):
        return f"transcription failed: {r['error']}"
    return transcript_problem(r["text"]) or (
        transcript_problem(r["prompt_text"]) and f"prompt: {transcript_problem(r['prompt_text'])}")


def _summary(done: list[dict], mode: str, http_stats: dict | None) -> dict:
    key = "score" if mode == "score" else "perplexity"
    vals = [r[key] for r in done if r[key] is not None]
    kinds = Counter((r["error"] or "").split(":")[0].split(" (")[0] for r in done if r[key] is None)
    asked = [r for r in done if r.get("asked", True)]  # the judge's own items (upstream failures are not)
    out = {"items": len(done), "judged": len(vals), "missing": len(done) - len(vals),
           "items_tried": len(asked), "items_failed": sum(r[key] is None for r in asked),
           "missing_by_reason": dict(kinds), f"mean_{key}": sum(vals) / len(vals) if vals else None,
           "retried": sum(bool(r.get("retried")) for r in done)}
    if mode == "score":
        from alignslm.pairs import score_histogram

        out["score_histogram"] = score_histogram(vals)
    if http_stats:
        out["http"] = dict(http_stats)
    return out


def _device(device: str) -> str:
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover
            return "cpu"
    return device


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    j = cfg.judge
    problems = []
    if j.mode not in ("score", "perplexity"):
        problems.append(f"judge.mode={j.mode!r}: expected score or perplexity")
    if j.backend == "openai":
        if not j.url:
            problems.append("judge.backend=openai needs judge.url")
        else:
            from alignslm.judge_http import JudgeEndpointError, probe_endpoint

            try:
                probe_endpoint(j.url, j.api_key_env, min(j.timeout_s, 10.0))
            except JudgeEndpointError as e:
                problems.append(str(e))
    elif j.backend == "transformers":
        try:
            p = Path(j.model_path).expanduser() if j.model_path else default_judge_model()
            if not p.exists():
                problems.append(f"judge.model_path {p} does not exist")
        except FileNotFoundError as e:
            problems.append(str(e))
    else:
        problems.append(f"judge.backend={j.backend!r}: expected transformers or openai")
    return problems
