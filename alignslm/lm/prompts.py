"""Prompts: the first P seconds of an utterance as units, cut at a word boundary when word times are known.

Unit i of a deduplicated utterance covers frames ``[sum(d[:i]), sum(d[:i+1]))`` at the tokenizer's frame
rate, so it ends at ``cumsum(d)[i] / frame_rate`` seconds.  The prompt keeps the units that end by the cut
time (half a frame of tolerance).  The cut time is the end of the last word that ends by P seconds
(``word_boundary``), or, without word times (or if the first word is longer than P), P itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class PromptError(ValueError):
    """An utterance cannot give a prompt (too short, no units, inconsistent durations); becomes a reject."""


@dataclass(frozen=True)
class Prompt:
    units: list[int]
    end_s: float  # where the prompt ends in the original audio (the cut time)
    at_word_boundary: bool


def make_prompt(units: Sequence[int], durations: Sequence[int] | None, frame_rate: float, seconds: float,
                words: Sequence[Mapping] | None = None, word_boundary: bool = True) -> Prompt:
    """The prompt of one utterance (see the module docstring).  Raises :class:`PromptError`."""
    if seconds <= 0:
        raise ValueError(f"prompt length must be > 0 s, got {seconds} (sample.prompt_seconds)")
    if not len(units):
        raise PromptError("the utterance has no units")
    d = np.ones(len(units), dtype=np.int64) if durations is None else np.asarray(durations, dtype=np.int64)
    if len(d) != len(units) or (d < 1).any():
        raise PromptError(f"durations ({len(d)}) do not match units ({len(units)}) or are < 1")
    ends = np.cumsum(d) / float(frame_rate)  # (N,) seconds
    total = float(ends[-1])
    if total <= seconds:
        raise PromptError(f"utterance is {total:.2f} s long, not longer than the {seconds} s prompt: "
                          f"nothing would be left to continue")
    cut, at_word = seconds, False
    if word_boundary and words:
        word_ends = [float(w["end"]) for w in words if float(w["end"]) <= seconds]
        if word_ends:
            cut, at_word = max(word_ends), True
    n = int(np.searchsorted(ends, cut + 0.5 / frame_rate, side="right"))
    if n < 1:
        raise PromptError(f"no unit ends before {cut:.2f} s")
    return Prompt(units=[int(u) for u in units[:n]], end_s=round(cut if at_word else float(ends[n - 1]), 4),
                  at_word_boundary=at_word)


def context_problem(prompt_seconds: float, frame_rate: float, max_new: int, context: int | None,
                    bos: bool = True) -> str | None:
    """A prompt of ``prompt_seconds`` (at most one unit per frame, before deduplication) + BOS + max_new_units
    must fit the LM's context (the sampler refuses the longer prompts at run time)."""
    longest = math.ceil(prompt_seconds * frame_rate) + int(bos)
    if context is None or longest + max_new <= context:
        return None
    return (f"a {prompt_seconds:g} s prompt is up to {longest} tokens ({frame_rate:g} units/s + BOS) and "
            f"sample.max_new_units={max_new} more make {longest + max_new} > the LM's context of {context}; "
            f"lower sample.prompt_seconds or sample.max_new_units")
