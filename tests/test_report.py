"""The report: tables in the paper's shape, plots from the round directories, examples with audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignslm.eval import report as rp
from alignslm.rundir import write_jsonl
from alignslm.speech.audio import write_wav


def _results(tmp_path: Path) -> dict:
    wav = tmp_path / "evaluate" / "round-1" / "audio" / "p0_k0.wav"
    write_wav(wav, 0.1 * np.sin(np.linspace(0, 300, 8000, dtype=np.float32)))

    def model(lex, syn, ssc, tsc, judge, ab, examples=()):
        return {"benchmarks": {"lexical": {"all": lex, "invocab": lex + 0.01, "pair_mean": lex - 0.01},
                               "syntactic": {"all": syn, "pair_mean": syn, "by_type": {"agreement": {"score": syn}}},
                               "ssc": {"all": ssc, "ties": 0}, "tsc": {"all": tsc, "ties": 1}},
                "generation": {"judge_score": {"mean": judge, "lo": judge - 0.2, "hi": judge + 0.2, "n": 6},
                               "autobleu": {"mean": ab}, "perplexity": None, "prompt_wer": 0.31,
                               "reject_share": 0.1},
                "examples": list(examples)}

    ex = {"prompt_id": "p0", "k": 0, "prompt_text": "the cat sat", "text": "on the mat | ok", "score": 4.0,
          "path": str(wav)}
    return {"protocol": {"score": "mean", "support": "units", "split": "dev", "voices": {"lexical": ["en-us"]},
                         "n_prompts": 6, "n_continuations": 3},
            "models": {"base": model(0.712, 0.601, 0.55, 0.754, 2.70, 0.052),
                       "round-1": model(0.73, 0.62, 0.58, 0.80, 3.10, 0.041, [ex])},
            "comparisons": {"round-1": {"score": {"diff": 0.4, "lo": 0.1, "hi": 0.7, "p_le_0": 0.004, "n": 6},
                                        "autobleu": {"diff": -0.011, "lo": -0.02, "hi": 0.0, "n": 6},
                                        "benchmarks": {"lexical": 0.018, "syntactic": 0.019, "ssc": 0.03,
                                                       "tsc": 0.046}}}}


def test_headline_table_has_the_papers_shape():
    res = _results_no_audio()
    t = rp.headline_table(res).strip().splitlines()
    assert t[0] == "| model | sWUGGY | sBLIMP | sSC | tSC | judge score [95% CI] | auto-BLEU |"
    assert t[2] == "| base | 71.2 | 60.1 | 55.0 | 75.4 | 2.70 [2.50, 2.90] | 0.052 |"
    assert t[3].startswith("| round 1 | 73.0 | 62.0 | 58.0 | 80.0 | 3.10 [2.90, 3.30] |")
    c = rp.comparison_table(res)
    assert "| round 1 | n/a | +0.400 [+0.100, +0.700] | 0.004 | n/a |" in c and "+4.6" in c


def _results_no_audio() -> dict:
    import tempfile

    return _results(Path(tempfile.mkdtemp()))


def test_build_report_writes_tables_plots_examples(tmp_path):
    res = _results(tmp_path)
    for r, scores in ((1, [1, 2, 2, 3, None, 5]), (2, [3, 4, 4, 5, 5, 4.6])):
        write_jsonl(tmp_path / f"round-{r}" / "judge" / "judgments.jsonl",
                    [{"prompt_id": f"p{i}", "k": 0, "score": s} for i, s in enumerate(scores)])
        write_jsonl(tmp_path / f"round-{r}" / "train" / "train_log.jsonl",
                    [{"step": s, "rewards/accuracies": min(1.0, 0.5 + 0.1 * s), "loss": 0.6} for s in range(6)])
    out = tmp_path / "report"
    summary = rp.build_report(res, tmp_path, out, rounds=2, n_examples=2, demo=True)
    page = summary.pop("index_html")
    assert summary == {"models": 2, "plots": 3, "examples": 1}
    assert page["bytes"] == (out / "index.html").stat().st_size and page["prompts"] == 0  # no generations.jsonl
    for png in ("metrics_per_round.png", "judge_histograms.png", "reward_accuracy.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    md = (out / "report.md").read_text()
    assert "not comparable" in md and "per-token mean" in md and "[BOS, units, EOS]" in md
    head = (out / "headline.md").read_text()
    assert head.startswith(rp.verdict_line(res)) and rp.headline_table(res) in head and rp.comparison_table(res) in head
    assert md.startswith("# alignslm report\n\n**Verdict:** No verdict")
    assert "![reward_accuracy](reward_accuracy.png)" in md
    copied = out / "examples" / "round-1" / "p0_k0.wav"
    assert copied.is_file() and "(examples/round-1/p0_k0.wav)" in md
    assert "on the mat \\| ok" in md  # table cells escaped
    assert "| round 1 | 5 | 1 | mean score 2.60 (rounded) | n/a | 1.000 | n/a (round 1, or reference moves) |" in md
    full = json.loads((out / "results.json").read_text())
    assert full["judge_histograms"]["round 1"]["score_histogram"] == {"1": 1, "2": 2, "3": 1, "4": 0, "5": 1}
    assert full["judge_histograms"]["round 1"]["missing"] == 1
    assert list(full["judge_histograms"]["round 2"]["score_histogram"].values()) == [0, 0, 1, 2, 3]  # 4.6 -> 5


def test_report_without_round_files_still_writes_and_says_so(tmp_path, caplog):
    res = _results(tmp_path)
    with caplog.at_level("WARNING", logger="alignslm"):
        s = rp.build_report(res, tmp_path, tmp_path / "r", rounds=1, demo=False)
    assert s["plots"] == 1
    assert "judgments.jsonl not found" in caplog.text
    assert "not comparable" not in (tmp_path / "r" / "report.md").read_text()


def test_missing_metrics_show_as_na():
    res = {"models": {"base": {"benchmarks": {"lexical": {"all": 0.5}}, "generation": None}}}
    row = rp.headline_table(res).strip().splitlines()[2]
    assert row == "| base | 50.0 | n/a | n/a | n/a | n/a | n/a |"


@pytest.mark.parametrize("score,text", [("sum", "**sum**"), ("mean", "**per-token mean**")])
def test_protocol_names_the_score(score, text):
    assert text in rp.protocol_text({"protocol": {"score": score}})


def test_report_lists_dropped_pairs_and_filled_submission_files():
    res = _results_no_audio()
    assert "None: every benchmark file was read" in rp.data_problems(res)
    res["dropped_pairs"] = {"lexical": 1, "syntactic": 0}
    res["models"]["base"]["benchmarks"]["lexical"]["submission_filled"] = [
        {"file": "a1b2", "score": "-inf", "side": "correct", "pair": 7, "reason": "not 16 kHz mono"},
        {"file": "c3d4", "score": "inf", "side": "incorrect", "pair": 7,
         "reason": "its pair was dropped (the other side was rejected)"}]
    text = rp.data_problems(res)
    assert "lexical: 1" in text and "syntactic" not in text.split("\n")[0]
    assert "lexical submission: 2 file(s)" in text
    assert "`a1b2` (correct side of pair 7): not 16 kHz mono" in text and "`c3d4` (incorrect side" in text


def test_rounds_table_in_perplexity_mode_shows_perplexities_pairs_and_held_out_accuracy(tmp_path):
    """The demo's default judge mode gives no 1-5 scores: the rounds table and histogram use perplexities."""
    res = _results(tmp_path)
    for r, ppls in ((1, [100.0, 200.0, None, 400.0]), (2, [50.0, 60.0, 70.0, 80.0])):
        rd = tmp_path / f"round-{r}"
        write_jsonl(rd / "judge" / "judgments.jsonl",
                    [{"prompt_id": "p0", "k": k, "score": None, "perplexity": p} for k, p in enumerate(ppls)])
        (rd / "pairs").mkdir(parents=True)
        (rd / "pairs" / "summary.json").write_text(json.dumps({"continuations": 4, "unjudged": 1, "pairs": 3 + r}))
        (rd / "train").mkdir(parents=True)
        prior = {"reward_accuracy": 0.55, "reward_margin": 0.01, "pairs": 4} if r == 2 else None
        (rd / "train" / "policy.json").write_text(json.dumps({"final_reward_accuracy": 0.9 + r / 100,
                                                              "prior_policy_on_these_pairs": prior}))
    rp.build_report(res, tmp_path, tmp_path / "r", rounds=2, demo=True)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| round 1 | 3 | 2 | median perplexity 200 | 4 | 0.910 | n/a (round 1, or reference moves) |" in md
    assert "| round 2 | 4 | 1 | median perplexity 65 | 5 | 0.920 | 0.550 (4 pairs) |" in md
    png = (tmp_path / "r" / "judge_histograms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_protocol_says_how_prompts_were_cut():
    from alignslm.eval.report import protocol_text

    txt = protocol_text({"protocol": {"n_prompts": 10, "prompt_seconds": 3.0, "prompts_at_word_end": 7,
                                      "prompt_wer_n": 7}})
    assert "cut at the last word end before 3.0 s (word times in the manifest) for 7 of 10" in txt
    assert "Whisper's transcript of the cut prompt audio" in txt and "7 prompts have it" in txt


def test_model_table_one_row_per_model_and_one_format_for_missing_values():
    """alignslm.eval.tables: every suite's per-model table is built by model_table; None and NaN are n/a."""
    from alignslm.eval.tables import Column, bench, ci, model_table, pct

    models = {"base": {"benchmarks": {"tsc": {"all": 0.475}}},
              "round-2": {"benchmarks": {"tsc": {"all": float("nan")}}}, "round-3": {}}
    lines = model_table(models, [Column("tSC", bench("tsc")), Column("x", lambda m: "y", rule=":---:")],
                        label=lambda n: n.upper())
    assert lines == ["| model | tSC | x |", "|---|---|:---:|", "| BASE | 47.5 | y |", "| ROUND-2 | n/a | y |",
                     "| ROUND-3 | n/a | y |"]
    assert pct(None) == "n/a" and pct(0.5) == "50.0"
    assert ci({"mean": 1.0, "lo": 0.5, "hi": 1.5}) == "1.00 [0.50, 1.50]" and ci({"diff": float("nan")}) == "n/a"
    assert ci({"mean": 2.0}, "{:.1f}") == "2.0" and ci(None) == "n/a"
