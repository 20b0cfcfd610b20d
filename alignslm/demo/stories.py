"""Seeded short stories over the demo lexicon, with a recogniser for the grammar and topic checks.

A story has 2-5 sentences: an opening at the topic's place, fillers, one main action
("Tom washes the red pan.") and an ending that states the action's result ("Now the pan is clean.").
Everything is drawn from ``random.Random`` seeded by (seed, story index), so story i is the same for a
seed whatever the number of stories.  The grammar is small and repetitive on purpose: a small unit LM
trained on ~2,000 spoken stories can learn its agreement, word order and topic co-occurrence, which is
what the mini benchmarks (alignslm.demo.benchmarks) test.

    >>> s = generate_story(seed=0, index=3)
    >>> grammatical(s.sentences[0]), predict_topic(s.text) == s.topic
    (True, True)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, field

from alignslm.demo.lexicon import (
    ENDING_WORDS,
    INTRANSITIVE,
    LIKE_VERBS,
    NAMES,
    SHARED_ADJECTIVES,
    TIMES,
    TOPIC_BY_NAME,
    TOPICS,
    Action,
    Topic,
    plural,
    third_singular,
    topic_of_object,
    topic_words,
)

MIN_SENTENCES, MAX_SENTENCES = 2, 5


@dataclass
class Story:
    story_id: str
    topic: str
    sentences: list[str]
    verb: str  # main action (base form)
    obj: str  # its object (singular)
    number: str  # "sg" | "pl": how the object appears in the story
    result: str  # the state the ending states
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def context(self) -> list[str]:
        """All sentences but the ending."""
        return self.sentences[:-1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["text"] = self.text
        return d


def rng_for(seed: int, *salt: object) -> random.Random:
    """A ``random.Random`` derived from (seed, salt...) through SHA-256 (stable across Python runs)."""
    h = hashlib.sha256("\0".join(map(str, (seed, *salt))).encode()).hexdigest()
    return random.Random(int(h[:16], 16))


def topics(n_topics: int | None = None) -> tuple[Topic, ...]:
    n = len(TOPICS) if n_topics is None else n_topics
    if not 1 <= n <= len(TOPICS):
        raise ValueError(f"n_topics={n}: the demo lexicon has 1..{len(TOPICS)} topics")
    return TOPICS[:n]


# --------------------------------------------------------------------------------------------------
# Phrases
# --------------------------------------------------------------------------------------------------


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def subject(rng: random.Random, topic: Topic) -> tuple[str, str]:
    """(noun phrase, number): 'Tom', 'Tom and Mia', 'the cook', 'the cooks'."""
    k = rng.random()
    if k < 0.45:
        return rng.choice(NAMES), "sg"
    if k < 0.6:
        a, b = rng.sample(NAMES, 2)
        return f"{a} and {b}", "pl"
    role = rng.choice(topic.roles)
    return (f"the {role}", "sg") if k < 0.85 else (f"the {plural(role)}", "pl")


def verb_form(verb: str, number: str) -> str:
    return third_singular(verb) if number == "sg" else verb


def object_np(rng: random.Random, noun: str, number: str, adj: str | None = None) -> str:
    """'the pan', 'a red pan', 'these pans', 'two old pans'."""
    head = noun if number == "sg" else plural(noun)
    body = f"{adj} {head}" if adj else head
    det = rng.choice(("the", "the", "a", "this") if number == "sg" else ("the", "these", "two", "some"))
    if det == "a":
        det = _article(body)
    return f"{det} {body}"


def _adjective(rng: random.Random, topic: Topic, p: float = 0.5) -> str | None:
    if rng.random() >= p:
        return None
    return rng.choice(topic.adjectives + SHARED_ADJECTIVES)


def ending_sentence(rng: random.Random, noun: str, number: str, result: str) -> str:
    head = noun if number == "sg" else plural(noun)
    be = "is" if number == "sg" else "are"
    return f"{rng.choice(ENDING_WORDS)} the {head} {be} {result}."


# --------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------


def opening(rng: random.Random, topic: Topic) -> str:
    subj, num = subject(rng, topic)
    k = rng.randrange(3)
    if k == 0:
        return _cap(f"{subj} {'goes' if num == 'sg' else 'go'} to the {topic.place}.")
    if k == 1:
        return _cap(f"{subj} {'is' if num == 'sg' else 'are'} {topic.prep} the {topic.place}.")
    return f"It is {rng.choice(TIMES)} {topic.prep} the {topic.place}."


def filler(rng: random.Random, topic: Topic) -> str:
    k = rng.randrange(4)
    subj, num = subject(rng, topic)
    noun = rng.choice(topic.objects)
    onum = rng.choice(("sg", "pl"))
    if k == 0:
        return _cap(f"{subj} {verb_form(rng.choice(LIKE_VERBS), num)} "
                    f"{object_np(rng, noun, onum, _adjective(rng, topic))}.")
    if k == 1:
        adj = rng.choice(topic.adjectives + SHARED_ADJECTIVES)
        return _cap(f"{object_np(rng, noun, onum)} {'is' if onum == 'sg' else 'are'} {adj}.")
    if k == 2:
        return _cap(f"then {subj} {verb_form(rng.choice(INTRANSITIVE), num)}.")
    prep, loc = rng.choice(topic.locations)
    return _cap(f"{subj} {verb_form(rng.choice(LIKE_VERBS), num)} {object_np(rng, noun, onum)} "
                f"{prep} the {loc}.")


def action_sentence(rng: random.Random, topic: Topic, action: Action, noun: str, number: str,
                    at_place: bool) -> str:
    subj, num = subject(rng, topic)
    np_ = object_np(rng, noun, number, _adjective(rng, topic, 0.4))
    if at_place:
        tail = f" {topic.prep} the {topic.place}"
    elif rng.random() < 0.5:
        prep, loc = rng.choice(topic.locations)
        tail = f" {prep} the {loc}"
    else:
        tail = ""
    return _cap(f"{subj} {verb_form(action.verb, num)} {np_}{tail}.")


def generate_story(seed: int, index: int, n_topics: int | None = None,
                   topic: str | None = None) -> Story:
    """Story ``index`` of the world seeded by ``seed`` (same story for the same (seed, index))."""
    rng = rng_for(seed, "story", index)
    pool = topics(n_topics)
    t = TOPIC_BY_NAME[topic] if topic else rng.choice(pool)
    n = rng.randint(MIN_SENTENCES, MAX_SENTENCES)
    action = rng.choice(t.actions)
    noun = rng.choice(action.objects)
    number = "sg" if rng.random() < 0.6 else "pl"
    sentences: list[str] = []
    if n >= 3:
        sentences.append(opening(rng, t))
        sentences += [filler(rng, t) for _ in range(n - 3)]
    sentences.append(action_sentence(rng, t, action, noun, number, at_place=(n == 2)))
    sentences.append(ending_sentence(rng, noun, number, action.result))
    return Story(f"s{seed % 1000:03d}-{index:05d}", t.name, sentences, action.verb, noun, number,
                 action.result)


def generate_stories(n: int, seed: int, n_topics: int | None = None) -> list[Story]:
    return [generate_story(seed, i, n_topics) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# Endings for the story-cloze benchmarks
# --------------------------------------------------------------------------------------------------


def incoherent_ending(story: Story, rng: random.Random) -> str:
    """Same topic, same object, but the result of another action: grammatical and plausible, not coherent."""
    t = TOPIC_BY_NAME[story.topic]
    wrong = [a.result for a in t.actions if a.result != story.result]
    return ending_sentence(rng, story.obj, story.number, rng.choice(wrong))


def other_topic_ending(story: Story, rng: random.Random, n_topics: int | None = None) -> str:
    """A coherent-looking ending from another topic (its object and result)."""
    others = [t for t in topics(n_topics) if t.name != story.topic]
    if not others:
        raise ValueError("a topic-shifted ending needs at least 2 topics (benchmarks: n_topics >= 2)")
    t = rng.choice(others)
    a = rng.choice(t.actions)
    return ending_sentence(rng, rng.choice(a.objects), story.number, a.result)


# --------------------------------------------------------------------------------------------------
# Checks: grammar and topic
# --------------------------------------------------------------------------------------------------


def _alt(words: object) -> str:
    ws = sorted({str(w).lower() for w in words}, key=len, reverse=True)  # type: ignore[attr-defined]
    return "(?:" + "|".join(re.escape(w) for w in ws) + ")"


def _build_grammar() -> list[re.Pattern]:
    objs = [o for t in TOPICS for o in t.objects]
    roles = [r for t in TOPICS for r in t.roles]
    adjs = [a for t in TOPICS for a in t.adjectives] + list(SHARED_ADJECTIVES)
    verbs = [a.verb for t in TOPICS for a in t.actions] + list(LIKE_VERBS)
    name = _alt(NAMES)
    subj_sg = f"(?:{name}|the {_alt(roles)})"
    subj_pl = f"(?:{name} and {name}|the {_alt(plural(r) for r in roles)})"
    adj = _alt(adjs)
    np_sg = f"(?:(?:the|this|a|an) (?:{adj} )?{_alt(objs)})"
    np_pl = f"(?:(?:the|these|two|three|some) (?:{adj} )?{_alt(plural(o) for o in objs)})"
    np_any = f"(?:{np_sg}|{np_pl})"
    loc = f"(?: {_alt(p for t in TOPICS for p, _ in t.locations)} the " \
          f"{_alt([n for t in TOPICS for _, n in t.locations] + [t.place for t in TOPICS])})?"
    place = f"{_alt(t.prep for t in TOPICS)} the {_alt(t.place for t in TOPICS)}"
    result = _alt(a.result for t in TOPICS for a in t.actions)
    ending = _alt(w.lower() for w in ENDING_WORDS)
    pats = [
        f"{subj_sg} goes to the {_alt(t.place for t in TOPICS)}",
        f"{subj_pl} go to the {_alt(t.place for t in TOPICS)}",
        f"{subj_sg} is {place}", f"{subj_pl} are {place}",
        f"it is {_alt(TIMES)} {place}",
        f"{subj_sg} {_alt(third_singular(v) for v in verbs)} {np_any}{loc}",
        f"{subj_pl} {_alt(verbs)} {np_any}{loc}",
        f"{np_sg} is {adj}", f"{np_pl} are {adj}",
        f"then {subj_sg} {_alt(third_singular(v) for v in INTRANSITIVE)}",
        f"then {subj_pl} {_alt(INTRANSITIVE)}",
        f"{ending} the {_alt(objs)} is {result}",
        f"{ending} the {_alt(plural(o) for o in objs)} are {result}",
    ]
    return [re.compile(p) for p in pats]


_GRAMMAR = _build_grammar()


def grammatical(sentence: str) -> bool:
    """True if ``sentence`` (one sentence, final period optional) is generated by the demo grammar."""
    s = " ".join(sentence.strip().rstrip(".").lower().split())
    return any(p.fullmatch(s) for p in _GRAMMAR)


def split_sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(".") if s.strip()]


def topic_scores(text: str) -> dict[str, int]:
    """Topic -> number of words in ``text`` that mark it (shared words count for none)."""
    words = re.findall(r"[a-z]+", text.lower())
    return {t.name: sum(w in topic_words(t.name) for w in words) for t in TOPICS}


def predict_topic(text: str) -> str | None:
    """The topic with the most marker words, or None when there is none or a tie."""
    scores = topic_scores(text)
    best = max(scores.values())
    winners = [t for t, v in scores.items() if v == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def on_topic(sentence: str, topic: str) -> bool:
    """True when every topic marker word in ``sentence`` belongs to ``topic`` (and there is one)."""
    words = re.findall(r"[a-z]+", sentence.lower())
    marked = [w for w in words if topic_of_object(w) or any(w in topic_words(t.name) for t in TOPICS)]
    return bool(marked) and all(w in topic_words(topic) for w in marked)
