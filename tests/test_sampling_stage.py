"""Prompts (word-boundary cuts) and the round ``sample`` stage (contract rows, resume, adapters, bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from alignslm.kernels.sampling import SamplingError
from helpers import tiny_llama

from alignslm.config import load_config
from alignslm.lm.prompts import PromptError, make_prompt
from alignslm.rundir import StageContext, read_jsonl, write_json, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

K = 16
FR = 25.0  # frames per second


def test_prompt_cut_at_word_boundary():
    units = list(range(10))
    durs = [10] * 10  # each unit 0.4 s; ends at 0.4, 0.8, ..., 4.0
    words = [{"word": "a", "start": 0.0, "end": 1.2}, {"word": "b", "start": 1.2, "end": 2.4},
             {"word": "c", "start": 2.5, "end": 3.3}, {"word": "d", "start": 3.3, "end": 4.0}]
    p = make_prompt(units, durs, FR, 3.0, words)
    assert p.at_word_boundary and p.end_s == 2.4 and p.units == list(range(6))
    q = make_prompt(units, durs, FR, 3.0, words, word_boundary=False)
    assert not q.at_word_boundary and q.units == list(range(7)) and q.end_s == pytest.approx(2.8)
    r = make_prompt(units, durs, FR, 3.0, None)
    assert r.units == q.units
    # the first word is longer than P: cut at P
    s = make_prompt(units, durs, FR, 1.0, [{"word": "long", "start": 0.0, "end": 2.0}])
    assert not s.at_word_boundary and s.units == [0, 1]
    # without durations every unit is one frame
    assert make_prompt(list(range(100)), None, FR, 1.0).units == list(range(25))
    with pytest.raises(PromptError, match="not longer"):
        make_prompt(units, durs, FR, 4.0, words)
    with pytest.raises(PromptError, match="durations"):
        make_prompt(units, durs[:-1], FR, 1.0)
    with pytest.raises(PromptError, match="no units"):
        make_prompt([], [], FR, 1.0)


def _run_dir(tmp_path: Path) -> Path:
    """corpus, tokenize and unitlm artifacts as the real stages write them (a random tiny LM)."""
    rng = np.random.default_rng(0)
    man, rows = [], []
    for i in range(14):
        n = int(rng.integers(60, 120))
        units = rng.integers(0, K, n).tolist()
        durs = rng.integers(1, 4, n).tolist()
        total = sum(durs) / FR
        words = [{"word": f"w{j}", "start": j * 0.5, "end": j * 0.5 + 0.45} for j in range(int(total / 0.5))]
        split = "dev" if i == 13 else "train"
        man.append({"utt_id": f"u{i:02d}", "path": f"/x/u{i}.wav", "split": split, "words": words, "duration": total})
        if i == 3:
            units, durs = units[:20], durs[:20]  # too short for a 3 s prompt: a reject
        rows.append({"utt_id": f"u{i:02d}", "units": units, "durations": durs, "n_frames": sum(durs)})
    write_jsonl(tmp_path / "corpus" / "manifest.jsonl", man)
    write_jsonl(tmp_path / "tokenize" / "units.jsonl", rows)
    write_json(tmp_path / "tokenize" / "tokenizer.json", {"n_units": K, "frame_rate": FR})
    m = tiny_llama(3 + K, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.no_grad():
        m.lm_head.weight[2] += 0.05  # some EOS
    m.config.offset = 3
    m.save_pretrained(tmp_path / "model")
    write_json(tmp_path / "unitlm" / "unitlm.json", {"path": str(tmp_path / "model"), "offset": 3, "n_units": K,
                                                     "support": "units"})
    return tmp_path


def _ctx(run: Path, overrides: list[str], rnd: int = 1, extra: dict | None = None) -> StageContext:
    cfg = load_config(overrides=["sample.n_prompts=20", "sample.n_continuations=2", "sample.max_new_units=12",
                                 "sample.shard_size=2", "sample.batch_size=2", *overrides])
    inputs = {"corpus": run / "corpus", "tokenize": run / "tokenize", "unitlm": run / "unitlm", **(extra or {})}
    return StageContext(name="sample", cfg=cfg, run_dir=run, out=run / f"round-{rnd}" / "sample", round=rnd,
                        inputs=inputs, progress=False)


def test_sample_stage_rows_resume_and_rounds(tmp_path):
    from alignslm.stages import sample as stage

    run = _run_dir(tmp_path)
    ctx = _ctx(run, [])
    summary = stage.run(ctx)
    rows = read_jsonl(ctx.out / "samples.jsonl")
    assert summary["prompts"] == 12 and summary["samples"] == 24 == len(rows)  # 13 train utterances, 1 too short
    assert ctx.rejects.count == 1
    assert set(rows[0]) == {"prompt_id", "utt_id", "k", "seed", "prompt", "continuation", "prompt_end_s"}
    pids = {r["prompt_id"] for r in rows}
    assert len(pids) == 12 and "u13" not in pids and "u03" not in pids  # dev never; u03 too short
    for r in rows:
        assert all(0 <= u < K for u in r["prompt"] + r["continuation"]) and len(r["continuation"]) <= 12
        assert 0 < r["prompt_end_s"] <= 3.0
    assert len({r["seed"] for r in rows}) == 24
    rej = [json.loads(x) for x in (ctx.out / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rej] == ["u03"] and "not longer" in rej[0]["reason"]
    # resume: drop one shard and the merged file; the rerun writes the same rows
    first = (ctx.out / "samples.jsonl").read_text()
    (ctx.out / "shards" / "samples.jsonl.00001").unlink()
    (ctx.out / "samples.jsonl").unlink()
    stage.run(_ctx(run, []))
    assert (ctx.out / "samples.jsonl").read_text() == first
    # a different shard/batch size gives the same samples (seeds are per continuation)
    shutil.rmtree(ctx.out)
    stage.run(_ctx(run, ["sample.shard_size=4", "sample.batch_size=3"]))
    assert (ctx.out / "samples.jsonl").read_text() == first
    # round 2 samples with base + round-1 adapter
    from peft import LoraConfig, get_peft_model

    from alignslm.lm.unitlm import load_unitlm

    base = load_unitlm(run / "unitlm").model
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=False))
    pm.save_pretrained(run / "round-1" / "train" / "adapter")
    ctx2 = _ctx(run, [], rnd=2, extra={"train_prev": run / "round-1" / "train"})
    s2 = stage.run(ctx2)
    assert s2["adapters"] == ["round-1/train"]  # relative to the run dir
    rows2 = read_jsonl(ctx2.out / "samples.jsonl")
    assert len(rows2) == 24
    assert {r["prompt_id"] for r in rows2} == pids  # all usable train prompts in both rounds
    assert [r["continuation"] for r in rows2] != [r["continuation"] for r in rows]


@pytest.mark.parametrize("ov,match", [
    ("sample.temperature=0", "temperature"), ("sample.top_k=0", "top_k"), ("sample.top_p=0", "top_p"),
    ("sample.top_p=1.2", "top_p"), ("sample.max_new_units=250", "context"),
])
def test_sample_stage_bad_params_fail_before_generation(tmp_path, ov, match, monkeypatch):
    from alignslm.lm import sampler
    from alignslm.stages import sample as stage

    run = _run_dir(tmp_path)
    calls = []
    monkeypatch.setattr(sampler, "_generate_batch", lambda *a, **k: calls.append(1))
    with pytest.raises(SamplingError, match=match):
        stage.run(_ctx(run, [ov]))
    assert calls == [] and not (run / "round-1" / "sample" / "shards").exists()
    if ov != "sample.max_new_units=250":
        assert stage.check(load_config(overrides=[ov]))


def test_sample_stage_units_out_of_range(tmp_path):
    from alignslm.lm.unitlm import UnitLMError
    from alignslm.stages import sample as stage

    run = _run_dir(tmp_path)
    rows = read_jsonl(run / "tokenize" / "units.jsonl")
    for r in rows:
        r["units"] = [u + K for u in r["units"]]  # a quantizer with more units than the LM
    write_jsonl(run / "tokenize" / "units.jsonl", rows)
    with pytest.raises(UnitLMError, match=r"prompt \d+: unit ids must be in \[0, 16\)"):
        stage.run(_ctx(run, []))


def test_rounds_take_disjoint_prompts_until_the_train_split_runs_out(tmp_path, caplog):
    from alignslm.stages.sample import select_prompts

    run = _run_dir(tmp_path)  # 12 usable train prompts
    got = {r: [p["prompt_id"] for p in select_prompts(_ctx(run, ["sample.n_prompts=5"], rnd=r))] for r in (1, 2, 3)}
    assert len(set(got[1])) == len(set(got[2])) == 5 and not set(got[1]) & set(got[2])
    assert len(set(got[3])) == 5 and len(set(got[3]) - set(got[1]) - set(got[2])) == 2  # 2 left, 3 taken again
    assert "were used by earlier rounds" in caplog.text
    assert got[1] == [p["prompt_id"] for p in select_prompts(_ctx(run, ["sample.n_prompts=5"], rnd=1))]
