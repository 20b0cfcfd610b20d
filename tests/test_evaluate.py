"""Benchmark scoring (alignslm.eval.scoring) and generation statistics (alignslm.eval.stats)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignslm.eval import scoring as ev
from alignslm.eval import stats
from alignslm.eval.benchdata import BenchmarkSet
from alignslm.judge.rubric import score_histogram
from alignslm.speech.audio import write_wav

# --------------------------------------------------------------------------------------------------
# A tiny real unit LM (LLaMA architecture, random weights) saved the way the unitlm stage saves it
# --------------------------------------------------------------------------------------------------

N_UNITS = 20


@pytest.fixture(scope="module")
def unitlm_dir(tmp_path_factory) -> Path:
    from helpers import tiny_llama

    d = tmp_path_factory.mktemp("unitlm")
    model = tiny_llama(N_UNITS + 2, max_positions=128, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model.config.offset = 2
    model.config.n_units = N_UNITS
    model.save_pretrained(d / "hf")
    (d / "unitlm.json").write_text(json.dumps({"path": str(d / "hf"), "offset": 2, "n_units": N_UNITS,
                                               "bos_id": 1, "eos_id": 1, "pad_id": 0}))
    return d


@pytest.fixture(scope="module")
def lm(unitlm_dir):
    from alignslm.lm.unitlm import load_unitlm

    return load_unitlm(unitlm_dir)


def _loglik(lm, units: list[int]) -> tuple[float, int]:
    """Reference: sum of log p(token | prefix) over [units, EOS] given BOS, one sequence at a time."""
    import torch

    ids = torch.tensor([[1] + [u + 2 for u in units] + [1]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1]  # (T-1, V)
    support = list(range(2, 2 + N_UNITS)) + [1]
    lp = torch.log_softmax(logits[:, support], dim=-1)  # (T-1, S)
    tgt = [support.index(t) for t in ids[0, 1:].tolist()]
    vals = lp[torch.arange(len(tgt)), torch.tensor(tgt)]
    return float(vals.sum()), len(tgt)


def test_score_units_sum_and_mean_match_reference(lm):
    units = {"a": [3, 4, 5, 6, 7, 8, 9], "b": [1], "c": [0, 19, 19, 2], "d": list(range(20))}
    s_sum = ev.score_units(lm, units, "sum", batch_size=2)
    s_mean = ev.score_units(lm, units, "mean", batch_size=3)
    for k, u in units.items():
        ref, n = _loglik(lm, u)
        assert s_sum[k] == pytest.approx(ref, abs=1e-4)
        assert s_mean[k] == pytest.approx(ref / n, abs=1e-5)  # n = len(units) + 1 (EOS)


def test_score_units_rejects_bad_mode_and_empty(lm):
    with pytest.raises(ev.EvalInputError, match="eval.score"):
        ev.score_units(lm, {"a": [1, 2]}, "max")
    with pytest.raises(ev.EvalInputError, match="no units.*'?e1"):
        ev.score_units(lm, {"e1": [], "ok": [1]}, "mean")


# --------------------------------------------------------------------------------------------------
# Official ZeroSpeech 2021 arithmetic, by hand
# --------------------------------------------------------------------------------------------------


def _lex_pair(pid, voice, freq, length=3):
    return {"id": pid, "voice": voice, "frequency": freq, "length": length,
            "correct_file": f"w{pid}{voice}", "incorrect_file": f"n{pid}{voice}"}


def test_lexical_voice_average_then_id_average_and_bands():
    # id 1: voice A win, voice B tie -> 0.75 ; id 2: loss, loss -> 0 ; id 3 (oov): win -> 1 ; id 4 (freq 5): win
    pairs = [_lex_pair(1, "A", 3), _lex_pair(1, "B", 3), _lex_pair(2, "A", 150), _lex_pair(2, "B", 150),
             _lex_pair(3, "A", 0), _lex_pair(4, "A", 5, length=5)]
    s = {"w1A": -1.0, "n1A": -2.0, "w1B": -3.0, "n1B": -3.0, "w2A": -5.0, "n2A": -1.0, "w2B": -5.0,
         "n2B": -4.0, "w3A": 0.0, "n3A": -1.0, "w4A": 2.0, "n4A": 1.0}
    r = ev.score_lexical(pairs, s)
    assert r["all"] == pytest.approx((0.75 + 0 + 1 + 1) / 4)
    assert r["pair_mean"] == pytest.approx((1 + 0.5 + 0 + 0 + 1 + 1) / 6)
    bf = r["by_frequency"]
    assert bf["oov"] == {"n": 1, "score": 1.0, "std": None}
    assert bf["1-5"]["n"] == 1 and bf["1-5"]["score"] == 0.75  # frequency 3
    assert bf["6-20"]["n"] == 1 and bf["6-20"]["score"] == 1.0  # frequency 5 falls in [5, 20): official edges
    assert bf[">100"]["score"] == 0.0 and bf["21-100"]["n"] == 0
    assert r["invocab"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert r["by_length"]["5"]["score"] == 1.0 and r["by_length"]["3"]["n"] == 3
    assert r["n_ids"] == 4 and r["n_pairs"] == 6


def test_syntactic_groups_by_type_subtype_id():
    pairs = [{"id": 1, "voice": v, "type": "agreement", "subtype": "a1", "correct_file": f"c1{v}",
              "incorrect_file": f"i1{v}"} for v in "AB"]
    pairs += [{"id": 2, "voice": "A", "type": "order", "subtype": "o1", "correct_file": "c2A",
               "incorrect_file": "i2A"}]
    s = {"c1A": 1.0, "i1A": 0.0, "c1B": 0.0, "i1B": 1.0, "c2A": 2.0, "i2A": 2.0}
    r = ev.score_syntactic(pairs, s)
    assert r["all"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["by_type"]["agreement"]["score"] == 0.5 and r["by_type"]["order"]["score"] == 0.5
    assert r["pair_mean"] == pytest.approx((1 + 0 + 0.5) / 3)


def test_storycloze_accuracy_counts_ties_as_wrong():
    pairs = [{"id": i, "correct_file": f"c{i}", "incorrect_file": f"i{i}"} for i in range(4)]
    s = {"c0": 1, "i0": 0, "c1": 0, "i1": 1, "c2": 3, "i2": 3, "c3": 5, "i3": -5}
    r = ev.score_storycloze(pairs, s)
    assert r["all"] == 0.5 and r["ties"] == 1 and r["per_pair"] == [1.0, 0.0, 0.0, 1.0]


def test_frequency_band_edges_match_pandas_cut():
    pd = pytest.importorskip("pandas")
    freqs = [0, 0.5, 1, 4, 5, 19, 20, 99, 100, 10_000]
    ours = [ev.frequency_band(f) for f in freqs]
    theirs = pd.cut(pd.Series(freqs), list(ev.BAND_EDGES), labels=list(ev.BAND_LABELS), right=False)
    assert ours == [str(x) for x in theirs]
    assert ev.frequency_band(None) is None and ev.frequency_band(float("nan")) is None


# --------------------------------------------------------------------------------------------------
# Bad input: an error before any scoring, naming the files
# --------------------------------------------------------------------------------------------------


def _bench(tmp_path: Path, n: int = 3):
    items, pairs = [], []
    t = np.linspace(0, 1, 1600, dtype=np.float32)
    for i in range(n):
        for side in ("c", "i"):
            p = tmp_path / f"{side}{i}.wav"
            write_wav(p, 0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t))
            items.append((f"{side}{i}", p))
        pairs.append({"id": i, "voice": "v", "correct_file": f"c{i}", "incorrect_file": f"i{i}"})
    return items, pairs


def test_check_benchmark_lists_missing_wavs_and_incomplete_pairs(tmp_path):
    items, pairs = _bench(tmp_path)
    ev.check_benchmark("ok", items, pairs)
    (tmp_path / "c1.wav").unlink()
    with pytest.raises(ev.EvalInputError, match=r"lexical.*1 wav file\(s\) missing: .*c1\.wav"):
        ev.check_benchmark("lexical", items, pairs)
    items2, pairs2 = _bench(tmp_path / "b")
    pairs2.append({"id": 9, "voice": "v", "correct_file": "c9", "incorrect_file": "i0"})
    with pytest.raises(ev.EvalInputError, match="incomplete pair.*pair 9 .*lacks c9"):
        ev.check_benchmark("ssc", items2, pairs2)
    (tmp_path / "b" / "c2.wav").write_bytes(b"not a wav")
    with pytest.raises(ev.EvalInputError, match="unreadable.*c2.wav"):
        ev.check_benchmark("tsc", items2, pairs2[:3])


def test_unit_count_mismatch_names_both_sides():
    ev.check_unit_counts(100, 100, "lm", "q")
    with pytest.raises(ev.EvalInputError, match="runs/x/unitlm.*500 units.*runs/x/tokenize.*100"):
        ev.check_unit_counts(500, 100, "runs/x/unitlm", "runs/x/tokenize")


def test_tokenize_items_reports_bad_audio(tmp_path):
    items, _ = _bench(tmp_path, 2)
    write_wav(tmp_path / "silent.wav", np.zeros(1600, dtype=np.float32))

    class LengthTokenizer:  # stand-in for alignslm.speech.tokenizer: units from the waveform's length
        def encode(self, wavs):
            return [([len(w) % 7, 3], [1, 1]) for w in wavs]

    units = ev.tokenize_items(LengthTokenizer(), items, batch_size=3)
    assert units == {fid: [1600 % 7, 3] for fid, _ in items}
    with pytest.raises(ev.EvalInputError, match="silent.wav.*silence"):
        ev.tokenize_items(LengthTokenizer(), items + [("s", tmp_path / "silent.wav")])


# --------------------------------------------------------------------------------------------------
# Submission export round trip and score_benchmarks
# --------------------------------------------------------------------------------------------------


def test_score_benchmarks_writes_submission_and_matches_direct_scoring(lm, tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"f{i:03d}", f"/x/f{i:03d}.wav") for i in range(8)]
    units = {fid: rng.integers(0, N_UNITS, size=rng.integers(2, 12)).tolist() for fid, _ in items}
    pairs = [{"id": i // 2, "voice": f"v{i % 2}", "frequency": 7, "length": 3, "correct_file": items[2 * i][0],
              "incorrect_file": items[2 * i + 1][0]} for i in range(4)]
    bset = BenchmarkSet("lexical", "dev", Path("/x"), items, pairs)
    res = ev.score_benchmarks(lm, {"lexical": units}, {"lexical": bset}, "sum", 4, submission_dir=tmp_path)
    sub = ev.read_submission(tmp_path / "lexical" / "dev.txt")
    assert list(sub) == [fid for fid, _ in items]
    assert sub == res["lexical"]["scores"]  # repr round-trips exactly
    assert res["lexical"]["all"] == ev.score_lexical(pairs, sub)["all"]
    assert (tmp_path / "meta.yaml").exists()
    assert ev.headline(res) == {"sWUGGY": res["lexical"]["all"], "sBLIMP": None, "sSC": None, "tSC": None}
    with pytest.raises(ev.EvalInputError, match="no score for f000"):
        ev.write_submission(tmp_path, "lexical", "dev", items, {})


# --------------------------------------------------------------------------------------------------
# Bootstrap statistics
# --------------------------------------------------------------------------------------------------


def test_bootstrap_ci_covers_mean_and_ignores_none():
    x = [1.0, 2.0, 3.0, 4.0, None, 5.0]
    r = stats.bootstrap_ci(x, n_boot=500, seed=1)
    assert r["n"] == 5 and r["mean"] == 3.0 and r["lo"] < 3.0 < r["hi"]
    assert 1.0 < r["lo"] and r["hi"] < 5.0
    assert stats.bootstrap_ci([], 10)["mean"] is None


def test_paired_bootstrap_detects_shift_only_on_shared_keys():
    rng = np.random.default_rng(0)
    base = {f"p{i}": float(v) for i, v in enumerate(rng.normal(3, 1, 60))}
    better = {k: v + 0.5 + 0.05 * rng.normal() for k, v in base.items()}
    better["extra"] = 100.0  # not in base: must not count
    r = stats.paired_bootstrap(base, better, n_boot=1000, seed=0)
    assert r["n"] == 60 and r["diff"] == pytest.approx(0.5, abs=0.05)
    assert r["lo"] > 0.4 and r["p_le_0"] == 0.0
    same = stats.paired_bootstrap(base, base, n_boot=200)
    assert same["diff"] == 0.0 and same["lo"] == 0.0


def test_summarize_generations_counts_rejects_and_averages_per_prompt():
    rows = [{"prompt_id": "a", "k": 0, "score": 5.0, "autobleu": 0.0, "perplexity": 10.0},
            {"prompt_id": "a", "k": 1, "score": 3.0, "autobleu": 0.2, "perplexity": None},
            {"prompt_id": "b", "k": 0, "score": None, "autobleu": 0.1, "reject": "judge reply unparseable"},
            {"prompt_id": "b", "k": 1, "score": 1.0, "autobleu": 0.1}]
    s = stats.summarize_generations(rows, n_boot=100, seed=0, prompt_wer=0.25)
    assert s["per_prompt"]["score"] == {"a": 4.0, "b": 1.0}
    assert s["judge_score"]["mean"] == 2.5  # mean over prompts of per-prompt means
    assert s["reject_share"] == 0.25 and s["n_rejects"] == 1
    assert s["perplexity"]["mean"] == 10.0 and s["prompt_wer"] == 0.25
    assert score_histogram([r["score"] for r in rows]) == {"1": 1, "2": 0, "3": 1, "4": 0, "5": 1}  # None: not counted
    cmp_ = stats.compare_models(s, s, n_boot=50)
    assert cmp_["score"]["diff"] == 0.0 and cmp_["score"]["n"] == 2


def test_perplexity_judge_metric_compares_log_perplexity_signed_as_gain():
    """judge.mode=perplexity: the judge signal is ln(perplexity), a drop is a positive gain; a continuation
    without a perplexity is a reject even though it has no 1-5 score (none is asked for)."""
    import math

    base = [{"prompt_id": f"p{i}", "k": k, "score": None, "perplexity": 40.0 + i + k, "autobleu": 0.0}
            for i in range(30) for k in range(2)]
    better = [{**r, "perplexity": r["perplexity"] / 2} for r in base]
    better[0] = {**better[0], "perplexity": None, "reject": "judge: no perplexity"}
    sb = stats.summarize_generations(base, n_boot=200, judge_metric="perplexity")
    so = stats.summarize_generations(better, n_boot=200, judge_metric="perplexity")
    assert sb["judge_metric"] == "perplexity" and sb["n_rejects"] == 0 and so["n_rejects"] == 1
    assert sb["judge"]["mean"] == pytest.approx(sb["log_perplexity"]["mean"])
    assert sb["per_prompt"]["log_perplexity"]["p0"] == pytest.approx((math.log(40) + math.log(41)) / 2)
    c = stats.compare_models(sb, so, n_boot=500)
    assert c["judge_metric"] == "perplexity"
    assert c["judge_gain"]["diff"] == pytest.approx(math.log(2), abs=0.02) and c["judge_gain"]["lo"] > 0
    assert c["judge_gain"]["p_le_0"] == 0.0
    worse = stats.compare_models(so, sb, n_boot=500)["judge_gain"]
    assert worse["hi"] < 0 and worse["p_le_0"] == 1.0
    with pytest.raises(ValueError, match="judge_metric"):
        stats.summarize_generations(base, judge_metric="bleu")


# --------------------------------------------------------------------------------------------------
# The evaluate and report stages on tiny real artifacts (log-mel tokenizer, tiny LLaMA, a LoRA adapter)
# --------------------------------------------------------------------------------------------------


def _tone(f: float, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
    return (0.2 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _write_benchmarks(root: Path) -> None:
    import csv

    for kind, cols in (("lexical", ["filename", "correct", "id", "voice", "frequency", "word", "phones", "length"]),
                       ("syntactic", ["filename", "correct", "id", "voice", "type", "subtype", "transcription"])):
        d = root / kind / "dev"
        d.mkdir(parents=True)
        rows_c, rows_i = [], []
        for pid in range(4):
            for v in ("A", "B"):
                for correct, rows in ((1, rows_c), (0, rows_i)):
                    fid = f"{kind[:3]}{pid}{v}{correct}"
                    write_wav(d / f"{fid}.wav", _tone(200 + 40 * pid + 300 * correct + 15 * (v == "B")))
                    extra = [pid * 7, "w", "w", 3] if kind == "lexical" else ["agr", "s1", "a b c"]
                    rows.append([fid, correct, pid, v, *extra])
        with open(d / "gold.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(rows_c + rows_i)
    for kind in ("ssc", "tsc"):
        for sid in range(3):
            for label, f0 in (("correct", 330), ("incorrect", 520)):
                write_wav(root / kind / f"{sid}_{label}.wav", _tone(f0 + 20 * sid, 0.8))


def _stage_inputs(tmp: Path, unitlm_dir: Path, k: int = N_UNITS) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignslm.speech.encoders import LogMelEncoder
    from alignslm.speech.quantizer import Quantizer
    from alignslm.speech.tokenizer import Tokenizer

    _write_benchmarks(tmp / "bench")
    (tmp / "benchmarks").mkdir()
    (tmp / "benchmarks" / "benchmarks.json").write_text(json.dumps({"root": str(tmp / "bench")}))
    cents = np.random.default_rng(0).normal(size=(k, 80)).astype(np.float32)
    Tokenizer(LogMelEncoder(), Quantizer(cents)).save(tmp / "tokenize")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(unitlm_dir / "hf")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    peft.save_pretrained(tmp / "round-1" / "train" / "adapter")
    return {"benchmarks": tmp / "benchmarks", "tokenize": tmp / "tokenize", "unitlm": unitlm_dir,
            "train_1": tmp / "round-1" / "train"}


def _ctx(tmp: Path, inputs: dict, name: str = "evaluate", *overrides: str):
    from alignslm.config import load_config
    from alignslm.rundir import StageContext

    cfg = load_config(None, ["eval.n_prompts=0", "eval.score=sum", "run.device=cpu",
                             f"run.cache_dir={tmp / 'cache'}", *overrides])
    return StageContext(name=name, cfg=cfg, run_dir=tmp, out=tmp / name, inputs=inputs, progress=False)


def test_evaluate_and_report_stages(tmp_path, unitlm_dir):
    from alignslm.stages import evaluate as st_eval
    from alignslm.stages import report as st_report

    inputs = _stage_inputs(tmp_path, unitlm_dir)
    summary = st_eval.run(_ctx(tmp_path, inputs))
    assert summary["models"] == 2 and 0.0 <= summary["base_sWUGGY"] <= 1.0
    res = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    base, r1 = res["models"]["base"], res["models"]["round-1"]
    assert set(base["benchmarks"]) == {"lexical", "syntactic", "ssc", "tsc", "ssc_continuation", "tsc_continuation"}
    assert base["benchmarks"]["lexical"]["n_pairs"] == 8 and base["benchmarks"]["lexical"]["n_ids"] == 4
    assert base["benchmarks"]["ssc"]["n_pairs"] == 3
    assert res["protocol"]["score"] == "sum" and res["protocol"]["voices"]["lexical"] == ["A", "B"]
    s0 = json.loads((tmp_path / "evaluate" / "base" / "scores_lexical.json").read_text())["scores"]
    s1 = json.loads((tmp_path / "evaluate" / "round-1" / "scores_lexical.json").read_text())["scores"]
    assert s0.keys() == s1.keys() and any(abs(s0[k] - s1[k]) > 1e-6 for k in s0)  # the adapter is applied
    sub = ev.read_submission(tmp_path / "evaluate" / "submissions" / "round-1" / "lexical" / "dev.txt")
    assert sub == pytest.approx(s1)
    cached = list((tmp_path / "cache" / "eval_units").glob("*/lexical.jsonl"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 16  # by wav content
    diff = res["comparisons"]["round-1"]["benchmarks"]["tsc"]
    assert diff == pytest.approx(r1["benchmarks"]["tsc"]["all"] - base["benchmarks"]["tsc"]["all"])
    out = st_report.run(_ctx(tmp_path, {"evaluate": tmp_path / "evaluate", "train_1": inputs["train_1"]},
                             "report"))
    assert out["models"] == 2
    head = (tmp_path / "report" / "headline.md").read_text().splitlines()
    assert head[0] == res["verdict"]["line"]
    assert head[4].startswith("| base | ") and head[5].startswith("| round 1 | ")


def test_evaluate_stage_scores_salmon_prosaudit_and_continuations(tmp_path, unitlm_dir):
    """SALMon (a released-layout folder), ProsAudit and a multi-speaker sSC recorded by the benchmarks stage are
    scored for every model, with continuation-only sSC/tSC; the costs are in the summary; the report shows them."""
    import csv

    from alignslm.stages import evaluate as st_eval
    from alignslm.stages import report as st_report

    inputs = _stage_inputs(tmp_path, unitlm_dir)
    for part in ("speaker_consistency", "rir_consistency"):
        for i in range(3):
            write_wav(tmp_path / "salmon" / part / f"sample_{i}_0.wav", _tone(300 + 50 * i))
            write_wav(tmp_path / "salmon" / part / f"sample_{i}_1.wav", _tone(300 + 50 * i + 200 * (i > 0)))
    d = tmp_path / "prosaudit" / "english" / "dev"
    d.mkdir(parents=True)
    rows = [[f"{c}{i}", i, "V", "lexical" if i % 2 else "protosyntax", "s", int(c == "g"), "t"]
            for c in "gb" for i in range(4)]
    with open(d / "gold.csv", "w", newline="") as f:
        csv.writer(f).writerows([["filename", "id", "voice", "type", "subtype", "correct", "transcription"], *rows])
    for r in rows:
        write_wav(d / f"{r[0]}.wav", _tone(250 + 30 * r[1] + 100 * r[5]))
    for sid in range(2):  # stories 0 and 1 of the one-voice sSC, "in other voices"
        for label, f0 in (("correct", 330), ("incorrect", 520)):
            write_wav(tmp_path / "multi" / "sSC" / f"{sid}_{label}.wav", _tone(f0 + 20 * sid + 45, 0.8))
    info = {"root": str(tmp_path / "bench"), "salmon": {"root": str(tmp_path / "salmon"), "source": "real"},
            "prosaudit": {"root": str(tmp_path / "prosaudit")},
            "multispeaker": {"root": str(tmp_path / "multi"), "source": "real"}}
    (tmp_path / "benchmarks" / "benchmarks.json").write_text(json.dumps(info))
    summary = st_eval.run(_ctx(tmp_path, inputs, "evaluate", "eval.score=mean"))
    for key in ("salmon_s", "prosaudit_s", "multispeaker_s", "continuation_only_s", "genppl_s", "tokenize_suites_s"):
        assert key in summary
        assert isinstance(summary[key], float) and summary[key] >= 0  # a cost; on a fast machine it rounds to 0
    res = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    for name in ("base", "round-1"):
        b = res["models"][name]["benchmarks"]
        sp = b["salmon/speaker_consistency"]
        assert sp["n_pairs"] == 3 and sp["ties"] >= 1 and sp["mode"] == "official"  # sample 0: the same audio
        assert 0.0 <= b["salmon/rir_consistency"]["all"] <= 1.0
        assert b["prosaudit"]["n_pairs"] == 4 and set(b["prosaudit"]["by_type"]) == {"lexical", "protosyntax"}
        assert b["ssc_continuation"]["n_pairs"] == 3 and "prefix_share" in b["tsc_continuation"]
        m = b["ssc_multispeaker"]
        assert m["n_pairs"] == 2 and "tsc_multispeaker" not in b and "ssc_multispeaker_continuation" in b
        same = m["same_stories"]
        assert same["n"] == 2 and same["diff"] == pytest.approx(same["two_voices"] - same["one_voice"])
        assert (tmp_path / "evaluate" / name / "scores_ssc_multispeaker.json").is_file()
        sub = tmp_path / "evaluate" / "submissions" / name / "prosaudit" / "english_dev.txt"
        assert len(ev.read_submission(sub, [r[0] for r in rows])) == 8
        assert (tmp_path / "evaluate" / name / "scores_salmon-speaker_consistency.json").is_file()
    diff = res["comparisons"]["round-1"]["benchmarks"]["salmon/rir_consistency"]
    assert diff == pytest.approx(res["models"]["round-1"]["benchmarks"]["salmon/rir_consistency"]["all"]
                                 - res["models"]["base"]["benchmarks"]["salmon/rir_consistency"]["all"])
    assert res["protocol"]["salmon"]["score"] == "official" and res["protocol"]["continuation_only"] is True
    assert res["protocol"]["multispeaker"]["pairs"] == {"ssc_multispeaker": 2}
    assert "ssc_multispeaker" in res["comparisons"]["round-1"]["benchmarks"]
    st_report.run(_ctx(tmp_path, {"evaluate": tmp_path / "evaluate", "train_1": inputs["train_1"]}, "report"))
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## SALMon (acoustic consistency)" in md
    assert "| model | room consistency | speaker consistency | mean |" in md
    assert "| model | protosyntax | lexical |" in md and "sSC continuation only" in md
    assert "- SALMon: pair = 1 if the positive" in md and "- GenPPL: not measured" in md
    assert "## Spoken StoryCloze: one voice vs multi-speaker" in md and "| sSC multi-speaker whole |" in md
    assert "| model | sSC one voice | sSC multi-speaker | same stories: diff [95% CI] |" in md
    assert "- Multi-speaker sSC / tSC (ssc_multispeaker: 2 pairs; source real)" in md


def test_generation_metrics_for_the_base_and_the_last_round_by_default():
    from alignslm.config import load_config
    from alignslm.stages import evaluate as st_eval

    models = {"base": [], "round-1": [Path("a")], "round-2": [Path("b")], "round-10": [Path("c")]}
    assert load_config(None).eval.generation_models == "final"
    assert st_eval.generation_models(models, "final") == {"base", "round-10"}
    assert st_eval.generation_models(models, "all") == set(models)
    assert st_eval.generation_models({"base": []}, "final") == {"base"}
    with pytest.raises(ev.EvalInputError, match="choose final or all"):
        st_eval.generation_models(models, "last")
    with pytest.raises(ValueError, match="'eval.generation_models': 'x' is not a choice"):  # a Literal config field
        load_config(None, ["eval.generation_models=x"])


def test_report_of_a_round_without_generation_metrics_says_n_a(tmp_path):
    """eval.generation_models=final: an intermediate round has benchmarks only; its judge cells read n/a."""
    from alignslm.eval import report as rp
    from alignslm.eval.stats import compare_models, summarize_generations

    rows = [{"prompt_id": f"p{i}", "k": k, "perplexity": 50.0 + i + k, "autobleu": 0.0, "reject": None}
            for i in range(4) for k in range(2)]
    g = summarize_generations(rows, 100, 0, None, "perplexity")
    bench = {"lexical": {"all": 0.7}, "syntactic": {"all": 0.6}, "ssc": {"all": 0.5}, "tsc": {"all": 0.5}}
    res = {"models": {"base": {"benchmarks": bench, "generation": g},
                      "round-1": {"benchmarks": bench, "generation": None},
                      "round-2": {"benchmarks": bench, "generation": g}}}
    res["comparisons"] = {n: compare_models(g, res["models"][n]["generation"] or {}, 100, 0)
                          for n in ("round-1", "round-2")}
    table = rp.headline_table(res).splitlines()
    assert table[3].startswith("| round 1 |") and "n/a" in table[3] and "n/a" not in table[4]
    comp = rp.comparison_table(res)
    r1 = next(line for line in comp.splitlines() if line.startswith("| round 1"))
    assert "n/a" in r1 and "+0.000 [+0.000, +0.000]" in comp


def test_evaluate_stage_refuses_mismatched_units_before_scoring(tmp_path, unitlm_dir):
    from alignslm.stages import evaluate as st_eval

    inputs = _stage_inputs(tmp_path, unitlm_dir, k=N_UNITS + 5)
    with pytest.raises(ev.EvalInputError, match=r"unitlm\.json\) has 20 units but the quantizer .*tokenizer"
                                                 r"\.json\) produces 25"):
        st_eval.run(_ctx(tmp_path, inputs))
    assert not list((tmp_path / "evaluate").rglob("scores_*.json"))


def test_evaluate_stage_names_missing_wavs_before_scoring(tmp_path, unitlm_dir):
    from alignslm.eval.benchdata import BenchmarkError
    from alignslm.stages import evaluate as st_eval

    inputs = _stage_inputs(tmp_path, unitlm_dir)
    (tmp_path / "bench" / "syntactic" / "dev" / "syn2A0.wav").unlink()
    (tmp_path / "bench" / "tsc" / "1_incorrect.wav").unlink()
    with pytest.raises(BenchmarkError) as e:
        st_eval.run(_ctx(tmp_path, inputs))
    assert "syn2A0.wav" in str(e.value) and "story 1" in str(e.value)
    assert not list((tmp_path / "evaluate").rglob("scores_*.json"))


@pytest.mark.integration
def test_evaluate_stage_with_generation_metrics(tmp_path, unitlm_dir):
    """Held-out prompts from eSpeak NG speech -> sampler -> demo vocoder -> Whisper -> SmolLM2 judge."""
    from alignslm.demo.tts import synthesize
    from alignslm.rundir import write_jsonl
    from alignslm.speech.tokenizer import load_tokenizer
    from alignslm.stages import evaluate as st_eval
    from alignslm.vocoder.demo import DemoNet, DemoSpec, DemoVocoder

    inputs = _stage_inputs(tmp_path, unitlm_dir)
    tok = load_tokenizer(inputs["tokenize"])
    texts = {"u1": "the farmer fed the hungry goats and then he closed the old gate",
             "u2": "a girl took her new book to school and read it to the class", "u3": "the end"}
    manifest, units = [], []
    for i, (uid, text) in enumerate(texts.items()):
        utt = synthesize(text, "en-us", 160)
        write_wav(tmp_path / "corpus" / f"{uid}.wav", utt.audio)
        manifest.append({"utt_id": uid, "path": str(tmp_path / "corpus" / f"{uid}.wav"), "text": text,
                         "words": utt.words, "split": ["test", "dev", "test"][i]})
        (u, d), = tok.encode([utt.audio])
        units.append({"utt_id": uid, "units": u.tolist(), "durations": d.tolist()})
    write_jsonl(tmp_path / "corpus" / "manifest.jsonl", manifest)
    write_jsonl(inputs["tokenize"] / "units.jsonl", units)
    spec = DemoSpec(n_units=N_UNITS, frame_rate=tok.frame_rate, dim=16, layers=1, gl_iters=4,
                    mean_durations=[2.0] * N_UNITS)
    DemoVocoder(DemoNet(spec)).save(tmp_path / "vocoder")
    (tmp_path / "vocoder" / "vocoder.json").write_text(json.dumps({"kind": "demo", "path": str(tmp_path / "vocoder")}))
    inputs.update(corpus=tmp_path / "corpus", vocoder=tmp_path / "vocoder")
    ctx = _ctx(tmp_path, inputs, "evaluate", "eval.n_prompts=3", "sample.n_continuations=2",
               "sample.max_new_units=30", "sample.prompt_seconds=1.0", "eval.bootstrap=100", "eval.n_examples=2",
               "eval.also_score=true")  # judge.mode=perplexity (the default) + the 1-5 score beside it
    st_eval.run(ctx)
    res = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert res["protocol"]["n_prompts"] == 2  # "the end" is too short for a 1 s prompt: a reject
    assert any("u3" in line for line in (tmp_path / "evaluate" / "rejects.jsonl").read_text().splitlines())
    for name in ("base", "round-1"):
        g = res["models"][name]["generation"]
        assert g["n_continuations"] == 4 and g["n_prompts"] == 2
        assert g["prompt_wer"] is not None and g["prompt_wer"] >= 0.0
        rows = [json.loads(x) for x in (tmp_path / "evaluate" / name / "generations.jsonl").read_text().splitlines()]
        assert g["judge_metric"] == "sense"  # perplexity mode compares the signal's sense (alignslm.judge.signal)
        for r in rows:  # every continuation is judged (perplexity, and 1..5 beside) or a counted reject
            assert (r["reject"] is None and r["perplexity"] > 1.0 and 1.0 <= r["score"] <= 5.0) or r["reject"]
        assert g["n_rejects"] == sum(bool(r["reject"]) for r in rows)
        gp = g["genppl"]  # every transcript, screened ones too, in the judge's neutral context
        assert gp["scored"] == sum(r["genppl"] is not None for r in rows) == sum(bool(r.get("text")) for r in rows)
        assert gp["scored"] + gp["missing"] == 4 and (gp["mean"] is None or gp["lo"] <= gp["mean"] <= gp["hi"])
        examples = res["models"][name]["examples"]  # paths relative to the evaluate directory
        assert all((tmp_path / "evaluate" / e["path"]).is_file() for e in examples if e.get("path"))
    seeds = [[json.loads(x)["seed"] for x in (tmp_path / "evaluate" / n / "generations.jsonl").read_text().splitlines()]
             for n in ("base", "round-1")]
    assert seeds[0] == seeds[1]  # the same prompts and seeds for every model
    for key in ("score", "judge_gain"):
        c = res["comparisons"]["round-1"][key]
        assert c["n"] <= 2 and (c["diff"] is None or c["lo"] <= c["diff"] <= c["hi"])
    assert res["comparisons"]["round-1"]["judge_metric"] == "sense"
    assert "log_genppl" in res["comparisons"]["round-1"] and res["protocol"]["genppl"]["context"]


def test_windowed_scoring_of_utterances_longer_than_the_context(lm):
    import torch

    short = list(range(10))
    total, n = ev.windowed_loglik(lm, short, 128)
    assert n == 11 and total == pytest.approx(_loglik(lm, short)[0], abs=1e-4)  # one window = exact
    long_ = np.random.default_rng(3).integers(0, N_UNITS, 150).tolist()  # 152 tokens > context 128
    info: dict = {}
    got = ev.score_units(lm, {"long": long_, "short": short}, "sum", stats=info)
    assert info == {"windowed": 1, "context": 128}
    seq = torch.tensor([[1] + [u + 2 for u in long_] + [1]])  # (1, 152)
    support = list(range(2, 2 + N_UNITS)) + [1]

    def part(begin: int, end: int, first_target: int) -> float:  # targets first_target .. end-1
        with torch.no_grad():
            logits = lm.model(input_ids=seq[:, begin:end]).logits[0, :-1][:, support]
        lp = torch.log_softmax(logits, -1)
        tgt = [support.index(t) for t in seq[0, begin + 1:end].tolist()]
        vals = lp[torch.arange(len(tgt)), torch.tensor(tgt)]
        return float(vals[first_target - begin - 1:].sum())

    ref = part(0, 128, 1) + part(64, 152, 128)  # stride 64: the second window scores targets 128..151
    assert got["long"] == pytest.approx(ref, abs=1e-3)
    assert got["short"] == pytest.approx(_loglik(lm, short)[0], abs=1e-4)
    mean = ev.score_units(lm, {"long": long_}, "mean")["long"]
    assert mean == pytest.approx(ref / 151, abs=1e-5)


def test_a_submission_missing_or_carrying_an_unknown_file_is_an_error_naming_it(tmp_path):
    pairs = [{"id": "0", "voice": "p1", "correct_file": "aXk", "incorrect_file": "bQz", "frequency": 3, "length": 3},
             {"id": "1", "voice": "p1", "correct_file": "cRt", "incorrect_file": "dWm", "frequency": 3, "length": 3}]
    sub = tmp_path / "dev.txt"
    sub.write_text("aXk -1.0\nbQz -2.0\ncRt -1.5\nzzz -3.0\n")
    with pytest.raises(ev.EvalInputError, match=r"1 missing file\(s\): dWm; 1 unknown file\(s\): zzz"):
        ev.read_submission(sub, expected=["aXk", "bQz", "cRt", "dWm"])
    scores = ev.read_submission(sub)
    with pytest.raises(ev.EvalInputError, match=r"1 file\(s\) of the benchmark have no score: dWm"):
        ev.score_lexical(pairs, scores)
    with pytest.raises(ev.EvalInputError, match="dWm"):
        ev.score_storycloze(pairs, scores)
    sub.write_text("aXk -1.0\nbQz -2.0\ncRt -1.5\ndWm -1.0\n")
    assert ev.score_lexical(pairs, ev.read_submission(sub, expected=["aXk", "bQz", "cRt", "dWm"]))["all"] == 0.5


def test_generation_metrics_whose_judge_mostly_failed_fail_the_stage_before_the_model_is_recorded():
    from alignslm.pipeline import StageFailed
    from alignslm.stages.evaluate import raise_if_judge_failed

    raise_if_judge_failed("base", {"judge_tried": 10, "judge_failed": 5}, 0.5)
    with pytest.raises(StageFailed, match=r"evaluate \(round-1: judge\): 6 of 10 items failed"):
        raise_if_judge_failed("round-1", {"judge_tried": 10, "judge_failed": 6}, 0.5)
