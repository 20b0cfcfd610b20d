"""Demo pretraining: a small LLaMA-architecture unit LM trained from scratch on unit sequences.

    model = build_model(n_units=100, d_model=256, n_layers=4, n_heads=4, context=512)
    train(model, seqs, TrainSpec(steps=1500, ...), ckpt_dir=out / "ckpt")   # resumable

Vocabulary (TWIST-style, ``config.offset`` saved in config.json): pad=0, bos=1, eos=2, unit k -> k+3.
Data: every utterance becomes ``[BOS, units, EOS]``; all are concatenated into one stream (packing) and a
step draws ``batch_size`` windows of ``context + 1`` tokens at offsets chosen by a generator seeded with
(seed, step), so the batch of step s is a function of s alone: resuming needs no data-loader state.
Loss: next-token cross-entropy.  Schedule: linear warmup, then cosine decay to 10% of the peak.
Checkpoints (model, optimizer, scheduler, RNG states, step) are written atomically every
``checkpoint_every`` steps; a restarted run continues from the last one and ends with the same
weights as an uninterrupted run (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from alignslm import logger
from alignslm.rundir import write_torch

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 1500
    batch_size: int = 16
    context: int = 512
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    checkpoint_every: int = 250
    seed: int = 0
    log_every: int = 50
    doc_mask: bool = False  # attend within one utterance only, positions restart at each BOS (as when scored)


def build_model(n_units: int, d_model: int, n_layers: int, n_heads: int, context: int, seed: int = 0):
    """A randomly initialised LlamaForCausalLM over ``OFFSET + n_units`` tokens (offset in its config)."""
    from alignslm.deps import require

    require("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    if d_model % n_heads:
        raise ValueError(f"unitlm.d_model ({d_model}) must be a multiple of unitlm.n_heads ({n_heads})")
    cfg = LlamaConfig(vocab_size=OFFSET + n_units, hidden_size=d_model, intermediate_size=int(8 * d_model / 3) // 8 * 8,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                      max_position_embeddings=context, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, rope_theta=10000.0)
    cfg.offset, cfg.n_units = OFFSET, n_units
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def pack(seqs: Sequence[Sequence[int]], n_units: int) -> torch.Tensor:
    """Unit sequences -> one (N,) int64 stream of ``[BOS, u+OFFSET..., EOS]`` blocks."""
    parts = []
    for i, s in enumerate(seqs):
        a = np.asarray(s, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= n_units):
            raise ValueError(f"training sequence {i} has units outside [0, {n_units}): "
                             f"range [{a.min()}, {a.max()}]; the quantizer's K and unitlm.n_units disagree")
        parts.append(np.concatenate([[BOS], a + OFFSET, [EOS]]))
    if not parts:
        raise ValueError("no training sequences (is the train split of the corpus empty?)")
    return torch.from_numpy(np.concatenate(parts))


def batch_at(stream: torch.Tensor, step: int, spec: TrainSpec) -> torch.Tensor:
    """The (B, context + 1) windows of ``step``: a function of (seed, step) only."""
    T = min(spec.context, len(stream) - 1)
    if T < 2:
        raise ValueError(f"the training stream has {len(stream)} tokens; too little data to train on")
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - T, (spec.batch_size,), generator=g)  # (B,)
    return torch.stack([stream[s:s + T + 1] for s in starts.tolist()])  # (B, T+1)


def doc_positions(stream: torch.Tensor) -> torch.Tensor:
    """(N,) position of every stream token inside its own ``[BOS, ..., EOS]`` block (0 at the BOS)."""
    idx = torch.arange(len(stream))
    last_bos = torch.where(stream == BOS, idx, torch.zeros_like(idx))
    return idx - torch.cummax(last_bos, 0).values


def doc_batch(xy: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of a packed window restricted to one utterance each: a (B, 1, T, T) additive attention mask
    (query i sees key j <= i of the same block) and (B, T) position ids restarting at every BOS.

    ``xy`` is the (B, T+1) window, ``pos`` its (B, T+1) in-block positions (:func:`doc_positions`).
    """
    x, p = xy[:, :-1], pos[:, :-1]
    seg = torch.cumsum((x == BOS).long(), 1)  # (B, T): block index inside the window
    T = x.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None], p


def lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / max(1, spec.warmup)
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return f


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> tuple[torch.optim.Optimizer, object]:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))


def _save_ckpt(path: Path, model: torch.nn.Module, opt, sched, step: int, spec: TrainSpec, log: list) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": torch.get_rng_state(), "step": step, "spec": asdict(spec), "log": log}
    write_torch(path, state)


def _load_ckpt(path: Path, model: torch.nn.Module, opt, sched, spec: TrainSpec) -> tuple[int, list]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["spec"] != asdict(spec):
        raise ValueError(f"{path} was written with other training settings {state['spec']}; "
                         f"delete it to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    logger.info("pretrain: resuming from %s at step %d", path, state["step"])
    return int(state["step"]), list(state["log"])


def train(model: torch.nn.Module, seqs: Sequence[Sequence[int]], spec: TrainSpec, ckpt_dir: Path | None = None,
          stop_after: int | None = None) -> dict:
    """Train in place; resume from ``ckpt_dir/last.pt`` when present.  ``stop_after``: stop (as if killed)
    after that many steps of this call (tests).  Returns a summary with the loss log."""
    n_units = int(model.config.n_units)
    stream = pack(seqs, n_units)
    positions = doc_positions(stream) if spec.doc_mask else None
    opt, sched = make_optimizer(model, spec)
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
    step, log = (0, [])
    if ckpt is not None and ckpt.is_file():
        step, log = _load_ckpt(ckpt, model, opt, sched, spec)
    model.train()
    t0, tokens, done_here = time.perf_counter(), 0, 0
    while step < spec.steps:
        xy = batch_at(stream, step, spec)  # (B, T+1)
        if positions is None:
            logits = model(input_ids=xy[:, :-1]).logits  # (B, T, V)
            tgt = xy[:, 1:]
        else:
            mask, pos = doc_batch(xy, batch_at(positions, step, spec), next(model.parameters()).dtype)
            logits = model(input_ids=xy[:, :-1], attention_mask=mask, position_ids=pos).logits
            tgt = xy[:, 1:].masked_fill(xy[:, 1:] == BOS, -100)  # the next block's BOS is not predictable
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        done_here += 1
        tokens += xy[:, 1:].numel()
        if step % spec.log_every == 0 or step == spec.steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "lr": sched.get_last_lr()[0]})
            logger.info("pretrain step %d/%d loss %.4f lr %.2e %.0f tok/s", step, spec.steps, loss.item(),
                        sched.get_last_lr()[0], tokens / (time.perf_counter() - t0))
        if ckpt is not None and (step % spec.checkpoint_every == 0 or step == spec.steps):
            _save_ckpt(ckpt, model, opt, sched, step, spec, log)
        if stop_after is not None and done_here >= stop_after:
            break
    model.eval()
    secs = time.perf_counter() - t0
    return {"steps": step, "train_tokens": int(len(stream)), "seconds": round(secs, 1),
            "tokens_per_s": round(tokens / max(secs, 1e-9), 1), "final_loss": log[-1]["loss"] if log else None,
            "log": log}


@torch.no_grad()
def eval_loss(model: torch.nn.Module, seqs: Sequence[Sequence[int]], context: int, batch_size: int = 16) -> float:
    """Mean next-token loss over ``[BOS, units, EOS]`` of held-out sequences (truncated to the context)."""
    model.eval()
    total, count = 0.0, 0
    rows = [[BOS, *(u + OFFSET for u in s), EOS][:context] for s in seqs if len(s)]
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(map(len, chunk))
        ids = torch.full((len(chunk), T), PAD, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for b, r in enumerate(chunk):
            ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum").item()
        count += int((tgt != -100).sum())
    return total / max(count, 1)
