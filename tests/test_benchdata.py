"""Loaders of the real benchmark layouts, on tiny data sets built here in exactly those layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alignslm.eval.benchdata import (
    BenchmarkError,
    check_layout,
    check_wav,
    load_all,
    load_storycloze,
    load_zerospeech,
)

LEX_COLS = ["filename", "correct", "id", "voice", "frequency", "word", "phones", "length"]
SYN_COLS = ["filename", "correct", "id", "voice", "type", "subtype", "transcription"]


def _wav(path: Path, sr: int = 16000, channels: int = 1, n: int = 1600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, sr, subtype="PCM_16")


def _gold(d: Path, cols: list[str], rows: list[list], wavs: bool = True) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "gold.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    if wavs:
        for r in rows:
            _wav(d / f"{r[0]}.wav")


LEX_ROWS = [  # official order: correct and incorrect rows interleaved, paired by their rank
    ["aXk", 1, 0, "p1", 12, "kitchen", "k I tS @ n", 5],
    ["bQz", 0, 0, "p1", "", "kotchun", "k o tS u n", 5],
    ["cRt", 1, 0, "p2", 12, "kitchen", "k I tS @ n", 5],
    ["dWm", 0, 0, "p2", "", "kotchun", "k o tS u n", 5],
    ["eLp", 1, 7, "p1", 0, "zebra", "z i b r @", 5],
    ["fYo", 0, 7, "p1", "", "zoobri", "z u b r i", 5],
]
SYN_ROWS = [
    ["s1", 1, 3, "p1", "agreement", "sv", "the dogs bark"],
    ["s2", 1, 3, "p2", "agreement", "sv", "the dogs bark"],
    ["s3", 0, 3, "p1", "agreement", "sv", "the dogs barks"],
    ["s4", 0, 3, "p2", "agreement", "sv", "the dogs barks"],
]


def test_lexical_pairs_exactly_as_the_official_scorer(tmp_path):
    _gold(tmp_path / "lexical" / "dev", LEX_COLS, LEX_ROWS)
    bs = load_zerospeech(tmp_path, "lexical", "dev")
    assert [(p["id"], p["voice"], p["correct_file"], p["incorrect_file"]) for p in bs.pairs] == [
        ("0", "p1", "aXk", "bQz"), ("0", "p2", "cRt", "dWm"), ("7", "p1", "eLp", "fYo")]
    assert [(p["frequency"], p["word"], p["non_word"], p["length"]) for p in bs.pairs] == [
        (12, "kitchen", "kotchun", 5), (12, "kitchen", "kotchun", 5), (0, "zebra", "zoobri", 5)]
    assert [f for f, _ in bs.items] == [r[0] for r in LEX_ROWS]
    assert all(Path(p).is_absolute() and Path(p).is_file() for _, p in bs.items)
    assert bs.pairs[0]["correct_path"] == str((tmp_path / "lexical/dev/aXk.wav").resolve())
    assert bs.rejects == [] and bs.summary()["ids"] == 2


def test_syntactic_pairs_by_rank_among_correct_and_incorrect_rows(tmp_path):
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, SYN_ROWS)
    bs = load_zerospeech(tmp_path, "syntactic")
    assert [(p["id"], p["voice"], p["correct_file"], p["incorrect_file"], p["type"], p["subtype"])
            for p in bs.pairs] == [("3", "p1", "s1", "s3", "agreement", "sv"),
                                   ("3", "p2", "s2", "s4", "agreement", "sv")]
    assert bs.pairs[0]["sentence"] == "the dogs bark" and bs.pairs[0]["non_sentence"] == "the dogs barks"


def test_missing_column_names_the_column_and_the_file(tmp_path):
    cols = [c for c in LEX_COLS if c != "frequency"]
    _gold(tmp_path / "lexical" / "dev", cols, [r[:4] + r[5:] for r in LEX_ROWS])
    with pytest.raises(BenchmarkError, match="missing column 'frequency'") as e:
        load_zerospeech(tmp_path, "lexical")
    assert "gold.csv" in str(e.value) and e.value.problems == ["missing column 'frequency'"]


def test_missing_wavs_are_all_listed(tmp_path):
    d = tmp_path / "lexical" / "dev"
    _gold(d, LEX_COLS, LEX_ROWS)
    (d / "bQz.wav").unlink()
    (d / "fYo.wav").unlink()
    with pytest.raises(BenchmarkError) as e:
        load_zerospeech(tmp_path, "lexical")
    assert e.value.problems == ["bQz.wav (gold.csv row 3) does not exist", "fYo.wav (gold.csv row 7) does not exist"]


def test_a_pair_with_one_side_is_an_error(tmp_path):
    _gold(tmp_path / "lexical" / "dev", LEX_COLS, LEX_ROWS[:5])  # the 3-row style: non-word of id 7 missing
    with pytest.raises(BenchmarkError) as e:
        load_zerospeech(tmp_path, "lexical")
    assert e.value.problems == ["id 7, voice p1: 1 correct vs 0 incorrect row(s)"]


def test_lexical_pairs_on_voice_and_id_whatever_the_row_order(tmp_path):
    """The official scorer (LexicalTask.load_and_format) joins words and non-words on (voice, id)."""
    rows = [LEX_ROWS[i] for i in (5, 2, 1, 4, 0, 3)]  # a valid gold.csv, rows in another order
    _gold(tmp_path / "lexical" / "dev", LEX_COLS, rows)
    bs = load_zerospeech(tmp_path, "lexical")
    assert sorted((p["id"], p["voice"], p["correct_file"], p["incorrect_file"]) for p in bs.pairs) == [
        ("0", "p1", "aXk", "bQz"), ("0", "p2", "cRt", "dWm"), ("7", "p1", "eLp", "fYo")]
    two = [LEX_ROWS[0], LEX_ROWS[1], ["zZz", 0, 0, "p1", "", "kitchon", "k I tS o n", 5],
           ["yYy", 1, 0, "p1", 12, "kitchen", "k I tS @ n", 5]]  # two words and two non-words for (p1, 0)
    _gold(tmp_path / "x" / "lexical" / "dev", LEX_COLS, two)
    with pytest.raises(BenchmarkError, match="id 0, voice p1: 2 correct vs 2 incorrect"):
        load_zerospeech(tmp_path / "x", "lexical")


def test_syntactic_rows_whose_rank_pairs_different_ids_are_an_error(tmp_path):
    rows = [SYN_ROWS[0], SYN_ROWS[1], SYN_ROWS[3], SYN_ROWS[2]]  # incorrect rows in the other voice order
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, rows)
    with pytest.raises(BenchmarkError, match="paired with") as e:
        load_zerospeech(tmp_path, "syntactic")
    assert len(e.value.problems) == 2


def test_a_long_problem_list_is_capped_with_a_count_and_keeps_the_fix(tmp_path):
    d = tmp_path / "lexical" / "dev"
    rows = [[f"w{i:03d}", 1 - i % 2, i // 2, "p1", 3, "cat", "k a t", 3] for i in range(60)]
    _gold(d, LEX_COLS, rows, wavs=False)
    lines = check_layout(tmp_path)
    missing = [x for x in lines if "does not exist" in x and ".wav" in x]
    assert len(missing) <= 20 and any("... and" in x and "more" in x for x in lines)
    assert any(x.startswith("fix: ") and "<filename>.wav next to gold.csv" in x for x in lines)


def test_bad_correct_value_and_duplicate_filename(tmp_path):
    rows = [list(r) for r in SYN_ROWS]
    rows[1][1] = 2
    rows[3][0] = "s3"
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, rows)
    with pytest.raises(BenchmarkError) as e:
        load_zerospeech(tmp_path, "syntactic")
    assert e.value.problems == ["row 3 (s2): correct='2', expected 0 or 1", "filename s3 appears 2 times"]


@pytest.mark.parametrize("kind,reason", [
    (dict(sr=22050), "sample rate 22050 Hz"), (dict(channels=2), "2 channels"), (dict(n=0), "empty audio")])
def test_non_16k_stereo_or_empty_wav_is_a_listed_reject(tmp_path, kind, reason):
    d = tmp_path / "lexical" / "dev"
    _gold(d, LEX_COLS, LEX_ROWS)
    _wav(d / "dWm.wav", **kind)
    bs = load_zerospeech(tmp_path, "lexical")
    assert [f for f, _ in bs.rejects] == ["dWm"] and reason in bs.rejects[0][1]
    assert [p["incorrect_file"] for p in bs.dropped] == ["dWm"]
    assert [p["correct_file"] for p in bs.pairs] == ["aXk", "eLp"]
    assert check_wav(d / "dWm.wav") is not None and check_wav(d / "aXk.wav") is None


def test_missing_split_directory(tmp_path):
    with pytest.raises(BenchmarkError, match="lexical/test does not exist"):
        load_zerospeech(tmp_path, "lexical", "test")
    with pytest.raises(ValueError, match="task must be"):
        load_zerospeech(tmp_path, "phonetic")


def _storycloze(root: Path, name: str, ids: list[str]) -> Path:
    d = root / name
    for i in ids:
        _wav(d / f"{i}_correct.wav")
        _wav(d / f"{i}_incorrect.wav")
    return d


def test_storycloze_pairs_from_file_names(tmp_path):
    _storycloze(tmp_path, "sSC", ["10", "2", "0"])  # the archives' capitalised folder name
    bs = load_storycloze(tmp_path, "ssc")
    assert [(p["id"], p["correct_file"], p["incorrect_file"]) for p in bs.pairs] == [
        ("0", "0_correct", "0_incorrect"), ("2", "2_correct", "2_incorrect"), ("10", "10_correct", "10_incorrect")]
    assert len(bs.items) == 6 and bs.name == "ssc"


def test_storycloze_incomplete_pairs_and_bad_names_are_listed(tmp_path):
    d = _storycloze(tmp_path, "tsc", ["0", "1"])
    (d / "1_incorrect.wav").unlink()
    _wav(d / "stray.wav")
    _wav(d / "0_sub" / "0_correct.wav")  # a second correct side for story 0, in a sub-folder
    with pytest.raises(BenchmarkError) as e:
        load_storycloze(tmp_path, "tsc")
    assert e.value.problems == ["stray.wav: name is not <story>_correct / <story>_incorrect",
                                "story 0: 2 correct and 1 incorrect file(s), expected one of each",
                                "story 1: 1 correct and 0 incorrect file(s), expected one of each"]


def test_storycloze_missing_directory(tmp_path):
    with pytest.raises(BenchmarkError, match="no tsc directory"):
        load_storycloze(tmp_path, "tsc")


def test_load_all_lists_everything_missing(tmp_path):
    _gold(tmp_path / "lexical" / "dev", LEX_COLS, LEX_ROWS)
    _storycloze(tmp_path, "ssc", ["0"])
    problems = check_layout(tmp_path)
    assert len(problems) == 3 and problems[2].startswith("fix: syntactic: Download the ZeroSpeech 2021")
    assert problems[0].startswith("syntactic:") and "syntactic/dev does not exist" in problems[0]
    assert problems[1].startswith("tsc:") and "no tsc directory" in problems[1]
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, SYN_ROWS)
    _storycloze(tmp_path, "tSC", ["0", "1"])
    sets = load_all(tmp_path)
    assert {k: len(v.pairs) for k, v in sets.items()} == {"lexical": 3, "syntactic": 2, "ssc": 1, "tsc": 2}


def test_path_of(tmp_path):
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, SYN_ROWS)
    bs = load_zerospeech(tmp_path, "syntactic", check_audio=False)
    assert bs.path_of("s3") == str((tmp_path / "syntactic/dev/s3.wav").resolve())
    with pytest.raises(KeyError):
        bs.path_of("nope")


def test_evaluate_stage_finds_archive_folder_names_in_any_case(tmp_path):
    """The archives unpack as sSC/ and tSC/ (and a copy may say Lexical/Dev): the evaluate stage and the
    --dry-run layout check must find them, not only the lower-case names of the docs."""
    from types import SimpleNamespace

    from alignslm.rundir import Rejects
    from alignslm.stages import evaluate as st_eval

    _gold(tmp_path / "Lexical" / "Dev", LEX_COLS, LEX_ROWS)
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, SYN_ROWS)
    _storycloze(tmp_path, "sSC", ["0", "1"])
    _storycloze(tmp_path, "tSC", ["0", "1", "2"])
    assert check_layout(tmp_path) == []
    ctx = SimpleNamespace(rejects=Rejects(tmp_path / "rejects.jsonl", "evaluate"))
    sets = st_eval.load_benchmarks(ctx, tmp_path, "dev")
    assert {k: len(v.pairs) for k, v in sets.items()} == {"lexical": 3, "syntactic": 2, "ssc": 2, "tsc": 3}
    assert sets["ssc"].root == (tmp_path / "sSC").resolve()
    assert sets["lexical"].root == (tmp_path / "Lexical" / "Dev").resolve()


class _LengthLM:
    """A stand-in unit LM for score_benchmarks: log-likelihood = -(number of units)."""

    n_units = 10

    def score_sequences(self, seqs, add_bos_eos=True, reduce="sum", batch_size=64):
        return np.array([-float(len(s)) for s in seqs])

    def max_context(self):
        return None


@pytest.mark.parametrize("bad", ["dWm", "aXk"])  # the incorrect side, then the correct side, is rejected
def test_submission_lists_every_gold_file_and_a_rejected_one_loses_its_pair(tmp_path, bad):
    """The official tool needs every file of the split: a rejected file (and its unscored partner) is written
    with the pair-losing score (-inf correct side, +inf incorrect side) and listed in submission_filled."""
    from types import SimpleNamespace

    from alignslm.eval import scoring as ev
    from alignslm.rundir import Rejects
    from alignslm.stages import evaluate as st_eval

    d = tmp_path / "lexical" / "dev"
    _gold(d, LEX_COLS, LEX_ROWS)
    _gold(tmp_path / "syntactic" / "dev", SYN_COLS, SYN_ROWS)
    _storycloze(tmp_path, "ssc", ["0"])
    _storycloze(tmp_path, "tsc", ["0"])
    _wav(d / f"{bad}.wav", sr=8000)
    ctx = SimpleNamespace(rejects=Rejects(tmp_path / "rejects.jsonl", "evaluate"))
    benches = st_eval.load_benchmarks(ctx, tmp_path, "dev")  # as the stage: only files of kept pairs are scored
    lex = benches["lexical"]
    partner = {"dWm": "cRt", "aXk": "bQz"}[bad]
    assert {f for f, _ in lex.items} == {"aXk", "bQz", "cRt", "dWm", "eLp", "fYo"} - {bad, partner}
    units = {k: {f: [1] * (1 + i % 3) for i, (f, _) in enumerate(b.items)} for k, b in benches.items()}
    sub = tmp_path / "sub"
    res = ev.score_benchmarks(_LengthLM(), units, benches, "sum", submission_dir=sub)
    written = ev.read_submission(sub / "lexical" / "dev.txt")
    assert set(written) == {r[0] for r in LEX_ROWS}  # every gold.csv file, once
    assert set(ev.read_submission(sub / "syntactic" / "dev.txt")) == {r[0] for r in SYN_ROWS}
    side = {"aXk": "correct", "bQz": "incorrect", "cRt": "correct", "dWm": "incorrect"}
    assert written[bad] == ev.LOSING_SCORE[side[bad]] and written[partner] == ev.LOSING_SCORE[side[partner]]
    filled = {f["file"]: f for f in res["lexical"]["submission_filled"]}
    assert set(filled) == {bad, partner} and "8000 Hz" in filled[bad]["reason"]
    assert filled[bad]["score"] == repr(ev.LOSING_SCORE[side[bad]]) and filled[bad]["pair"] == "0"
    assert res["syntactic"]["submission_filled"] == []
    # the official rule on the complete submission: the dropped pair scores 0 (a lower bound), not 0.5 or 1
    dropped_wins = [1.0 if written[p["correct_file"]] > written[p["incorrect_file"]] else 0.0 for p in lex.dropped]
    assert dropped_wins == [0.0]
    with pytest.raises(ev.EvalInputError, match="no score for"):  # no silent gaps without a dropped pair
        ev.write_submission(tmp_path / "x", "lexical", "dev", lex.items, {})
