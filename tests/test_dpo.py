"""DPO trainer: losses by hand, pair validation and truncation, the concatenated forward, exact resume,
cached reference, and (integration) reward accuracy on a clearly separable synthetic preference set."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
from helpers import N_UNITS, OFFSET, synthetic_pairs, tiny_lm, train_cfg

from alignslm.dpo.losses import metrics_from_stats, pair_stats, preference_loss
from alignslm.dpo.trainer import DPOTrainer, SequenceLogps, collate, prepare_pairs, support_ids
from alignslm.lm.unitlm import UnitLM
from alignslm.rundir import Rejects

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------------- losses


def test_sigmoid_loss_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    out = preference_loss(pc, pr, rc, rr, beta=0.5)
    x = 0.5 * ((-3.0 + 4.0) - (-5.0 + 4.5))  # 0.75
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-x)), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.25)


def test_ipo_and_robust_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    ipo = preference_loss(pc, pr, rc, rr, beta=0.25, loss_type="ipo", chosen_lengths=torch.tensor([2]),
                          rejected_lengths=torch.tensor([4]))
    assert ipo.losses.item() == pytest.approx(((1.0 / 2 - (-0.5) / 4) - 1 / (2 * 0.25)) ** 2, abs=1e-6)
    e, x = 0.1, 0.3 * 1.5
    rob = preference_loss(pc, pr, rc, rr, beta=0.3, loss_type="robust", label_smoothing=e)
    ls = lambda v: math.log(1 / (1 + math.exp(-v)))  # noqa: E731
    assert rob.losses.item() == pytest.approx((-(1 - e) * ls(x) + e * ls(-x)) / (1 - 2 * e), abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(pc, pr, rc, rr, beta=0.3, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="unknown loss"):
        preference_loss(pc, pr, rc, rr, beta=0.3, loss_type="kto")


def test_metric_names_and_values():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    out = preference_loss(pc, pr, torch.zeros(2), torch.zeros(2), beta=1.0)
    m = metrics_from_stats(pair_stats(out, pc, pr))
    assert set(m) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                      "logps/chosen", "logps/rejected"}
    assert m["rewards/accuracies"] == 0.5 and m["rewards/margins"] == pytest.approx(0.5)
    assert m["logps/chosen"] == pytest.approx(-1.5)


# ---------------------------------------------------------------------------------------------- data


def test_bad_pairs_are_dropped_and_counted(tmp_path):
    lm = tiny_lm()
    rows = synthetic_pairs(3) + [
        {"prompt_id": "beyond", "prompt": [1], "chosen": [N_UNITS], "rejected": [2]},
        {"prompt_id": "empty", "prompt": [1], "chosen": [], "rejected": [2]},
        {"prompt_id": "missing", "prompt": [1], "chosen": [3]},
        {"prompt_id": "float", "prompt": [1], "chosen": [3.5], "rejected": [2]},
    ]
    rej = Rejects(tmp_path / "rejects.jsonl", "train")
    ex, counts = prepare_pairs(rows, lm, 64, rejects=rej)
    assert len(ex) == 3 and counts["dropped"] == 4 and rej.count == 4
    reasons = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "rejects.jsonl").read_text().splitlines())}
    assert "outside the vocabulary" in reasons["beyond"] and "empty" in reasons["empty"]
    assert "missing" in reasons["missing"] and "non-integer" in reasons["float"]


def test_no_valid_pair_is_a_clear_error():
    with pytest.raises(ValueError, match="round-1/pairs.jsonl: no valid preference pair"):
        prepare_pairs([{"prompt": [1], "chosen": [], "rejected": []}], tiny_lm(), 64,
                      source="round-1/pairs.jsonl")


def test_truncation_keeps_prompt_end_and_counts():
    lm = tiny_lm()
    rows = [{"prompt": list(range(10)), "chosen": [1, 2, 3], "rejected": [4, 5]},
            {"prompt": [7, 8], "chosen": list(range(12)), "rejected": [4]}]
    ex, counts = prepare_pairs(rows, lm, 8)
    assert counts["truncated_prompt"] == 2 and counts["truncated_completion"] == 1
    assert ex[0].prompt == [1] + [u + OFFSET for u in (6, 7, 8, 9)]  # BOS + the END of the prompt
    assert ex[1].chosen == [u + OFFSET for u in range(6)] and ex[1].prompt == [1, 8 + OFFSET]
    assert all(len(e.prompt) + max(len(e.chosen), len(e.rejected)) <= 8 for e in ex)


def test_collate_layouts():
    lm = tiny_lm()
    ex, _ = prepare_pairs([{"prompt": [0, 1], "chosen": [2, 3, 4], "rejected": [5]},
                           {"prompt": [6], "chosen": [7], "rejected": [8, 9]}], lm, 64)
    b = collate(ex, lm.pad_id)  # [chosen_1, chosen_2, rejected_1, rejected_2]
    assert b.input_ids.shape == (4, 6) and b.attention_mask[2].tolist() == [1, 1, 1, 1, 0, 0]
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5, 6] and b.input_ids[2].tolist() == [1, 2, 3, 7, 0, 0]
    assert b.lengths.tolist() == [3, 1, 1, 2]
    rows = list(zip(b.row_b.tolist(), b.row_pred.tolist(), b.row_tgt.tolist(), b.row_seq.tolist()))
    assert rows[3] == (2, 2, 7, 2)  # rejected of pair 1 = sequence 2: token 7 predicted at position 2 of row 2
    s = collate(ex, lm.pad_id, shared=True)  # one row per pair: prompt + chosen + rejected
    assert s.input_ids[0].tolist() == [1, 2, 3, 4, 5, 6, 7] and s.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 3]
    assert s.attention_mask.shape == (2, 1, 7, 7)
    allowed = (s.attention_mask[0, 0] == 0).int()
    assert allowed[6].tolist() == [1, 1, 1, 0, 0, 0, 1]  # the rejected token sees the prompt, not chosen
    assert allowed[5].tolist() == [1, 1, 1, 1, 1, 1, 0]
    rows = list(zip(s.row_b.tolist(), s.row_pred.tolist(), s.row_tgt.tolist(), s.row_seq.tolist()))
    assert rows[3] == (0, 2, 7, 2)  # first rejected token predicted from the last prompt position


def _ref_logps(lm, b):
    """Definition: UnitLM.token_logprobs on the full logits of the unshared batch."""
    with torch.no_grad():
        logits = lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.double()
    tok = lm.token_logprobs(logits[b.row_b, b.row_pred], b.row_tgt)  # (N,)
    return torch.zeros(b.lengths.numel(), dtype=torch.float64).index_add(0, b.row_seq, tok.double())


@pytest.mark.parametrize("support,eos", [("units", 1), ("full", 1), ("units", 25)])
@pytest.mark.parametrize("shared", [False, True])
def test_one_forward_equals_unitlm_token_logprobs(support, eos, shared):
    """Same support as sampling: UnitLM.token_logprobs on full logits is the definition. eos=25 makes the
    units support non-contiguous ({2..21} + {25}); completions end with EOS so it is scored too."""
    base = tiny_lm(extra_vocab=5)
    lm = UnitLM(base.model, offset=OFFSET, n_units=N_UNITS, bos_id=1, eos_id=eos, pad_id=0, support=support)
    ex, _ = prepare_pairs(synthetic_pairs(5), lm, 64)
    for e in ex:
        e.chosen.append(eos)
    ref = _ref_logps(lm, collate(ex, lm.pad_id))
    ours = SequenceLogps(lm.model, support_ids(lm))(*collate(ex, lm.pad_id, shared=shared).forward_args())
    assert torch.isfinite(ref).all() and (ours.double() - ref).abs().max().item() < 1e-4
    alone = SequenceLogps(lm.model, support_ids(lm))(*collate(ex[:1], lm.pad_id, shared=shared).forward_args())
    assert alone[0].item() == pytest.approx(ours[0].item(), abs=1e-5)  # padding with other pairs changes nothing


def test_shared_prompt_gradients_equal_unshared_on_opt():
    """TWIST-1.3B is an OPT model (learned positions): the shared layout must give the same LoRA gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=OFFSET + N_UNITS, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0,
                    bos_token_id=1, eos_token_id=1, dropout=0.0, attention_dropout=0.0)
    model = get_peft_model(OPTForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    lm = UnitLM(model, offset=OFFSET, n_units=N_UNITS, bos_id=1, eos_id=1, pad_id=0)
    ex, _ = prepare_pairs(synthetic_pairs(4, seed=3), lm, 64)
    grads, outs = [], []
    for shared in (False, True):
        model.zero_grad()
        out = SequenceLogps(model, lm.support_ids)(*collate(ex, 0, shared=shared).forward_args())
        (out * torch.linspace(-1, 1, out.numel())).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5) and grads[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- training


def _run(tmp, rows, cfg, stop_after=None, **kw):
    lm = tiny_lm()
    ex, _ = prepare_pairs(rows, lm, cfg.max_length)
    tr = DPOTrainer(lm, cfg, tmp, seed=3, **kw)
    return tr, tr.train(ex, stop_after=stop_after), ex


def _log(path):
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    rows, cfg = synthetic_pairs(12), train_cfg(epochs=2, grad_accum=2, batch_size=2, checkpoint_every=2)
    full, _, _ = _run(tmp_path / "a", rows, cfg)
    _, stopped, _ = _run(tmp_path / "b", rows, cfg, stop_after=5)  # crash after step 5; checkpoint at 4
    assert stopped == {"stopped_at": 5} and len(_log(tmp_path / "b")) == 5
    resumed, summary, _ = _run(tmp_path / "b", rows, cfg)
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in lb] == list(range(1, 7))  # step 5 replayed once, not duplicated
    for ra, rb in zip(la, lb):
        for k in ("loss", "rewards/margins", "logps/chosen", "lr", "grad_norm"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)
    wa = {n: p for n, p in full.peft.named_parameters() if p.requires_grad}
    for n, p in resumed.peft.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, wa[n]), n
    assert summary["steps"] == 6 and la[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0 at start


def test_resume_after_the_final_checkpoint_reports_the_same_last_step(tmp_path):
    """A kill after training's last checkpoint but before the stage is recorded: the rerun trains no step
    and still reports the last step's metrics (the stage summary equals an uninterrupted run's)."""
    rows, cfg = synthetic_pairs(12), train_cfg(epochs=1, grad_accum=1, batch_size=4, checkpoint_every=2)
    _, first, _ = _run(tmp_path, rows, cfg)
    _, again, _ = _run(tmp_path, rows, cfg)
    assert first["final"] and first["final"]["step"] == first["steps"] == 3
    assert {k: v for k, v in again["final"].items() if k not in ("seconds", "time")} == \
        {k: v for k, v in first["final"].items() if k not in ("seconds", "time")}


def _continued(tmp, rows, cfg, init, process_seed, seed=3):
    """A round-2 trainer (continuing ``init``) after the process's RNG was left in some state."""
    lm = tiny_lm()
    ex, _ = prepare_pairs(rows, lm, cfg.max_length)
    torch.manual_seed(process_seed)  # what the process happened to do before (another round, another stage)
    random.seed(process_seed)
    tr = DPOTrainer(lm, cfg, tmp, seed=seed, init_adapter=init)
    torch.rand(process_seed % 7 + 1)  # ... and in between
    tr.train(ex)
    return {n: p.detach().clone() for n, p in tr.peft.named_parameters() if p.requires_grad}


def test_continued_adapter_with_dropout_depends_on_the_seed_only(tmp_path):
    """Round 2+ continues an adapter: its dropout draws come from the trainer's seed, not process state."""
    rows, cfg = synthetic_pairs(8), train_cfg(epochs=1, lora_dropout=0.3)
    first, _, _ = _run(tmp_path / "r1", rows, cfg)
    init = first.save_adapter(tmp_path / "r1" / "adapter")
    a = _continued(tmp_path / "a", rows, cfg, init, process_seed=1)
    b = _continued(tmp_path / "b", rows, cfg, init, process_seed=12345)
    other = _continued(tmp_path / "c", rows, cfg, init, process_seed=1, seed=4)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], other[n]) for n in a)  # and the seed does matter


