"""The preference signal on transcripts: which ones the chain lets through (:func:`screen`) and how a
judged one scores (:func:`sense`).  One implementation, used by the round stages (judge -> pairs) and by
the evaluation (alignslm.eval.generation, its calibration block), so that what DPO is trained towards and what
the evaluation measures cannot drift apart.

Why a screen: Whisper turns unintelligible or near-silent audio into fluent stock phrases ("Thank you.",
"Thanks for watching!", "you").  A text LM finds those the *most* likely continuations of anything (lowest
perplexity), so without a screen the signal rewards a model for producing noise.  A transcript is screened
out (a reject: it loses against any accepted one) when

- it is empty or garbage (mostly non-letters, no word of two letters, a 40+ character word);
- it consists only of known Whisper hallucinations and filler words (:data:`HALLUCINATIONS`, :data:`FILLERS`);
- it repeats itself: bigram auto-BLEU above ``max_autobleu`` (a loop, not a continuation);
- optional, off by default: Whisper doubted it (no-speech probability above ``max_no_speech``, average token
  log-probability below ``min_avg_logprob``), or it has fewer than ``min_words_per_s`` words per second of
  audio.  On the demo's vocoded speech Whisper's confidence does not separate true continuations from
  babble: faster-whisper's thresholds (0.5 / -1.0) threw out 22% of the true continuations and kept half of
  the base samples (experiments/signal_calibration.md).

How a transcript scores (higher is better), ``kind``:

- ``lnppl``: minus the judge LM's ln-perplexity of the continuation given the prompt's transcript (the
  demo's original signal; per token, so short generic text wins);
- ``pmi``: ln p(c | prompt) - ln p(c | ``neutral``), per token: what *this* prompt adds over a neutral
  story context, i.e. sense given the prompt (generic text gains nothing from the prompt).  The neutral
  context matters: against an empty one, any mid-story text ("And then, you know, it was like that.") gains
  from any story prompt, because the empty context is the start of a document;
- ``pmi_words``: ``pmi`` times the number of words, capped at ``max_words``: the total evidence that the
  continuation follows this prompt, so that a longer on-topic continuation beats a short one;
- ``contrast`` / ``contrast_words``: as ``pmi`` / ``pmi_words``, but against the mean ln-perplexity given
  ``contrast_k`` *other* prompts of the same set (the next ones in sorted order, so the choice does not
  depend on sharding): does the continuation fit its own prompt better than other stories' prompts?  Generic
  story text gains nothing; a continuation that stays on its prompt's topic gains;
- ``pmi_asr``: ``pmi`` + ``asr_weight`` x Whisper's average token log-probability of the transcript: sense
  given the prompt plus how sure Whisper was that this audio is these words (babble decoded into words
  gets a low one; the calibration's best variant on the demo, experiments/signal_calibration.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignslm.textmetrics import auto_bleu, normalize_text, words

if TYPE_CHECKING:
    from alignslm.config import JudgeConfig

# Whisper's well-known outputs on silence, music or unintelligible speech (normalised text).
HALLUCINATIONS = (
    "thank you very much", "thank you so much", "thank you for watching", "thanks for watching",
    "thank you for listening", "thanks for listening", "please subscribe", "subscribe to my channel",
    "like and subscribe", "see you next time", "see you in the next video", "subtitles by",
    "transcribed by", "amara org", "the end", "thank you", "thanks", "bye bye", "bye", "goodbye",
    "i'm sorry", "i don't know", "music", "applause", "laughter", "you",
)
FILLERS = ("um", "uh", "hmm", "mm", "ah", "oh", "okay", "ok", "so", "yeah", "yes", "no", "well", "and", "i",
           "the", "a", "huh", "hey", "hi", "wow", "oh my god", "all right", "alright")
KINDS = ("lnppl", "pmi", "pmi_words", "contrast", "contrast_words", "pmi_asr")


@dataclass(frozen=True)
class SignalRules:
    """What the screen rejects and how a transcript scores: the ``judge`` section's signal fields, unpacked by
    :func:`rules_from`.  No defaults here: the config (``alignslm.config.JudgeConfig``) is the one place for
    them, with their help text and the measurements behind them."""

    kind: str
    hallucinations: bool
    max_no_speech: float | None
    min_avg_logprob: float | None
    min_words_per_s: float
    max_words: int
    max_autobleu: float
    neutral: str
    contrast_k: int
    asr_weight: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"judge.signal={self.kind!r}: expected one of {', '.join(KINDS)}")


def rules_from(judge: JudgeConfig) -> SignalRules:
    """SignalRules from a ``judge`` config section (``alignslm.config.JudgeConfig``)."""
    return SignalRules(kind=judge.signal, hallucinations=judge.screen_hallucinations,
                       max_no_speech=judge.max_no_speech, min_avg_logprob=judge.min_avg_logprob,
                       min_words_per_s=judge.min_words_per_s, max_words=judge.max_words,
                       max_autobleu=judge.max_autobleu, neutral=judge.neutral_prompt, contrast_k=judge.contrast_k,
                       asr_weight=judge.asr_weight)


def garbage(text: str) -> str | None:
    """Why a transcript cannot be judged at all (None = fine): empty, or garbage (mostly non-letters)."""
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


_STOCK = re.compile("(?:(?:" + "|".join(re.escape(x) for x in sorted(HALLUCINATIONS + FILLERS, key=len, reverse=True))
                    + ")(?: |$))+")


def is_stock(text: str) -> bool:
    """True when the normalised text is made only of known hallucinations and fillers ("Thank you. Bye.")."""
    s = normalize_text(text)
    return not s or _STOCK.fullmatch(s) is not None


def screen(text: str, rules: SignalRules, seconds: float | None = None, avg_logprob: float | None = None,
           no_speech_prob: float | None = None) -> str | None:
    """Why the chain must not let this transcript through (None = it goes to the judge)."""
    why = garbage(text)
    if why:
        return why
    if rules.hallucinations and is_stock(text):
        return "hallucination/filler transcript (a known Whisper output on unintelligible audio)"
    if no_speech_prob is not None and rules.max_no_speech is not None and no_speech_prob > rules.max_no_speech:
        return f"asr doubt: no-speech probability {no_speech_prob:.2f} > {rules.max_no_speech}"
    if avg_logprob is not None and rules.min_avg_logprob is not None and avg_logprob < rules.min_avg_logprob:
        return f"asr doubt: average log-probability {avg_logprob:.2f} < {rules.min_avg_logprob}"
    if auto_bleu(text, 2) > rules.max_autobleu:
        return f"repetition: bigram auto-BLEU {auto_bleu(text, 2):.2f} > {rules.max_autobleu}"
    if seconds and rules.min_words_per_s > 0 and len(words(text)) / seconds < rules.min_words_per_s:
        return (f"under-transcribed: {len(words(text))} words in {seconds:.1f} s "
                f"(< {rules.min_words_per_s} words/s)")
    return None


def sense(ln_ppl: float | None, ln_ppl_uncond: float | None, n_words: int, rules: SignalRules,
          avg_logprob: float | None = None) -> float | None:
    """The signal of one judged transcript (higher is better); None when a needed value is missing."""
    if ln_ppl is None:
        return None
    if rules.kind == "lnppl":
        return -ln_ppl
    if ln_ppl_uncond is None:
        return None
    pmi = ln_ppl_uncond - ln_ppl
    if rules.kind == "pmi_asr":
        return None if avg_logprob is None else pmi + rules.asr_weight * avg_logprob
    return pmi if rules.kind in ("pmi", "contrast") else pmi * min(n_words, rules.max_words)


def ln(ppl: float | None) -> float | None:
    return math.log(ppl) if ppl is not None and math.isfinite(ppl) and ppl > 0 else None


def contrast_prompts(prompt_texts: list[str], k: int) -> dict[str, list[str]]:
    """prompt -> the ``k`` prompts after it in the sorted set of distinct prompts (cyclic, never itself)."""
    ps = sorted({p for p in prompt_texts if p and p.strip()})
    return {p: [ps[(i + j) % len(ps)] for j in range(1, min(k, len(ps) - 1) + 1)] for i, p in enumerate(ps)}


def judge_rows(rows: list[dict], ppl_judge: object, rules: SignalRules, all_prompts: list[str] | None = None) -> None:
    """Screen and judge transcripts in place, the one path of the judge stage and the evaluation.

    Each row holds ``prompt_text``, ``text`` and, when known, ``seconds``, ``avg_logprob``,
    ``no_speech_prob`` and an earlier ``reject`` (an ASR error).  It gets ``reject`` (None or why),
    ``screened`` (True when the *continuation* failed: it loses against any accepted one), ``perplexity``
    (given the prompt), ``perplexity_uncond`` (the baseline: given ``rules.neutral``, or the geometric mean
    given the contrast prompts; not for kind lnppl) and ``sense``.  ``all_prompts``: the prompt set the
    contrast prompts come from (default: these rows' prompts; pass the whole stage's for shard independence).
    ``ppl_judge`` is an alignslm.judge.PerplexityJudge, or None to screen only (the 1-5 score mode).
    """
    todo = []
    for r in rows:
        r.setdefault("perplexity", None)
        r["perplexity_uncond"] = r["sense"] = None
        r["asr_reject"] = r.get("reject")  # upstream (ASR) reason, kept apart from the screen's
        if r.get("reject"):
            r["screened"] = True
            continue
        why = screen(r["text"], rules, r.get("seconds"), r.get("avg_logprob"), r.get("no_speech_prob"))
        pwhy = garbage(r.get("prompt_text") or "")
        r["reject"], r["screened"] = why or (pwhy and f"prompt: {pwhy}"), why is not None
        if not r["reject"]:
            todo.append(r)
    if not todo or ppl_judge is None:
        return
    texts = [r["text"] for r in todo]
    cond = ppl_judge.score([r["prompt_text"] for r in todo], texts)  # type: ignore[attr-defined]
    base = _baseline(todo, texts, ppl_judge, rules, all_prompts)
    for r, c, u in zip(todo, cond, base):
        r["perplexity"] = c.perplexity
        r["perplexity_uncond"] = u
        r["sense"] = sense(ln(c.perplexity), ln(u), len(words(r["text"])), rules, r.get("avg_logprob"))
        if c.perplexity is None:
            r["reject"] = f"judge: {c.error or 'no perplexity'}"


def _baseline(todo: list[dict], texts: list[str], ppl_judge: object, rules: SignalRules,
              all_prompts: list[str] | None) -> list[float | None]:
    """Per row, the perplexity the prompt's is compared with (None for kind lnppl)."""
    if rules.kind == "lnppl":
        return [None] * len(todo)
    if rules.kind in ("pmi", "pmi_words", "pmi_asr"):
        return [u.perplexity for u in ppl_judge.score([rules.neutral] * len(todo), texts)]  # type: ignore[attr-defined]
    others = contrast_prompts(all_prompts or [r["prompt_text"] for r in todo], rules.contrast_k)
    lns: list[list[float]] = [[] for _ in todo]
    for j in range(rules.contrast_k):
        idx = [i for i, r in enumerate(todo) if len(others.get(r["prompt_text"], [])) > j]
        res = ppl_judge.score([others[todo[i]["prompt_text"]][j] for i in idx], [texts[i] for i in idx])  # type: ignore[attr-defined]
        for i, u in zip(idx, res):
            if ln(u.perplexity) is not None:
                lns[i].append(ln(u.perplexity))
    return [math.exp(sum(v) / len(v)) if v else None for v in lns]
