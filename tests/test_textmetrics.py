from __future__ import annotations

import pytest

from alignslm.textmetrics import auto_bleu, compression_ratio, edit_distance, normalize_text, wer


def test_normalize_text_whisper_style():
    assert normalize_text("Hello, World!  It's   \u201cfine\u201d.") == "hello world it's fine"
    assert normalize_text("The cat [music] sat.") == "the cat sat"
    assert normalize_text("  \t\n ") == ""
    assert normalize_text("'quoted' don't") == "quoted don't"


def test_edit_distance_cases():
    assert edit_distance("a b c".split(), "a b c".split()) == 0
    assert edit_distance("a b c".split(), "a x c".split()) == 1
    assert edit_distance("a b c".split(), "a c".split()) == 1
    assert edit_distance([], ["x", "y"]) == 2
    assert edit_distance("a b".split(), []) == 2


def test_wer_is_corpus_level():
    # 1 error in 4 words + 0 errors in 1 word = 1/5 (a per-utterance mean would give 1/8)
    assert wer(["the cat sat down", "yes"], ["The cat sat.", "yes"]) == pytest.approx(1 / 5)
    assert wer(["Hello, world"], ["hello world"]) == 0.0


def test_wer_errors():
    with pytest.raises(ValueError, match="one per clip"):
        wer(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        wer([""], ["a"])


def test_auto_bleu_definition():
    assert auto_bleu("the cat sat on the mat") == 0.0  # "the" repeats but no bigram does
    # bigrams: (a b) (b a) (a b) -> the two (a b) repeat non-overlapping, (b a) does not: 2/3
    assert auto_bleu("a b a b") == pytest.approx(2 / 3)
    # overlapping occurrences do not count: "a a a" has (a a)@0 and (a a)@1, which overlap
    assert auto_bleu("a a a") == 0.0
    assert auto_bleu("a a a a") == pytest.approx(2 / 3)  # @0 and @2 repeat; @1 overlaps both
    assert auto_bleu("go to the farm go to the farm") == pytest.approx(6 / 7)
    assert auto_bleu("one") == 0.0
    assert auto_bleu([1, 2, 1, 2], n=2) == pytest.approx(2 / 3)
    assert auto_bleu("a b a", n=1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        auto_bleu("x", n=0)


def test_compression_ratio_flags_repetition():
    assert compression_ratio("the " * 60) > 2.4
    assert compression_ratio("the quick brown fox jumps over the lazy dog") < 2.4
    assert compression_ratio("") == 0.0