def test_cached_reference_equals_disabled_adapter(tmp_path):
    rows, cfg = synthetic_pairs(8), train_cfg(epochs=1, batch_size=4, precompute_ref=False)
    plain, _, _ = _run(tmp_path / "a", rows, cfg)
    assert plain.ref_cache is None and not (tmp_path / "a" / "ref_logps.pt").exists()
    tr, _, ex = _run(tmp_path / "b", rows, dataclasses.replace(cfg, precompute_ref=True))
    assert (tmp_path / "b" / "ref_logps.pt").exists() and tr.ref_cache.shape == (8, 2)
    for ra, rb in zip(_log(tmp_path / "a"), _log(tmp_path / "b")):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)
        assert ra["rewards/chosen"] == pytest.approx(rb["rewards/chosen"], abs=1e-6)
    # other pairs (held out) are never scored against the training pairs' cached reference
    other, _ = prepare_pairs(synthetic_pairs(6, seed=9), tr.lm, cfg.max_length)
    cached, direct = tr.evaluate(other), plain.evaluate(other)
    for k in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "loss"):
        assert cached[k] == pytest.approx(direct[k], abs=1e-5), k
    assert tr.ref_cache is not None and tr.evaluate(ex)["loss"] == pytest.approx(plain.evaluate(ex)["loss"], abs=1e-5)
    tr.reference = "initial"  # a moved starting policy cannot be recomputed: a clear error, not wrong numbers
    with pytest.raises(ValueError, match="cached for the training pairs only"):
        tr.evaluate(other)


