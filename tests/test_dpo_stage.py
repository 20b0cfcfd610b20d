"""The train stage over two curriculum rounds: outputs, cumulative adapters, reference policies, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import N_UNITS, OFFSET, synthetic_pairs, tiny_lm

from alignslm.config import load_config
from alignslm.dpo.trainer import SequenceLogps, collate, prepare_pairs
from alignslm.lm.unitlm import load_unitlm
from alignslm.rundir import StageContext, policy_adapters, write_json, write_jsonl
from alignslm.stages import train as train_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_run(tmp_path, reference="base", **train):
    run = tmp_path / "run"
    model_dir = tmp_path / "model"
    lm = tiny_lm(seed=2)
    lm.save_pretrained(model_dir)
    write_json(run / "unitlm" / "unitlm.json", {"path": str(model_dir), **lm.meta()})
    ov = {"train.epochs": 2, "train.batch_size": 4, "train.lora_r": 4, "train.lora_alpha": 8, "train.lr": 5e-3,
          "train.warmup_steps": 1, "train.checkpoint_every": 1000, "curriculum.reference": reference,
          "run.run_dir": str(run), **{f"train.{k}": v for k, v in train.items()}}
    cfg = load_config(overrides=[f"{k}={v}" for k, v in ov.items()])
    return run, cfg


def stage_ctx(run, cfg, r):
    inputs = {"pairs": run / f"round-{r}" / "pairs", "unitlm": run / "unitlm"}
    if r > 1:
        inputs["train_prev"] = run / f"round-{r - 1}" / "train"
    return StageContext(name="train", cfg=cfg, run_dir=run, out=run / f"round-{r}" / "train", round=r,
                        inputs=inputs, progress=False)


def policy_logps(run, r, rows):
    lm = load_unitlm(run / "unitlm", adapters=policy_adapters(run, r))
    ex, _ = prepare_pairs(rows, lm, 64)
    with torch.no_grad():
        return SequenceLogps(lm.model, lm.support_ids)(*collate(ex, lm.pad_id).forward_args())


@pytest.mark.parametrize("reference", ["base", "previous_round"])
def test_two_rounds_cumulative_adapter_and_reference(tmp_path, reference):
    run, cfg = make_run(tmp_path, reference)
    rows1, rows2 = synthetic_pairs(8, seed=1), synthetic_pairs(8, seed=2)
    for i, r in enumerate(rows2[3:], 3):  # 3 prompts round 1 trained on too, 5 new ones
        r["prompt_id"] = f"new{i}"
    write_jsonl(run / "round-1" / "pairs" / "pairs.jsonl", rows1)
    write_jsonl(run / "round-2" / "pairs" / "pairs.jsonl", rows2)
    s1 = train_stage.run(stage_ctx(run, cfg, 1))
    out1 = run / "round-1" / "train"
    assert (out1 / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(x) for x in (out1 / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "rewards/margins" in log[0]
    assert s1["steps"] == 4 and s1["pairs"] == 8 and 0 <= s1["final_reward_accuracy"] <= 1
    s2 = train_stage.run(stage_ctx(run, cfg, 2))
    pol = json.loads((run / "round-2" / "train" / "policy.json").read_text())
    assert pol["cumulative"] and pol["initialised_from"].endswith("round-1/train/adapter")
    assert pol["load"] == ["round-2/train"] and pol["reference"] == reference  # relative to the run dir
    # base + round-2 adapter alone is the round-2 policy, and it differs from round 1's and the base's
    base, p1, p2 = policy_logps(run, 0, rows2), policy_logps(run, 1, rows2), policy_logps(run, 2, rows2)
    assert (p2 - p1).abs().max() > 1e-4 and (p1 - base).abs().max() > 1e-4
    # the logged rewards at step 1 of round 2 are beta * (policy - reference) at the round-1 policy:
    log2 = [json.loads(x) for x in (run / "round-2" / "train" / "train_log.jsonl").read_text().splitlines()]
    if reference == "previous_round":  # reference == the starting policy -> zero rewards at step 1
        assert abs(log2[0]["rewards/chosen"]) < 1e-5 and (run / "round-2" / "train" / "ref_logps.pt").is_file()
    else:  # reference == base, the policy already moved in round 1
        assert abs(log2[0]["rewards/chosen"]) > 1e-5
    assert s2["reference"] == reference
    # round 2 first measures the round-1 policy on the pairs of its new prompts (held out from round-1
    # training; the 3 pairs of prompts round 1 trained on are left out): accuracy = share of those pairs
    # where beta * (policy - base) margins favour the chosen side
    prior = pol["prior_policy_on_these_pairs"]
    assert pol["final_reward_accuracy"] == s2["final_reward_accuracy"]
    if reference == "previous_round":  # the reference is that policy: nothing to measure
        assert prior is None and s2["prior_policy_reward_accuracy"] is None
    else:
        ratio = p1 - base  # (2B,): chosen 0..B-1, then rejected
        margins = cfg.train.beta * (ratio[:8] - ratio[8:])[3:]
        assert prior["pairs"] == 5 and prior["pairs_of_seen_prompts"] == 3
        assert prior["reward_accuracy"] == pytest.approx((margins > 0).float().mean().item())
        assert prior["reward_margin"] == pytest.approx(margins.mean().item(), abs=1e-5)
        assert s2["prior_policy_reward_accuracy"] == prior["reward_accuracy"]
        assert json.loads((run / "round-2" / "train" / "prior_policy.json").read_text()) == prior


def test_bad_pairs_file_is_a_clear_error(tmp_path):
    run, cfg = make_run(tmp_path, on_no_pairs="error")
    write_jsonl(run / "round-1" / "pairs" / "pairs.jsonl",
                [{"prompt_id": "a", "prompt": [1], "chosen": [N_UNITS + 5], "rejected": [2]},
                 {"prompt_id": "b", "prompt": [1], "chosen": [], "rejected": [2]}])
    ctx = stage_ctx(run, cfg, 1)
    with pytest.raises(ValueError, match="pairs.jsonl: no valid preference pair among 2 rows"):
        train_stage.run(ctx)
    assert ctx.rejects.count == 2


def test_round_without_pairs_keeps_the_previous_policy(tmp_path):
    run, cfg = make_run(tmp_path)  # default train.on_no_pairs=keep_policy
    rows1 = synthetic_pairs(8, seed=1)
    write_jsonl(run / "round-1" / "pairs" / "pairs.jsonl", rows1)
    write_jsonl(run / "round-2" / "pairs" / "pairs.jsonl", [])
    assert train_stage.run(stage_ctx(run, cfg, 1))["steps"] > 0
    s2 = train_stage.run(stage_ctx(run, cfg, 2))
    assert s2["trained"] is False and s2["steps"] == 0
    assert json.loads((run / "round-2" / "train" / "policy.json").read_text())["trained"] is False
    p1, p2 = policy_logps(run, 1, rows1), policy_logps(run, 2, rows1)
    for a, b in zip(p1, p2):
        assert torch.allclose(a, b, atol=1e-6)
    p0 = policy_logps(run, 0, rows1)  # and round 1 did move the policy away from the base
    assert not torch.allclose(p0[0], p1[0], atol=1e-4)


def test_drops_and_truncation_are_counted_in_the_summary(tmp_path):
    run, cfg = make_run(tmp_path, max_length=10, epochs=1)
    rows = synthetic_pairs(4) + [{"prompt_id": "long", "prompt": list(range(12)), "chosen": [1, 2], "rejected": [3]},
                                 {"prompt_id": "bad", "prompt": [1], "chosen": [-1], "rejected": [3]}]
    write_jsonl(run / "round-1" / "pairs" / "pairs.jsonl", rows)
    s = train_stage.run(stage_ctx(run, cfg, 1))
    assert s["pairs"] == 5 and s["dropped"] == 1 and s["truncated_prompt"] >= 1


def test_check_reports_bad_settings():
    from alignslm.config import ConfigError

    for bad in ("train.loss=dpo", "curriculum.reference=latest"):  # choices: the config's Literal fields
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(overrides=[bad])
    problems = " ".join(train_stage.check(load_config(overrides=["train.beta=0"])))
    assert "train.beta" in problems
    assert train_stage.check(load_config()) == []
    assert policy_adapters("/r", 0) == [] and OFFSET == 2
