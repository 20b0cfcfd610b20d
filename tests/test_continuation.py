"""Continuation-only StoryCloze scoring (alignslm.eval.continuation) and GenPPL (alignslm.eval.genppl)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignslm.eval import continuation as cont
from alignslm.eval import genppl
from alignslm.eval.stats import summarize_genppl


@pytest.fixture(scope="module")
def lm(tiny_unitlm_dir):
    from alignslm.lm.unitlm import load_unitlm

    return load_unitlm(tiny_unitlm_dir)


def _token_logprobs(lm, units: list[int]) -> np.ndarray:
    """log p of [units, EOS] given BOS, one sequence alone, over the LM's support (units + EOS)."""
    import torch

    ids = torch.tensor([[lm.bos_id, *lm.units_to_ids(units), lm.eos_id]])
    with torch.no_grad():
        lp = lm.logprobs(lm.model(input_ids=ids).logits[0, :-1]).double()  # (T-1, V)
    return lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].numpy()


def _stories(rng: np.random.Generator, n: int) -> tuple[dict, list[dict]]:
    units, pairs = {}, []
    for k in range(n):
        ctx = rng.integers(0, 20, int(rng.integers(5, 30))).tolist()
        good, bad = rng.integers(0, 20, int(rng.integers(3, 12))).tolist(), rng.integers(0, 20, 6).tolist()
        if bad[0] == good[0]:
            bad[0] = (bad[0] + 1) % 20  # the endings differ from their first unit on
        units[f"{k}_correct"], units[f"{k}_incorrect"] = ctx + good, ctx + bad
        pairs.append({"id": str(k), "correct_file": f"{k}_correct", "incorrect_file": f"{k}_incorrect"})
    return units, pairs


def test_shared_prefix():
    assert cont.shared_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert cont.shared_prefix([1, 2], [1, 2, 3]) == 2 and cont.shared_prefix([], [1]) == 0


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_only_the_ending_and_eos_are_scored_given_the_whole_context(lm, mode):
    units, pairs = _stories(np.random.default_rng(1), 8)
    scores, prefix = cont.continuation_scores(lm, units, pairs, mode, batch_size=3)
    for p, k in zip(pairs, prefix):
        for side in ("correct_file", "incorrect_file"):
            tail = _token_logprobs(lm, units[p[side]])[k:]  # targets u_{k+1}..u_n, EOS
            ref = tail.mean() if mode == "mean" else tail.sum()
            assert scores[p[side]] == pytest.approx(float(ref), abs=1e-5)
            assert len(tail) == len(units[p[side]]) - k + 1


def test_in_sum_mode_the_comparison_equals_whole_story_scoring(lm):
    from alignslm.eval import scoring as ev

    units, pairs = _stories(np.random.default_rng(2), 12)
    whole = ev.score_units(lm, units, "sum")
    c, _ = cont.continuation_scores(lm, units, pairs, "sum")
    for p in pairs:
        a, b = p["correct_file"], p["incorrect_file"]
        assert c[a] - c[b] == pytest.approx(whole[a] - whole[b], abs=1e-4)  # the shared context cancels


def test_result_records_ties_and_how_much_context_was_found(lm):
    units, pairs = _stories(np.random.default_rng(3), 5)
    units["4_incorrect"] = list(units["4_correct"])  # the same story twice: a tie
    units["3_incorrect"] = [(u + 1) % 20 for u in units["3_incorrect"]]  # no shared prefix
    r = cont.score_continuation(lm, units, pairs, "mean")
    assert r["n_pairs"] == 5 and r["ties"] == 1 and r["no_shared_prefix"] == 1 and r["per_pair"][4] == 0.0
    assert 0.0 < r["prefix_share"]["mean"] < 1.0 and r["prefix_share"]["min"] == 0.0
    res = {"models": {"base": {"benchmarks": {"ssc": {"all": 0.6}, "ssc_continuation": r}}}}
    table = cont.report_table(res).splitlines()
    assert table[0] == "| model | sSC whole | sSC continuation only |"
    assert table[2].startswith("| base | 60.0 | ") and "1 pair(s) share none" in table[-1]


