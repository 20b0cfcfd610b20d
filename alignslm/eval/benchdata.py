"""Loaders for the real benchmark layouts (and the demo ones, which are written in the same layouts).

ZeroSpeech 2021 (``<root>/lexical/<split>/*.wav + gold.csv``, ``<root>/syntactic/<split>/...``), paired
as the official scorer (zerospeech-benchmarks ``LexicalTask.load_and_format``, ``SyntacticTask``) does:
lexical joins the word and the non-word of the same (voice, id), whatever the row order; syntactic pairs
the k-th ``correct == 1`` row with the k-th ``correct == 0`` row (and we check that both carry the same id
and voice, which the official code assumes silently).  Each pair scores 1 if s(correct) > s(incorrect),
0.5 on a tie, averaged over voices within an id, then over ids.
Directory names are matched in any case (:func:`find_subdir`: ``Lexical/Dev`` is found too).

Spoken StoryCloze (``<root>/ssc/``, ``<root>/tsc/``; also ``sSC``, ``sStoryCloze`` ...): wav files named
``<story>_correct.wav`` / ``<story>_incorrect.wav`` (the story id is the part before the first ``_``,
which is how slamkit groups the distributed archives; sub-folders are searched too).

Completeness is checked before anything is scored: missing columns, missing wavs, one-sided pairs and
id/voice mismatches raise :class:`BenchmarkError` listing every offender.  Audio that is not 16 kHz
mono or is empty is a listed reject (``BenchmarkSet.rejects``); the pairs that use it are dropped and
listed in ``BenchmarkSet.dropped``, and a warning says how many.
"""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from alignslm import logger
from alignslm.speech.audio import SAMPLE_RATE, AudioError, audio_info

LEXICAL_COLUMNS = ("filename", "correct", "id", "voice", "frequency", "word", "phones", "length")
SYNTACTIC_COLUMNS = ("filename", "correct", "id", "voice", "type", "subtype", "transcription")
STORYCLOZE_DIRS = {"ssc": ("ssc", "sstorycloze", "spoken_storycloze"),
                   "tsc": ("tsc", "tstorycloze", "topic_storycloze")}
_SHOW = 20  # offenders listed in an error message (the count is always given)


class BenchmarkError(ValueError):
    """A benchmark directory is incomplete or malformed; ``problems`` lists every offender."""

    def __init__(self, where: str | Path, problems: list[str], fix: str = ""):
        self.where = str(where)
        self.problems = problems
        self.fix = fix
        super().__init__(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(self.lines()))

    def lines(self) -> list[str]:
        """The first offenders, how many more there are, and the fix (what --dry-run and the message show)."""
        more = [f"... and {len(self.problems) - _SHOW} more"] if len(self.problems) > _SHOW else []
        return self.problems[:_SHOW] + more + ([f"fix: {self.fix}"] if self.fix else [])


@dataclass
class BenchmarkSet:
    name: str  # lexical | syntactic | ssc | tsc
    split: str
    root: Path  # the directory holding the wavs
    items: list[tuple[str, str]]  # (file id, absolute wav path), every file once
    pairs: list[dict]  # id, voice, correct_file, incorrect_file, correct_path, incorrect_path, + columns
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (file id, reason)
    dropped: list[dict] = field(default_factory=list)  # pairs removed because a side was rejected

    def path_of(self, file_id: str) -> str:
        if len(getattr(self, "_paths", ())) != len(self.items):
            self._paths = dict(self.items)
        return self._paths[file_id]

    def summary(self) -> dict:
        return {"name": self.name, "pairs": len(self.pairs), "files": len(self.items),
                "ids": len({p["id"] for p in self.pairs}), "rejects": len(self.rejects),
                "dropped_pairs": len(self.dropped)}


# --------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------


