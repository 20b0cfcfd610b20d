"""Oracle: our DPO loss and per-step metrics equal TRL DPOTrainer's (sigmoid, same beta) for 3 steps.

Same tiny LLaMA (same seed), same LoRA weights (TRL's initial adapter copied into ours), same pairs,
softmax over the full vocabulary (TRL's support), one batch holding every pair so that TRL's shuffling
cannot change what a step sees, no dropout, same AdamW / linear schedule / clipping.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

from helpers import N_UNITS, synthetic_pairs, tiny_lm, train_cfg  # noqa: E402

from alignslm.dpo.trainer import DPOTrainer, Example  # noqa: E402

N_PAIRS, STEPS, BETA = 6, 3, 0.2


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def unit_tokenizer():
    """A word-level tokenizer: '<pad>'=0, '<s>'=1 (BOS = EOS), 'u<k>' = k + 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, **{f"u{k}": k + 2 for k in range(N_UNITS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<s>")


def _text(units):
    return " ".join(f"u{u}" for u in units)


def run_trl(rows, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig
    from trl import DPOTrainer as TRLDPOTrainer

    # TRL appends EOS to completions; ours are given the same ids explicitly (see run_ours)
    data = Dataset.from_list([{"prompt": "<s> " + _text(r["prompt"]), "chosen": " " + _text(r["chosen"]) + " <s>",
                               "rejected": " " + _text(r["rejected"]) + " <s>"} for r in rows])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), max_steps=STEPS,
                     learning_rate=5e-3, lr_scheduler_type="linear", warmup_steps=0, beta=BETA,
                     loss_type=["sigmoid"], logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                     seed=7, max_length=None, disable_dropout=True, max_grad_norm=1.0, weight_decay=0.0,
                     optim="adamw_torch", dataloader_num_workers=0, bf16=False, gradient_checkpointing=False)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      bias="none", task_type="CAUSAL_LM")
    tr = TRLDPOTrainer(model=tiny_lm(seed=5, support="full").model, args=args, train_dataset=data,
                       processing_class=unit_tokenizer(), peft_config=lcfg)
    losses = []
    compute_loss = tr.compute_loss

    def recording(*a, **kw):  # the exact (unrounded) loss of every step
        loss = compute_loss(*a, **kw)
        losses.append(float(loss.detach()))
        return loss

    tr.compute_loss = recording
    from peft import get_peft_model_state_dict

    init = {k: v.clone() for k, v in get_peft_model_state_dict(tr.model).items()}
    prepared = tr.train_dataset
    tr.train()
    logs = [h for h in tr.state.log_history if "rewards/chosen" in h]
    return logs, losses, init, prepared


def run_ours(rows, init, tmp_path):
    from peft import set_peft_model_state_dict

    lm = tiny_lm(seed=5, support="full")
    ex = [Example(i, [1] + lm.units_to_ids(r["prompt"]), lm.units_to_ids(r["chosen"]) + [1],
                  lm.units_to_ids(r["rejected"]) + [1]) for i, r in enumerate(rows)]
    cfg = train_cfg(epochs=STEPS, batch_size=len(rows), lr=5e-3, warmup_steps=0, beta=BETA, lora_r=4,
                    lora_alpha=8, max_grad_norm=1.0, checkpoint_every=1000)
    tr = DPOTrainer(lm, cfg, tmp_path / "ours", seed=7)
    set_peft_model_state_dict(tr.peft, init)
    tr.train(ex)
    import json

    return [json.loads(x) for x in (tmp_path / "ours" / "train_log.jsonl").read_text().splitlines()], ex


def test_loss_and_metrics_equal_trl_for_first_steps(tmp_path):
    rows = synthetic_pairs(N_PAIRS, seed=4)
    trl_logs, trl_losses, init, prepared = run_trl(rows, tmp_path)
    ours, ex = run_ours(rows, init, tmp_path)
    # the same token ids reached both trainers
    for e, p in zip(ex, prepared):
        assert p["prompt_ids"] == e.prompt and p["chosen_ids"] == e.chosen and p["rejected_ids"] == e.rejected
    assert len(trl_logs) == STEPS and len(ours) == STEPS and len(trl_losses) == STEPS
    for step, (t, o, tl) in enumerate(zip(trl_logs, ours, trl_losses), 1):
        assert o["loss"] == pytest.approx(tl, abs=1e-5), step
        for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected"):
            assert o[k] == pytest.approx(t[k], abs=1e-5), (step, k, o[k], t[k])
    assert abs(ours[-1]["rewards/margins"]) > 1e-4  # the steps did move the policy (a real comparison)

