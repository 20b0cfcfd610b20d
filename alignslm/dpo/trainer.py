"""DPO on a LoRA adapter of a unit LM: one readable recipe (setup -> train -> save), not a TRL subclass.

    lm = load_unitlm(unitlm_dir)                                  # alignslm.lm.unitlm.UnitLM
    examples, counts = prepare_pairs(rows, lm, max_length=512, rejects=ctx.rejects)
    summary = DPOTrainer(lm, cfg.train, out_dir, seed=1).train(examples)

What one optimizer step does:
  1. For each of ``grad_accum`` micro-batches of ``batch_size`` pairs (over all ranks: each of W processes
     takes ``batch_size / W`` of them, so a step is the same whatever the world size), chosen and rejected
     go through the model in ONE forward pass: ``[chosen_1..B, rejected_1..B]`` right-padded, or (the
     default, ``share_prompt``) one row ``prompt + chosen + rejected`` per pair whose prompt is computed
     once for both completions, with a 4-D attention mask and restarted positions (see Batch).
  2. Sequence log-probs = sum over completion tokens of log-softmax over the unit LM's support
     (``UnitLM.support_ids``: units + EOS, or the whole vocabulary -- the same support as sampling),
     computed from the last hidden states by kernels.logprobs (lm_head fused, chunked).
  3. Reference log-probs: the same model with the adapter disabled (peft ``disable_adapter``), or
     computed once before training and cached in ``out/ref_logps.pt`` (``precompute_ref``; always used
     when the reference is the adapter we start from, see alignslm.stages.train).
  4. Loss (alignslm.dpo.losses) averaged over pairs, backward, DDP all-reduce of the LoRA gradients when
     several processes run under torchrun, gradient clipping, AdamW, linear warmup + linear decay.
  5. One row of TRL-named metrics per step in ``train_log.jsonl``; a checkpoint every
     ``checkpoint_every`` steps (adapter, optimizer, scheduler, RNG states, step). The data order is a
     pure function of (seed, epoch), so a resumed run replays exactly the steps an uninterrupted run makes.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from alignslm import logger
from alignslm.dpo.losses import metrics_from_stats, pair_stats, preference_loss
from alignslm.kernels.logprobs import fused_linear_token_logprobs
from alignslm.rundir import atomic_dir, disk_errors, hash_str, read_jsonl, write_jsonl, write_torch

if TYPE_CHECKING:
    from alignslm.config import TrainConfig

# --------------------------------------------------------------------------------------------------
# Data: validation, truncation, batching
# --------------------------------------------------------------------------------------------------


@dataclass
class Example:
    idx: int
    prompt: list[int]  # token ids, starting with BOS when the model has one
    chosen: list[int]
    rejected: list[int]


def _unit_list(x: Any, n_units: int) -> str | None:
    """None when ``x`` is a valid unit list, else the reason."""
    if not isinstance(x, list):
        return f"not a list of units ({type(x).__name__})"
    if not all(isinstance(u, int) and not isinstance(u, bool) for u in x):
        return "non-integer unit"
    bad = [u for u in x if u < 0 or u >= n_units]
    return f"unit {bad[0]} outside the vocabulary [0, {n_units})" if bad else None


class NoPairs(ValueError):
    """No usable preference pair (train.on_no_pairs decides what a round does then)."""


def prepare_pairs(rows: list[dict], lm: Any, max_length: int, rejects: Any = None,
                  source: str = "pairs") -> tuple[list[Example], dict[str, int]]:
    """Validate pairs rows (prompt/chosen/rejected unit lists) and turn them into token ids.

    Drops (each recorded in ``rejects`` and counted): units beyond the vocabulary, an empty chosen or
    rejected, chosen == rejected.  Truncation policy when prompt + completion exceeds ``max_length``:
    keep BOS and the END of the prompt (the context nearest the completion); if a completion alone
    does not fit, cut it at its end.  Raises ValueError naming ``source`` when no valid pair remains.
    """
    counts = {"pairs_in": len(rows), "dropped": 0, "truncated_prompt": 0, "truncated_completion": 0}
    bos = [lm.bos_id] if lm.bos_id is not None else []
    if max_length < len(bos) + 2:
        raise ValueError(f"train.max_length={max_length} is too small; it must hold BOS + 1 prompt + 1 unit")
    examples: list[Example] = []
    for i, row in enumerate(rows):
        pid = str(row.get("prompt_id", i))
        reason = None
        for key in ("prompt", "chosen", "rejected"):
            reason = reason or (f"{key}: missing" if key not in row else None)
            reason = reason or (f"{key}: {r}" if (r := _unit_list(row.get(key), lm.n_units)) else None)
        if reason is None and (not row["chosen"] or not row["rejected"]):
            reason = "empty chosen or rejected completion"
        if reason is None and row["chosen"] == row["rejected"] and row["prompt"]:
            reason = "chosen and rejected are identical"
        if reason is None and not bos and not row["prompt"]:
            reason = "empty prompt and the model has no BOS token to condition on"
        if reason is not None:
            counts["dropped"] += 1
            if rejects is not None:
                rejects.add(pid, reason)
            continue
        prompt, chosen, rejected = (lm.units_to_ids(row[k]) for k in ("prompt", "chosen", "rejected"))
        room = max_length - len(bos)
        comp_room = max(1, room - (1 if prompt else 0))  # keep at least one prompt unit when there is one
        if max(len(chosen), len(rejected)) > comp_room:
            counts["truncated_completion"] += 1
            chosen, rejected = chosen[:comp_room], rejected[:comp_room]
        keep = room - max(len(chosen), len(rejected))
        if len(prompt) > keep:
            counts["truncated_prompt"] += 1
            prompt = prompt[len(prompt) - keep:] if keep > 0 else []
        examples.append(Example(i, bos + prompt, chosen, rejected))
    if not rows:
        raise NoPairs(f"{source}: no valid preference pair: the pairs stage built none; its summary.json says "
                      f"why for each prompt (no judged continuation, none reaching the thresholds), and the judge "
                      f"stage's summary how many continuations it scored")
    if not examples:
        raise NoPairs(f"{source}: no valid preference pair among {len(rows)} rows "
                         f"(see rejects.jsonl for the reasons); check the pairs stage's thresholds")
    counts["pairs_used"] = len(examples)
    return examples, counts


@dataclass
class Batch:
    """One micro-batch of B pairs in one forward pass, and where its 2B completions' tokens are.

    ``shared=False``: 2B rows ``[prompt+chosen_1..B, prompt+rejected_1..B]``, right-padded.
    ``shared=True``:  B rows ``prompt + chosen + rejected`` -- the prompt is computed once; a 4-D mask
    lets rejected tokens see the prompt but not the chosen ones, and rejected positions restart after
    the prompt, so every completion token sees exactly the context it has in the unshared layout.
    Token k of completion s is predicted by ``hidden[row_b[k], row_pred[k]]``; ``row_seq`` in [0, 2B)
    says which sum it belongs to (chosen b -> b, rejected b -> B + b).
    """

    input_ids: torch.Tensor  # (R, W) R = 2B (unshared) or B (shared)
    attention_mask: torch.Tensor  # (R, W) padding mask, or (R, 1, W, W) additive mask (shared)
    position_ids: torch.Tensor  # (R, W)
    row_b: torch.Tensor  # (N,) row of each completion token's predictor
    row_pred: torch.Tensor  # (N,) position of its predictor
    row_tgt: torch.Tensor  # (N,) its token id
    row_seq: torch.Tensor  # (N,) its sequence in [0, 2B)
    lengths: torch.Tensor  # (2B,) completion lengths
    idx: torch.Tensor  # (B,) example indices (for cached reference log-probs)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def forward_args(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.position_ids, self.row_b, self.row_pred, self.row_tgt,
                self.row_seq, self.lengths)


def collate(examples: Sequence[Example], pad_id: int, shared: bool = False) -> Batch:
    """Pad B examples into one forward pass (see Batch)."""
    nb = len(examples)
    if shared:
        seqs = [e.prompt + e.chosen + e.rejected for e in examples]
    else:
        seqs = [e.prompt + e.chosen for e in examples] + [e.prompt + e.rejected for e in examples]
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    pos = torch.zeros(len(seqs), width, dtype=torch.long)
    rows: list[tuple[int, int, int, int]] = []  # (row, predictor position, target, sequence)
    for i, x in enumerate(seqs):
        ids[i, :len(x)] = torch.tensor(x)
        pos[i, :len(x)] = torch.arange(len(x))
    for b, e in enumerate(examples):
        p, c, r = len(e.prompt), len(e.chosen), len(e.rejected)
        if shared:
            pos[b, p + c:p + c + r] = torch.arange(p, p + r)
            rows += [(b, p + k - 1, e.chosen[k], b) for k in range(c)]
            rows += [(b, (p - 1) if k == 0 else (p + c + k - 1), e.rejected[k], nb + b) for k in range(r)]
        else:
            rows += [(b, p + k - 1, e.chosen[k], b) for k in range(c)]
            rows += [(nb + b, p + k - 1, e.rejected[k], nb + b) for k in range(r)]
    lens = torch.tensor([len(x) for x in seqs])
    attn = (torch.arange(width)[None, :] < lens[:, None]).long()  # (R, W)
    if shared:
        attn = _shared_mask(examples, width)
    rb, rp, rt, rs = torch.tensor(rows, dtype=torch.long).t()
    comp = [len(e.chosen) for e in examples] + [len(e.rejected) for e in examples]
    return Batch(ids, attn, pos, rb, rp, rt, rs, torch.tensor(comp), torch.tensor([e.idx for e in examples]))


def _shared_mask(examples: Sequence[Example], width: int) -> torch.Tensor:
    """(B, 1, W, W) additive float32 mask: causal, rejected tokens blind to chosen ones, pads see themselves."""
    seg = torch.full((len(examples), width), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 pad
    for b, e in enumerate(examples):
        p, c, r = len(e.prompt), len(e.chosen), len(e.rejected)
        seg[b, :p], seg[b, p:p + c], seg[b, p + c:p + c + r] = 0, 1, 2
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (W, W) key j <= query i
    qs, ks = seg[:, :, None], seg[:, None, :]  # (B, W, 1), (B, 1, W)
    ok = causal & (qs != 3) & ((ks == 0) | (ks == qs))  # (B, W, W)
    ok |= torch.eye(width, dtype=torch.bool)  # no empty rows (pads attend themselves)
    return torch.zeros(ok.shape, dtype=torch.float32).masked_fill_(~ok, torch.finfo(torch.float32).min)[:, None]


# --------------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------------


class SequenceLogps(nn.Module):
    """Wraps the (peft) causal LM: batch -> ``(2B,)`` sequence log-probs over the support. DDP wraps this.

    ``support_ids`` (S,): the token ids the softmax spans (``UnitLM.support_ids``); None = full vocabulary.
    A contiguous support is a slice of lm_head (no copy); any other is gathered and targets re-indexed.
    """

    def __init__(self, model: nn.Module, support_ids: torch.Tensor | None = None, autocast: str = "none"):
        super().__init__()
        if autocast not in ("none", "bf16"):
            raise ValueError(f"train.autocast must be none | bf16, got {autocast!r}")
        self.model, self.autocast = model, autocast == "bf16"
        self.lo = self.hi = None
        self.register_buffer("lut", None, persistent=False)  # (hi,) token id -> support index, or None
        if support_ids is not None:
            sup = torch.as_tensor(support_ids, dtype=torch.long).sort().values  # order is irrelevant to softmax
            lo, hi = int(sup[0]), int(sup[-1]) + 1
            if hi - lo == sup.numel():
                self.lo, self.hi = lo, hi
            else:
                self.register_buffer("sup", sup, persistent=False)
                lut = torch.full((hi,), -1, dtype=torch.long)
                lut[sup] = torch.arange(sup.numel())
                self.register_buffer("lut", lut, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                row_b: torch.Tensor, row_pred: torch.Tensor, row_tgt: torch.Tensor, row_seq: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self._forward(input_ids, attention_mask, position_ids, row_b, row_pred, row_tgt, row_seq,
                                 lengths)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 row_b: torch.Tensor, row_pred: torch.Tensor, row_tgt: torch.Tensor, row_seq: torch.Tensor,
                 lengths: torch.Tensor) -> torch.Tensor:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if attention_mask.dim() == 4:  # additive mask in the model's dtype
            attention_mask = attention_mask.to(base.get_input_embeddings().weight.dtype)
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False)[0]  # (R, W, H)
        head = base.get_output_embeddings()
        weight, bias = head.weight, head.bias  # (V, H), (V,)
        targets = row_tgt
        if self.lut is not None:  # non-contiguous support: gather its rows, re-index the targets
            weight = weight.index_select(0, self.sup)  # (S, H)
            bias = bias.index_select(0, self.sup) if bias is not None else None
            targets = torch.where(targets < self.lut.numel(), self.lut[targets.clamp(max=self.lut.numel() - 1)], -1)
        tok = fused_linear_token_logprobs(hidden[row_b, row_pred], weight, targets, bias=bias, lo=self.lo or 0,
                                          hi=self.hi)  # (N,)
        return torch.zeros(lengths.numel(), dtype=torch.float32, device=tok.device).index_add(0, row_seq, tok)


def support_ids(lm: Any) -> torch.Tensor | None:
    """The UnitLM's softmax support (None = the full vocabulary)."""
    if lm.support == "full":
        return None
    return lm.support_ids