def check_wav(path: str | Path) -> str | None:
    """None if ``path`` is a non-empty 16 kHz mono audio file, else the reason it is not."""
    try:
        sr, ch, frames = audio_info(path)
    except AudioError as e:
        return e.reason
    if frames == 0:
        return "empty audio (0 samples)"
    if sr != SAMPLE_RATE:
        return f"sample rate {sr} Hz (the benchmarks are 16 kHz)"
    if ch != 1:
        return f"{ch} channels (the benchmarks are mono)"
    return None


def _screen_audio(bs: BenchmarkSet) -> BenchmarkSet:
    """Move files that are not 16 kHz mono (or are empty) to ``rejects`` and drop their pairs."""
    bad = {}
    for fid, path in bs.items:
        reason = check_wav(path)
        if reason:
            bad[fid] = reason
    if bad:
        bs.rejects = sorted(bad.items())
        keep = [p for p in bs.pairs if p["correct_file"] not in bad and p["incorrect_file"] not in bad]
        bs.dropped = [p for p in bs.pairs if p["correct_file"] in bad or p["incorrect_file"] in bad]
        bs.pairs = keep
        logger.warning("%s (%s): %d file(s) rejected (%s), %d pair(s) dropped", bs.name, bs.root, len(bad),
                       "; ".join(f"{k}: {v}" for k, v in bs.rejects[:3]), len(bs.dropped))
    return bs


