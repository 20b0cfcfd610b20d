"""SALMon: the loader of the released layout and the official rule (slp-rl/salmon @ 85e2daf), cross-checked
against a literal transcription of the official loop on a small set with ties and an undefined score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alignslm.eval import salmon
from alignslm.eval.benchdata import BenchmarkError
from alignslm.eval.loglik import token_logprobs
from alignslm.speech.audio import write_wav

N_UNITS = 20


@pytest.fixture(scope="module")
def lm(tiny_unitlm_dir):
    """The tiny unit LM (tests/conftest.py) with a full-vocabulary softmax (TWIST's own code uses the full
    vocabulary)."""
    from alignslm.lm.unitlm import load_unitlm

    return load_unitlm(tiny_unitlm_dir, support="full")


def _tone(f: float, n: int = 1600) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * f * np.arange(n) / 16000)).astype(np.float32)


def _layout(root: Path, units: dict[str, dict[str, list[int]]]) -> None:
    """``units``: part -> {stem: units}; one short wav per stem (the units are given to the scorer directly)."""
    for part, files in units.items():
        for k, stem in enumerate(files):
            write_wav(root / part / f"{stem}.wav", _tone(200 + 10 * k))
        (root / part / "metadata.json").write_text("[]")  # released folders hold more than wavs


# --------------------------------------------------------------------------------------------------
# The official loop, transcribed (salmon.py main + SalmonDataset + SLMInferenceModel.log_likelihood)
# --------------------------------------------------------------------------------------------------


def official_part_score(part_dir: Path, units_of: dict[str, list[int]], model, offset: int
                        ) -> tuple[list[float], float]:
    """salmon.py on one part with batch_size 1: group by int(stem.split('_')[1]), sort, (pos, neg) = the
    group's two paths; log-likelihood = -mean cross-entropy of tokens 2..n given the prefix (units + offset,
    no BOS/EOS, mean_nll=true); res = 1 / 0.5 / 0 by >, ==, <.  Returns (per pair, the printed mean: float32)."""
    import torch
    from torch.nn.functional import cross_entropy

    paths = list(part_dir.glob("*.wav"))
    top = max(int(p.stem.split("_")[1]) for p in paths)
    data: list[list[str]] = [[] for _ in range(top + 1)]
    for p in paths:
        data[int(p.stem.split("_")[1])].append(str(p))
    for lst in data:
        lst.sort()
    data = [lst for lst in data if lst]

    def log_likelihood(path: str) -> torch.Tensor:
        x = torch.tensor([units_of[Path(path).stem]]) + offset  # (1, T)
        with torch.no_grad():
            logits = model(input_ids=x).logits  # (1, T, V)
        shifted_x, shifted_logits = x[..., 1:], logits[..., :-1, :]
        mask = shifted_x != -1  # one file per batch: no padding
        losses = cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_x.reshape(-1),
                               reduction="none").view(*shifted_x.size())
        return -((losses * mask).sum(-1) / mask.sum(-1))

    res_list = []
    for pos_path, neg_path in data:
        pos, neg = log_likelihood(pos_path), log_likelihood(neg_path)
        res = torch.zeros_like(pos)
        res[pos > neg] = 1
        res[pos == neg] = 0.5
        res[pos < neg] = 0
        res_list.append(res)
    res = torch.cat(res_list)
    return res.tolist(), float(res.float().mean())


def test_scores_equal_the_official_loop_on_a_set_with_ties_and_an_undefined_pair(lm, tmp_path):
    rng = np.random.default_rng(7)
    units = {"speaker_consistency": {}, "rir_consistency": {}}
    for part, n in (("speaker_consistency", 12), ("rir_consistency", 9)):
        for i in range(n):
            pos = rng.integers(0, N_UNITS, int(rng.integers(4, 30))).tolist()
            kind = i % 4
            neg = (list(pos) if kind == 0  # the same units: an exact tie
                   else pos[:len(pos) // 2] + rng.integers(0, N_UNITS, 8).tolist() if kind == 1
                   else rng.integers(0, N_UNITS, int(rng.integers(4, 30))).tolist())
            if part == "rir_consistency" and i == 3:
                neg = [5]  # one unit: 0 predicted tokens, the official 0/0 = NaN, the pair scores 0
            units[part][f"sample_{i}_0"], units[part][f"sample_{i}_1"] = pos, neg
    units["speaker_consistency"]["sample_20_0"] = [3, 3, 4]  # indices need not be contiguous
    units["speaker_consistency"]["sample_20_1"] = [3, 3, 4]
    _layout(tmp_path, units)

    sets = salmon.load_salmon(tmp_path)
    assert list(sets) == ["salmon/rir_consistency", "salmon/speaker_consistency"]  # salmon.py's order
    unit_maps = {f"salmon/{p}": u for p, u in units.items()}
    ours = salmon.score_salmon(lm, unit_maps, sets, "official", batch_size=5)
    for part, u in units.items():
        r = ours[f"salmon/{part}"]
        per_pair, mean = official_part_score(tmp_path / part, u, lm.model, lm.offset)
        assert r["per_pair"] == per_pair  # in index order, as the official loop visits them
        assert r["all"] == pytest.approx(mean, abs=1e-6)  # the official mean is float32
    sp, rir = ours["salmon/speaker_consistency"], ours["salmon/rir_consistency"]
    assert sp["n_pairs"] == 13 and sp["ties"] == 4  # i = 0, 4, 8 and sample 20
    assert rir["undefined"] == 1 and rir["per_pair"][3] == 0.0
    assert 0.0 < sp["all"] < 1.0 and 0.5 in sp["per_pair"]


def test_official_utterance_score_is_the_mean_over_units_two_to_n_without_bos_eos(lm):
    import torch

    u = [4, 9, 9, 1, 17, 0, 3]
    got = salmon.utterance_scores(lm, {"a": u}, "official")["a"]
    x = torch.tensor([u]) + lm.offset
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(input_ids=x).logits[0, :-1].double(), -1)  # (T-1, V)
    ref = float(lp[torch.arange(len(u) - 1), x[0, 1:]].mean())
    assert got == pytest.approx(ref, abs=1e-5)
    with_bos = salmon.utterance_scores(lm, {"a": u}, "eval", "sum")["a"]
    from alignslm.eval import scoring as ev

    assert with_bos == pytest.approx(ev.score_units(lm, {"a": u}, "sum")["a"], abs=1e-4)
    assert np.isnan(salmon.utterance_scores(lm, {"b": [2]}, "official")["b"])
    with pytest.raises(ValueError, match="eval.salmon_score"):
        salmon.utterance_scores(lm, {"a": u}, "mean")


def test_equal_sequences_get_bitwise_equal_scores_whatever_the_batching(lm):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, N_UNITS + 2, int(n)).tolist() for n in rng.integers(3, 40, 30)]
    seqs += [list(seqs[3]), list(seqs[10])]
    for bs in (1, 4, 64):
        out = token_logprobs(lm, seqs, bs)
        assert np.array_equal(out[3], out[-2]) and np.array_equal(out[10], out[-1])
        assert [len(x) for x in out] == [len(s) - 1 for s in seqs]


def test_sequences_longer_than_the_context_are_scored_in_strided_windows(lm):
    from alignslm.eval import scoring as ev

    units = np.random.default_rng(3).integers(0, N_UNITS, 90).tolist()  # 92 tokens > context 64
    seq = [lm.bos_id, *lm.units_to_ids(units), lm.eos_id]
    lp = token_logprobs(lm, [seq])[0]
    total, n = ev.windowed_loglik(lm, units, 64)
    assert lp.size == n == 91 and float(lp.sum()) == pytest.approx(total, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# Layout problems
# --------------------------------------------------------------------------------------------------


def test_a_missing_side_a_third_option_and_a_bad_name_are_listed_together(tmp_path):
    _layout(tmp_path, {"gender_consistency": {"sample_0_0": [], "sample_0_1": [], "sample_1_0": [],
                                              "sample_2_0": [], "sample_2_1": [], "sample_2_2": [],
                                              "sample_x": []}})
    with pytest.raises(BenchmarkError) as e:
        salmon.load_salmon(tmp_path)
    text = str(e.value)
    assert "sample 1: options [0]" in text and "sample 2: options [0, 1, 2]" in text
    assert "sample_x.wav: name is not sample_<i>_<j>.wav" in text


def test_positive_is_option_0_and_bad_audio_drops_its_pair(tmp_path):
    _layout(tmp_path, {"speaker_consistency": {"sample_0_0": [], "sample_0_1": [], "sample_1_0": [],
                                               "sample_1_1": []}})
    import soundfile as sf

    sf.write(tmp_path / "speaker_consistency" / "sample_1_1.wav", np.zeros(800, np.float32), 8000)
    bs = salmon.load_part(tmp_path, "speaker_consistency")
    assert [(p["correct_file"], p["incorrect_file"]) for p in bs.pairs] == [("sample_0_0", "sample_0_1")]
    assert bs.rejects == [("sample_1_1", "sample rate 8000 Hz (the benchmarks are 16 kHz)")]
    assert len(bs.dropped) == 1


def test_report_table_lists_every_part_per_model():
    res = {"models": {"base": {"benchmarks": {"salmon/speaker_consistency": {"all": 0.6, "ties": 2, "n_pairs": 10},
                                              "salmon/rir_consistency": {"all": 0.45, "ties": 0, "n_pairs": 10}}},
                      "round-1": {"benchmarks": {"salmon/speaker_consistency": {"all": 0.7}}}},
           "salmon": {"source": "demo", "note": None}}
    t = salmon.report_table(res).splitlines()
    assert t[0] == "| model | room consistency | speaker consistency | mean |"  # salmon.py's order
    assert t[2] == "| base | 45.0 | 60.0 | 52.5 |" and t[3] == "| round-1 | n/a | 70.0 | 70.0 |"
    assert "speaker_consistency: 2/10" in t[-1]
    assert "benchmarks.salmon_root" in salmon.report_table({"models": {"base": {"benchmarks": {}}}})
