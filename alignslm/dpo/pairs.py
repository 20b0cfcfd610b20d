"""Preference pairs from judged continuations, with Align-SLM's rules.

Per prompt, from its continuations (each with a 1-5 score and/or a perplexity, and an auto-BLEU):

- A continuation whose bigram auto-BLEU exceeds ``delta`` is *rejected outright*: it can never be chosen,
  and it is a candidate for the rejected side whatever its score (repetition is a failure mode of SLMs).
- A continuation whose score (perplexity in perplexity mode) is missing is never used.
- Score mode: chosen if score >= s_c, rejected if score <= s_r (s_c/s_r per curriculum round).  One pair per
  prompt (the best chosen vs the worst rejected) or every chosen x rejected combination (a setting).
- Perplexity mode: chosen = the lowest perplexity among the non-repetitive, rejected = the highest
  perplexity (or a repetitive one when nothing is higher); all combinations: the chosen one against every
  continuation with a higher perplexity and every repetitive one.  When the judge gave a ``sense`` value
  (alignslm.judge.signal; higher is better) it replaces the perplexity, and a continuation the signal's screen
  threw out (``screened``: a Whisper hallucination, no speech, under-transcribed, a loop) is rejected outright
  like a repetitive one: the same rule the evaluation's calibration uses (rejects lose).
- A prompt without a valid pair is counted with the reason.

Rows use TRL's field names: ``prompt``, ``chosen``, ``rejected`` (unit lists; chosen/rejected are the
continuations without the prompt), plus ``prompt_id``, scores and transcripts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignslm.judge.rubric import score_histogram

if TYPE_CHECKING:
    from alignslm.config import Config


@dataclass(frozen=True)
class Candidate:
    """One continuation of a prompt, judged."""

    k: int
    units: list
    text: str
    score: float | None = None
    perplexity: float | None = None
    autobleu: float | None = None
    sense: float | None = None  # alignslm.judge.signal, higher is better; replaces the perplexity when given
    screened: bool = False  # thrown out by the signal's screen: rejected outright

    def repetitive(self, delta: float) -> bool:
        return self.screened or (self.autobleu is not None and self.autobleu > delta)


@dataclass(frozen=True)
class PairRules:
    """How a prompt's judged continuations become pairs.  No defaults here: ``alignslm.config.PairsConfig`` (and
    ``curriculum.thresholds`` per round) is the one place for them (:func:`rules_for_round`)."""

    mode: str  # score | perplexity
    chosen_min: float
    rejected_max: float
    all_combinations: bool
    autobleu_delta: float

    def __post_init__(self) -> None:
        if self.mode not in ("score", "perplexity"):
            raise ValueError(f"pairs.mode={self.mode!r}: expected score or perplexity")
        if self.mode == "score" and self.rejected_max >= self.chosen_min:
            raise ValueError(f"pair thresholds: rejected_max ({self.rejected_max}) must be below chosen_min "
                             f"({self.chosen_min}), or one continuation could be both")


def rules_for_round(cfg: Config, round_: int | None) -> PairRules:
    """Rules from ``cfg.pairs``; (s_c, s_r) from ``cfg.curriculum.thresholds[round-1]`` when it exists."""
    s_c, s_r = cfg.pairs.chosen_min, cfg.pairs.rejected_max
    th = tuple(cfg.curriculum.thresholds or ())
    if round_ is not None and 1 <= round_ <= len(th):
        s_c, s_r = float(th[round_ - 1][0]), float(th[round_ - 1][1])
    return PairRules(mode=cfg.pairs.mode, chosen_min=s_c, rejected_max=s_r,
                     all_combinations=cfg.pairs.all_combinations, autobleu_delta=cfg.pairs.autobleu_delta)


def _metric(c: Candidate, mode: str) -> float | None:
    """The value compared, lower is better in perplexity mode (minus the sense when there is one)."""
    if mode != "score" and c.sense is not None:
        return -float(c.sense)
    v = c.score if mode == "score" else c.perplexity
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _score_sets(cands: list[Candidate], r: PairRules) -> tuple[list[Candidate], list[Candidate]]:
    """(chosen best first, rejected worst first) in score mode."""
    chosen = [c for c in cands if _metric(c, "score") is not None and not c.repetitive(r.autobleu_delta)
              and c.score >= r.chosen_min]
    rejected = [c for c in cands if c.repetitive(r.autobleu_delta)
                or (_metric(c, "score") is not None and c.score <= r.rejected_max)]
    chosen.sort(key=lambda c: (-c.score, c.k))
    rejected.sort(key=lambda c: (c.score if c.score is not None else -math.inf, -(c.autobleu or 0.0), c.k))
    return chosen, rejected


def _perplexity_sets(cands: list[Candidate], r: PairRules) -> tuple[list[Candidate], list[Candidate]]:
    """(chosen, rejected) in perplexity mode: lowest-perplexity clean one vs the highest / repetitive ones."""
    valid = [c for c in cands if _metric(c, "perplexity") is not None]
    clean = sorted((c for c in valid if not c.repetitive(r.autobleu_delta)), key=lambda c: (_metric(c, r.mode), c.k))
    if not clean:
        return [], []
    best = clean[0]
    rest = [c for c in valid if c.k != best.k]
    rep = [c for c in cands if c.repetitive(r.autobleu_delta) and c.k != best.k]
    highest = sorted((c for c in rest if _metric(c, r.mode) > _metric(best, r.mode)),
                     key=lambda c: (-_metric(c, r.mode), c.k))
    rejected = highest[:1] + [c for c in rep if c not in highest[:1]]
    if r.all_combinations:
        rejected = highest + [c for c in rep if c not in highest]
    return [best], rejected


def build_pairs_for_prompt(cands: list[Candidate], r: PairRules) -> tuple[list[tuple[Candidate, Candidate]], str]:
    """Pairs of one prompt, and "" or the reason there is none."""
    valid = [c for c in cands if _metric(c, r.mode) is not None]
    if len(valid) + sum(c.repetitive(r.autobleu_delta) and _metric(c, r.mode) is None for c in cands) < 2:
        return [], "fewer than 2 judged continuations"
    chosen, rejected = (_score_sets if r.mode == "score" else _perplexity_sets)(cands, r)
    if not chosen:
        return [], ("no continuation reaches chosen_min" if r.mode == "score"
                    else "every judged continuation is repetitive")  # or screened out (alignslm.judge.signal)
    if not rejected:
        return [], ("no continuation at or below rejected_max" if r.mode == "score"
                    else "no continuation with a higher perplexity")
    if r.all_combinations:
        return [(c, x) for c in chosen for x in rejected if c.k != x.k], ""
    return [(chosen[0], rejected[0])], ""


def build_pairs(prompts: dict[Any, dict], r: PairRules) -> tuple[list[dict], dict]:
    """``prompts``: prompt_id -> {"prompt": units, "prompt_text": str, "candidates": [Candidate]}.

    Returns (pair rows, summary).  The summary holds the score histogram, pairs per prompt, the share of
    continuations filtered by auto-BLEU and the prompts without a pair (by reason).
    """
    rows: list[dict] = []
    no_pair: Counter = Counter()
    n_cands = n_rep = n_missing = n_screened = 0
    for pid, p in prompts.items():
        cands: list[Candidate] = p["candidates"]
        n_cands += len(cands)
        n_rep += sum(c.autobleu is not None and c.autobleu > r.autobleu_delta for c in cands)
        n_screened += sum(c.screened for c in cands)
        n_missing += sum(_metric(c, r.mode) is None for c in cands)
        pairs, reason = build_pairs_for_prompt(cands, r)
        if reason:
            no_pair[reason] += 1
        for c, x in pairs:
            rows.append({"prompt_id": pid, "prompt": list(p["prompt"]), "chosen": list(c.units),
                         "rejected": list(x.units), "chosen_score": _metric(c, r.mode),
                         "rejected_score": _metric(x, r.mode), "metric": r.mode, "chosen_k": c.k,
                         "rejected_k": x.k, "chosen_autobleu": c.autobleu, "rejected_autobleu": x.autobleu,
                         "prompt_text": p.get("prompt_text", ""), "chosen_text": c.text, "rejected_text": x.text})
    n_prompts = len(prompts)
    summary = {
        "mode": r.mode, "chosen_min": r.chosen_min, "rejected_max": r.rejected_max,
        "all_combinations": r.all_combinations, "autobleu_delta": r.autobleu_delta,
        "prompts": n_prompts, "pairs": len(rows),
        "prompts_with_pair": n_prompts - sum(no_pair.values()), "prompts_without_pair": sum(no_pair.values()),
        "no_pair_reasons": dict(no_pair),
        "pairs_per_prompt": len(rows) / n_prompts if n_prompts else 0.0,
        "continuations": n_cands, "missing_metric": n_missing,
        "autobleu_filtered": n_rep, "autobleu_filtered_share": n_rep / n_cands if n_cands else 0.0,
        "screened": n_screened, "screened_share": n_screened / n_cands if n_cands else 0.0,
        "score_histogram": score_histogram(
            [c.score for p in prompts.values() for c in p["candidates"] if c.score is not None]),
    }
    return rows, summary