def _read_gold(gold: Path, columns: tuple[str, ...]) -> list[dict]:
    if not gold.is_file():
        raise BenchmarkError(gold, ["gold.csv does not exist"],
                             "Expected the ZeroSpeech 2021 layout <root>/<task>/<split>/gold.csv + *.wav.")
    with open(gold, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise BenchmarkError(gold, [f"missing column '{c}'" for c in missing],
                                 f"Columns found: {', '.join(header) or '(none)'}; "
                                 f"expected: {', '.join(columns)}.")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise BenchmarkError(gold, ["gold.csv has a header but no rows"])
    bad = [f"row {i + 2} ({r['filename']}): correct={r['correct']!r}, expected 0 or 1"
           for i, r in enumerate(rows) if r["correct"] not in ("0", "1")]
    dup = [f"filename {f} appears {n} times" for f, n in Counter(r["filename"] for r in rows).items() if n > 1]
    if bad or dup:
        raise BenchmarkError(gold, bad + dup)
    return rows


# --------------------------------------------------------------------------------------------------
# ZeroSpeech 2021 lexical / syntactic
# --------------------------------------------------------------------------------------------------


def find_subdir(parent: str | Path, names: tuple[str, ...] | str) -> Path | None:
    """The sub-directory of ``parent`` whose name is one of ``names`` in any case, or None.

    Every benchmark directory is looked up through here (never joined by hand), so an archive unpacked
    as ``sSC/``, ``Lexical/`` or ``DEV/`` is found as well as the lower-case names of the docs.
    """
    names = (names,) if isinstance(names, str) else names
    wanted = {n.lower() for n in names}
    parent = Path(parent).expanduser()
    if parent.is_dir():
        for child in sorted(parent.iterdir()):
            if child.is_dir() and child.name.lower() in wanted:
                return child
    return None


def find_zerospeech_dir(root: str | Path, task: str, split: str) -> Path:
    """``<root>/<task>/<split>`` of ZeroSpeech 2021 (names in any case)."""
    d = find_subdir(root, task)
    d = find_subdir(d, split) if d is not None else None
    if d is None:
        raise BenchmarkError(Path(root).expanduser() / task / split,
                             [f"directory {task}/{split} does not exist under {root} (any case)"],
                             "Download the ZeroSpeech 2021 data set, or leave benchmarks.root unset for the demo.")
    return d


def load_zerospeech(root: str | Path, task: str, split: str = "dev", check_audio: bool = True) -> BenchmarkSet:
    """Pairs of ZeroSpeech 2021 ``task`` ("lexical" | "syntactic"), in the official scorer's order."""
    if task not in ("lexical", "syntactic"):
        raise ValueError(f"task must be 'lexical' or 'syntactic', got {task!r}")
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    d = find_zerospeech_dir(root, task, split)
    rows = _read_gold(d / "gold.csv", LEXICAL_COLUMNS if task == "lexical" else SYNTACTIC_COLUMNS)
    missing = [f"{r['filename']}.wav (gold.csv row {i + 2}) does not exist"
               for i, r in enumerate(rows) if not (d / f"{r['filename']}.wav").is_file()]
    if missing:
        raise BenchmarkError(d, missing, "Every gold.csv row needs its <filename>.wav next to gold.csv.")
    _check_sides(d, rows, exactly_one=task == "lexical")
    good = [r for r in rows if r["correct"] == "1"]
    bad = [r for r in rows if r["correct"] == "0"]
    if task == "lexical":  # the official pairing: the word and the non-word of the same (voice, id)
        partner = {(b["voice"], b["id"]): b for b in bad}
        pairs = [_pair(task, d, g, partner[(g["voice"], g["id"])]) for g in good]
    else:
        pairs = _pairs_by_order(d, good, bad)
    items = [(r["filename"], str((d / f"{r['filename']}.wav").resolve())) for r in rows]
    bs = BenchmarkSet(task, split, d.resolve(), items, pairs)
    return _screen_audio(bs) if check_audio else bs


def _pairs_by_order(d: Path, good: list[dict], bad: list[dict]) -> list[dict]:
    """sBLIMP's official pairing: the k-th correct row with the k-th incorrect row (same id/voice checked)."""
    pairs, mism = [], []
    for k, (g, b) in enumerate(zip(good, bad)):
        if (g["id"], g["voice"]) != (b["id"], b["voice"]):
            mism.append(f"pair {k}: {g['filename']} (id {g['id']}, voice {g['voice']}) is paired with "
                        f"{b['filename']} (id {b['id']}, voice {b['voice']}) by the official row order")
            continue
        pairs.append(_pair("syntactic", d, g, b))
    if mism:
        raise BenchmarkError(d / "gold.csv", mism, "Order the correct=1 and correct=0 rows so that the k-th of "
                             "each belong to the same id and voice (the official scorer pairs them by order).")
    return pairs


def _check_sides(d: Path, rows: list[dict], exactly_one: bool = False) -> None:
    """Every (id, voice) must have as many correct as incorrect rows (else a pair has one side); lexical:
    exactly one of each, since the official scorer joins them on (voice, id)."""
    count: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        count[(r["id"], r["voice"])][int(r["correct"])] += 1
    wrong = [f"id {i}, voice {v}: {c[1]} correct vs {c[0]} incorrect row(s)"
             for (i, v), c in count.items() if c[0] != c[1] or (exactly_one and c != [1, 1])]
    if wrong:
        raise BenchmarkError(d / "gold.csv", wrong, "Each (id, voice) needs one correct=1 and one correct=0 row."
                             if exactly_one else "Each pair needs as many correct=1 as correct=0 rows.")


def _pair(task: str, d: Path, g: dict, b: dict) -> dict:
    p = {"id": g["id"], "voice": g["voice"], "correct_file": g["filename"], "incorrect_file": b["filename"],
         "correct_path": str((d / f"{g['filename']}.wav").resolve()),
         "incorrect_path": str((d / f"{b['filename']}.wav").resolve())}
    if task == "lexical":
        freq = g["frequency"]
        p.update(frequency=int(float(freq)) if freq else 0, word=g["word"], non_word=b["word"],
                 length=int(float(g["length"])) if g["length"] else None, phones=g["phones"],
                 non_word_phones=b["phones"])
    else:
        p.update(type=g["type"], subtype=g["subtype"], sentence=g["transcription"],
                 non_sentence=b["transcription"])
    return p


# --------------------------------------------------------------------------------------------------
# Spoken StoryCloze
# --------------------------------------------------------------------------------------------------

_SC_NAME = re.compile(r"^(?P<id>[^_]+)_(?:.*_)?(?P<label>correct|incorrect)(?:_.*)?$", re.IGNORECASE)


def find_storycloze_dir(root: str | Path, kind: str) -> Path:
    """The directory of ``kind`` ("ssc" | "tsc") under ``root`` (case-insensitive known names)."""
    if kind not in STORYCLOZE_DIRS:
        raise ValueError(f"kind must be 'ssc' or 'tsc', got {kind!r}")
    root = Path(root).expanduser()
    d = find_subdir(root, STORYCLOZE_DIRS[kind])
    if d is not None:
        return d
    raise BenchmarkError(root, [f"no {kind} directory (one of {', '.join(STORYCLOZE_DIRS[kind])}, any case)"],
                         "Unpack the Spoken StoryCloze archive there, or leave benchmarks.root unset for the demo.")


def load_storycloze(root: str | Path, kind: str, check_audio: bool = True) -> BenchmarkSet:
    """Pairs (story with its correct ending, the same story with the wrong one) of sSC or tSC."""
    d = find_storycloze_dir(root, kind)
    wavs = sorted(d.rglob("*.wav"))
    if not wavs:
        raise BenchmarkError(d, ["no .wav files"])
    sides: dict[str, dict[str, list[Path]]] = defaultdict(lambda: {"correct": [], "incorrect": []})
    unnamed = []
    for w in wavs:
        m = _SC_NAME.match(w.stem)
        if not m:
            unnamed.append(f"{w.relative_to(d)}: name is not <story>_correct / <story>_incorrect")
            continue
        sides[m["id"]][m["label"].lower()].append(w)
    problems = list(unnamed)
    for sid, s in sorted(sides.items(), key=lambda kv: _natural(kv[0])):
        if len(s["correct"]) != 1 or len(s["incorrect"]) != 1:
            problems.append(f"story {sid}: {len(s['correct'])} correct and {len(s['incorrect'])} incorrect "
                            f"file(s), expected one of each")
    if problems:
        raise BenchmarkError(d, problems, "Each story needs exactly <story>_correct.wav and <story>_incorrect.wav.")
    pairs, items = [], []
    for sid, s in sorted(sides.items(), key=lambda kv: _natural(kv[0])):
        c, i = s["correct"][0], s["incorrect"][0]
        pairs.append({"id": sid, "voice": None, "correct_file": c.stem, "incorrect_file": i.stem,
                      "correct_path": str(c.resolve()), "incorrect_path": str(i.resolve())})
        items += [(c.stem, str(c.resolve())), (i.stem, str(i.resolve()))]
    bs = BenchmarkSet(kind, "test", d.resolve(), items, pairs)
    return _screen_audio(bs) if check_audio else bs


def _natural(s: str) -> tuple:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


# --------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------


def load_all(root: str | Path, split: str = "dev", check_audio: bool = True) -> dict[str, BenchmarkSet]:
    """lexical, syntactic, ssc, tsc under ``root``; raises one BenchmarkError listing all that is missing."""
    out: dict[str, BenchmarkSet] = {}
    problems: list[str] = []
    loaders = {"lexical": lambda: load_zerospeech(root, "lexical", split, check_audio),
               "syntactic": lambda: load_zerospeech(root, "syntactic", split, check_audio),
               "ssc": lambda: load_storycloze(root, "ssc", check_audio),
               "tsc": lambda: load_storycloze(root, "tsc", check_audio)}
    fixes: list[str] = []
    for name, fn in loaders.items():
        try:
            out[name] = fn()
        except BenchmarkError as e:
            problems += [f"{name}: {e.where}: {p}" for p in e.problems]
            fixes += [f"{name}: {e.fix}"] if e.fix else []
    if problems:
        raise BenchmarkError(root, problems, " ".join(fixes))
    return out


def check_layout(root: str | Path, split: str = "dev") -> list[str]:
    """Cheap completeness check (no audio reads) for ``--dry-run``: the problems, or []."""
    try:
        load_all(root, split, check_audio=False)
    except BenchmarkError as e:
        return e.lines()
    return []
