"""Method fidelity of the DPO step on real (tiny, random) checkpoints of the TWIST architectures:
dropout off in policy and reference, LoRA targets resolved per architecture, no silent no-op schedule."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from helpers import tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

from alignslm.config import TrainConfig
from alignslm.dpo.trainer import DPOTrainer, collate, dropout_off, lora_targets, prepare_pairs, schedule_problem
from alignslm.lm.unitlm import UnitLM

N_UNITS, OFFSET = 20, 4  # TWIST-style: unit k is token k + config.offset


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_opt(dropout: float = 0.1) -> UnitLM:
    """TWIST-1.3B's architecture (OPT) with its dropout settings (dropout 0.1, attention dropout 0.1)."""
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=OFFSET + N_UNITS, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, dropout=dropout, attention_dropout=dropout,
                    activation_dropout=dropout)
    return UnitLM(OPTForCausalLM(cfg), offset=OFFSET, n_units=N_UNITS, bos_id=0, eos_id=2, pad_id=1)


def pairs(n: int) -> list[dict]:
    rng = random.Random(0)
    return [{"prompt_id": f"p{i}", "prompt": [rng.randrange(N_UNITS) for _ in range(5)],
             "chosen": [rng.randrange(10) for _ in range(6)],
             "rejected": [rng.randrange(10, 20) for _ in range(6)]} for i in range(n)]


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-3, warmup_steps=0, epochs=1, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=1000,
                max_length=64, precompute_ref=False)
    return dataclasses.replace(TrainConfig(), **{**base, **kw})


@pytest.mark.parametrize("precompute", [False, True])
def test_dropout_is_off_in_policy_and_reference_during_dpo(tmp_path, precompute):
    """A fresh LoRA (B = 0) makes the policy equal to the reference: the first step's rewards are exactly 0.

    With OPT's dropout 0.1 on (train mode), policy and reference passes draw different masks and the
    rewards are not 0 (the issue measured -0.0079 on TWIST-1.3B)."""
    lm = tiny_opt(dropout=0.1)
    ex, _ = prepare_pairs(pairs(8), lm, 64)
    tr = DPOTrainer(lm, cfg(precompute_ref=precompute), tmp_path, seed=1)
    tr.train(ex)
    first = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-7)  # -log sigmoid(0)
    assert not any(m.training for n, m in tr.peft.named_modules() if "lora_dropout" not in n.split("."))
    # what train mode would have done: two passes of the same network disagree
    seqs = tr.module(*collate(ex[:4], lm.pad_id, shared=tr.shared).forward_args())
    tr.peft.train()
    noisy = tr.module(*collate(ex[:4], lm.pad_id, shared=tr.shared).forward_args())
    assert not torch.allclose(seqs, noisy)


def test_lora_dropout_stays_as_configured():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_opt().model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2,
                                                        target_modules=lora_targets(tiny_opt().model, ["auto"])))
    dropout_off(model)
    lora = [m for n, m in model.named_modules() if "lora_dropout" in n.split(".")]
    assert lora and all(m.training for m in lora)
    assert not any(m.training for n, m in model.named_modules() if "lora_dropout" not in n.split("."))


def test_lora_targets_per_architecture():
    assert lora_targets(tiny_opt().model, ["auto"]) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    llama = tiny_llama(OFFSET + N_UNITS, max_positions=128)
    assert lora_targets(llama, ["auto"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    got = lora_targets(gpt2, ["auto"])  # c_proj names an MLP layer too: full paths, attention only
    assert got == [f"transformer.h.{i}.attn.{n}" for i in range(2) for n in ("c_attn", "c_proj")]
    with pytest.raises(ValueError, match=r"\['o_proj'\] match no module of this opt model.*'out_proj'"):
        lora_targets(tiny_opt().model, ["q_proj", "o_proj"])
    assert lora_targets(tiny_opt().model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


def test_default_adapter_on_twist_architecture_covers_the_output_projection(tmp_path):
    lm = tiny_opt()
    tr = DPOTrainer(lm, cfg(), tmp_path, seed=1)
    covered = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in tr.peft.named_parameters() if ".lora_A" in n}
    assert covered == {"q_proj", "k_proj", "v_proj", "out_proj"}


def test_a_schedule_without_any_update_is_an_error_before_training(tmp_path):
    # the pilot: 64 pairs per step, 10 warm-up steps, 18 pairs -> one step, at learning rate 0
    paper = cfg(batch_size=8, grad_accum=8, warmup_steps=10)
    problem = schedule_problem(18, paper)
    assert problem and "= 1 step(s)" in problem and "Lower train.warmup_steps below 1" in problem
    assert schedule_problem(18, cfg(batch_size=8, grad_accum=8, warmup_steps=0)) is None
    assert schedule_problem(18, cfg(batch_size=4, grad_accum=1, warmup_steps=3)) is None  # 5 steps, lr > 0 from 1
    assert schedule_problem(18, cfg(lr=0.0)) is not None
    # train.batch_size is the micro-batch over all processes: the schedule does not depend on the world size
    assert schedule_problem(200, cfg(batch_size=8, grad_accum=8, warmup_steps=3), world=8) is None  # 4 steps
    assert schedule_problem(200, cfg(batch_size=8, grad_accum=8, warmup_steps=3), world=1) is None
    assert "multiple of" in schedule_problem(200, cfg(batch_size=6, grad_accum=8, warmup_steps=0), world=4)
    lm = tiny_opt()
    ex, _ = prepare_pairs(pairs(18), lm, 64)
    tr = DPOTrainer(lm, paper, tmp_path, seed=1)
    with pytest.raises(ValueError, match="every one has learning rate 0"):
        tr.train(ex)
    assert not (tmp_path / "train_log.jsonl").exists()
    b0 = [p.detach().clone() for n, p in tr.peft.named_parameters() if "lora_B" in n]
    assert all((b == 0).all() for b in b0)


def test_an_empty_pairs_file_names_the_pairs_and_judge_summaries():
    from alignslm.dpo.trainer import NoPairs

    with pytest.raises(NoPairs, match="the pairs stage built none; its summary.json says why"):
        prepare_pairs([], tiny_opt(), 64, source="round-1/pairs/pairs.jsonl")


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_dpo_steps_move_every_lora_parameter_and_no_base_parameter(tmp_path, arch):
    """After a few DPO steps every LoRA tensor of every target has moved (lora_A moves from step 2, once lora_B
    is no longer zero) and every base weight is bit-identical: the adapter is all that trains."""
    if arch == "opt":
        lm = tiny_opt(dropout=0.0)
    else:
        lm = UnitLM(tiny_llama(OFFSET + N_UNITS, max_positions=128), offset=OFFSET, n_units=N_UNITS, bos_id=1,
                    eos_id=2, pad_id=0)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    tr = DPOTrainer(lm, cfg(epochs=3), tmp_path, seed=1)
    start = {n: p.detach().clone() for n, p in tr.peft.named_parameters() if ".lora_" in n}
    ex, _ = prepare_pairs(pairs(8), lm, 64)
    assert tr.train(ex)["steps"] == 6
    lora = {n: p for n, p in tr.peft.named_parameters() if ".lora_" in n}
    assert len(lora) == 2 * 4 * 2 and start.keys() == lora.keys()  # (A, B) x q/k/v/o x 2 layers
    assert [n for n, p in lora.items() if torch.equal(p, start[n])] == []  # every LoRA tensor moved
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in tr.peft.named_parameters() if ".lora_" not in n}
    assert base.keys() == before.keys()
    assert [n for n, p in base.items() if not torch.equal(p, before[n])] == []  # no base weight moved
