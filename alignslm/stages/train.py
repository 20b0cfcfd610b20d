"""Train stage (round N): DPO on a LoRA adapter of the unit LM, from round N's preference pairs.

Reads ``ctx.inputs["pairs"]/pairs.jsonl``, the unit LM (``ctx.inputs["unitlm"]``) and, from round 2 on,
the previous round's adapter (``ctx.inputs["train_prev"]/adapter``).  Writes into ``round-N/train/``:

    adapter/            peft LoRA adapter (adapter_config.json + adapter_model.safetensors)
    train_log.jsonl     one row per optimizer step: step, epoch, lr, loss, rewards/chosen,
                        rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
                        logps/rejected, grad_norm, seconds
    policy.json         what the adapter is (below), the reference used, the data counts
    checkpoint/         resume state (adapter, optimizer, scheduler, RNG, step)
    ref_logps.pt        cached reference log-probs (train.precompute_ref, or reference=previous_round)
    rejects.jsonl       pairs that could not be used, with the reason

WHAT THE ADAPTER OF ROUND N CONTAINS -- it is CUMULATIVE:

    policy of round N  =  base unit LM  +  round-N/train/adapter          (and nothing else)

Round 1 starts a fresh LoRA adapter (B = 0, so the policy starts as the base).  Round N > 1 loads the
round N-1 adapter and keeps training it, so the round-N adapter is a delta on top of the BASE weights
that already includes every earlier round's update.  Consequently:

* sampling in round N uses ``load_unitlm(unitlm_dir, adapters=[run_dir/"round-{N-1}/train"])`` -- the
  previous round's adapter ALONE (never a list of several rounds: they would be applied twice);
* evaluation of "round-N" uses ``adapters=[run_dir/"round-{N}/train"]``; :func:`policy_adapters` says
  this in code.

``curriculum.reference`` decides the DPO reference of round N:

* ``base``: the frozen base model, i.e. the same network with the adapter disabled (peft
  ``disable_adapter``) -- or its log-probs cached once when ``train.precompute_ref`` is set.
* ``previous_round``: the round N-1 policy (base + round-(N-1) adapter) = the policy at step 0 of round
  N; its log-probs are computed once before training and cached in ``ref_logps.pt``.  In round 1 the
  two settings coincide (the previous policy is the base).

The paper keeps a frozen-base reference; whether it moves between rounds is not published, so the
setting is recorded in policy.json and in the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignslm import logger
from alignslm.dpo.trainer import DPOTrainer, NoPairs, prepare_pairs, schedule_problem
from alignslm.impl import resolve_device
from alignslm.rundir import (
    StageContext,
    barrier,
    policy_adapters,
    rank_world,
    read_json,
    read_jsonl,
    relative_path,
    write_json,
)

if TYPE_CHECKING:
    from alignslm.config import Config

def check(cfg: Config) -> list[str]:
    t, problems = cfg.train, []
    if t.beta <= 0:
        problems.append(f"train.beta must be > 0, got {t.beta}")
    if t.loss == "robust" and not 0 <= t.label_smoothing < 0.5:
        problems.append(f"train.label_smoothing must be in [0, 0.5) for the robust loss, got {t.label_smoothing}")
    for key in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs", "checkpoint_every"):
        if getattr(t, key) < 1:
            problems.append(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.max_length < 3:
        problems.append(f"train.max_length must be >= 3, got {t.max_length}")
    if not problems:
        n = cfg.sample.n_continuations
        most = cfg.sample.n_prompts * ((n // 2) * (n - n // 2) if cfg.pairs.all_combinations else 1)
        too_few = schedule_problem(most, t, rank_world()[1])
        if too_few:
            problems.append(f"at most {most} pairs per round (sample.n_prompts={cfg.sample.n_prompts}): {too_few}")
    if t.load_in_4bit and not torch.cuda.is_available():
        problems.append("train.load_in_4bit needs a CUDA GPU (bitsandbytes); set train.load_in_4bit=false on CPU")
    return problems


def _device(cfg: Config) -> torch.device:
    return torch.device(resolve_device(cfg.run.device))


def _load_base(ctx: StageContext, device: torch.device) -> Any:
    """The unit LM without adapters, optionally 4-bit, with FlashAttention when it is there."""
    from alignslm.lm.unitlm import load_unitlm

    cfg = ctx.cfg
    if cfg.train.load_in_4bit:
        _require_4bit(device)
    lm = load_unitlm(ctx.inputs["unitlm"], support=cfg.unitlm.support, device=device, dtype=cfg.unitlm.dtype)
    if cfg.train.load_in_4bit:
        lm.model = _quantized_copy(lm.model, device)
    if device.type == "cuda":
        _try_flash_attention(lm.model)
    return lm


def _require_4bit(device: torch.device) -> None:
    if device.type != "cuda":
        raise RuntimeError("train.load_in_4bit=true needs a CUDA GPU (bitsandbytes 4-bit kernels); "
                           "set train.load_in_4bit=false to train in full precision on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError("train.load_in_4bit=true needs bitsandbytes: pip install 'alignslm[gpu]'") from e


def _quantized_copy(model: Any, device: torch.device) -> Any:
    """Reload the same checkpoint with NF4 weights (bf16 compute) and prepare it for k-bit training."""
    from peft import prepare_model_for_kbit_training

    from alignslm.deps import require

    require("transformers")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    path = model.config._name_or_path
    q = AutoModelForCausalLM.from_pretrained(path, quantization_config=qcfg, device_map={"": device})
    return prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)


def _try_flash_attention(model: Any) -> None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        logger.info("train: flash-attn not installed; using the model's default attention")
        return
    try:
        model.set_attn_implementation("flash_attention_2")
        logger.info("train: FlashAttention 2 enabled")
    except (ValueError, ImportError, AttributeError) as e:
        logger.info("train: FlashAttention 2 not usable for this model (%s)", e)


def run(ctx: StageContext) -> dict:
    cfg, t = ctx.cfg, ctx.cfg.train
    problems = check(cfg)
    if problems:
        raise ValueError("train stage: " + "; ".join(problems))
    pairs_path = ctx.inputs["pairs"] / "pairs.jsonl"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"{pairs_path} not found; run the pairs stage of round {ctx.round} first")
    prev = ctx.inputs.get("train_prev")
    init_adapter = prev / "adapter" if prev is not None else None
    if init_adapter is not None and not (init_adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{init_adapter}: no adapter from round {ctx.round - 1}; rerun its train stage")
    device = _device(cfg)
    lm = _load_base(ctx, device)
    max_len = min(t.max_length, lm.max_context() or t.max_length)
    rows = read_jsonl(pairs_path)
    try:
        examples, counts = prepare_pairs(rows, lm, max_len, rejects=ctx.rejects, source=str(pairs_path))
    except NoPairs as e:
        if t.on_no_pairs != "keep_policy":
            raise
        return _keep_policy(ctx, lm, init_adapter, device, str(e))
    reference = "initial" if (cfg.curriculum.reference == "previous_round" and init_adapter) else "base"
    trainer = DPOTrainer(lm, t, ctx.out, seed=ctx.seed(), init_adapter=init_adapter, reference=reference,
                         device=device)
    prior = _prior_policy_on_new_pairs(ctx, trainer, examples, rows, init_adapter, reference)
    result = trainer.train(examples)
    final = trainer.evaluate(examples)  # the trained policy over every pair (no gradient)
    trainer.save_adapter(ctx.out / "adapter", _base_name(ctx, lm))
    rel = lambda p: relative_path(p, ctx.run_dir)  # noqa: E731 - paths inside the run dir stay relative
    policy = {"round": ctx.round, "cumulative": True, "base": rel(ctx.inputs["unitlm"]),
              "load": [rel(p) for p in policy_adapters(ctx.run_dir, ctx.round)],
              "initialised_from": rel(init_adapter) if init_adapter else None,
              "reference": cfg.curriculum.reference, "support": cfg.unitlm.support, "counts": counts,
              "final_reward_accuracy": final["rewards/accuracies"], "final_reward_margin": final["rewards/margins"],
              "prior_policy_on_these_pairs": prior}
    if ctx.rank == 0:
        write_json(ctx.out / "policy.json", policy)
    barrier()  # every rank returns once the adapter is on disk
    return {"steps": result["steps"], "pairs": counts["pairs_used"], "dropped": counts["dropped"],
            "truncated_prompt": counts["truncated_prompt"], "truncated_completion": counts["truncated_completion"],
            "reference": cfg.curriculum.reference, "loss": t.loss, "beta": t.beta,
            "final_reward_accuracy": final["rewards/accuracies"], "final_reward_margin": final["rewards/margins"],
            "final_loss": final["loss"], "last_step": result.get("final", {}),
            "prior_policy_reward_accuracy": (prior or {}).get("reward_accuracy")}


def _base_name(ctx: StageContext, lm: Any) -> str:
    """The base model as the adapter records it: relative to the run directory when it lies inside."""
    return relative_path(lm.model.config._name_or_path, ctx.run_dir)


def _prior_policy_on_new_pairs(ctx: StageContext, trainer: DPOTrainer, examples: list, rows: list[dict],
                               init_adapter: Path | None, reference: str) -> dict | None:
    """The previous round's policy on this round's pairs whose prompts no earlier round trained on.

    A held-out check of what DPO learned: a reward accuracy near 0.5 means the preferences it fitted did not
    carry over to new prompts.  The rounds' prompts are disjoint (stage sample) unless the train split ran
    out; pairs of a prompt an earlier round's pairs hold are left out, and the count says how many remain.
    Only meaningful when the reference is the base model (round >= 2, curriculum.reference=base).
    """
    if init_adapter is None or reference != "base":
        return None
    path = ctx.out / "prior_policy.json"
    if trainer._ckpt_path().is_file():  # resumed mid-training: measured before the first step, or not at all
        return read_json(path) if path.is_file() else None
    earlier = [ctx.round_dir(k) / "pairs" / "pairs.jsonl" for k in range(1, ctx.round)]
    seen = {str(r.get("prompt_id")) for f in earlier if f.is_file() for r in read_jsonl(f)}
    held = [e for e in examples if str(rows[e.idx].get("prompt_id")) not in seen]
    if not held:
        logger.warning("train round %s: every pair's prompt was trained on in an earlier round: no held-out check",
                       ctx.round)
        return None
    if trainer.precompute and len(held) == len(examples):  # the reference pass train() needs anyway, done once
        trainer.precompute_reference(examples)
    m = trainer.evaluate(held)
    out = {"reward_accuracy": m["rewards/accuracies"], "reward_margin": m["rewards/margins"],
           "pairs": len(held), "pairs_of_seen_prompts": len(examples) - len(held),
           "policy": relative_path(init_adapter, ctx.run_dir)}
    if ctx.rank == 0:
        write_json(path, out)
    logger.info("train round %s: the round-%s policy prefers the chosen side of %.1f%% of %d pairs whose prompts "
                "no earlier round trained on (%d pairs of earlier prompts left out; 50%% = no carry-over)",
                ctx.round, ctx.round - 1, 100 * out["reward_accuracy"], len(held), len(examples) - len(held))
    return out


def _keep_policy(ctx: StageContext, lm: Any, init_adapter: Path | None, device: torch.device, why: str) -> dict:
    """``train.on_no_pairs=keep_policy``: a round without a valid pair leaves the policy unchanged.

    The adapter written is the previous round's (or a fresh LoRA with B = 0, i.e. the base), so later
    rounds and the evaluation load it like any other; the summary and policy.json say it was not trained.
    """
    logger.warning("train round %s: %s -- keeping the policy of the previous round (train.on_no_pairs)",
                   ctx.round, why)
    trainer = DPOTrainer(lm, ctx.cfg.train, ctx.out, seed=ctx.seed(), init_adapter=init_adapter, device=device)
    trainer.save_adapter(ctx.out / "adapter", _base_name(ctx, lm))
    if ctx.rank == 0:
        write_json(ctx.out / "policy.json", {"round": ctx.round, "cumulative": True, "trained": False,
                                             "reason": why,
                                             "initialised_from": relative_path(init_adapter, ctx.run_dir)
                                             if init_adapter else ""})
    barrier()
    return {"steps": 0, "pairs": 0, "trained": False, "reason": "no valid preference pair"}