def test_genppl_is_the_unconditional_perplexity_under_the_judge_lm(tiny_judge_dir):
    import torch

    from alignslm.judge import TransformersBackend

    backend = TransformersBackend(tiny_judge_dir, batch_size=2, dtype="float32")
    rows = [{"prompt_id": "p0", "k": 0, "text": "The cook washed the pan."},
            {"prompt_id": "p0", "k": 1, "text": "  "},
            {"prompt_id": "p1", "k": 0, "text": "The farmer fed the pig on the farm."},
            {"prompt_id": "p1", "k": 1, "text": "pan"}]
    stats = genppl.add_genppl(rows, backend)
    assert stats["scored"] == 3 and stats["missing"] == 1 and stats["reused"] == 0 and rows[1]["genppl"] is None
    tok, model = backend.tok, backend.model
    for r in (rows[0], rows[2], rows[3]):
        ids = [tok.bos_token_id] + tok.encode(" " + r["text"].strip(), add_special_tokens=False)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        nll = -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
        assert r["genppl"] == pytest.approx(math.exp(nll), rel=1e-4) and r["log_genppl"] == pytest.approx(nll, rel=1e-4)
    s = summarize_genppl(rows, n_boot=200, seed=0)
    geo = math.exp(np.mean([rows[0]["log_genppl"], np.mean([rows[2]["log_genppl"], rows[3]["log_genppl"]])]))
    assert s["mean"] == pytest.approx(geo) and s["lo"] <= s["mean"] <= s["hi"] and s["n"] == 2 and s["missing"] == 1


def test_one_pass_gives_score_benchmarks_whole_story_result_and_the_continuations(lm):
    from types import SimpleNamespace

    from alignslm.eval import scoring as ev

    units, pairs = _stories(np.random.default_rng(4), 10)
    bench = {"ssc": SimpleNamespace(pairs=pairs, items=[(f, f) for f in units])}
    both = cont.score_storycloze_both(lm, {"ssc": units}, bench, "mean", batch_size=4)
    ref = ev.score_benchmarks(lm, {"ssc": units}, bench, "mean")["ssc"]
    assert set(both) == {"ssc", "ssc_continuation"}
    for key in ("all", "pair_mean", "n_pairs", "ties", "per_pair", "n_utterances", "windowed"):
        assert both["ssc"][key] == ref[key], key
    assert both["ssc"]["scores"] == pytest.approx(ref["scores"], abs=1e-5)
    alone = cont.score_continuation(lm, units, pairs, "mean")
    assert both["ssc_continuation"]["per_pair"] == alone["per_pair"]


def test_genppl_in_the_neutral_context_reuses_the_pmi_signals_own_pass(tiny_judge_dir):
    from helpers import signal_rules

    from alignslm.judge import PerplexityJudge, TransformersBackend
    from alignslm.judge.signal import judge_rows

    backend = TransformersBackend(tiny_judge_dir, batch_size=2, dtype="float32")
    rules = signal_rules(kind="pmi_asr", neutral="The cook washed the pan.")
    rows = [{"prompt_id": "p0", "k": 0, "prompt_text": "A farmer.", "text": "The farmer fed the pig on the farm.",
             "avg_logprob": -0.3, "reject": None},
            {"prompt_id": "p0", "k": 1, "prompt_text": "A farmer.", "text": "Thank you.", "reject": None}]
    judge_rows(rows, PerplexityJudge(backend), rules)
    assert rows[0]["perplexity_uncond"] is not None and rows[1]["reject"]  # the hallucination is screened
    stats = genppl.add_genppl(rows, backend, rules.neutral, rules.kind)
    assert stats == {**stats, "scored": 2, "reused": 1, "missing": 0}
    assert rows[0]["genppl"] == rows[0]["perplexity_uncond"]
    direct = backend.perplexity([rules.neutral] * 2, [r["text"] for r in rows])
    assert [r["genppl"] for r in rows] == pytest.approx([p for p, _ in direct], rel=1e-4)