def _linear_types() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        return (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        return (nn.Linear,)


def lora_targets(model: nn.Module, requested: Sequence[str]) -> list[str]:
    """The module names a LoRA adapter covers, resolved on this model; every requested name must match.

    ``["auto"]``: every linear layer inside the attention blocks, found by module type (a module whose class
    name contains "Attention"), so OPT gets q/k/v/out_proj, LLaMA q/k/v/o_proj, GPT-2 c_attn/c_proj, any HF
    causal LM its own names.  Leaf names are returned when they name attention layers only, else full paths.
    An explicit name that matches no module is an error (peft would silently skip it when another matches).
    """
    linear = _linear_types()
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, linear)}
    if list(requested) != ["auto"]:
        missing = [t for t in requested if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in layers})
            raise ValueError(f"train.target_modules {missing} match no module of this {kind} model; its linear "
                             f"layers are {leaves}; train.target_modules=[auto] picks its attention projections")
        return list(requested)
    attn_prefixes = [n + "." for n, m in model.named_modules() if "Attention" in type(m).__name__ and n]
    in_attn = [n for n in layers if any(n.startswith(p) for p in attn_prefixes)]
    if not in_attn:
        raise ValueError(f"train.target_modules=[auto]: no linear layer inside an attention module of this {kind} "
                         f"model; name the modules explicitly (linear layers: "
                         f"{sorted({n.rsplit('.', 1)[-1] for n in layers})})")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in in_attn})
    outside = {n.rsplit(".", 1)[-1] for n in layers if n not in set(in_attn)}
    return leaves if not outside & set(leaves) else sorted(in_attn)


