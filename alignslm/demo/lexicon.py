"""The demo world's vocabulary: ten topics over one shared grammar (see alignslm.demo.stories).

Each topic has a place, people (roles), and *actions*: a transitive verb, the objects it applies to and
the state it leaves them in ("wash" a "pan" -> the pan is "clean").  A coherent story ends with the
result of its main action; an incoherent one (sSC) with the result of another action of the same topic;
a topic-shifted one (tSC) with an ending of another topic.  Object nouns belong to exactly one topic,
so "stays on topic" is checkable from the words alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    verb: str  # base form: "wash"
    result: str  # the state it leaves the object in: "clean", "in the bucket"
    objects: tuple[str, ...]  # singular nouns


@dataclass(frozen=True)
class Topic:
    name: str
    place: str
    prep: str  # "in the kitchen", "on the farm", "at the market"
    roles: tuple[str, ...]
    actions: tuple[Action, ...]
    adjectives: tuple[str, ...]
    locations: tuple[tuple[str, str], ...]  # (preposition, noun)

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(o for a in self.actions for o in a.objects)


def _a(verb: str, result: str, objects: str) -> Action:
    return Action(verb, result, tuple(objects.split()))


def _t(name: str, place: str, prep: str, roles: str, actions: list[Action], adjectives: str,
       locations: str) -> Topic:
    locs = tuple(tuple(x.split(":")) for x in locations.split())
    return Topic(name, place, prep, tuple(roles.split()), tuple(actions), tuple(adjectives.split()),
                 locs)  # type: ignore[arg-type]


TOPICS: tuple[Topic, ...] = (
    _t("kitchen", "kitchen", "in", "cook baker", [
        _a("wash", "clean", "pan cup plate bowl spoon pot"),
        _a("cook", "hot", "egg pie potato sausage dumpling"),
        _a("slice", "in pieces", "cake onion carrot loaf melon"),
        _a("fill", "full", "jar kettle bottle jug mug"),
    ], "warm sweet fresh tasty", "on:stove in:sink on:table in:oven"),
    _t("farm", "farm", "on", "farmer shepherd", [
        _a("feed", "happy", "cow pig goat hen duck"),
        _a("fix", "strong", "fence gate tractor cart wagon"),
        _a("brush", "soft", "pony donkey calf lamb horse"),
        _a("stack", "neat", "bale sack plank barrel"),
    ], "muddy hungry noisy brown", "in:barn in:field by:pond near:stable"),
    _t("sea", "sea", "at", "sailor diver", [
        _a("tie", "safe", "boat raft canoe yacht dinghy"),
        _a("catch", "in the bucket", "crab lobster eel shrimp squid"),
        _a("find", "in the pocket", "shell pebble pearl coral"),
        _a("hang", "dry", "net sail towel flag"),
    ], "salty wet sandy wild", "on:beach on:deck near:rock by:shore"),
    _t("school", "school", "at", "teacher pupil", [
        _a("read", "finished", "book story poem letter"),
        _a("write", "written", "note list essay report"),
        _a("draw", "colorful", "map picture circle chart"),
        _a("pack", "ready", "bag lunchbox folder pencil"),
    ], "quiet clever long neat", "on:desk in:classroom on:board in:library"),
    _t("garden", "garden", "in", "gardener", [
        _a("water", "wet", "rose tulip daisy fern"),
        _a("plant", "in the soil", "seed bulb shrub sprout"),
        _a("dig", "deep", "hole ditch pit trench"),
        _a("pick", "in the crate", "tomato strawberry pepper cucumber"),
    ], "pretty tall green blooming", "in:greenhouse near:hedge by:path in:shed"),
    _t("forest", "forest", "in", "ranger hiker", [
        _a("chop", "in a pile", "log branch stump trunk"),
        _a("light", "bright", "campfire lantern torch candle"),
        _a("gather", "in a heap", "acorn pinecone mushroom berry"),
        _a("watch", "asleep", "owl fox squirrel badger"),
    ], "dark wild damp shady", "under:oak by:stream on:hill in:cave"),
    _t("city", "city", "in", "driver mayor", [
        _a("park", "parked", "car bus van truck taxi"),
        _a("paint", "bright", "wall sign bench bridge"),
        _a("lock", "locked", "bike scooter shop locker"),
        _a("sweep", "tidy", "street sidewalk square station"),
    ], "busy loud crowded modern", "on:corner by:road near:museum at:crossing"),
    _t("winter", "mountain", "on", "skier climber", [
        _a("build", "finished", "igloo fort snowball tower"),
        _a("wax", "fast", "ski sled snowboard skate"),
        _a("shake", "dry", "coat jacket glove mitten"),
        _a("shovel", "clear", "driveway step porch roof"),
    ], "cold icy white frozen", "on:slope in:cabin near:lift by:lodge"),
    _t("market", "market", "at", "seller shopper", [
        _a("buy", "sold", "lemon peach plum cherry"),
        _a("weigh", "heavy", "turnip cabbage pumpkin squash"),
        _a("count", "counted", "coin ticket stamp token"),
        _a("carry", "inside", "parcel box tray basket"),
    ], "cheap ripe juicy fresh", "on:stall at:counter by:tent near:fountain"),
    _t("music", "hall", "in", "drummer singer", [
        _a("tune", "in tune", "guitar violin piano harp cello"),
        _a("bang", "loud", "drum gong bell cymbal"),
        _a("sing", "over", "song carol hymn chant"),
        _a("polish", "shiny", "trumpet horn flute tuba"),
    ], "lovely soft grand golden", "on:stage near:curtain by:speaker in:studio"),
)

TOPIC_BY_NAME = {t.name: t for t in TOPICS}

NAMES = ("Tom", "Anna", "Ben", "Mia", "Sam", "Lucy", "Max", "Emma", "Jack", "Rosa", "Leo", "Nina")
SHARED_ADJECTIVES = ("big", "small", "old", "new", "red", "blue", "green", "little")
INTRANSITIVE = ("smile", "laugh", "wait", "rest", "nod", "look around", "sit down", "clap")
LIKE_VERBS = ("like", "see", "want", "need")
TIMES = ("morning", "evening", "afternoon")
ENDING_WORDS = ("Now", "Soon", "At last")

IRREGULAR_PLURALS = {"loaf": "loaves", "shelf": "shelves", "squid": "squid", "box": "boxes",
                     "mouse": "mice", "calf": "calves"}


def plural(noun: str) -> str:
    """Regular English plural with a few irregular forms (``IRREGULAR_PLURALS``)."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith("o") and noun in ("potato", "tomato"):
        return noun + "es"
    return noun + "s"


