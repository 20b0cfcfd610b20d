"""Stage judge: transcripts.jsonl -> judgments.jsonl (score 1-5 or perplexity, auto-BLEU, the raw reply).

Every transcript first goes through the signal's screen and, in perplexity mode, gets the signal value
``sense`` (alignslm.judge.judge_transcripts: the same function as the evaluation's).  Items the judge cannot use
are recorded (rejects.jsonl) and kept with ``score``/``perplexity`` null: an ASR error upstream, an empty or
whitespace transcript, garbage text (mostly non-letters), a screened-out transcript (``screened``: a known
Whisper hallucination, Whisper's own doubt, too few words per second, a loop; it loses every pair), a judge
reply that stays unparseable after one retry, an endpoint error (HTTP 500, timeout, invalid JSON, a dead
server).  A missing score is never 0.  With the HTTP backend the replies are cached in
``judge/http_cache.jsonl`` (keyed by model and request; no API key inside), so a resumed run does not pay twice.
"""

from __future__ import annotations

from collections import Counter

from alignslm.impl import resolve_device
from alignslm.judge import (
    PerplexityJudge,
    backend_problems,
    judge_asked,
    judge_transcripts,
    load_judge,
    transcription_reject,
)
from alignslm.judge.rubric import score_histogram
from alignslm.judge.signal import rules_from
from alignslm.rundir import StageContext, read_jsonl, run_sharded


def run(ctx: StageContext) -> dict:
    cfg = ctx.cfg.judge
    rows = read_jsonl(ctx.inputs["transcribe"] / "transcripts.jsonl")
    judge = load_judge(cfg, cache_path=ctx.out / "http_cache.jsonl", device=resolve_device(ctx.cfg.run.device),
                       cache_dir=ctx.cfg.run.cache_dir)
    rules = rules_from(cfg)
    all_prompts = [r["prompt_text"] for r in rows]  # contrast prompts from the whole stage, not the shard
    ppl = judge if isinstance(judge, PerplexityJudge) else None  # score mode: screen, then the 1-5 score
    scorer = None if ppl is not None else judge

    def process(chunk: list[dict]) -> list[dict]:
        out = [{"prompt_id": r["prompt_id"], "k": r["k"], "score": None, "perplexity": None, "autobleu": None,
                "raw": "", "prompt_text": r["prompt_text"], "text": r["text"],
                # a failed continuation has text "" (transcribe stage); otherwise the error was the prompt's, whose
                # empty prompt_text judge_rows rejects as "prompt: ..." (not the continuation's fault)
                "reject": transcription_reject(r.get("error"), r["text"]),
                "seconds": r.get("seconds"), "avg_logprob": r.get("avg_logprob"),
                "no_speech_prob": r.get("no_speech_prob")} for r in chunk]
        judge_transcripts(out, ppl, scorer, rules, all_prompts, score_required=scorer is not None)
        for o in out:
            # asked: the judge's own items (upstream failures and screened-out text are not; run.max_failed_share)
            o["asked"] = judge_asked(o)
            o["error"] = o.pop("reject")
            if o["error"]:
                ctx.rejects.add(f"{o['prompt_id']}/{o['k']}", o["error"])
        return out

    done = run_sharded(ctx, rows, cfg.shard_size, process, "judgments.jsonl")
    return _summary(done, cfg.mode, getattr(judge.backend, "stats", None))


def _reason(error: str | None) -> str:
    """The kind of an item's error for the summary: 'judge: endpoint error: HTTP 500 ...' -> 'endpoint error'."""
    return (error or "").removeprefix("judge: ").split(":")[0].split(" (")[0]


def _summary(done: list[dict], mode: str, http_stats: dict | None) -> dict:
    key = "score" if mode == "score" else "perplexity"
    screened = Counter(_reason(r["error"]) for r in done if r.get("screened") and r["error"])
    vals = [r[key] for r in done if r[key] is not None]
    kinds = Counter(_reason(r["error"]) for r in done if r[key] is None)
    asked = [r for r in done if r.get("asked", True)]  # the judge's own items (upstream failures are not)
    out = {"items": len(done), "judged": len(vals), "missing": len(done) - len(vals),
           "items_tried": len(asked), "items_failed": sum(r[key] is None for r in asked),
           "missing_by_reason": dict(kinds), f"mean_{key}": sum(vals) / len(vals) if vals else None,
           "retried": sum(bool(r.get("retried")) for r in done), "screened": dict(screened)}
    if mode == "score":
        out["score_histogram"] = score_histogram(vals)
    if http_stats:
        out["http"] = dict(http_stats)
    return out


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    return backend_problems(cfg.judge)
