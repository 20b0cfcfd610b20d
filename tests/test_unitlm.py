"""UnitLM: TWIST-format (config.offset) and slamkit-style loading, unit mapping, support, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_llama
from transformers import OPTConfig, OPTForCausalLM

from alignslm.lm.unitlm import UnitLM, UnitLMError, load_unitlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _tiny_llama(vocab: int, **ids: int):
    return tiny_llama(vocab, heads=4, kv_heads=2, max_positions=64, **ids)


def _tiny_opt(vocab: int, **extra) -> OPTForCausalLM:
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=32, max_position_embeddings=64, **extra)
    return OPTForCausalLM(cfg).eval()


@pytest.fixture
def twist_opt(tmp_path):
    """An OPT model saved like TWIST-1.3B: config.offset, specials below the units, extra ids above."""
    m = _tiny_opt(4 + 20 + 3, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    m.config.offset = 4
    m.save_pretrained(tmp_path / "opt")
    return tmp_path / "opt"


def test_twist_opt_offset_read_and_roundtrip(twist_opt):
    lm = UnitLM.from_pretrained(twist_opt, n_units=20)
    assert (lm.offset, lm.n_units, lm.bos_id, lm.eos_id, lm.pad_id) == (4, 20, 0, 2, 1)
    units = [0, 19, 7, 7, 3]
    ids = lm.units_to_ids(units)
    assert ids == [4, 23, 11, 11, 7]
    assert lm.ids_to_units(ids) == units
    t = torch.tensor([[0, 19], [5, 6]])
    assert torch.equal(lm.ids_to_units(lm.units_to_ids(t)), t)
    # default n_units = vocab - offset
    assert UnitLM.from_pretrained(twist_opt).n_units == 23


def test_llama_twist_and_slamkit_styles(tmp_path):
    m = _tiny_llama(3 + 10, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m.config.offset = 3
    m.save_pretrained(tmp_path / "llama")
    lm = UnitLM.from_pretrained(tmp_path / "llama")
    assert (lm.offset, lm.n_units, lm.bos_id, lm.eos_id, lm.pad_id) == (3, 10, 1, 2, 0)
    # slamkit: no offset in the config -> unit k -> k+2, pad=0, bos=eos=1
    s = _tiny_llama(502)
    s.save_pretrained(tmp_path / "slam")
    lm2 = UnitLM.from_pretrained(tmp_path / "slam")
    assert (lm2.offset, lm2.n_units, lm2.bos_id, lm2.eos_id, lm2.pad_id) == (2, 500, 1, 1, 0)
    assert lm2.units_to_ids([0, 499]) == [2, 501]
    # explicit offset overrides
    assert UnitLM.from_pretrained(tmp_path / "slam", offset=5, n_units=400).offset == 5


def test_mapping_errors(twist_opt, tmp_path):
    lm = UnitLM.from_pretrained(twist_opt, n_units=20)
    with pytest.raises(UnitLMError, match=r"\[0, 20\)"):
        lm.units_to_ids([3, 20])
    with pytest.raises(UnitLMError, match="not units"):
        lm.ids_to_units([2, 5])  # EOS is not a unit
    with pytest.raises(UnitLMError, match="vocab_size"):
        UnitLM.from_pretrained(twist_opt, n_units=24)
    with pytest.raises(UnitLMError, match="config.json"):
        UnitLM.from_pretrained(tmp_path / "nowhere")


def test_logprobs_support(twist_opt):
    lm = UnitLM.from_pretrained(twist_opt, n_units=20)
    logits = torch.randn(2, 3, lm.vocab_size)
    lp = lm.logprobs(logits)
    sup = lm.support_mask()
    assert sup.sum() == 21 and sup[2] and not sup[0] and not sup[1] and not sup[24]
    assert torch.isinf(lp[..., ~sup]).all()
    assert torch.allclose(lp[..., sup].exp().sum(-1), torch.ones(2, 3), atol=1e-5)
    tgt = torch.tensor([[4, 2, 0], [23, 10, 11]])
    tok = lm.token_logprobs(logits, tgt)
    ref = lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(torch.isinf(tok), torch.isinf(ref)) and torch.isinf(tok[0, 2])
    assert torch.allclose(tok[~torch.isinf(tok)], ref[~torch.isinf(ref)], atol=1e-5)
    full = UnitLM(lm.model, offset=4, n_units=20, bos_id=0, eos_id=2, pad_id=1, support="full")
    assert torch.allclose(full.logprobs(logits), torch.log_softmax(logits, -1), atol=1e-6)


def test_score_sequences_matches_manual(twist_opt):
    lm = UnitLM.from_pretrained(twist_opt, n_units=20)
    seqs = [[1, 2, 3, 4, 5, 6], [7], [0, 19, 4]]
    got = lm.score_sequences(seqs, reduce="sum", batch_size=2)
    got_mean = lm.score_sequences(seqs, reduce="mean")
    for i, s in enumerate(seqs):
        ids = torch.tensor([[0, *(u + 4 for u in s), 2]])
        with torch.no_grad():
            lp = lm.logprobs(lm.model(ids).logits[0, :-1])
        manual = lp.gather(-1, ids[0, 1:, None]).sum().item()
        assert got[i] == pytest.approx(manual, abs=1e-4)
        assert got_mean[i] == pytest.approx(manual / (len(s) + 1), abs=1e-4)
    with pytest.raises(UnitLMError, match="sequence 1"):
        lm.score_sequences([[1], [25]])
    with pytest.raises(UnitLMError, match="context"):
        lm.score_sequences([[1] * 70])


def test_encode_checked_is_the_one_mapping_of_scoring_and_sampling(twist_opt, monkeypatch):
    """units -> ids with per-item errors and the context check, shared by score_sequences and sampler.validate."""
    from alignslm.kernels.sampling import SamplingError

    from alignslm.lm import sampler

    lm = UnitLM.from_pretrained(twist_opt, n_units=20)  # context 64, bos 0, eos 2, offset 4
    assert lm.encode_checked([[0, 19], []], eos=True) == [[0, 4, 23, 2], [0, 2]]
    assert lm.encode_checked([[5]], bos=False) == [[9]]
    with pytest.raises(UnitLMError, match=r"^story 2: unit ids must be in \[0, 20\)"):
        lm.encode_checked([[1], [2], [20]], what="story")
    with pytest.raises(UnitLMError, match=r"item 0 has 1 token\(s\) \(with BOS\); at least 2 needed to x"):
        lm.encode_checked([[]], what="item", min_tokens=2, purpose="to x")
    lm.encode_checked([[1] * 53], reserve=10)  # 54 + 10 = 64 fits exactly
    with pytest.raises(SamplingError, match=r"prompt 1 has 55 tokens \(with BOS\) \+ 10 to generate, more than "
                                            r"the model's context \(64\); do less"):
        lm.encode_checked([[1], [1] * 54], what="prompt", reserve=10, hint="do less", length_error=SamplingError)
    lm.bos_id = None
    with pytest.raises(UnitLMError, match="no BOS id"):
        lm.encode_checked([[1]])
    with pytest.raises(SamplingError, match="prompt 0 has 0 token"):
        sampler.validate(lm, [[]], sampler.SamplingParams(max_new=4), 1, None)
    lm.bos_id = 0
    calls = []
    real = UnitLM.encode_checked
    monkeypatch.setattr(UnitLM, "encode_checked", lambda self, seqs, **kw: calls.append(kw["what"])
                        or real(self, seqs, **kw))
    assert sampler.validate(lm, [[1, 2]], sampler.SamplingParams(max_new=4), 2, None) == [[0, 5, 6]]
    with pytest.raises(SamplingError, match="prompt 0 .*context.*sample.max_new_units"):
        sampler.validate(lm, [[1] * 60], sampler.SamplingParams(max_new=4), 1, None)
    lm.score_sequences([[1, 2]])
    with pytest.raises(UnitLMError, match="sequence 0 has 65 tokens"):
        lm.score_sequences([[1] * 63])
    assert calls == ["prompt", "prompt", "sequence", "sequence"]


def test_load_unitlm_with_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    m = _tiny_llama(3 + 10, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m.config.offset = 3
    m.save_pretrained(tmp_path / "model")
    (tmp_path / "unitlm").mkdir()
    (tmp_path / "unitlm" / "unitlm.json").write_text(json.dumps(
        {"path": str(tmp_path / "model"), "offset": 3, "n_units": 10, "support": "units"}))
    base = load_unitlm(tmp_path / "unitlm")
    adapters = []
    for r in (1, 2):
        torch.manual_seed(r)
        pm = get_peft_model(_tiny_llama(13, bos_token_id=1, eos_token_id=2, pad_token_id=0),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        pm.save_pretrained(tmp_path / f"round-{r}" / "train" / "adapter")
        adapters.append(tmp_path / f"round-{r}" / "train")
    seq = [[1, 2, 3, 4]]
    s0 = base.score_sequences(seq)[0]
    merged = load_unitlm(tmp_path / "unitlm", adapters=adapters, merge=True)
    kept = load_unitlm(tmp_path / "unitlm", adapters=adapters, merge=False)
    assert type(merged.model).__name__ == "LlamaForCausalLM"
    assert type(kept.model).__name__.startswith("Peft")
    s1, s2 = merged.score_sequences(seq)[0], kept.score_sequences(seq)[0]
    assert abs(s1 - s0) > 1e-3  # the adapters change the model
    assert s1 == pytest.approx(s2, abs=1e-4)  # merging does not change the function
    with pytest.raises(UnitLMError, match="adapter"):
        load_unitlm(tmp_path / "unitlm", adapters=[tmp_path / "round-9"])
    assert np.isfinite(s0)


# --------------------------------------------------------------------------------------------------
# Demo pretraining and the unitlm stage
# --------------------------------------------------------------------------------------------------


def synthetic_units(n_utts: int, n_units: int = 30, seed: int = 0) -> list[list[int]]:
    """Utterances made of a small lexicon of fixed unit 'words' (structure an LM can learn)."""
    rng = np.random.default_rng(seed)
    lexicon = [list(rng.integers(0, n_units, size=rng.integers(3, 7))) for _ in range(12)]
    return [[int(u) for _ in range(rng.integers(4, 10)) for u in lexicon[rng.integers(0, 12)]] for _ in range(n_utts)]


def test_pretrain_learns_and_resumes_exactly(tmp_path):
    from alignslm.lm.pretrain import TrainSpec, build_model, eval_loss, train

    seqs = synthetic_units(60)
    spec = TrainSpec(steps=12, batch_size=4, context=32, lr=3e-3, warmup=3, checkpoint_every=4, log_every=4)
    a = build_model(30, 32, 2, 2, 32, seed=1)
    before = eval_loss(a, seqs[:10], 32)
    sa = train(a, seqs, spec, ckpt_dir=tmp_path / "a")
    after = eval_loss(a, seqs[:10], 32)
    assert after < before - 0.3, (before, after)
    assert sa["steps"] == 12 and len(sa["log"]) == 3
    # killed after 6 steps (last checkpoint at 4), then restarted: same weights as the straight run
    b = build_model(30, 32, 2, 2, 32, seed=1)
    train(b, seqs, spec, ckpt_dir=tmp_path / "b", stop_after=6)
    b2 = build_model(30, 32, 2, 2, 32, seed=99)  # a fresh process: different init, overwritten by the checkpoint
    sb = train(b2, seqs, spec, ckpt_dir=tmp_path / "b")
    assert sb["log"] == sa["log"]
    for (n1, p1), (_, p2) in zip(a.state_dict().items(), b2.state_dict().items()):
        assert torch.equal(p1, p2), n1
    with pytest.raises(ValueError, match="other training settings"):
        train(build_model(30, 32, 2, 2, 32), seqs, TrainSpec(steps=20, batch_size=4, context=32),
              ckpt_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="sequence 1"):
        train(build_model(30, 32, 2, 2, 32), [[1, 2], [3, 30]], spec)


def test_doc_mask_window_equals_each_utterance_alone():
    """unitlm.doc_mask: a packed window's logits equal each utterance scored on its own (positions from its
    BOS), so nothing leaks across utterances; a partial first block keeps its true positions."""
    from alignslm.lm.pretrain import BOS, build_model, doc_batch, doc_positions, pack

    torch.manual_seed(0)
    m = build_model(20, 32, 2, 2, 64).eval()
    seqs = [[int(x) for x in torch.randint(0, 20, (n,))] for n in (5, 9, 3, 12)]
    stream = pack(seqs, 20)
    pos = doc_positions(stream)
    assert pos[:9].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1]  # [BOS, 5 units, EOS] then the next block
    xy, p = stream[None, 2:32], pos[None, 2:32]
    mask, pp = doc_batch(xy, p, torch.float32)
    x = xy[0, :-1]
    with torch.no_grad():
        packed = m(input_ids=xy[:, :-1], attention_mask=mask, position_ids=pp).logits[0]
        plain = m(input_ids=xy[:, :-1]).logits[0]
        bounds = [0, *[i for i in range(len(x)) if x[i] == BOS and i > 0], len(x)]
        assert len(bounds) == 5 and pp[0, 0] == 2
        for a, b in zip(bounds[:-1], bounds[1:]):
            alone = m(input_ids=x[None, a:b], position_ids=pp[:, a:b]).logits[0]
            torch.testing.assert_close(packed[a:b], alone, atol=1e-5, rtol=1e-5)
    assert (plain[bounds[1]:] - packed[bounds[1]:]).abs().max() > 1e-3  # plain packing does attend across


def test_pretrain_with_doc_mask_learns_and_resumes(tmp_path):
    from alignslm.lm.pretrain import TrainSpec, build_model, eval_loss, train

    seqs = synthetic_units(60)
    spec = TrainSpec(steps=12, batch_size=4, context=32, lr=3e-3, warmup=3, checkpoint_every=4, log_every=4,
                     doc_mask=True)
    a = build_model(30, 32, 2, 2, 32, seed=1)
    before = eval_loss(a, seqs[:10], 32)
    sa = train(a, seqs, spec, ckpt_dir=tmp_path / "a")
    assert eval_loss(a, seqs[:10], 32) < before - 0.3
    b = build_model(30, 32, 2, 2, 32, seed=1)
    train(b, seqs, spec, ckpt_dir=tmp_path / "b", stop_after=6)
    b2 = build_model(30, 32, 2, 2, 32, seed=7)
    assert train(b2, seqs, spec, ckpt_dir=tmp_path / "b")["log"] == sa["log"]
    for (n1, p1), (_, p2) in zip(a.state_dict().items(), b2.state_dict().items()):
        assert torch.equal(p1, p2), n1


def _fake_run(tmp_path, n_units: int = 30) -> Path:
    """corpus/manifest.jsonl + tokenize/{units.jsonl, tokenizer.json} as the real stages write them."""
    from alignslm.rundir import write_json, write_jsonl

    seqs = synthetic_units(40, n_units)
    rows, man = [], []
    for i, s in enumerate(seqs):
        rows.append({"utt_id": f"u{i}", "units": s, "durations": [2] * len(s), "n_frames": 2 * len(s),
                     "encoder": "x", "quantizer": "q"})
        man.append({"utt_id": f"u{i}", "path": f"/x/u{i}.wav", "split": "dev" if i % 10 == 0 else "train"})
    write_jsonl(tmp_path / "corpus" / "manifest.jsonl", man)
    write_jsonl(tmp_path / "tokenize" / "units.jsonl", rows)
    write_json(tmp_path / "tokenize" / "tokenizer.json", {"n_units": n_units, "frame_rate": 25.0})
    return tmp_path


def test_unitlm_stage_demo_and_external(tmp_path):
    from alignslm.config import load_config
    from alignslm.run import check_paths
    from alignslm.rundir import StageContext
    from alignslm.stages import unitlm as stage

    run = _fake_run(tmp_path)
    cfg = load_config(overrides=["unitlm.d_model=32", "unitlm.n_layers=1", "unitlm.n_heads=2", "unitlm.context=32",
                                 "unitlm.steps=6", "unitlm.batch_size=4", "unitlm.warmup=2"])
    assert stage.check(cfg) == []
    ctx = StageContext(name="unitlm", cfg=cfg, run_dir=run, out=run / "unitlm",
                       inputs={"tokenize": run / "tokenize", "corpus": run / "corpus"})
    summary = stage.run(ctx)
    assert summary["train_utts"] == 36 and summary["steps"] == 6 and summary["dev_loss"] > 0
    lm = load_unitlm(run / "unitlm")
    assert (lm.offset, lm.n_units, lm.bos_id, lm.eos_id, lm.pad_id) == (3, 30, 1, 2, 0)
    assert json.loads((run / "unitlm" / "model" / "config.json").read_text())["offset"] == 3
    assert np.isfinite(lm.score_sequences([[1, 2, 3]])).all()
    # an external (TWIST-style) model: validated against the quantizer's K
    ext = _tiny_opt(4 + 30, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    ext.config.offset = 4
    ext.save_pretrained(tmp_path / "twist")
    cfg2 = load_config(overrides=[f"unitlm.path={tmp_path / 'twist'}"])
    ctx2 = StageContext(name="unitlm", cfg=cfg2, run_dir=run, out=run / "unitlm2", inputs=ctx.inputs)
    assert stage.run(ctx2)["offset"] == 4
    assert load_unitlm(run / "unitlm2").units_to_ids([29]) == [33]
    _fake_run(tmp_path, n_units=40)
    with pytest.raises(UnitLMError, match="vocab_size"):
        stage.run(ctx2)
    bad = load_config(overrides=[f"unitlm.path={tmp_path / 'nope'}"])
    assert stage.check(bad) == []  # a missing path is said once, by run.check_paths (the stage graph's inputs)
    assert [p for p in check_paths(bad) if p.startswith("unitlm.path: path does not exist")]
    (tmp_path / "empty").mkdir()
    assert len(stage.check(load_config(overrides=[f"unitlm.path={tmp_path / 'empty'}"]))) == 1  # no config.json
    with pytest.raises(ValueError, match="'unitlm.support': 'all' is not a choice"):  # a Literal config field
        load_config(overrides=["unitlm.support=all"])
