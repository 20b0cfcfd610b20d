"""Per-token log-likelihoods of token-id sequences under a unit LM, for the scoring rules that need more
than a per-sequence total: SALMon's (no BOS/EOS, mean over the tokens after the first) and continuation-only
StoryCloze (only the ending's tokens).

``token_logprobs(lm, seqs)`` returns, for every sequence ``ids`` (token ids, BOS/EOS included or not as the
caller decides), the array ``[log p(ids[t] | ids[:t]) for t in 1..L-1]`` (float64, length L-1), under the LM's
softmax support (alignslm.lm.unitlm.UnitLM.token_logprobs).

* Equal sequences are scored once and share the result, so two utterances with the same units get exactly
  the same score (a tie), whatever the batch they would have been padded into: the official SALMon code
  scores one file per forward pass, where equal inputs give equal outputs.
* A sequence longer than the model's context is scored with strided windows (stride = context // 2, each
  target predicted once with at least context // 2 tokens of left context), as alignslm.eval.scoring scores long
  utterances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def token_logprobs(lm: Any, seqs: Sequence[Sequence[int]], batch_size: int = 64) -> list[np.ndarray]:
    """Per-token log-probs (targets 1..L-1) of every token-id sequence; equal sequences share one result."""
    import torch

    keys = [tuple(int(t) for t in s) for s in seqs]
    unique = sorted(set(keys), key=lambda k: (len(k), k))  # by length (little padding), then content
    ctx = lm.max_context()
    out: dict[tuple, np.ndarray] = {}
    short = [k for k in unique if ctx is None or len(k) <= ctx]
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(short), batch_size):
                chunk = short[start:start + batch_size]
                for k, lp in zip(chunk, _batch(lm, chunk)):
                    out[k] = lp
            for k in unique:
                if k not in out:
                    out[k] = _windowed(lm, list(k), int(ctx))
    finally:
        lm.model.train(was_training)
    return [out[k] for k in keys]


def _batch(lm: Any, seqs: list[tuple]) -> list[np.ndarray]:
    """One right-padded forward pass; sequences of 1 token have no target (empty arrays)."""
    import torch

    T = max(len(s) for s in seqs)
    if T < 2:
        return [np.zeros(0) for _ in seqs]
    ids = torch.full((len(seqs), T), int(lm.pad_id), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    tok = lm.token_logprobs(logits, ids[:, 1:]).double().cpu().numpy()  # (B, T-1)
    return [tok[b, :max(0, len(s) - 1)].copy() for b, s in enumerate(seqs)]


def _windowed(lm: Any, seq: list[int], context: int) -> np.ndarray:
    """Targets 1..L-1 of a sequence longer than ``context``, with windows of ``context`` tokens (stride
    context // 2); each window scores only the targets after the previous window's end."""
    import torch

    stride = max(1, context // 2)
    parts, scored_to, begin = [], 1, 0  # targets [1, scored_to) are done
    while scored_to < len(seq):
        end = min(begin + context, len(seq))
        ids = torch.tensor([seq[begin:end]], device=lm.device)  # (1, W)
        logits = lm.model(input_ids=ids).logits[:, :-1]  # (1, W-1, V)
        tok = lm.token_logprobs(logits, ids[:, 1:])[0].double().cpu().numpy()  # (W-1,) targets begin+1..end-1
        parts.append(tok[scored_to - begin - 1:])
        scored_to = end
        begin += stride
    return np.concatenate(parts)