def attach_lora(model: nn.Module, cfg: TrainConfig, init_adapter: str | Path | None, seed: int) -> nn.Module:
    """A peft model with a trainable LoRA adapter: a new one (seeded) or ``init_adapter`` continued."""
    from peft import LoraConfig, PeftModel, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    targets = lora_targets(model, cfg.target_modules)
    logger.info("train: LoRA r=%d alpha=%d on %s", cfg.lora_r, cfg.lora_alpha, ", ".join(targets))
    seed_all(seed)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def dropout_off(model: nn.Module) -> None:
    """Training mode for DPO: every dropout of the network off (policy and reference are the same network,
    and a reference pass with dropout is noise), only the LoRA dropout as configured (train.lora_dropout).

    eval() rather than zeroing nn.Dropout modules: OPT applies its dropout, attention dropout and layerdrop
    functionally from ``self.training``; TRL's DPO turns dropout off the same way by default.
    """
    model.eval()
    for name, m in model.named_modules():
        if "lora_dropout" in name.split("."):
            m.train()


def linear_schedule(warmup: int, total: int):  # noqa: ANN201
    """Linear warmup from 0 then linear decay to 0 (the transformers 'linear' schedule)."""
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def schedule_problem(n_pairs: int, cfg: TrainConfig, world: int = 1) -> str | None:
    """Why ``n_pairs`` pairs under ``cfg`` (train section) would not change the adapter at all, or None.

    The linear schedule starts at learning rate 0 and warms up over ``warmup_steps``: a single step with any
    warm-up, or lr = 0, gives no step with a learning rate above 0, and training would leave LoRA B at 0.
    """
    if cfg.batch_size % world:
        return (f"train.batch_size={cfg.batch_size} is the micro-batch over all {world} processes and must be a "
                f"multiple of their number; set it to {cfg.batch_size + world - cfg.batch_size % world}")
    per_step = cfg.batch_size * cfg.grad_accum
    total = math.ceil(n_pairs / per_step) * cfg.epochs
    f = linear_schedule(cfg.warmup_steps, total)
    if any(f(s) > 0 for s in range(total)) and cfg.lr > 0:
        return None
    return (f"train: {n_pairs} pairs at {per_step} pairs per step (train.batch_size "
            f"{cfg.batch_size} x train.grad_accum {cfg.grad_accum}) x {cfg.epochs} epoch(s) = {total} step(s), "
            f"and with train.warmup_steps={cfg.warmup_steps} and train.lr={cfg.lr:g} every one has learning rate "
            f"0: the adapter would not change. Lower train.warmup_steps below {total}, or lower batch_size/"
            f"grad_accum, or raise train.epochs")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def seed_all(seed: int) -> None:
    """Seed every global RNG (torch, CUDA, numpy, random) from ``seed``: what a new adapter's init and the
    training steps (LoRA dropout) draw depends on the seed alone, never on what the process did before."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict:
    """Every RNG, as tensors and plain values only, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


