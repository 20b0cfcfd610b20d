"""GenPPL: the perplexity of the generated continuations' transcripts under a fixed text LM.

Protocol (written into the report's Protocol section by :func:`protocol_line`):

* the text LM is the judge's (``judge.backend`` / ``judge.model_path``; the demo: SmolLM2-135M-Instruct), the
  same for every model and round, so GenPPL compares models on one scale;
* each continuation's Whisper transcript is scored in one fixed context, not the prompt's:
  exp(mean NLL per token of the transcript given ``judge.neutral_prompt``) (``ChatBackend.perplexity``; an
  empty ``judge.neutral_prompt`` = given the LM's BOS token only, the strictly unconditional GenPPL).  The judge
  metric beside it is conditional on the prompt's transcript, so the two separate "fluent English" from
  "fits the prompt".  With the pmi signals (``judge.signal`` pmi, pmi_words, pmi_asr: the demo's) the judge
  stage's path already computes exactly this number for every continuation it judges
  (``perplexity_uncond``, alignslm.judge.signal); it is reused, and only the others (screened ones) are scored here,
  so GenPPL costs one judge pass over the screened continuations instead of one over all (measured on this
  2-core VM under load: 0.34 s per transcript);
* every continuation with a non-empty transcript is scored, screened ones included (a hallucinated "Thank
  you." has a low GenPPL: read it beside auto-BLEU and the reject share); empty transcripts are counted
  (``missing``);
* per model: the geometric mean over prompts of each prompt's geometric-mean GenPPL (= exp of the mean
  ln GenPPL), with a percentile bootstrap 95% CI over prompts (alignslm.eval.stats.summarize_genppl, beside
  the other per-model summaries); round vs base: the paired bootstrap of the ln GenPPL difference (``log_genppl``
  in the comparisons; < 0 = more fluent than the base model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

REUSABLE = ("pmi", "pmi_words", "pmi_asr")  # signal kinds whose perplexity_uncond is the GenPPL context's


def add_genppl(rows: list[dict], backend: Any, context: str = "", signal_kind: str | None = None) -> dict:
    """Set ``genppl`` and ``log_genppl`` on every row with a transcript (None otherwise): the perplexity of
    ``text`` given ``context`` (reusing ``perplexity_uncond`` when ``signal_kind`` computed it with that same
    context).  Returns {scored, reused, missing, seconds}."""
    t0 = time.perf_counter()
    todo, reused = [], 0
    for r in rows:
        r["genppl"] = r["log_genppl"] = None
        if not (r.get("text") or "").strip():
            continue
        u = r.get("perplexity_uncond") if signal_kind in REUSABLE else None
        if u is not None and math.isfinite(u) and u > 0:
            r["genppl"], r["log_genppl"] = float(u), math.log(u)
            reused += 1
        else:
            todo.append(r)
    res = backend.perplexity([context] * len(todo), [r["text"] for r in todo]) if todo else []
    for r, (ppl, _err) in zip(todo, res):
        if ppl is not None and math.isfinite(ppl) and ppl > 0:
            r["genppl"], r["log_genppl"] = float(ppl), math.log(ppl)
    scored = sum(r["genppl"] is not None for r in rows)
    return {"scored": scored, "reused": reused, "missing": len(rows) - scored,
            "seconds": round(time.perf_counter() - t0, 3)}


def protocol_line(protocol: Mapping) -> str:
    g = protocol.get("genppl")
    if not g:
        return "- GenPPL: not measured (no generation metrics, or eval.genppl=false)."
    ctx = g.get("context") or ""
    where = f"given the fixed context {ctx!r} (judge.neutral_prompt)" if ctx else "given only its BOS token"
    return (f"- GenPPL: perplexity of each continuation's Whisper transcript under the fixed text LM {g['lm']}, "
            f"{where}, not the prompt (how fluent, not how fitting: the judge metric is the conditional one); "
            "every non-empty transcript, screened ones included; per model the geometric mean over prompts "
            "with a bootstrap 95% CI; round vs base: paired bootstrap of the ln GenPPL difference.")