def third_singular(verb: str) -> str:
    """'wash' -> 'washes', 'carry' -> 'carries'; multiword verbs inflect their first word."""
    head, _, rest = verb.partition(" ")
    if head.endswith(("s", "x", "ch", "sh", "z", "o")):
        head = head + "es"
    elif head.endswith("y") and head[-2] not in "aeiou":
        head = head[:-1] + "ies"
    else:
        head = head + "s"
    return f"{head} {rest}".strip()


def topic_of_object(noun: str) -> str | None:
    """The topic a (singular or plural) object noun belongs to, or None."""
    return _OBJECT_TOPIC.get(noun.lower())


def topic_words(topic: str) -> frozenset[str]:
    """Word forms that mark ``topic`` and no other: place, roles, verbs, objects (sg+pl), location nouns."""
    return _TOPIC_WORDS[topic]


def _build_indexes() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    obj: dict[str, str] = {}
    words: dict[str, frozenset[str]] = {}
    for t in TOPICS:
        ws: set[str] = {t.place}
        for r in t.roles:
            ws |= {r, plural(r)}
        for a in t.actions:
            ws |= {a.verb, third_singular(a.verb)}
            for o in a.objects:
                obj[o] = obj[plural(o)] = t.name
                ws |= {o, plural(o)}
        ws |= {n for _, n in t.locations}  # adjectives are weak markers: left out
        words[t.name] = frozenset(ws)
    # a word that marks two topics (or is shared by the grammar) marks none
    shared = set(SHARED_ADJECTIVES) | {n.lower() for n in NAMES}
    counts: dict[str, int] = {}
    for ws_t in words.values():
        for w in ws_t:
            counts[w] = counts.get(w, 0) + 1
    words = {k: frozenset(w for w in v if counts[w] == 1 and w not in shared) for k, v in words.items()}
    return obj, words


_OBJECT_TOPIC, _TOPIC_WORDS = _build_indexes()


def vocabulary() -> list[str]:
    """Every word form the grammar can produce (lower case, sorted)."""
    ws: set[str] = set()
    for t in TOPICS:
        ws |= topic_words(t.name)
        for a in t.actions:
            ws |= set(a.result.split())
        ws |= {p for p, _ in t.locations} | set(t.adjectives) | {t.prep}
    ws |= {n.lower() for n in NAMES} | set(SHARED_ADJECTIVES) | set(TIMES)
    for v in INTRANSITIVE + LIKE_VERBS:
        ws |= set(v.split()) | set(third_singular(v).split())
    ws |= {"the", "a", "this", "these", "two", "three", "some", "is", "are", "and", "then", "now",
           "soon", "at", "last", "it", "goes", "go", "to", "in", "on"}
    ws |= {w.lower() for e in ENDING_WORDS for w in e.split()}
    return sorted(ws)