class DPOTrainer:
    """LoRA DPO recipe. ``reference``: 'base' (adapter disabled) or 'initial' (the adapter we start from,
    i.e. the previous round's policy; forces cached reference log-probs)."""

    def __init__(self, lm: Any, cfg: TrainConfig, out_dir: str | Path, *, seed: int = 0,
                 init_adapter: str | Path | None = None, reference: str = "base",
                 device: str | torch.device = "cpu"):
        if reference not in ("base", "initial"):
            raise ValueError(f"reference must be 'base' or 'initial', got {reference!r}")
        self.lm, self.cfg, self.out, self.seed = lm, cfg, Path(out_dir), seed
        self.reference, self.device = reference, torch.device(device)
        self.precompute = bool(cfg.precompute_ref) or reference == "initial"
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        self.peft = attach_lora(lm.model, cfg, init_adapter, seed).to(self.device)
        dropout_off(self.peft)  # from the start: the reference log-probs may be computed before train()
        self.module = SequenceLogps(self.peft, support_ids(lm), cfg.autocast).to(self.device)
        self.ddp = self._wrap_ddp(self.module)
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ref_cache: torch.Tensor | None = None  # (n_examples, 2) when precomputed
        self.ref_key: str | None = None  # which examples ref_cache holds (see _examples_key)
        attn = getattr(lm.model.config, "_attn_implementation", "sdpa")
        # a 4-D custom mask costs the fused SDPA kernels on CUDA (measured 2.4x slower on an H100)
        self.shared = (cfg.share_prompt and attn in ("sdpa", "eager")
                       and self.device.type != "cuda")

    def _collate(self, examples: list[Example]) -> Batch:
        return collate(examples, self.lm.pad_id, shared=self.shared).to(self.device)

    def _wrap_ddp(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=False)

    # ---------------------------------------------------------------- reference log-probs

    def _reference(self, batch: Batch, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` reference log-probs of chosen and rejected: from ``cache`` (precomputed, indexed by the
        examples' ``idx``) or computed now with the adapter disabled."""
        if cache is not None:
            ref = cache[batch.idx.cpu()].to(self.device)  # (B, 2)
            return ref[:, 0], ref[:, 1]
        with torch.no_grad(), self.peft.disable_adapter():
            logps = self.module(*batch.forward_args())
        return logps.chunk(2)

    def precompute_reference(self, examples: list[Example]) -> None:
        """Reference log-probs of every example, once, cached in ``out/ref_logps.pt`` (rank-sharded)."""
        key = self._examples_key(examples)
        if self.ref_cache is not None and self.ref_key == key:
            return  # already computed for these examples in this process
        self.ref_key = key
        path = self.out / "ref_logps.pt"
        if path.exists():
            saved = torch.load(path, weights_only=True)
            if saved.get("key") == key:
                self.ref_cache = saved["logps"]
                return
        n_max = max(e.idx for e in examples) + 1
        cache = torch.zeros(n_max, 2, dtype=torch.float32, device=self.device)
        ctx = self.peft.disable_adapter() if self.reference == "base" else contextlib.nullcontext()
        mine, per_rank = examples[self.rank::self.world], self._per_rank()
        with torch.no_grad(), ctx:
            for s in range(0, len(mine), per_rank):
                b = self._collate(mine[s:s + per_rank])
                c, r = self.module(*b.forward_args()).chunk(2)
                cache[b.idx] = torch.stack([c, r], 1)
        if self.world > 1:
            dist.all_reduce(cache)
        self.ref_cache = cache.cpu()
        if self.rank == 0:
            write_torch(path, {"key": key, "logps": self.ref_cache})

    # ---------------------------------------------------------------- one step

    def _micro_batches(self, examples: list[Example], step: int, steps_per_epoch: int) -> list[list[Example]]:
        """This rank's micro-batches for global optimizer step ``step`` (0-based)."""
        epoch, k = divmod(step, steps_per_epoch)
        order = epoch_order(len(examples), self.seed, epoch)
        per_step, per_rank = self.cfg.batch_size * self.cfg.grad_accum, self._per_rank()
        out = []
        for m in range(self.cfg.grad_accum):
            start = k * per_step + m * self.cfg.batch_size + self.rank * per_rank
            out.append([examples[order[(start + j) % len(order)]] for j in range(per_rank)])
        return out

    def _per_rank(self) -> int:
        """This process's share of a micro-batch (``train.batch_size`` is over all processes)."""
        if self.cfg.batch_size % self.world:
            raise ValueError(f"train.batch_size={self.cfg.batch_size} must be a multiple of the {self.world} "
                             "processes (it is the micro-batch over all of them)")
        return self.cfg.batch_size // self.world

    def _loss(self, batch: Batch, forward: nn.Module, cache: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its per-pair statistics; ``forward`` is the DDP-wrapped module in training
        and the bare module in no-grad evaluation (no DDP hooks), ``cache`` the reference log-probs or None."""
        logps = forward(*batch.forward_args())  # (2B,)
        pc, pr = logps.chunk(2)
        rc, rr = self._reference(batch, cache)
        lc, lr_ = batch.lengths.chunk(2)
        out = preference_loss(pc, pr, rc, rr, beta=self.cfg.beta, loss_type=self.cfg.loss,
                              label_smoothing=self.cfg.label_smoothing, chosen_lengths=lc, rejected_lengths=lr_)
        return out.losses.mean(), pair_stats(out, pc, pr)

    def train_step(self, micro: list[list[Example]]) -> tuple[torch.Tensor, float]:
        """Forward/backward over the micro-batches, clip, optimizer step. Returns (stats (n, 7), grad norm)."""
        self.opt.zero_grad(set_to_none=True)
        stats = []
        for m, exs in enumerate(micro):
            batch = self._collate(exs)
            last = m == len(micro) - 1
            sync = contextlib.nullcontext() if (last or self.world == 1) else self.ddp.no_sync()
            with sync:
                loss, st = self._loss(batch, self.ddp, self.ref_cache)
                (loss / len(micro)).backward()
            stats.append(st)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        st = torch.cat(stats)
        if self.world > 1:
            gathered = [torch.empty_like(st) for _ in range(self.world)]
            dist.all_gather(gathered, st.contiguous())
            st = torch.cat(gathered)
        return st, float(norm)

    # ---------------------------------------------------------------- checkpoints

    def _ckpt_path(self) -> Path:
        return self.out / "checkpoint" / "state.pt"

    def save_checkpoint(self, step: int) -> None:
        if self.rank != 0:
            return
        from peft import get_peft_model_state_dict

        state = {"step": step, "adapter": get_peft_model_state_dict(self.peft), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "rng": _rng_state(), "seed": self.seed}
        write_torch(self._ckpt_path(), state)

    def load_checkpoint(self) -> int:
        """Restore the latest checkpoint if any; return the number of steps already done."""
        path = self._ckpt_path()
        if not path.exists():
            return 0
        from peft import set_peft_model_state_dict

        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("seed") != self.seed:
            raise RuntimeError(f"{path} was written with seed {state.get('seed')}, this run uses {self.seed}; "
                               "delete the checkpoint directory to start over")
        set_peft_model_state_dict(self.peft, state["adapter"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        logger.info("train: resuming from %s at step %d", path, state["step"])
        return int(state["step"])

    # ---------------------------------------------------------------- the recipe

    def train(self, examples: list[Example], stop_after: int | None = None) -> dict:
        """Train over ``examples``; resumes from ``out/checkpoint``. ``stop_after`` = steps then return
        WITHOUT a final checkpoint (simulates a crash; tests)."""
        problem = schedule_problem(len(examples), self.cfg, self.world)
        if problem:
            raise ValueError(problem)
        per_step = self.cfg.batch_size * self.cfg.grad_accum
        if per_step > len(examples):
            logger.warning("train: %d pairs per step but only %d pairs: each step repeats pairs", per_step,
                           len(examples))
        steps_per_epoch = max(1, math.ceil(len(examples) / per_step))
        total = steps_per_epoch * self.cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, linear_schedule(self.cfg.warmup_steps, total))
        if self.precompute:
            self.precompute_reference(examples)
        seed_all(self.seed)  # every round: step 0 draws from the seed (a resumed run restores its checkpoint's RNG)
        start = self.load_checkpoint()
        log_path = self.out / "train_log.jsonl"
        self._truncate_log(log_path, start)
        dropout_off(self.peft)
        last: dict = {}
        for step in range(start, total):
            if stop_after is not None and step >= stop_after:
                return {"stopped_at": step}
            t0 = time.perf_counter()
            lr = self.sched.get_last_lr()[0]
            st, norm = self.train_step(self._micro_batches(examples, step, steps_per_epoch))
            last = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4), "lr": lr,
                    **metrics_from_stats(st), "grad_norm": norm, "seconds": round(time.perf_counter() - t0, 4),
                    "time": time.time()}
            if self.rank == 0:
                with disk_errors(log_path), open(log_path, "a") as f:
                    f.write(_json(last) + "\n")
                logger.info("train step %d/%d loss %.4f acc %.3f margin %.4f", step + 1, total, last["loss"],
                            last["rewards/accuracies"], last["rewards/margins"])
            if (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < total:
                self.save_checkpoint(step + 1)
        self.save_checkpoint(total)
        if not last and start > 0:  # killed after the final checkpoint: the last step is the log's last row
            last = self._last_logged(log_path, start)
        return {"steps": total, "final": last}

    def _last_logged(self, path: Path, step: int) -> dict:
        rows = [r for r in read_jsonl(path) if r.get("step") == step] if path.exists() else []
        return rows[-1] if rows else {}

    def _truncate_log(self, path: Path, done: int) -> None:
        if self.rank == 0 and path.exists():
            write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= done])

    def _examples_key(self, examples: list[Example]) -> str:
        return hash_str(self.reference, repr([(e.idx, e.prompt, e.chosen, e.rejected) for e in examples]))

    def evaluate(self, examples: list[Example]) -> dict[str, float]:
        """Metrics of the current policy over all ``examples`` (no gradient), TRL names.

        Cached reference log-probs are used only for the examples they were computed for; other examples
        (e.g. held-out pairs) get the reference computed now, which needs the reference to be the base
        model (the adapter disabled): the 'initial' reference no longer exists once training has moved it.
        """
        cache = self.ref_cache
        if cache is not None and self._examples_key(examples) != self.ref_key:
            if self.reference != "base":
                raise ValueError("DPOTrainer.evaluate: reference log-probs (reference='initial') are cached for "
                                 "the training pairs only; evaluate other pairs with reference='base'")
            cache = None
        self.peft.eval()
        stats = []
        with torch.no_grad():
            for s in range(0, len(examples), self.cfg.batch_size):
                batch = self._collate(examples[s:s + self.cfg.batch_size])
                stats.append(self._loss(batch, self.module, cache)[1])
        return metrics_from_stats(torch.cat(stats))

    def save_adapter(self, path: str | Path, base_name: str | None = None) -> Path:
        """``save_pretrained`` (safetensors) into a temporary directory, renamed into place.

        ``base_name``: what adapter_config.json records as the base model (e.g. a run-relative path)."""
        path = Path(path)
        if self.rank != 0:
            return path
        if base_name is not None:
            for c in self.peft.peft_config.values():
                c.base_model_name_or_path = base_name
        with atomic_dir(path) as tmp:
            self.peft.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            _stable_adapter_files(tmp)
        return path


def _stable_adapter_files(adapter_dir: Path) -> None:
    """Make a saved adapter's bytes a function of its content: peft writes target_modules from a set (its
    order changes with the process's hash seed) and a model card naming the base model's absolute path."""
    import json

    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (adapter_dir / "README.md").unlink(missing_ok=True)  # a boilerplate card; loading never reads it


def _json(row: dict) -> str:
    import json

    return json.dumps(row)
