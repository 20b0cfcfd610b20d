"""The demo world's text: deterministic stories, a checkable grammar and topics, benchmark material."""

from __future__ import annotations

import re

import pytest

from alignslm.demo.benchmarks import SYNTACTIC_KINDS, lexical_words, make_nonword, syntactic_pair
from alignslm.demo.lexicon import TOPICS, plural, third_singular, topic_words, vocabulary
from alignslm.demo.stories import (
    generate_stories,
    generate_story,
    grammatical,
    incoherent_ending,
    on_topic,
    other_topic_ending,
    predict_topic,
    rng_for,
    split_sentences,
)


def test_stories_are_deterministic_per_seed_and_index():
    a = generate_stories(50, seed=3)
    b = generate_stories(50, seed=3)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert generate_story(3, 17).text == a[17].text  # story i does not depend on how many are made
    c = generate_stories(50, seed=4)
    assert sum(x.text != y.text for x, y in zip(a, c)) > 45


def test_world_size_lengths_and_metadata():
    assert len(TOPICS) >= 8 and len(vocabulary()) >= 300
    stories = generate_stories(400, seed=0)
    assert {len(s.sentences) for s in stories} == {2, 3, 4, 5}
    assert len({s.topic for s in stories}) == len(TOPICS)
    for s in stories[:50]:
        assert split_sentences(s.text) == s.sentences  # sentence boundaries are recoverable from the text
        assert s.result in s.sentences[-1] and s.context == s.sentences[:-1]


def test_every_generated_sentence_is_grammatical_and_on_topic():
    for s in generate_stories(300, seed=1):
        assert all(grammatical(x) for x in s.sentences), s.text
        assert predict_topic(s.text) == s.topic, s.text
        assert on_topic(s.sentences[-1], s.topic)


def test_grammar_rejects_agreement_order_and_determiner_errors():
    assert grammatical("Tom washes the red pan.")
    assert grammatical("The cooks wash these pans on the stove.")
    for bad in ("Tom wash the red pan.", "The cooks washes the pans.", "Tom washes these pan.",
                "Tom washes the pan red.", "Tom the pan washes.", "Tom washes pan the.", "The pans is hot.",
                "Tom washes the kitchen glorp."):
        assert not grammatical(bad), bad


def test_topic_markers_are_exclusive():
    seen: dict[str, str] = {}
    for t in TOPICS:
        for w in topic_words(t.name):
            assert w not in seen, f"{w} marks {seen.get(w)} and {t.name}"
            seen[w] = t.name


def test_story_cloze_endings():
    rng = rng_for(0, "t")
    for s in generate_stories(100, seed=2):
        wrong = incoherent_ending(s, rng)
        assert grammatical(wrong) and on_topic(wrong, s.topic)
        assert wrong != s.sentences[-1] and s.result not in wrong.split(" is ")[-1].split(" are ")[-1]
        other = other_topic_ending(s, rng)
        assert grammatical(other) and predict_topic(other) not in (None, s.topic)


@pytest.mark.parametrize("kind", SYNTACTIC_KINDS)
def test_syntactic_pairs_are_minimal_violations(kind):
    rng = rng_for(5, kind)
    for _ in range(30):
        good, bad = syntactic_pair(rng, kind)
        assert grammatical(good) and not grammatical(bad), (good, bad)
        gw, bw = good.lower().rstrip(".").split(), bad.lower().rstrip(".").split()
        if kind[0] == "word_order":
            assert sorted(gw) == sorted(bw)  # same words, another order
        else:
            assert len(gw) == len(bw) and sum(a != b for a, b in zip(gw, bw)) == 1  # one word changed


def test_nonwords_are_pronounceable_and_not_demo_words():
    vocab = set(vocabulary())
    rng = rng_for(0, "nw")
    words = lexical_words()
    assert len(words) >= 200
    for w in words:
        nw = make_nonword(w, rng, vocab)
        assert nw not in vocab and nw != w and re.fullmatch(r"[a-z]+", nw)
        assert re.search(r"[aeiou]", nw)  # has a vowel
        longest = max(len(x) for x in re.findall(r"[^aeiouy]+", w) or [""])
        assert all(len(x) <= longest for x in re.findall(r"[^aeiou]+", nw)), (w, nw)  # no new clusters


def test_inflection():
    assert [plural(x) for x in ("pan", "box", "cherry", "loaf", "tomato", "squid")] == [
        "pans", "boxes", "cherries", "loaves", "tomatoes", "squid"]
    assert [third_singular(x) for x in ("wash", "carry", "look around", "go")] == [
        "washes", "carries", "looks around", "goes"]


def test_benchmark_tables_are_deterministic_per_seed():
    from collections import Counter

    from alignslm.demo.benchmarks import cloze_texts, lexical_rows, syntactic_rows

    freq = Counter({"pan": 3})
    a = lexical_rows(0, 8, ["en-us", "en"], None, freq)
    assert a == lexical_rows(0, 8, ["en-us", "en"], None, freq) != lexical_rows(1, 8, ["en-us", "en"], None, freq)
    assert len({r["filename"] for r in a}) == len(a) == 32 and all(re.fullmatch(r"\w{11}", r["filename"]) for r in a)
    assert syntactic_rows(2, 7, ["en"], None) == syntactic_rows(2, 7, ["en"], None)
    assert {r["type"] for r in syntactic_rows(2, 7, ["en"], None)} == {k[0] for k in SYNTACTIC_KINDS}
    assert cloze_texts(0, 5, None, "tsc") == cloze_texts(0, 5, None, "tsc")
