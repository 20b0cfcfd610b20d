"""ProsAudit through the ZeroSpeech machinery: the layout, the official numbers, the submission file.
(The official scorer itself is run on the same files in tests/test_zerospeech_official.py.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from alignslm.eval import prosaudit as pa
from alignslm.eval.benchdata import BenchmarkError
from alignslm.eval.scoring import read_submission
from alignslm.speech.audio import write_wav

COLUMNS = ["filename", "id", "voice", "type", "subtype", "correct", "transcription"]


def write_prosaudit(root: Path, split: str = "dev", wavs: bool = True) -> list[list]:
    """<root>/english/<split>/gold.csv + wavs: 4 ids x 2 voices (ids 0-1 protosyntax, 2-3 lexical); the
    correct rows first, then the incorrect ones in the same order (the official pairing is by order)."""
    d = root / "english" / split
    d.mkdir(parents=True)
    good, bad = [], []
    for i in range(4):
        kind = "protosyntax" if i < 2 else "lexical"
        for v in ("Alex", "Bea"):
            good.append([f"g{i}{v}", i, v, kind, "pause", 1, "the cat | sat"])
            bad.append([f"b{i}{v}", i, v, kind, "pause", 0, "the c | at sat"])
    rows = good + bad
    with open(d / "gold.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    if wavs:
        for r in rows:
            write_wav(d / f"{r[0]}.wav", (0.1 * np.sin(np.arange(1600) / 7.0)).astype(np.float32))
    return rows


def test_layout_pairs_like_the_official_scorer(tmp_path):
    write_prosaudit(tmp_path / "prosaudit")
    for root in (tmp_path / "prosaudit", tmp_path / "prosaudit" / "english", tmp_path):
        bs = pa.load_prosaudit(root, "dev")
        assert len(bs.pairs) == 8 and bs.split == "dev"
        assert (bs.pairs[0]["correct_file"], bs.pairs[0]["incorrect_file"]) == ("g0Alex", "b0Alex")
        assert bs.pairs[5]["type"] == "lexical"
    with pytest.raises(BenchmarkError, match="no english/test"):
        pa.load_prosaudit(tmp_path / "prosaudit", "test")


def test_missing_wavs_unknown_types_and_misordered_rows_are_errors(tmp_path):
    rows = write_prosaudit(tmp_path, wavs=False)
    with pytest.raises(BenchmarkError, match="g0Alex.wav"):
        pa.load_prosaudit(tmp_path, "dev")
    d = tmp_path / "english" / "dev"
    for r in rows:
        write_wav(d / f"{r[0]}.wav", np.zeros(800, np.float32) + 0.1)
    text = (d / "gold.csv").read_text()
    (d / "gold.csv").write_text(text.replace("lexical", "lexicon"))
    with pytest.raises(BenchmarkError, match="'lexicon' is neither"):
        pa.load_prosaudit(tmp_path, "dev")
    lines = text.splitlines()
    lines[9], lines[10] = lines[10], lines[9]  # the 1st and 2nd incorrect rows swap: the order pairs them wrongly
    (d / "gold.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkError, match="paired with"):
        pa.load_prosaudit(tmp_path, "dev")


def test_official_numbers_by_hand_with_a_tie():
    pairs = [{"id": i, "voice": v, "type": "protosyntax" if i < 2 else "lexical", "correct_file": f"g{i}{v}",
              "incorrect_file": f"b{i}{v}"} for i in range(4) for v in ("A", "B")]
    s = {f"g{i}{v}": 0.0 for i in range(4) for v in ("A", "B")}
    s.update({"b0A": -1.0, "b0B": -1.0,  # id 0: 1, 1 -> 1
              "b1A": 0.0, "b1B": 1.0,  # id 1: tie 0.5, 0 -> 0.25
              "b2A": -1.0, "b2B": 1.0,  # id 2: 1, 0 -> 0.5
              "b3A": 1.0, "b3B": 1.0})  # id 3: 0, 0 -> 0
    r = pa.score_prosaudit(pairs, s)
    assert r["protosyntax"] == pytest.approx(0.625) and r["lexical"] == pytest.approx(0.25)
    proto = r["by_type"]["protosyntax"]
    assert proto == {"n": 2, "score": pytest.approx(0.625), "std": pytest.approx(0.53033, abs=1e-5)}
    assert r["all"] == pytest.approx((1 + 0.25 + 0.5 + 0) / 4) and r["n_ids"] == 4 and r["n_pairs"] == 8


def test_submission_has_every_file_once_and_the_losing_score_for_a_dropped_pair(tmp_path):
    items = [("g0A", "x"), ("b0A", "x"), ("g1A", "x")]
    dropped = [{"id": 1, "voice": "A", "correct_file": "g1A", "incorrect_file": "b1A"}]
    path = pa.write_prosaudit_submission(tmp_path, "dev", items, {"g0A": -1.25, "b0A": -2.0, "g1A": -1.0},
                                         dropped, [("b1A", "empty audio (0 samples)")])
    assert path == tmp_path / "english_dev.txt"
    assert read_submission(path, ["g0A", "b0A", "g1A", "b1A"]) == {"g0A": -1.25, "b0A": -2.0, "g1A": -1.0,
                                                                   "b1A": float("inf")}
