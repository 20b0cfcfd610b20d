"""The judge's rubric and its protocol, shared by every backend (in-process and HTTP).

- the Align-SLM rubric as chat messages (:func:`rubric_messages`; 1-5, five levels), the retry reminder;
- the score's reply format (``Score: N``, :data:`SCORE_PREFIX`, :data:`DIGITS`) and its parser
  (:func:`parse_score`), and the expected score over the five digits' probabilities;
- :class:`JudgeResult` (one continuation's judgement) and :class:`ChatBackend` (what a judge needs from a backend).

It imports nothing of the package: the judges (:mod:`alignslm.judge`) and the HTTP backend
(:mod:`alignslm.judge.http`) both import it, and not each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

SYSTEM_PROMPT = "You are a careful judge of short story continuations."

RUBRIC = """Below is the beginning of a spoken story (an automatic transcript, so it may contain \
recognition errors) and a candidate continuation.

Beginning: "{prompt}"
Continuation: "{continuation}"

How likely and relevant is the continuation as the next part of this story? Use this scale:
1: very unlikely and irrelevant to the prompt.
2: unlikely, and only loosely related to the prompt.
3: somewhat likely and somewhat relevant to the prompt.
4: likely and relevant to the prompt.
5: very likely and highly relevant to the prompt.
{format_line}"""
FORMAT_LINE = ("Analyse briefly in one or two sentences, then end your reply with the score in exactly this form: "
               "Score: N")
# expected-score prompts end with a forced "Score:"; a literal "Score: N" there makes small models copy the "N"
EXPECTED_LINE = "Reply with only the score, one digit from 1 to 5."

RETRY_PROMPT = ("Your reply did not end with exactly one score. Reply with only the score in the form "
                "'Score: N', where N is 1, 2, 3, 4 or 5.")
SCORE_PREFIX = "Score: "
DIGITS = ("1", "2", "3", "4", "5")

_SCORE_RE = re.compile(r"score\s*(?:is|of)?\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5)?", re.IGNORECASE)


@dataclass
class JudgeResult:
    """One continuation's judgement.  ``score`` is None when missing (with ``error`` saying why)."""

    score: float | None
    raw: str = ""
    error: str | None = None
    perplexity: float | None = None
    probs: list[float] | None = None  # expected-score mode: P(1..5), renormalised over the five digits
    retried: bool = False
    extra: dict = field(default_factory=dict)


class ChatBackend(Protocol):
    """What a judge needs from a backend.  Replies are (text, error); errors never raise."""

    name: str

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[tuple[str | None, str | None]]:
        ...

    def digit_probs(self, conversations: list[list[dict]]) -> list[tuple[list[float] | None, str | None]]:
        ...

    def perplexity(self, prompts: list[str], continuations: list[str]) -> list[tuple[float | None, str | None]]:
        ...


def rubric_messages(prompt_text: str, continuation_text: str, expected: bool = False) -> list[dict]:
    """The Align-SLM rubric as chat messages (system + user); ``expected``: the digit-only variant."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": RUBRIC.format(prompt=prompt_text.strip(),
                                                      continuation=continuation_text.strip(),
                                                      format_line=EXPECTED_LINE if expected else FORMAT_LINE)}]


def parse_score(reply: str) -> int | None:
    """The final 1-5 score of a judge reply, or None.

    Every "Score: N" (also "score is N", "**Score:** N", "Score: N/5") is found; when all agree the score
    is N.  Two different scores, a score outside 1-5, a fractional score or no score at all -> None.
    A reply that is only a digit 1-5 counts as that score.
    """
    if reply is None:
        return None
    found = [m.group(1) for m in _SCORE_RE.finditer(reply)]
    if not found:
        bare = reply.strip().strip(".*")
        return int(bare) if bare in DIGITS else None
    if len(set(found)) != 1 or found[-1] not in DIGITS:
        return None
    return int(found[-1])


def expected_from_probs(probs: list[float]) -> float:
    """E[score] = sum_d d * P(d) over d = 1..5 (probs renormalised)."""
    total = sum(probs)
    return sum((i + 1) * p for i, p in enumerate(probs)) / total


def score_histogram(scores: Iterable[float | None]) -> dict[str, int]:
    """Counts of 1-5 scores, each rounded half up to the nearest of :data:`DIGITS` (the paper's Figures 3-4);
    None (no score) is not counted.  The one shape of the judge summary, the pairs summary, the evaluation's
    generation summary and the report."""
    h = {d: 0 for d in DIGITS}
    for s in scores:
        if s is not None:
            h[str(min(5, max(1, math.floor(s + 0.5))))] += 1
    return h