def test_adapter_saved_as_safetensors_and_reloads_same_policy(tmp_path):
    from peft import PeftModel

    rows, cfg = synthetic_pairs(8), train_cfg(epochs=1)
    tr, _, ex = _run(tmp_path, rows, cfg)
    path = tr.save_adapter(tmp_path / "adapter")
    assert (path / "adapter_model.safetensors").exists() and (path / "adapter_config.json").exists()
    b = collate(ex, 0).forward_args()
    ours = tr.module(*b)
    loaded = PeftModel.from_pretrained(tiny_lm().model, str(path))
    theirs = SequenceLogps(loaded, tr.lm.support_ids)(*b)
    assert torch.allclose(ours, theirs, atol=1e-5)
    base = SequenceLogps(tiny_lm().model, tr.lm.support_ids)(*b)
    assert (ours - base).abs().max().item() > 1e-3  # training did change the policy


@pytest.mark.integration
def test_reward_accuracy_rises_above_0_9_on_separable_pairs(tmp_path):
    rows = synthetic_pairs(64, seed=1)
    cfg = train_cfg(epochs=8, batch_size=8, lr=3e-3, warmup_steps=5, beta=0.1, checkpoint_every=1000)
    tr, summary, ex = _run(tmp_path, rows, cfg)  # 64 steps
    held_out, _ = prepare_pairs(synthetic_pairs(32, seed=99), tr.lm, 64)
    assert tr.evaluate(ex)["rewards/accuracies"] > 0.9
    assert tr.evaluate(held_out)["rewards/accuracies"] > 0.9  # it learned the rule, not the pairs
    assert summary["steps"] == 64


def test_bf16_autocast_is_close_to_fp32_and_trains(tmp_path):
    lm = tiny_lm()
    ex, _ = prepare_pairs(synthetic_pairs(6), lm, 64)
    args = collate(ex, lm.pad_id, shared=True).forward_args()
    fp32 = SequenceLogps(lm.model, lm.support_ids)(*args)
    bf16 = SequenceLogps(lm.model, lm.support_ids, autocast="bf16")(*args)
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().max().item() < 0.05 * fp32.abs().max().item()
    with pytest.raises(ValueError, match="autocast"):
        SequenceLogps(lm.model, lm.support_ids, autocast="fp8")
    _, summary, _ = _run(tmp_path, synthetic_pairs(8), train_cfg(epochs=1, autocast="bf16"))
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["loss"])
